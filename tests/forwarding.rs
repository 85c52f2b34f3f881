//! What the upstream receives and what the client gets back: forwarding headers, request ids,
//! hop-by-hop removal in both directions, gateway and route response headers.

mod support;
use support::*;

/// A config whose one route sends every path to the backend at `up`.
fn everything_to(up: std::net::SocketAddr) -> String {
    format!(
        "upstreams: {{up: {{targets: [\"{up}\"]}}}}\nroutes: [{{name: r, path_prefix: /, upstream: up}}]"
    )
}

fn gateway(extra: &str) -> Gateway {
    let up = echo("up");
    Gateway::start(&format!(
        r#"
{extra}
upstreams:
  up: {{targets: ["{up}"]}}
routes:
  - name: api
    path_prefix: /api
    upstream: up
    response_headers: {{Cache-Control: no-store, X-Frame-Options: DENY}}
"#
    ))
}

#[test]
fn forwarding_headers_are_set() {
    let gw = gateway("");
    let r = gw.send("GET", "/api/x", &[("Host", "shop.example.com")]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("host").as_deref(),
        Some("shop.example.com"),
        "Host preserved"
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("shop.example.com")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(r.upstream_header("x-real-ip").as_deref(), Some("127.0.0.1"));
}

#[test]
fn x_forwarded_for_is_appended_but_untrusted_claims_do_not_change_the_client() {
    let gw = gateway("");
    let r = gw.send(
        "GET",
        "/api/x",
        &[("X-Forwarded-For", "203.0.113.7"), ("X-Real-IP", "6.6.6.6")],
    );
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(r.upstream_header("x-real-ip").as_deref(), Some("127.0.0.1"));
}

#[test]
fn trusted_proxy_chain_yields_the_real_client() {
    let gw = gateway("trusted_proxies: [\"127.0.0.0/8\"]");
    let r = gw.send(
        "GET",
        "/api/x",
        &[("X-Forwarded-For", "6.6.6.6, 198.51.100.4")],
    );
    assert_eq!(
        r.upstream_header("x-real-ip").as_deref(),
        Some("198.51.100.4")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("6.6.6.6, 198.51.100.4, 127.0.0.1")
    );
}

#[test]
fn request_id_is_generated_echoed_and_forwarded() {
    let gw = gateway("");
    let r = gw.get("/api/x");
    let id = r
        .header("x-request-id")
        .expect("response carries X-Request-Id")
        .to_owned();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(r.upstream_header("x-request-id"), Some(id.clone()));
    assert_ne!(
        gw.get("/api/x").header("x-request-id"),
        Some(id.as_str()),
        "unique per request"
    );
}

#[test]
fn sane_client_request_id_passes_through_and_insane_is_replaced() {
    let gw = gateway("");
    let r = gw.send("GET", "/api/x", &[("X-Request-Id", "trace-abc.123")]);
    assert_eq!(r.header("x-request-id"), Some("trace-abc.123"));
    assert_eq!(
        r.upstream_header("x-request-id").as_deref(),
        Some("trace-abc.123")
    );
    let long = "a".repeat(300);
    let r = gw.send("GET", "/api/x", &[("X-Request-Id", &long)]);
    assert_eq!(r.header("x-request-id").unwrap().len(), 32);
    let r = gw.send("GET", "/api/x", &[("X-Request-Id", "bad id\"<>")]);
    assert_eq!(r.header("x-request-id").unwrap().len(), 32);
    // Local answers carry it too.
    let r = gw.send("GET", "/nowhere", &[("X-Request-Id", "trace-404")]);
    assert_eq!(
        (r.status, r.header("x-request-id")),
        (404, Some("trace-404"))
    );
    assert_eq!(r.json()["request_id"], "trace-404");
}

#[test]
fn hop_by_hop_request_headers_are_removed_including_connection_named_ones() {
    let gw = gateway("");
    let r = gw.raw(
        b"GET /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close, X-Secret-Hop\r\nX-Secret-Hop: 1\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\n\
          Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    for h in [
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert_eq!(
            r.upstream_header(h),
            None,
            "{h} must not reach the upstream"
        );
    }
    assert_eq!(r.upstream_header("x-kept").as_deref(), Some("yes"));
}

#[test]
fn hop_by_hop_request_headers_are_removed_on_the_fast_path_too() {
    // No Connection-named headers and no Upgrade: tollgate relays this one itself
    // (src/proxy/relay.rs), and strips the same headers Pingora's path does.
    let gw = gateway("");
    let r = gw.raw(
        b"GET /api/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\
          Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x-t\r\nProxy-Authorization: Basic eA==\r\n\
          Proxy-Connection: keep-alive\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nX-Kept: yes\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    for h in [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "http2-settings",
    ] {
        assert_eq!(
            r.upstream_header(h),
            None,
            "{h} must not reach the upstream"
        );
    }
    assert_eq!(r.upstream_header("x-kept").as_deref(), Some("yes"));
}

#[test]
fn hop_by_hop_response_headers_are_removed() {
    // A raw upstream that sends hop-by-hop headers in its response.
    let up = scripted(|_, _| {
        let head =
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Up-Hop\r\nX-Up-Hop: 1\r\n\
            Keep-Alive: timeout=9\r\nProxy-Connection: x\r\nX-Up-Kept: 1\r\n\r\nok";
        (head.to_vec(), false)
    });
    let gw = Gateway::start(&everything_to(up));
    let r = gw.get("/");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(r.header("x-up-hop"), None);
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("proxy-connection"), None);
    assert_eq!(r.header("x-up-kept"), Some("1"));
}

#[test]
fn each_hop_by_hop_response_header_is_removed_alone_too() {
    // One per response, each without the others (and one with none): the gateway looks for
    // them in one pass before removing any.
    let up = scripted(|_, path| {
        let hop = match path {
            "/upgrade" => "Upgrade: h2c\r\n",
            "/keep-alive" => "Keep-Alive: timeout=9\r\n",
            "/proxy-connection" => "Proxy-Connection: x\r\n",
            _ => "",
        };
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{hop}X-Up-Kept: 1\r\n\r\nok");
        (head.into_bytes(), false)
    });
    let gw = Gateway::start(&everything_to(up));
    for name in ["upgrade", "keep-alive", "proxy-connection", "none"] {
        let r = gw.get(&format!("/{name}"));
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{name}");
        assert_eq!(r.header(name), None, "{name} must not reach the client");
        assert_eq!(r.header("x-up-kept"), Some("1"), "{name}");
    }
}

#[test]
fn gateway_and_route_response_headers() {
    let gw = gateway("");
    let ok = gw.get("/api/x");
    assert_eq!(ok.header("x-gateway"), Some("tollgate"));
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    assert_eq!(ok.header("x-frame-options"), Some("DENY"));
    let missing = gw.get("/elsewhere");
    assert_eq!(missing.header("x-gateway"), Some("tollgate"));
}

#[test]
fn request_body_is_forwarded() {
    let gw = gateway("");
    let r = gw.raw(
        b"POST /api/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"], "hello");
    assert_eq!(r.json()["method"], "POST");
}

#[test]
fn upstream_connections_are_reused() {
    let gw = gateway("");
    let seen: Vec<u64> = (0..5)
        .map(|_| {
            gw.get("/api/x").json()["connection_requests"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        seen.iter().any(|&n| n > 1),
        "sequential requests should ride pooled connections: {seen:?}"
    );
}

#[test]
fn the_client_gets_one_date_the_gateways_on_either_codec() {
    // A backend whose clock is wrong: its Date never reaches the client. The plain listener
    // is served by tollgate's own codec, the h2c one (HTTP/1.1 on it) by Pingora's session.
    let up = scripted(|_, _| {
        let head =
            "HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok";
        (head.as_bytes().to_vec(), false)
    });
    let h2c = |a| format!("{{address: \"{a}\", h2c: true}}");
    let (gw, h2c_addr) = Gateway::with_listener(h2c, &everything_to(up));
    let request = b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
    for (codec, r) in [
        ("own", gw.raw(request)),
        ("pingora", request_bytes(h2c_addr, request).unwrap()),
    ] {
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{codec}: {r:?}");
        let dates: Vec<_> = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("date"))
            .collect();
        assert_eq!(dates.len(), 1, "{codec}: {r:?}");
        assert!(
            !dates[0].1.contains("1970") && dates[0].1.ends_with(" GMT"),
            "{codec}: {r:?}"
        );
    }
}
