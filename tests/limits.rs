//! Size limits and per-route IP rules: the client gets the right status and JSON body, and the
//! upstream never sees what was refused.

mod support;
use support::*;

fn gateway() -> Gateway {
    let up = echo("up");
    Gateway::start(&format!(
        r#"
limits: {{max_uri_bytes: 2KiB, max_header_bytes: 4KiB, max_headers: 20, max_body: 1KiB}}
upstreams: {{up: {{targets: ["{up}"]}}}}
routes:
  - {{name: small, path_prefix: /small, upstream: up, max_body: 16}}
  - {{name: default, path_prefix: /default, upstream: up}}
  - {{name: denied, path_prefix: /denied, upstream: up, ip_deny: ["127.0.0.0/8"]}}
  - {{name: allowed, path_prefix: /allowed, upstream: up, ip_allow: ["127.0.0.1"]}}
  - {{name: elsewhere, path_prefix: /elsewhere, upstream: up, ip_allow: ["10.0.0.0/8"]}}
"#
    ))
}

#[test]
fn long_uri_is_414_and_large_or_many_headers_are_431() {
    let gw = gateway();
    let r = gw.get(&format!("/default/{}", "a".repeat(3000)));
    assert_eq!(r.status, 414);
    assert_eq!(r.error_code(), "uri_too_long");
    let big = "b".repeat(5000);
    let r = gw.send("GET", "/default/x", &[("X-Big", &big)]);
    assert_eq!(r.status, 431);
    assert_eq!(r.error_code(), "headers_too_large");
    let many: Vec<(String, String)> = (0..30)
        .map(|i| (format!("X-H{i}"), "v".to_owned()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(gw.send("GET", "/default/x", &many).status, 431);
    assert_eq!(
        gw.get(&format!("/default/{}", "a".repeat(1000))).status,
        200,
        "under the limits"
    );
}

#[test]
fn declared_body_over_max_is_413_before_reading_and_the_connection_closes() {
    let gw = gateway();
    // The body that follows would be a smuggled request if it were parsed as one.
    let r = gw.raw(
        b"POST /small/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 40\r\n\r\nGET /small/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");
    assert!(!r.body.contains("smuggled"));
    let ok = gw.raw(b"POST /small/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
    assert_eq!(ok.status, 200);
    // The global default applies where the route sets none.
    let body = "x".repeat(2000);
    let r = gw.raw(format!("POST /default/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{body}").as_bytes());
    assert_eq!(r.status, 413);
}

#[test]
fn chunked_body_over_max_is_cut_with_413() {
    let gw = gateway();
    let chunk = "y".repeat(20);
    let r = gw.raw(
        format!("POST /small/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n14\r\n{chunk}\r\n0\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.error_code(), "payload_too_large");
}

#[test]
fn ip_rules_per_route() {
    let gw = gateway();
    let r = gw.get("/denied/x");
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "forbidden");
    assert_eq!(gw.get("/allowed/x").status, 200);
    assert_eq!(gw.get("/elsewhere/x").status, 403);
    assert_eq!(gw.get("/default/x").status, 200);
}

/// The body size of [`firehose`]: more than every socket buffer between it and the client.
const BIG: usize = 64 << 20;

/// A backend that answers each request with a [`BIG`] body as fast as it is taken, and says
/// how much it had sent when the gateway dropped the connection.
fn firehose() -> (std::net::SocketAddr, std::sync::mpsc::Receiver<usize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (gone, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let (Ok(mut s), gone) = (s, gone.clone()) else {
                continue;
            };
            std::thread::spawn(move || {
                let (mut head, mut chunk) = (Vec::new(), [0u8; 4096]);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
                let piece = vec![b'x'; 64 << 10];
                let mut sent = 0;
                let mut out = s.write_all(head.as_bytes());
                while out.is_ok() && sent < BIG {
                    out = s.write(&piece).map(|n| sent += n);
                }
                if out.is_err() {
                    let _ = gone.send(sent);
                }
            });
        }
    });
    (addr, rx)
}

/// A client that stops reading its response is let go after `limits.send_timeout`, on both
/// codecs: its connection closes, and so does the upstream connection behind it, instead of
/// both being held for as long as the client likes.
#[test]
fn a_client_that_stops_reading_is_cut_after_send_timeout() {
    use std::io::{Read, Write};
    let (up, gone) = firehose();
    let gw = Gateway::start(&format!(
        r#"
limits: {{send_timeout: 1s}}
upstreams: {{up: {{targets: ["{up}"], retries: 0}}}}
routes: [{{name: r, path_prefix: /, upstream: up}}]
"#
    ));
    // A bodiless GET takes tollgate's own codec; a request with a body takes Pingora's.
    for req in [
        &b"GET /big HTTP/1.1\r\nHost: gw\r\n\r\n"[..],
        b"POST /big HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let mut c = std::net::TcpStream::connect(gw.addr).unwrap();
        c.write_all(req).unwrap();
        // The client reads nothing; the gateway gives up on it and drops the upstream.
        let sent = gone
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the upstream connection is dropped while the client does not read");
        assert!(sent < BIG, "{sent}");
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let end = c.read_to_end(&mut got);
        assert!(end.is_ok(), "the client connection is closed: {end:?}");
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{req:?}");
        assert!(got.len() < BIG, "the response was cut: {}", got.len());
    }
}
