//! `split`: a route's weighted choice among upstreams, `sticky` callers and `failover`.

mod support;
use std::collections::HashMap;
use std::time::Duration;

use support::*;

fn service(r: &Resp) -> String {
    r.json()["service"].as_str().unwrap_or("").to_owned()
}

/// A gateway whose route `/r` splits between upstreams `v2` and `v3` as `split` says.
fn gw(v2: &Backend, v3: std::net::SocketAddr, route_extra: &str, v3_extra: &str) -> Gateway {
    Gateway::start(&format!(
        "upstreams:\n\
         \x20 v2: {{targets: [\"{}\"]}}\n\
         \x20 v3: {{targets: [\"{v3}\"]{v3_extra}}}\n\
         routes:\n\
         \x20 - {{name: r, path_prefix: /r, {route_extra}}}\n",
        v2.addr
    ))
}

#[test]
fn requests_split_by_weight_within_two_points() {
    let (v2, v3) = (Backend::start("v2"), Backend::start("v3"));
    let gw = gw(
        &v2,
        v3.addr,
        "split: [{upstream: v2, weight: 90}, {upstream: v3, weight: 10}]",
        "",
    );
    let mut c = KeepAlive::new(gw.addr);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..10_000 {
        let r = c.get("/r/x").expect("request");
        assert_eq!(r.status, 200);
        *counts.entry(service(&r)).or_default() += 1;
    }
    let v2_share = counts.get("v2").copied().unwrap_or(0);
    assert!((8_800..=9_200).contains(&v2_share), "{counts:?}");
    assert_eq!(v2_share + counts.get("v3").copied().unwrap_or(0), 10_000);
}

#[test]
fn a_sticky_caller_stays_on_its_branch() {
    let (v2, v3) = (Backend::start("v2"), Backend::start("v3"));
    let gw = gw(
        &v2,
        v3.addr,
        "split: [{upstream: v2, weight: 50}, {upstream: v3, weight: 50}], sticky: \"header:X-User\"",
        "",
    );
    let mut c = Client::connect(gw.addr);
    let first = service(&c.get("/r/x", "X-User: alice\r\n"));
    for _ in 0..1_000 {
        assert_eq!(service(&c.get("/r/x", "X-User: alice\r\n")), first);
    }
    // Different callers land on both branches.
    let seen: std::collections::HashSet<String> = (0..200)
        .map(|i| service(&c.get("/r/x", &format!("X-User: user{i}\r\n"))))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn a_cookie_keeps_a_caller_and_its_absence_draws_at_random() {
    let (v2, v3) = (Backend::start("v2"), Backend::start("v3"));
    let gw = gw(
        &v2,
        v3.addr,
        "split: [{upstream: v2, weight: 50}, {upstream: v3, weight: 50}], sticky: \"cookie:session\"",
        "",
    );
    let mut c = Client::connect(gw.addr);
    let first = service(&c.get("/r/x", "Cookie: a=1; session=s-42\r\n"));
    for _ in 0..200 {
        assert_eq!(
            service(&c.get("/r/x", "Cookie: session=s-42; b=2\r\n")),
            first
        );
    }
    let seen: std::collections::HashSet<String> =
        (0..200).map(|_| service(&c.get("/r/x", ""))).collect();
    assert_eq!(seen.len(), 2, "no key: a weighted random draw, {seen:?}");
}

#[test]
fn a_branch_without_a_healthy_backend_yields_to_the_others() {
    let v2 = Backend::start("v2");
    let dead = closed_port();
    let check = ", health_check: {type: tcp, interval: 100ms, timeout: 200ms, unhealthy: 1}";
    let split = "split: [{upstream: v2, weight: 50}, {upstream: v3, weight: 50}]";
    let gw = gw(&v2, dead, split, check);
    assert!(eventually(Duration::from_secs(10), || {
        gw.admin_get("/health").json()["upstreams"]["v3"]["backends"][0]["healthy"] == false
    }));
    let mut c = KeepAlive::new(gw.addr);
    for _ in 0..100 {
        let r = c.get("/r/x").expect("request");
        assert_eq!((r.status, service(&r)), (200, "v2".to_owned()));
    }

    // `failover: false`: the dead branch keeps its share, and its callers get the upstream's
    // answer for having no backend.
    let gw = Gateway::start(&format!(
        "upstreams:\n\
         \x20 v2: {{targets: [\"{}\"]}}\n\
         \x20 v3: {{targets: [\"{dead}\"]{check}}}\n\
         routes:\n\
         \x20 - {{name: r, path_prefix: /r, {split}, failover: false}}\n",
        v2.addr
    ));
    assert!(eventually(Duration::from_secs(10), || {
        gw.admin_get("/health").json()["upstreams"]["v3"]["backends"][0]["healthy"] == false
    }));
    let statuses: Vec<u16> = (0..100).map(|_| gw.get("/r/x").status).collect();
    assert!(
        statuses.contains(&200) && statuses.contains(&503),
        "{statuses:?}"
    );
}

#[test]
fn split_settings_are_checked_with_their_key_path() {
    let up = "upstreams:\n  a: {targets: [\"127.0.0.1:1\"]}\n  b: {targets: [\"127.0.0.1:2\"]}\n";
    let check = |route: &str| {
        let (code, out) = check_config(&format!(
            "{up}routes:\n  - {{name: r, path_prefix: /r, {route}}}\n"
        ));
        assert_ne!(code, 0, "{route} accepted");
        out
    };
    let out = check("upstream: a, split: [{upstream: b}]");
    assert!(out.contains("routes[0]: upstream and split"), "{out}");
    let out = check("split: [{upstream: a}, {upstream: c}]");
    assert!(
        out.contains("routes[0].split[1].upstream: unknown upstream \"c\""),
        "{out}"
    );
    let out = check("split: [{upstream: a, weight: 0}]");
    assert!(out.contains("routes[0].split[0].weight: "), "{out}");
    let out = check("split: []");
    assert!(out.contains("routes[0].split: "), "{out}");
    let out = check("split: [{upstream: a}], sticky: session");
    assert!(out.contains("routes[0].sticky: \"session\": "), "{out}");
    let out = check("upstream: a, sticky: consumer");
    assert!(out.contains("routes[0].sticky: "), "{out}");
    let out = check("methods: [GET]");
    assert!(
        out.contains("routes[0]: needs an upstream or a split"),
        "{out}"
    );
    let (code, out) = check_config(&format!(
        "{up}routes:\n  - {{name: r, path_prefix: /r, split: [{{upstream: a, weight: 3}}, {{upstream: b}}], sticky: consumer, failover: false}}\n"
    ));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn explain_shows_the_branches_and_where_a_sticky_caller_goes() {
    let out = std::process::Command::new(bin())
        .args([
            "explain",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tollgate.yaml"),
            "GET",
            "http://example.com/canary/x",
            "-H",
            "X-User: ann",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("route:    canary -> split public 90/100, private 10/100"),
        "{out}"
    );
    assert!(out.contains("sticky by header:x-user: key hash "), "{out}");
    assert!(
        out.contains("-> public;") || out.contains("-> private;"),
        "{out}"
    );
}
