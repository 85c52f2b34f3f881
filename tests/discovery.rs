//! Discovery: host-name targets expand to every address, and with `resolve_every` a changed
//! DNS answer takes effect without a reload, keeping the state of addresses that stay.
//!
//! The change-over-time tests run the gateway in process with a DNS test double (`Dns`):
//! the Pingora server, upstreams and requests are real, only the name lookups are scripted.

mod support;
use std::time::Duration;

use support::in_process::{Dns, LocalGateway};
use support::*;

/// Generous: a wait ends as soon as its condition holds, and CI machines are slow at times.
const WAIT: Duration = Duration::from_secs(15);

fn service(r: &Resp) -> String {
    r.json()["service"].as_str().unwrap_or("").to_owned()
}

fn addresses(gw: &LocalGateway, up: &str) -> Vec<String> {
    gw.backends(up).into_iter().map(|b| b.0).collect()
}

#[test]
fn localhost_expands_to_its_addresses_and_serves() {
    let up = Backend::start("up");
    let port = up.addr.port();
    let gw = Gateway::start(&format!(
        "upstreams:\n  u: {{targets: [\"localhost:{port}\"], resolve_every: 1s, retries: 1}}\n\
         routes:\n  - {{name: r, path_prefix: /r, upstream: u}}\n"
    ));
    let h = gw.admin_get("/health").json();
    let u = &h["upstreams"]["u"];
    let listed: Vec<&str> = u["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&&*format!("127.0.0.1:{port}")),
        "{listed:?}"
    );
    assert!(listed.iter().all(|a| a.ends_with(&format!(":{port}"))));
    assert_eq!(u["discovery"]["resolve_every"], "1s");
    assert_eq!(u["discovery"]["failing_targets"], 0);
    assert_eq!(gw.get("/r/x").status, 200);
}

/// Backends a and b on one port; `svc.test` resolving to a; a gateway re-resolving it
/// every 100 ms for route `/r`.
fn svc_test_gateway() -> (Vec<Backend>, Dns, LocalGateway) {
    let bs = Backend::same_port(&["a", "b"]);
    let dns = Dns::default();
    dns.set("svc.test", &[bs[0].addr]);
    let gw = LocalGateway::start(
        &format!(
            "upstreams:\n  u: {{targets: [\"svc.test:{}\"], resolve_every: 100ms}}\n\
             routes:\n  - {{name: r, path_prefix: /r, upstream: u}}\n",
            bs[0].addr.port()
        ),
        &dns,
    );
    (bs, dns, gw)
}

#[test]
fn changed_record_moves_traffic_without_reload() {
    let (bs, dns, gw) = svc_test_gateway();
    let (a, b) = (&bs[0], &bs[1]);
    assert_eq!(service(&gw.get("/r/x")), "a");
    assert_eq!(addresses(&gw, "u"), vec![a.addr.to_string()]);

    // The record gains b: both get traffic.
    dns.set("svc.test", &[a.addr, b.addr]);
    assert!(eventually(WAIT, || addresses(&gw, "u").len() == 2));
    let seen: Vec<String> = (0..8).map(|_| service(&gw.get("/r/x"))).collect();
    assert!(
        seen.contains(&"a".into()) && seen.contains(&"b".into()),
        "{seen:?}"
    );

    // The record moves to b: a gets no new request.
    dns.set("svc.test", &[b.addr]);
    assert!(eventually(WAIT, || addresses(&gw, "u") == vec![b.addr.to_string()]));
    let before = a.count();
    for _ in 0..6 {
        assert_eq!(service(&gw.get("/r/x")), "b");
    }
    assert_eq!(a.count(), before);
}

#[test]
fn failed_or_empty_lookup_keeps_the_last_good_set() {
    let (bs, dns, gw) = svc_test_gateway();
    let (a, b) = (&bs[0], &bs[1]);
    let failing = |gw: &LocalGateway| gw.upstream("u")["discovery"]["failing_targets"].clone();

    dns.fail("svc.test", "SERVFAIL");
    assert!(eventually(WAIT, || failing(&gw) == 1));
    assert_eq!(addresses(&gw, "u"), vec![a.addr.to_string()]);
    assert_eq!(service(&gw.get("/r/x")), "a");

    dns.set("svc.test", &[]);
    assert!(eventually(WAIT, || failing(&gw) == 1));
    assert_eq!(addresses(&gw, "u"), vec![a.addr.to_string()]);
    assert_eq!(service(&gw.get("/r/x")), "a");

    dns.set("svc.test", &[b.addr]);
    assert!(eventually(WAIT, || failing(&gw) == 0
        && addresses(&gw, "u") == vec![b.addr.to_string()]));
    assert_eq!(service(&gw.get("/r/x")), "b");
}

#[test]
fn addresses_that_stay_keep_health_and_breaker_state() {
    // u: a circuit breaker that stays open for an hour once tripped.
    // h: an active check that needs 100 passes (10 s) to bring a backend back.
    let us = Backend::same_port(&["a", "b"]);
    let hs = Backend::same_port(&["d", "e"]);
    let dns = Dns::default();
    dns.set("u.test", &[us[0].addr]);
    dns.set("h.test", &[hs[0].addr]);
    let gw = LocalGateway::start(
        &format!(
            "upstreams:\n\
             \x20 u: {{targets: [\"u.test:{}\"], resolve_every: 100ms, retries: 0,\n\
             \x20      circuit_breaker: {{failures: 1, open_for: 1h}}}}\n\
             \x20 h: {{targets: [\"h.test:{}\"], resolve_every: 100ms,\n\
             \x20      health_check: {{type: tcp, interval: 100ms, timeout: 200ms, healthy: 100, unhealthy: 1}}}}\n\
             routes:\n\
             \x20 - {{name: u, path_prefix: /u, upstream: u}}\n\
             \x20 - {{name: h, path_prefix: /h, upstream: h}}\n",
            us[0].addr.port(),
            hs[0].addr.port()
        ),
        &dns,
    );
    // Trip a's circuit with a 503.
    assert_eq!(gw.get("/u/x?status=503").status, 503);
    assert_eq!(gw.backends("u")[0].2, "open");
    // Take d out (one failed probe), then bring it back: it stays unhealthy for ~10 s.
    hs[0].kill();
    assert!(eventually(WAIT, || !gw.backends("h")[0].1));
    hs[0].restore();

    dns.set("u.test", &[us[0].addr, us[1].addr]);
    dns.set("h.test", &[hs[0].addr, hs[1].addr]);
    assert!(eventually(WAIT, || gw.backends("u").len() == 2
        && gw.backends("h").len() == 2));

    let u = gw.backends("u");
    assert_eq!(u[0], (us[0].addr.to_string(), true, "open".into()), "{u:?}");
    assert_eq!(
        u[1],
        (us[1].addr.to_string(), true, "closed".into()),
        "{u:?}"
    );
    let h = gw.backends("h");
    assert_eq!(h[0].0, hs[0].addr.to_string());
    assert!(!h[0].1, "d keeps its unhealthy state: {h:?}");
    assert!(h[1].1, "e starts healthy: {h:?}");

    // Traffic goes only to the new addresses.
    let (a0, d0) = (us[0].count(), hs[0].count_of("/x"));
    for _ in 0..4 {
        assert_eq!(service(&gw.get("/u/x")), "b");
        assert_eq!(service(&gw.get("/h/x")), "e");
    }
    assert_eq!((us[0].count(), hs[0].count_of("/x")), (a0, d0));
}

fn errors(yaml: &str) -> Vec<String> {
    match tollgate::gateway::load_str(yaml) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn config_errors_name_the_key() {
    let up = |u: &str| format!("upstreams:\n  api: {u}\nroutes: []\n");
    let e = errors(&up("{targets: [\"nosuch.invalid:80\"]}"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("upstreams.api.targets[0]: cannot resolve \"nosuch.invalid\": "),
        "{e:?}"
    );
    let e = errors(&up("{targets: [\"localhost:80\"], resolve_every: 30}"));
    assert!(
        e[0].starts_with("upstreams.api.resolve_every: bad duration 30"),
        "{e:?}"
    );
    let e = errors(&up("{targets: [\"localhost:80\"], resolve_every: soon}"));
    assert!(
        e[0].starts_with("upstreams.api.resolve_every: bad duration \"soon\""),
        "{e:?}"
    );
    let e = errors(&up("{targets: [\"localhost:80\"], resolve_every: 10ms}"));
    assert_eq!(
        e,
        ["upstreams.api.resolve_every: must be between 100ms and 24h (e.g. \"30s\")"]
    );
    let e = errors(&up("{targets: [\"127.0.0.1:80\"], resolve_every: 30s}"));
    assert_eq!(
        e,
        ["upstreams.api.resolve_every: no target is a host name: IP addresses never need re-resolving"]
    );
    assert!(errors(&up(
        "{targets: [\"localhost:80\", \"127.0.0.2:80\"], resolve_every: 30s}"
    ))
    .is_empty());
}
