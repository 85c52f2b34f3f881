//! CORS: preflights are answered at the gateway; allowed origins are echoed on responses.

mod support;
use support::*;

fn gateway() -> Gateway {
    let up = echo("up");
    Gateway::start(&format!(
        r#"
upstreams: {{up: {{targets: ["{up}"]}}}}
routes:
  - name: api
    path_prefix: /api
    methods: [GET, PUT]
    upstream: up
    cors: {{origins: ["https://app.example.com"], methods: [GET, PUT], headers: [X-Api-Key, Content-Type], max_age: 1h, credentials: true}}
  - {{name: plain, path_prefix: /plain, upstream: up}}
"#
    ))
}

#[test]
fn preflight_is_answered_at_the_gateway() {
    let gw = gateway();
    let r = gw.send(
        "OPTIONS",
        "/api/items",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "PUT"),
        ],
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, HEAD, PUT")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("X-Api-Key, Content-Type")
    );
    assert_eq!(r.header("access-control-max-age"), Some("3600"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("x-upstream"), None, "never reached the upstream");
}

#[test]
fn preflight_from_another_origin_or_for_another_method_is_refused() {
    let gw = gateway();
    let r = gw.send(
        "OPTIONS",
        "/api/items",
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "forbidden");
    let r = gw.send(
        "OPTIONS",
        "/api/items",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "DELETE"),
        ],
    );
    assert_eq!(r.status, 405, "DELETE is not a method of the route");
}

#[test]
fn actual_responses_carry_the_allowed_origin_only() {
    let gw = gateway();
    let r = gw.send(
        "GET",
        "/api/items",
        &[("Origin", "https://app.example.com")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = gw.send("GET", "/api/items", &[("Origin", "https://evil.example")]);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = gw.send("GET", "/plain/x", &[("Origin", "https://app.example.com")]);
    assert_eq!(
        r.header("access-control-allow-origin"),
        None,
        "no CORS on routes without it"
    );
}
