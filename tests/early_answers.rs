//! What follows a request tollgate answers itself (401, 403, 413, 429) or an upgrade the
//! upstream refused is never read as another request: a body is drained or the connection
//! closed, and bytes after a refused upgrade never reach the upstream.

mod support;

use support::*;

/// A request a client smuggles inside a body (or after an upgrade).
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";

fn gateway() -> Gateway {
    let up = echo("up");
    Gateway::start(&format!(
        r#"
consumers: {{alice: {{api_keys: ["alice-key-0123456789"]}}}}
auth: {{keys: {{type: api_key}}}}
rate_limits: {{one: {{requests: 1, per: 1m}}}}
upstreams: {{u: {{targets: ["{up}"]}}}}
routes:
  - {{name: keys, path_prefix: /keys, upstream: u, auth: [keys]}}
  - {{name: denied, path_prefix: /denied, upstream: u, ip_deny: ["127.0.0.0/8"]}}
  - {{name: small, path_prefix: /small, upstream: u, max_body: 8}}
  - {{name: limited, path_prefix: /limited, upstream: u, rate_limit: one}}
  - {{name: open, path_prefix: /, upstream: u}}
"#
    ))
}

fn exchange(gw: &Gateway, bytes: &[u8]) -> (Vec<u16>, String) {
    statuses_of(gw.addr, bytes)
}

fn post_with_smuggled_body(path: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
        SMUGGLED.len()
    )
    .into_bytes()
}

#[test]
fn bodies_of_refused_requests_are_never_parsed_as_requests() {
    let gw = gateway();
    assert_eq!(gw.get("/limited/x").status, 200, "spend the one request");
    for (path, status) in [
        ("/keys/x", 401),
        ("/denied/x", 403),
        ("/small/x", 413),
        ("/limited/x", 429),
    ] {
        let (codes, text) = exchange(&gw, &post_with_smuggled_body(path));
        assert_eq!(codes.first(), Some(&status), "{path}: {text}");
        assert!(
            !text.contains("/smuggled") && codes.len() == 1,
            "{path}: the body was read as a request: {text}"
        );
        // The same with a chunked body.
        let chunked = format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
            SMUGGLED.len()
        );
        let (codes, text) = exchange(&gw, chunked.as_bytes());
        assert_eq!(codes.first(), Some(&status), "{path} chunked: {text}");
        assert!(
            !text.contains("/smuggled") && codes.len() == 1,
            "{path} chunked: the body was read as a request: {text}"
        );
    }
}

#[test]
fn bytes_after_an_upgrade_the_upstream_refused_never_reach_it_as_a_request() {
    let gw = gateway();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n{SMUGGLED}"
    );
    let (codes, text) = exchange(&gw, req.as_bytes());
    // The echo upstream does not speak WebSocket: it answers the GET normally (200).
    assert_eq!(codes.first(), Some(&200), "{text}");
    assert!(
        !text.contains("\"path\": \"/smuggled\"") && !text.contains("\"path\":\"/smuggled\""),
        "the bytes after a refused upgrade reached the upstream as a request: {text}"
    );
}
