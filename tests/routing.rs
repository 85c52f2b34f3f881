//! Route semantics seen from a client: host, longest prefix on a segment boundary, methods,
//! strip_prefix, and the 404/405 answers.

mod support;
use support::*;

fn gateway() -> Gateway {
    let a = echo("a");
    let b = echo("b");
    let c = echo("c");
    Gateway::start(&format!(
        r#"
upstreams:
  a: {{targets: ["{a}"]}}
  b: {{targets: ["{b}"]}}
  c: {{targets: ["{c}"]}}
routes:
  - {{name: root, path_prefix: /, upstream: a, strip_prefix: false}}
  - {{name: api, path_prefix: /api, upstream: a}}
  - {{name: users, path_prefix: /api/users, upstream: b, methods: [GET, POST]}}
  - {{name: users-delete, path_prefix: /api/users, upstream: c, methods: [DELETE]}}
  - {{name: keep, path_prefix: /keep, upstream: b, strip_prefix: false}}
  - {{name: exact-host, host: api.example.com, path_prefix: /api, upstream: c}}
  - {{name: wild-host, host: "*.example.org", path_prefix: /, upstream: b}}
  - {{name: only-host, host: only.example.net, path_prefix: /x, upstream: c}}
"#
    ))
}

fn service(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["service"].as_str().unwrap().to_owned()
}

#[test]
fn longest_prefix_wins_on_segment_boundaries_only() {
    let gw = gateway();
    assert_eq!(service(&gw.get("/api/users/7")), "b");
    assert_eq!(service(&gw.get("/api/users")), "b");
    // `/api/usersx` is not under `/api/users`: it falls back to `/api`.
    let r = gw.get("/api/usersx");
    assert_eq!(service(&r), "a");
    assert_eq!(r.json()["path"], "/usersx");
    // `/apix` is not under `/api`: the root route takes it, unstripped.
    let r = gw.get("/apix");
    assert_eq!(r.json()["path"], "/apix");
}

#[test]
fn strip_prefix_default_and_off_and_query_kept() {
    let gw = gateway();
    let r = gw.get("/api/users/7?x=1&y=%20");
    assert_eq!(r.json()["path"], "/7");
    assert_eq!(r.json()["query"], "x=1&y=%20");
    assert_eq!(gw.get("/api").json()["path"], "/");
    assert_eq!(gw.get("/keep/a/b").json()["path"], "/keep/a/b");
}

#[test]
fn host_exact_and_wildcard_before_hostless_routes() {
    let gw = gateway();
    let host = |h: &'static str, p: &str| gw.send("GET", p, &[("Host", h)]);
    assert_eq!(service(&host("api.example.com", "/api/users")), "c");
    assert_eq!(service(&host("API.Example.COM:8080", "/api")), "c");
    assert_eq!(service(&host("a.example.org", "/anything")), "b");
    assert_eq!(service(&host("x.y.example.org", "/")), "b");
    // The apex is not matched by the wildcard; host-less routes take it.
    assert_eq!(service(&host("example.org", "/api/users")), "b");
    // A host with no matching path falls back to host-less routes.
    assert_eq!(service(&host("only.example.net", "/api")), "a");
    assert_eq!(service(&host("only.example.net", "/x/1")), "c");
}

#[test]
fn method_routing_and_405_with_allow() {
    let gw = gateway();
    assert_eq!(service(&gw.send("DELETE", "/api/users/1", &[])), "c");
    assert_eq!(
        service(&gw.send("POST", "/api/users", &[("Content-Length", "0")])),
        "b"
    );
    let head = gw.send("HEAD", "/api/users", &[]);
    assert_eq!((head.status, head.header("x-upstream")), (200, Some("b")));
    assert!(head.body.is_empty(), "HEAD has no body");
}

#[test]
fn wrong_method_is_405_with_allow_and_json() {
    let gw = gateway();
    let r = gw.send("PUT", "/api/users/1", &[("Content-Length", "0")]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST, DELETE"));
    assert_eq!(r.error_code(), "method_not_allowed");
    assert_eq!(r.header("x-gateway"), Some("tollgate"));
}

#[test]
fn no_route_is_404_json() {
    let a = echo("a");
    let gw = Gateway::start(&format!(
        "upstreams: {{a: {{targets: [\"{a}\"]}}}}\nroutes: [{{name: p, path_prefix: /p, upstream: a}}]"
    ));
    for path in ["/", "/pp", "/q/p"] {
        let r = gw.get(path);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.error_code(), "no_route");
        assert_eq!(r.header("x-gateway"), Some("tollgate"));
    }
}

#[test]
fn the_path_is_normalised_once_and_the_upstream_gets_exactly_the_routed_path() {
    let gw = gateway();
    // Dot segments (raw and encoded) and doubled slashes resolve before routing.
    let r = gw.get("/keep/../api/./users//7");
    assert_eq!(service(&r), "b");
    assert_eq!(r.json()["path"], "/7");
    let r = gw.get("/keep/%2e%2E/api/users/%7e8");
    assert_eq!(service(&r), "b");
    assert_eq!(r.json()["path"], "/~8");
    // Shapes an upstream could read differently are refused.
    for bad in [
        "/api/users%2f7",
        "/api/..%5cusers",
        "/../api",
        "/keep/..;/api/users",
        "/api/%zz",
    ] {
        let r = gw.get(bad);
        assert_eq!(r.status, 400, "{bad}: {r:?}");
        assert_eq!(r.error_code(), "bad_request");
    }
}
