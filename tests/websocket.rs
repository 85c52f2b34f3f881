//! WebSocket through the gateway: the handshake is routed, authenticated and rate-limited like
//! any request, then the connection is a tunnel with an idle timeout, counted while open.

mod support;

use std::time::{Duration, Instant};

use support::ws::{accept_key, handshake, WsEcho, CLOSE, KEY, PONG, TEXT};
use support::*;

const KEY_HEADER: (&str, &str) = ("X-Api-Key", "alice-key-0123456789");

fn gateway(up: &WsEcho, route_extra: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
upstreams: {{ws: {{targets: ["{up}"]}}}}
consumers:
  alice: {{api_keys: ["alice-key-0123456789"]}}
auth:
  keys: {{type: api_key}}
rate_limits:
  handshakes: {{requests: 2, per: 1m, key: consumer}}
routes:
  - {{name: chat, path_prefix: /chat, upstream: ws, auth: [keys]{route_extra}}}
  - {{name: plain, path_prefix: /plain, upstream: ws, websocket: false}}
"#,
        up = up.addr
    ))
}

fn gauge(gw: &Gateway, route: &str) -> i64 {
    let series = format!("tollgate_websocket_connections{{route=\"{route}\"}} ");
    let text = gw.admin_get("/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Wait for an access-log line (written when the tunnel closed) holding every one of `parts`.
fn logged(gw: &Gateway, parts: &[&str]) {
    let found = eventually(Duration::from_secs(5), || {
        gw.logs()
            .lines()
            .any(|l| parts.iter().all(|p| l.contains(p)))
    });
    assert!(found, "no access-log line with {parts:?}:\n{}", gw.logs());
}

#[test]
fn frames_are_echoed_through_an_authenticated_route_and_the_gauge_follows_the_tunnel() {
    let up = WsEcho::start();
    // The tunnel's bytes are not a request body: max_body does not cut them.
    let gw = gateway(&up, ", max_body: 1KiB");
    assert_eq!(gauge(&gw, "chat"), 0);
    let (head, ws) = handshake(gw.addr, "/chat/room", &[KEY_HEADER]);
    assert_eq!(head.status, 101, "{head:?}\n{}", gw.logs());
    assert_eq!(head.header("sec-websocket-accept"), Some(&*accept_key(KEY)));
    assert!(head
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket")));
    let mut ws = ws.unwrap();
    // The upstream saw the handshake, with the consumer and without the key.
    let seen = up.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(seen.starts_with("get /room http/1.1"), "{seen}");
    assert!(seen.contains("sec-websocket-key: "), "{seen}");
    assert!(!seen.contains("alice-key"), "{seen}");

    ws.send(TEXT, b"hello through tollgate");
    let (op, payload, masked) = ws.recv();
    assert_eq!(
        (op, &payload[..], masked),
        (TEXT, &b"hello through tollgate"[..], false)
    );
    let big = vec![b'z'; 70_000];
    ws.send(TEXT, &big);
    assert_eq!(ws.recv().1, big, "a frame with a 64-bit length");
    assert_eq!(gauge(&gw, "chat"), 1);

    ws.send(CLOSE, &[0x03, 0xe8]);
    assert_eq!(ws.recv().0, CLOSE);
    assert!(ws.closed_within(Duration::from_secs(5)));
    assert!(eventually(Duration::from_secs(5), || gauge(&gw, "chat") == 0));
    logged(&gw, &["\"GET /chat/room HTTP/1.1\" 101", " websocket_ms="]);
}

#[test]
fn a_handshake_without_the_key_gets_401_json_and_no_upgrade() {
    let up = WsEcho::start();
    let gw = gateway(&up, "");
    let (r, ws) = handshake(gw.addr, "/chat/room", &[]);
    assert!(ws.is_none());
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.error_code(), "unauthorized");
    assert_eq!(r.header("upgrade"), None);
    assert_eq!(up.handshakes(), 0);
}

#[test]
fn each_handshake_spends_one_request_of_the_rate_limit() {
    let up = WsEcho::start();
    let gw = gateway(&up, ", rate_limit: handshakes");
    let mut open = Vec::new();
    for _ in 0..2 {
        let (r, ws) = handshake(gw.addr, "/chat/room", &[KEY_HEADER]);
        assert_eq!(r.status, 101, "{r:?}");
        open.push(ws.unwrap());
    }
    // Frames on an open tunnel are not requests: they spend nothing.
    for _ in 0..5 {
        open[0].send(TEXT, b"x");
        assert_eq!(open[0].recv().1, b"x");
    }
    let (r, ws) = handshake(gw.addr, "/chat/room", &[KEY_HEADER]);
    assert!(ws.is_none());
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.error_code(), "rate_limited");
    assert!(r.header("retry-after").is_some());
    assert_eq!(up.handshakes(), 2);
}

#[test]
fn a_silent_tunnel_is_closed_after_the_idle_timeout_and_traffic_either_way_keeps_it_open() {
    let up = WsEcho::start();
    let gw = gateway(&up, ", websocket_idle_timeout: 400ms");
    let (r, ws) = handshake(gw.addr, "/chat/room", &[KEY_HEADER]);
    assert_eq!(r.status, 101, "{r:?}");
    let mut ws = ws.unwrap();
    // Only the client talks (the upstream swallows pongs): for three idle timeouts the
    // tunnel stays open, and still echoes afterwards.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        ws.send(PONG, b"");
        assert!(!ws.closed_within(Duration::from_millis(100)));
    }
    ws.send(TEXT, b"still here");
    assert_eq!(ws.recv().1, b"still here");

    let silent = Instant::now();
    assert!(ws.closed_within(Duration::from_secs(5)), "never closed");
    let waited = silent.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "closed after {waited:?}"
    );
    assert!(eventually(Duration::from_secs(5), || gauge(&gw, "chat") == 0));
    logged(&gw, &[" websocket_ms=", " error=websocket_idle_timeout"]);
}

#[test]
fn a_route_with_websocket_false_refuses_the_upgrade_but_serves_plain_requests() {
    let up = WsEcho::start();
    let gw = gateway(&up, "");
    let (r, ws) = handshake(gw.addr, "/plain/room", &[]);
    assert!(ws.is_none());
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.error_code(), "forbidden");
    assert!(r.json()["message"].as_str().unwrap().contains("WebSocket"));
    assert_eq!(up.handshakes(), 0);
    let r = gw.get("/plain/room");
    assert_eq!((r.status, &*r.body), (200, "ok"));
}

#[test]
fn other_upgrades_are_not_forwarded() {
    let up = echo("up");
    let gw = Gateway::start(&format!(
        "upstreams: {{u: {{targets: [\"{up}\"]}}}}\nroutes: [{{name: api, path_prefix: /api, upstream: u}}]"
    ));
    let r = gw.raw(
        b"GET /api/x HTTP/1.1\r\nHost: gw\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
          HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("upgrade"), None);
    assert_eq!(r.upstream_header("http2-settings"), None);
    assert_eq!(r.header("upgrade"), None);
}

#[test]
fn a_handshake_the_upstream_never_answers_gets_504_after_the_idle_timeout() {
    let up = hang();
    let gw = Gateway::start(&format!(
        "upstreams: {{u: {{targets: [\"{up}\"], timeouts: {{read: 30s}}}}}}\n\
         routes: [{{name: ws, path_prefix: /ws, upstream: u, websocket_idle_timeout: 300ms}}]"
    ));
    let asked = Instant::now();
    let (r, ws) = handshake(gw.addr, "/ws", &[]);
    assert!(ws.is_none());
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.error_code(), "gateway_timeout");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
}
