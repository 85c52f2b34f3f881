//! HTTP/2 to upstreams and gRPC end to end: a real gateway, an h2c-only gRPC upstream (the
//! `h2` crate), and HTTP/1.1 and h2c clients.

mod support;
use std::time::Duration;

use support::grpc::{call, call_within, gateway_h2c, GrpcUpstream};
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

/// Six requests held in flight at once by an `h2` upstream with `upstream_extra` settings,
/// each sent only once the upstream holds the one before (so the gateway always has a pooled
/// connection to reuse), then released. Returns how many connections the upstream accepted.
fn connections_for_six_held_requests(upstream_extra: &str) -> usize {
    let up = GrpcUpstream::start();
    let gw = gw_h2(&up, upstream_extra);
    let mut clients = Vec::new();
    for i in 0..6 {
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
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(statuses, vec![200; 6]);
    up.conns()
}

#[test]
fn concurrent_requests_share_one_upstream_connection() {
    assert_eq!(
        connections_for_six_held_requests(""),
        1,
        "six requests in flight at once on one HTTP/2 connection (Pingora's default is one stream per connection)"
    );
}

#[test]
fn max_h2_streams_caps_the_streams_per_connection() {
    assert_eq!(
        connections_for_six_held_requests(", max_h2_streams: 2"),
        3,
        "six streams, two per connection"
    );
}

#[test]
fn http_health_checks_speak_h2_to_an_h2_upstream() {
    let up = GrpcUpstream::start();
    let gw = gw_h2(
        &up,
        ", health_check: {type: http, path: /health, interval: 100ms, healthy: 1, unhealthy: 1}",
    );
    assert!(
        eventually(Duration::from_secs(5), || up
            .seen()
            .iter()
            .filter(|s| s.path == "/health")
            .count()
            >= 3),
        "the h2c-only backend answers the probes:\n{}",
        gw.logs()
    );
    let h = gw.admin_get("/health").json();
    assert_eq!(h["upstreams"]["u"]["protocol"], "h2");
    assert_eq!(h["upstreams"]["u"]["backends"][0]["healthy"], true, "{h}");
    assert_eq!(gw.get("/plain/x").status, 200);
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

/// A gateway in front of the gRPC upstream `up` with an h2c listener: `/test.Echo` open,
/// `/secure.Echo` behind an API key, `/limited.Echo` one call a minute, `/down.Echo` to a
/// closed port, `/slow.Echo` to a backend that never answers, `/pfx` (stripped) to `up`,
/// `/small.Echo` with a 1 KiB `max_body`, `/stall.Echo` to `up` with a 500ms read timeout.
fn grpc_gateway(up: &GrpcUpstream) -> (Gateway, std::net::SocketAddr) {
    let (down, slow) = (closed_port(), hang());
    gateway_h2c(&format!(
        r#"
consumers:
  alice: {{api_keys: ["supersecretapikey"]}}
auth:
  keys: {{type: api_key}}
rate_limits:
  once: {{requests: 1, per: 1m, burst: 1}}
upstreams:
  g: {{targets: ["{up}"], protocol: h2}}
  down: {{targets: ["{down}"], protocol: h2}}
  slow: {{targets: ["{slow}"], protocol: h2, timeouts: {{read: 300ms}}}}
  impatient: {{targets: ["{up}"], protocol: h2, timeouts: {{read: 500ms}}}}
routes:
  - {{name: svc, path_prefix: /test.Echo, strip_prefix: false, upstream: g}}
  - {{name: secure, path_prefix: /secure.Echo, strip_prefix: false, upstream: g, auth: [keys]}}
  - {{name: limited, path_prefix: /limited.Echo, strip_prefix: false, upstream: g, rate_limit: once}}
  - {{name: down, path_prefix: /down.Echo, strip_prefix: false, upstream: down}}
  - {{name: slow, path_prefix: /slow.Echo, strip_prefix: false, upstream: slow}}
  - {{name: pfx, path_prefix: /pfx, upstream: g}}
  - {{name: small, path_prefix: /small.Echo, strip_prefix: false, upstream: g, max_body: 1KiB}}
  - {{name: stall, path_prefix: /stall.Echo, strip_prefix: false, upstream: impatient}}
"#,
        up = up.addr
    ))
}

fn assert_logged(gw: &Gateway, needle: &str, why: &str) {
    let found = eventually(Duration::from_secs(5), || gw.logs().contains(needle));
    assert!(found, "{why}: {needle:?} not in\n{}", gw.logs());
}

#[test]
fn unary_call_and_backend_trailers_pass_through() {
    let up = GrpcUpstream::start();
    let (gw, h2c) = grpc_gateway(&up);
    let ok = call(h2c, "/test.Echo/Echo", &[], b"ping");
    assert_eq!(ok.status, 200, "{ok:?}\n{}", gw.logs());
    assert_eq!(ok.messages, vec![b"echo:ping".to_vec()]);
    let trailers = ok.trailers.as_ref().expect("the call ends with trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(ok.header("x-gateway"), Some("tollgate"));
    assert!(ok.header("x-request-id").is_some());
    assert_eq!(
        ok.header("content-length"),
        None,
        "no length on a streamed gRPC answer"
    );
    let seen = &up.seen()[0];
    assert_eq!(seen.path, "/test.Echo/Echo");
    assert_eq!(
        seen.headers["te"], "trailers",
        "gRPC's TE: trailers reaches the backend"
    );
    assert_eq!(seen.headers["content-type"], "application/grpc");

    let missing = call(h2c, "/test.Echo/Missing", &[], b"x");
    assert_eq!(missing.status, 200);
    assert!(missing.messages.is_empty());
    let trailers = missing
        .trailers
        .as_ref()
        .expect("trailers after the headers");
    assert_eq!(trailers["grpc-status"], "5");
    assert_eq!(
        trailers["grpc-message"], "no%20such%20thing%3A%20%E2%9C%97",
        "the backend's message arrives byte for byte"
    );
    assert_logged(
        &gw,
        " grpc_status=5",
        "the access log records the call's grpc-status",
    );
}

#[test]
fn gateway_refusals_are_grpc_statuses() {
    let up = GrpcUpstream::start();
    let (gw, h2c) = grpc_gateway(&up);
    let refused = |path: &str, headers: &[(&str, &str)], want: u32| {
        let r = call(h2c, path, headers, b"x");
        assert_eq!(r.status, 200, "{path}: gRPC refusals are HTTP 200: {r:?}");
        assert_eq!(r.grpc_status(), Some(want), "{path}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/grpc"));
        assert!(r.header("x-request-id").is_some(), "{path}: {r:?}");
        assert!(r.grpc_message().is_some_and(|m| !m.is_empty()));
        assert!(
            r.trailers_only,
            "{path}: one HEADERS frame ends the call: {r:?}"
        );
        r
    };
    let no_route = refused("/nope.Svc/Call", &[], 12);
    assert_eq!(
        no_route.grpc_message().unwrap(),
        "no route matches this request"
    );
    let unauth = refused("/secure.Echo/Echo", &[], 16);
    assert!(unauth.header("www-authenticate").is_some());
    let key = [("x-api-key", "supersecretapikey")];
    assert_eq!(
        call(h2c, "/secure.Echo/Echo", &key, b"k").grpc_status(),
        Some(0)
    );
    refused("/secure.Echo/Echo", &[("x-api-key", "wrong-key-0000")], 16);

    assert_eq!(
        call(h2c, "/limited.Echo/Echo", &[], b"1").grpc_status(),
        Some(0)
    );
    let limited = refused("/limited.Echo/Echo", &[], 8);
    assert!(limited.header("retry-after").is_some(), "{limited:?}");

    refused("/down.Echo/Echo", &[], 14);
    refused("/slow.Echo/Echo", &[], 4);
    assert_logged(
        &gw,
        " grpc_status=16",
        "the access log records a refusal's grpc-status",
    );
    assert_eq!(
        up.seen().len(),
        2,
        "refused calls never reached the backend"
    );
}

#[test]
fn json_stays_for_everything_that_is_not_grpc() {
    let up = GrpcUpstream::start();
    let (gw, _h2c) = grpc_gateway(&up);
    let plain = gw.get("/nope");
    assert_eq!(plain.status, 404);
    assert_eq!(plain.error_code(), "no_route");
    // gRPC-Web over HTTP/1.1: the trailers-only answer, framed by a zero length.
    let web = gw.send(
        "POST",
        "/secure.Echo/Echo",
        &[
            ("Content-Type", "application/grpc-web+proto"),
            ("Content-Length", "0"),
        ],
    );
    assert_eq!(web.status, 200, "{web:?}");
    assert_eq!(web.header("grpc-status"), Some("16"));
    assert_eq!(web.header("content-length"), Some("0"));
    assert_eq!(web.body, "");
}

#[test]
fn requests_through_a_stripped_prefix_reach_an_h2_upstream() {
    let up = GrpcUpstream::start();
    let (gw, h2c) = grpc_gateway(&up);
    let ok = call(h2c, "/pfx/test.Echo/Echo", &[], b"ping");
    assert_eq!(ok.grpc_status(), Some(0), "{ok:?}\n{}", gw.logs());
    assert_eq!(ok.messages, vec![b"echo:ping".to_vec()]);
    // `curl --http2-prior-knowledge`; HTTP/1.1 in origin form and in absolute form.
    let h2 = runtime()
        .block_on(async {
            let tcp = tokio::net::TcpStream::connect(h2c).await.unwrap();
            h2client::get(tcp, "http://gw/pfx/x?q=1").await
        })
        .unwrap_or_else(|e| panic!("h2c request failed: {e}\n{}", gw.logs()));
    assert_eq!(h2.status, 200, "{h2:?}\n{}", gw.logs());
    assert_eq!(h2.body, "h2 GET /x 0");
    assert_eq!(gw.get("/pfx/y").body, "h2 GET /y 0");
    let absolute = gw.raw(b"GET http://gw/pfx/z HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    assert_eq!(absolute.body, "h2 GET /z 0", "{absolute:?}");
    let seen = up.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/test.Echo/Echo", "/x", "/y", "/z"]);
    assert!(
        seen.iter().all(|s| s.authority.as_deref() == Some("gw")),
        "the client's authority reaches the backend: {seen:?}"
    );
}

#[test]
fn grpc_web_refusals_keep_the_request_content_type() {
    let up = GrpcUpstream::start();
    let (gw, h2c) = grpc_gateway(&up);
    for ct in [
        "application/grpc-web+proto",
        "application/grpc-web+json",
        "application/grpc-web-text",
        "application/grpc-web-text+proto",
        "application/grpc-web",
    ] {
        // Over HTTP/1.1, as browsers send it.
        let web = gw.send(
            "POST",
            "/secure.Echo/Echo",
            &[("Content-Type", ct), ("Content-Length", "0")],
        );
        assert_eq!(web.header("grpc-status"), Some("16"), "{ct}: {web:?}");
        assert_eq!(web.header("content-type"), Some(ct), "{ct}: {web:?}");
        let missing = gw.send(
            "POST",
            "/nope.Svc/Call",
            &[("Content-Type", ct), ("Content-Length", "0")],
        );
        assert_eq!(missing.header("grpc-status"), Some("12"), "{ct}");
        assert_eq!(
            missing.header("content-type"),
            Some(ct),
            "{ct}: {missing:?}"
        );
        // Over HTTP/2.
        let r = call(h2c, "/secure.Echo/Echo", &[("content-type", ct)], b"x");
        assert_eq!(r.grpc_status(), Some(16), "{ct}: {r:?}");
        assert_eq!(r.header("content-type"), Some(ct), "{ct}: {r:?}");
    }
    let limited = || {
        call(
            h2c,
            "/limited.Echo/Echo",
            &[("content-type", "application/grpc-web+proto")],
            b"1",
        )
    };
    limited();
    let r = limited();
    assert_eq!(r.grpc_status(), Some(8), "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/grpc-web+proto"));
    // A plain gRPC call keeps `application/grpc`, whatever its suffix.
    let r = call(
        h2c,
        "/nope.Svc/Call",
        &[("content-type", "application/grpc+proto")],
        b"x",
    );
    assert_eq!(r.header("content-type"), Some("application/grpc"), "{r:?}");
}

#[test]
fn a_message_over_max_body_ends_the_call_promptly_with_resource_exhausted() {
    let up = GrpcUpstream::start();
    let (gw, h2c) = grpc_gateway(&up);
    let small = call(h2c, "/small.Echo/Echo", &[], &[b'a'; 512]);
    assert_eq!(small.grpc_status(), Some(0), "{small:?}");
    let started = std::time::Instant::now();
    let big = call_within(
        h2c,
        "/small.Echo/Echo",
        &[],
        &[b'a'; 4096],
        Duration::from_secs(10),
    )
    .unwrap_or_else(|| panic!("the call hung:\n{}", gw.logs()));
    assert_eq!(big.grpc_status(), Some(8), "{big:?}\n{}", gw.logs());
    assert!(
        big.grpc_message().is_some_and(|m| m.contains("larger")),
        "{big:?}"
    );
    assert!(big.header("x-request-id").is_some(), "{big:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "RESOURCE_EXHAUSTED after {:?}",
        started.elapsed()
    );
    assert_logged(
        &gw,
        " grpc_status=8",
        "the refusal is logged with its status",
    );
}

#[test]
fn a_backend_failing_after_its_headers_ends_the_call_with_a_status() {
    let up = GrpcUpstream::start();
    let (gw, h2c) = grpc_gateway(&up);
    let r = call(h2c, "/stall.Echo/Stall", &[], b"x");
    up.release();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.reset, None, "the stream ends with trailers, not a reset");
    let trailers = r.trailers.as_ref().expect("trailers end the call");
    assert_eq!(trailers["grpc-status"], "4", "DEADLINE_EXCEEDED: {r:?}");
    assert!(
        r.grpc_message()
            .is_some_and(|m| m.contains("did%20not%20answer") || m.contains("did not answer")),
        "{r:?}"
    );
    assert_logged(
        &gw,
        " grpc_status=4",
        "the access log records the status the client got",
    );
    let reset = call(h2c, "/test.Echo/Reset", &[], b"x");
    assert_eq!(reset.reset, None, "{reset:?}");
    assert_eq!(reset.grpc_status(), Some(14), "UNAVAILABLE: {reset:?}");
}
