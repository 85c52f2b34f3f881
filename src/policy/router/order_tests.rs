//! The order among routes at one host and prefix (priority, then `match` rules, then file
//! order), the fallback to shorter prefixes, 405 against 404, and which routes conflict.

use super::tests::{name, route};
use super::*;

/// A route with `match` rules (YAML of `match:`) and a priority.
fn ruled(name: &str, prefix: &str, methods: Option<&[&str]>, rules: &str, priority: i32) -> Route {
    let file: matching::MatchFile = serde_yaml::from_str(rules).unwrap();
    let mut errs = crate::config::ConfigErrors::default();
    Route {
        match_rules: matching::compile("m", file, &mut errs),
        priority,
        ..route(name, None, prefix, methods)
    }
}

fn with(r: &Router, path: &str, method: Method, headers: &[(&str, &str)]) -> String {
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
    for (k, v) in headers {
        req.append_header(k.to_string(), *v).unwrap();
    }
    let path = path.split('?').next().unwrap();
    name(r.find(None, path, &method, &req))
}

#[test]
fn priority_then_rule_count_then_file_order() {
    let r = Router::new(vec![
        route("stable", None, "/api", None),
        ruled("one", "/api", None, "headers: {X-Env: canary}", 0),
        ruled(
            "two",
            "/api",
            None,
            "headers: {X-Env: canary, X-Beta: \"~1\"}",
            0,
        ),
        ruled("pinned", "/api", None, "query: {pin: \"!\"}", -1),
        ruled("vip", "/api", None, "cookies: {vip: \"1\"}", 5),
    ])
    .unwrap();
    let get = || Method::GET;
    assert_eq!(with(&r, "/api?pin=1", get(), &[]), "stable");
    assert_eq!(with(&r, "/api?pin=1", get(), &[("x-env", "canary")]), "one");
    let both = [("x-env", "canary"), ("x-beta", "1")];
    assert_eq!(with(&r, "/api?pin=1", get(), &both), "two");
    let vip = [("x-env", "canary"), ("cookie", "vip=1")];
    assert_eq!(with(&r, "/api/x?pin=1", get(), &vip), "vip");
    // `stable` (no rules, priority 0) comes before `pinned` (priority -1).
    assert_eq!(with(&r, "/api", get(), &[]), "stable");
}

#[test]
fn a_prefix_whose_rules_fail_yields_to_a_shorter_one_and_hosts_after() {
    let r = Router::new(vec![
        route("root", None, "/", Some(&["GET"])),
        ruled("canary", "/api/v2", None, "headers: {X-Env: canary}", 0),
        ruled(
            "beta",
            "/api",
            Some(&["POST"]),
            "headers: {X-Beta: \"1\"}",
            0,
        ),
        Route {
            match_rules: ruled("h", "/", None, "headers: {X-Env: canary}", 0).match_rules,
            ..route("host", Some("a.example.com"), "/api/v2", None)
        },
    ])
    .unwrap();
    let canary = [("x-env", "canary")];
    assert_eq!(with(&r, "/api/v2/x", Method::GET, &canary), "canary");
    assert_eq!(with(&r, "/api/v2/x", Method::GET, &[]), "root");
    // Rules held, method did not: 405 with the methods of the routes whose rules held.
    assert_eq!(
        with(&r, "/api/v2/x", Method::GET, &[("x-beta", "1")]),
        "405 POST"
    );
    assert_eq!(with(&r, "/api/v2/x", Method::PUT, &[]), "405 GET, HEAD");
    let mut req = RequestHeader::build("GET", b"/api/v2", None).unwrap();
    req.append_header("x-env", "canary").unwrap();
    let host = Some(&b"a.example.com"[..]);
    assert_eq!(name(r.find(host, "/api/v2", &Method::GET, &req)), "host");
    let plain = RequestHeader::build("GET", b"/api/v2", None).unwrap();
    assert_eq!(name(r.find(host, "/api/v2", &Method::GET, &plain)), "root");
}

#[test]
fn routes_differing_only_in_match_or_priority_are_not_conflicts() {
    let e = Router::new(vec![
        route("a", None, "/a", Some(&["GET"])),
        ruled("b", "/a", Some(&["GET"]), "headers: {X-Env: canary}", 0),
        ruled(
            "c",
            "/a",
            Some(&["GET"]),
            "headers: {X-Env: \"~canary\"}",
            0,
        ),
        route("d", None, "/a", Some(&["GET"])),
    ])
    .unwrap_err();
    assert_eq!(e.len(), 1, "only the plain twins clash");
    assert_eq!((e[0].route, e[0].other), (3, 0));
    let e = Router::new(vec![
        ruled(
            "a",
            "/a",
            Some(&["GET"]),
            "headers: {X-Env: canary, x-b: \"1\"}",
            0,
        ),
        ruled(
            "b",
            "/a",
            Some(&["GET"]),
            "headers: {X-B: \"1\", x-env: canary}",
            0,
        ),
        ruled(
            "c",
            "/a",
            Some(&["GET"]),
            "headers: {X-B: \"1\", x-env: canary}",
            1,
        ),
    ])
    .unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].route, e[0].other), (1, 0));
}
