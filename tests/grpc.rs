//! HTTP/2 to upstreams and gRPC end to end: a real gateway, an h2c-only gRPC upstream (the
//! `h2` crate), and HTTP/1.1 and h2c clients.

mod support;
use std::time::Duration;

use support::grpc::GrpcUpstream;
use support::*;

/// One route `/plain` to an upstream `u` at `up` with the given upstream settings.
fn gw_h2(up: &GrpcUpstream, upstream_extra: &str) -> Gateway {
    Gateway::start(&format!(
        "upstreams:\n  u: {{targets: [\"{}\"], protocol: h2{upstream_extra}}}\n\
         routes:\n  - {{name: plain, path_prefix: /plain, upstream: u}}\n",
        up.addr
    ))
}

#[test]
fn http1_client_reaches_an_h2_only_upstream() {
    let up = GrpcUpstream::start();
    let gw = gw_h2(&up, "");
    let r = gw.get("/plain/hello");
    assert_eq!(r.status, 200, "{}\n{}", r.body, gw.logs());
    assert_eq!(r.body, "h2 GET /hello 0");
    assert_eq!(r.header("x-gateway"), Some("tollgate"));
    let post = gw.raw(
        b"POST /plain/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde",
    );
    assert_eq!(post.status, 200, "{}", post.body);
    assert_eq!(
        post.body, "h2 POST /upload 5",
        "the body crossed over to HTTP/2"
    );
    let seen = up.seen();
    assert_eq!(
        seen[0].headers.get("x-request-id").map(|v| v.as_bytes()),
        r.header("x-request-id").map(str::as_bytes),
        "gateway headers reach the h2 upstream"
    );
    assert!(
        seen.iter().all(|s| !s.headers.contains_key("connection")),
        "no HTTP/1.1 connection headers on HTTP/2"
    );
}

#[test]
fn http1_upstream_is_the_default_and_cannot_reach_an_h2_only_backend() {
    let up = GrpcUpstream::start();
    let gw = Gateway::start(&format!(
        "upstreams:\n  u: {{targets: [\"{}\"]}}\n\
         routes:\n  - {{name: plain, path_prefix: /plain, upstream: u}}\n",
        up.addr
    ));
    let r = gw.get("/plain/hello");
    assert_eq!(r.status, 502, "HTTP/1.1 to an h2c-only backend fails");
    assert_eq!(r.error_code(), "bad_gateway");
}

/// Send `n` held requests one after the other, each only once the upstream holds the one
/// before, so the gateway always has a pooled connection to reuse; then release them all.
fn held_requests(gw: &Gateway, up: &GrpcUpstream, n: usize) -> Vec<u16> {
    let mut clients = Vec::new();
    for i in 0..n {
        let addr = gw.addr;
        clients.push(std::thread::spawn(move || {
            request(
                addr,
                "GET /plain/hold HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
            )
            .map(|r| r.status)
            .unwrap_or(0)
        }));
        assert!(
            eventually(Duration::from_secs(5), || up.open() == i + 1),
            "request {i} never reached the upstream:\n{}",
            gw.logs()
        );
    }
    up.release();
    clients.into_iter().map(|c| c.join().unwrap()).collect()
}

#[test]
fn concurrent_requests_share_one_upstream_connection() {
    let up = GrpcUpstream::start();
    let gw = gw_h2(&up, "");
    let statuses = held_requests(&gw, &up, 6);
    assert_eq!(statuses, vec![200; 6]);
    assert_eq!(
        up.conns(),
        1,
        "six requests in flight at once on one HTTP/2 connection (Pingora's default is one stream per connection)"
    );
}

#[test]
fn max_h2_streams_caps_the_streams_per_connection() {
    let up = GrpcUpstream::start();
    let gw = gw_h2(&up, ", max_h2_streams: 2");
    let statuses = held_requests(&gw, &up, 6);
    assert_eq!(statuses, vec![200; 6]);
    assert_eq!(up.conns(), 3, "six streams, two per connection");
}

#[test]
fn protocol_keys_are_checked_with_their_paths() {
    let (code, out) = check_config(
        "upstreams:\n  a: {targets: [\"127.0.0.1:1\"], protocol: h2c}\n\
         \x20 b: {targets: [\"127.0.0.1:2\"], max_h2_streams: 10}\n\
         \x20 c: {targets: [\"127.0.0.1:3\"], protocol: h2, max_h2_streams: 0}\n\
         routes: []\n",
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("upstreams.a.protocol: unknown protocol \"h2c\""),
        "{out}"
    );
    assert!(
        out.contains("upstreams.b.max_h2_streams: only applies to protocol: h2"),
        "{out}"
    );
    assert!(
        out.contains("upstreams.c.max_h2_streams: must be between 1 and 1000"),
        "{out}"
    );
}
