//! `targets: {srv: NAME}` and `dns: {servers}` against a real DNS server (dnsmasq on a free
//! port): SRV weights and ports reach the backends, the lowest priority group serves, a
//! changed record moves traffic without a reload, and a DNS outage keeps the last set.

mod support;
use std::time::Duration;

use support::catalog::{backend_addresses, sorted, Dnsmasq};
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const SRV: &str = "_http._tcp.svc.example";

/// `--srv-host` for `target` at `b`'s port, and `target`'s A record.
fn record(target: &str, b: &Backend, priority: u16, weight: u16) -> [String; 2] {
    [
        format!(
            "--srv-host={SRV},{target},{},{priority},{weight}",
            b.addr.port()
        ),
        format!("--host-record={target},127.0.0.1"),
    ]
}

fn gateway(dns: &Dnsmasq) -> Gateway {
    Gateway::start(&format!(
        "dns: {{servers: [\"{}\"]}}\n\
         upstreams:\n  u: {{targets: {{srv: {SRV}}}}}\n\
         routes:\n  - {{name: r, path_prefix: /r, upstream: u}}\n",
        dns.addr
    ))
}

fn changes(gw: &Gateway) -> String {
    gw.admin_get("/metrics")
        .body
        .lines()
        .find(|l| l.starts_with("tollgate_discovery_changes_total{upstream=\"u\",source=\"srv\"}"))
        .unwrap_or("")
        .to_owned()
}

#[test]
fn srv_weights_ports_and_the_lowest_priority_group_serve() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let mut records = Vec::new();
    records.extend(record("a.svc.example", &a, 10, 3));
    records.extend(record("b.svc.example", &b, 10, 1));
    // A higher priority value: a fallback that gets nothing while a and b resolve.
    records.extend(record("c.svc.example", &c, 20, 5));
    let mut dns = Dnsmasq::start(&records);
    let gw = gateway(&dns);

    for _ in 0..40 {
        assert_eq!(gw.get("/r/x").status, 200);
    }
    assert_eq!(
        (a.count(), b.count(), c.count()),
        (30, 10, 0),
        "weights 3:1"
    );
    let u = &gw.admin_get("/health").json()["upstreams"]["u"];
    assert_eq!(u["discovery"]["srv"], SRV);
    assert_eq!(u["discovery"]["failing"], false);

    // The record changes (a leaves, c joins the serving group): no reload needed.
    let mut records = Vec::new();
    records.extend(record("b.svc.example", &b, 10, 1));
    records.extend(record("c.svc.example", &c, 10, 1));
    dns.restart(&records);
    let want = sorted(&[&b, &c]);
    assert!(
        eventually(WAIT, || backend_addresses(&gw, "u") == want),
        "{:?}",
        backend_addresses(&gw, "u")
    );
    let before = a.count();
    for _ in 0..10 {
        assert_eq!(gw.get("/r/x").status, 200);
    }
    assert_eq!(a.count(), before, "a left the record: no new request");
    assert!(c.count() >= 4, "c joined: {}", c.count());
    // Logged once and counted once.
    assert!(changes(&gw).ends_with(" 1"), "{}", changes(&gw));
    assert_eq!(gw.logs().matches("upstream u (srv): backends").count(), 1);
}

#[test]
fn a_dns_outage_keeps_the_last_set() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut records = Vec::new();
    records.extend(record("a.svc.example", &a, 0, 1));
    records.extend(record("b.svc.example", &b, 0, 1));
    let mut dns = Dnsmasq::start(&records);
    let gw = gateway(&dns);
    let want = backend_addresses(&gw, "u");
    assert_eq!(want.len(), 2);

    dns.stop();
    let failing =
        || gw.admin_get("/health").json()["upstreams"]["u"]["discovery"]["failing"] == true;
    assert!(eventually(WAIT, failing), "the outage shows on /health");
    assert_eq!(backend_addresses(&gw, "u"), want);
    for _ in 0..10 {
        assert_eq!(gw.get("/r/x").status, 200);
    }
    assert_eq!((a.count(), b.count()), (5, 5));
    assert!(gw.logs().contains("upstream u (srv)"), "{}", gw.logs());
}

#[test]
fn dns_servers_answer_host_name_targets_too() {
    let a = Backend::start("a");
    let dns = Dnsmasq::start(&["--host-record=a.svc.example,127.0.0.1".to_owned()]);
    let gw = Gateway::start(&format!(
        "dns: {{servers: [\"{}\"]}}\n\
         upstreams:\n  u: {{targets: [\"a.svc.example:{}\"], resolve_every: 1s}}\n\
         routes:\n  - {{name: r, path_prefix: /r, upstream: u}}\n",
        dns.addr,
        a.addr.port()
    ));
    assert_eq!(gw.get("/r/x").status, 200);
    assert_eq!(a.count(), 1);
}

#[test]
fn bad_discovery_config_is_refused_with_the_key_path() {
    let route = "routes: [{name: r, path_prefix: /r, upstream: u}]\n";
    let cases: &[(&str, &[&str])] = &[
        ("upstreams: {u: {targets: {srv: \"\"}}}", &["upstreams.u.targets.srv", "must name an SRV record"]),
        (
            "upstreams: {u: {targets: {etcd: {prefix: /s/}}}}",
            &["upstreams.u.targets.etcd.endpoints", "at least one etcd endpoint"],
        ),
        (
            "upstreams: {u: {targets: {etcd: {endpoints: [\"http://127.0.0.1:1\"], prefix: s/}}}}",
            &["upstreams.u.targets.etcd.prefix", "must start with /"],
        ),
        (
            "upstreams: {u: {targets: {etcd: {endpoints: [\"127.0.0.1:1\"], prefix: /s/}}}}",
            &["upstreams.u.targets.etcd.endpoints[0]", "http://host:port"],
        ),
        (
            "upstreams: {u: {targets: {etcd: {endpoints: [\"http://127.0.0.1:1\"], prefix: /s/, username: u}}}}",
            &["upstreams.u.targets.etcd.password", "username needs a password"],
        ),
        (
            "upstreams: {u: {targets: [\"127.0.0.1:1\", {srv: x.example}]}}",
            &["upstreams.u", "srv and etcd replace the list"],
        ),
        (
            "upstreams: {u: {targets: {srv: x.example, etcd: {endpoints: [\"http://127.0.0.1:1\"], prefix: /s/}}}}",
            &["upstreams.u.targets", "give srv or etcd, not both"],
        ),
        ("upstreams: {u: {targets: {}}}", &["upstreams.u.targets", "{srv: NAME}"]),
        (
            "upstreams: {u: {targets: {srv: x.example}, resolve_every: 1s}}",
            &["upstreams.u.resolve_every", "only applies to a list of targets"],
        ),
        (
            "dns: {servers: []}\nupstreams: {u: {targets: [\"127.0.0.1:1\"]}}",
            &["dns.servers", "at least one server"],
        ),
        (
            "dns: {servers: [\"dns.example\"]}\nupstreams: {u: {targets: [\"127.0.0.1:1\"]}}",
            &["dns.servers[0]", "not an IP address"],
        ),
    ];
    for (yaml, needles) in cases {
        let yaml = format!("{yaml}\n{route}");
        let (code, out) = check_config(&yaml);
        assert_eq!(code, 1, "{yaml}\n{out}");
        for n in *needles {
            assert!(out.contains(n), "expected {n:?} for\n{yaml}\n{out}");
        }
    }
}
