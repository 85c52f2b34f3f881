//! `targets: {etcd: {endpoints, prefix}}` against a real etcd on free ports: the keys'
//! backends serve with their weights, a key added or removed moves traffic without a
//! reload, etcd going away keeps the last set, and a restart while etcd is down serves the
//! last-known-good set from `state_dir`.

mod support;
use std::path::Path;
use std::time::Duration;

use support::catalog::{backend_addresses, sorted, Etcd};
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const PREFIX: &str = "/services/catalog/";

fn gateway(etcd_url: &str, state: &Path) -> Gateway {
    Gateway::start(&format!(
        "state_dir: {}\n\
         upstreams:\n  u: {{targets: {{etcd: {{endpoints: [\"{etcd_url}\"], prefix: {PREFIX}}}}}}}\n\
         routes:\n  - {{name: r, path_prefix: /r, upstream: u}}\n",
        state.display()
    ))
}

/// The cache file the gateway keeps in `state`, once it exists.
fn cached(state: &Path) -> Option<String> {
    let e = std::fs::read_dir(state).ok()?.flatten().find(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n.starts_with("etcd-u-") && n.ends_with(".json")
    })?;
    std::fs::read_to_string(e.path()).ok()
}

#[test]
fn keys_serve_with_weights_and_changes_apply_without_reload() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let etcd = Etcd::start();
    etcd.put(&format!("{PREFIX}a"), &a.addr.to_string());
    etcd.put(
        &format!("{PREFIX}b"),
        &format!("{{\"address\": \"{}\", \"weight\": 3}}", b.addr),
    );
    // Outside the prefix: not a backend.
    etcd.put("/services/other/c", &c.addr.to_string());
    let state = tempfile::tempdir().unwrap();
    let gw = gateway(&etcd.url(), state.path());

    for _ in 0..40 {
        assert_eq!(gw.get("/r/x").status, 200);
    }
    assert_eq!(
        (a.count(), b.count(), c.count()),
        (10, 30, 0),
        "weights 1:3"
    );
    assert_eq!(
        gw.admin_get("/health").json()["upstreams"]["u"]["discovery"]["etcd"],
        PREFIX
    );

    // Added: c gets traffic without a reload.
    etcd.put(&format!("{PREFIX}c"), &c.addr.to_string());
    assert!(eventually(WAIT, || backend_addresses(&gw, "u")
        == sorted(&[&a, &b, &c])));
    for _ in 0..10 {
        gw.get("/r/x");
    }
    assert!(c.count() >= 1, "c joined");

    // Removed: a gets no new request.
    etcd.del(&format!("{PREFIX}a"));
    assert!(eventually(WAIT, || backend_addresses(&gw, "u") == sorted(&[&b, &c])));
    let before = a.count();
    for _ in 0..10 {
        assert_eq!(gw.get("/r/x").status, 200);
    }
    assert_eq!(a.count(), before);

    let metrics = gw.admin_get("/metrics").body;
    assert!(
        metrics.contains("tollgate_discovery_changes_total{upstream=\"u\",source=\"etcd\"} 2"),
        "{metrics}"
    );
    assert_eq!(gw.logs().matches("upstream u (etcd): backends").count(), 2);
}

#[test]
fn etcd_down_keeps_the_last_set_and_a_restart_serves_it_from_state_dir() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut etcd = Etcd::start();
    etcd.put(&format!("{PREFIX}a"), &a.addr.to_string());
    etcd.put(&format!("{PREFIX}b"), &b.addr.to_string());
    let state = tempfile::tempdir().unwrap();
    let gw = gateway(&etcd.url(), state.path());
    assert!(
        eventually(WAIT, || cached(state.path()).is_some_and(|c| c
            .contains(&a.addr.to_string())
            && c.contains(&b.addr.to_string()))),
        "the set is written to state_dir"
    );

    etcd.kill();
    let failing =
        || gw.admin_get("/health").json()["upstreams"]["u"]["discovery"]["failing"] == true;
    assert!(eventually(WAIT, failing), "the outage shows on /health");
    for _ in 0..10 {
        assert_eq!(gw.get("/r/x").status, 200);
    }
    assert_eq!(
        (a.count(), b.count()),
        (5, 5),
        "traffic continues on the last set"
    );
    assert_eq!(
        gw.logs().matches("upstream u (etcd): etcd:").count(),
        1,
        "the outage is logged once, not at every retry:\n{}",
        gw.logs()
    );
    let url = etcd.url();
    drop(gw);

    // A new gateway while etcd is still down: serves from the cached set.
    let gw = gateway(&url, state.path());
    assert_eq!(backend_addresses(&gw, "u"), sorted(&[&a, &b]));
    for _ in 0..4 {
        assert_eq!(gw.get("/r/x").status, 200);
    }
    assert_eq!((a.count(), b.count()), (7, 7));
    assert!(gw.logs().contains("last-known-good"), "{}", gw.logs());
}

#[test]
fn a_start_with_etcd_down_and_no_cached_set_fails_with_the_reason() {
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let err = start_fails(&format!(
        "state_dir: {}\n\
         upstreams:\n  u: {{targets: {{etcd: {{endpoints: [\"http://127.0.0.1:{port}\"], prefix: {PREFIX}}}}}}}\n\
         routes:\n  - {{name: r, path_prefix: /r, upstream: u}}\n",
        state.path().display()
    ));
    assert!(err.contains("upstreams.u.targets.etcd"), "{err}");
    assert!(err.contains("no last-known-good set"), "{err}");
}

#[test]
fn etcd_with_user_and_password_from_the_environment() {
    let a = Backend::start("a");
    let etcd = Etcd::start();
    etcd.put(&format!("{PREFIX}a"), &a.addr.to_string());
    etcd.ctl_ok(&["user", "add", "root:rootpw"]);
    etcd.ctl_ok(&["auth", "enable"]);
    let state = tempfile::tempdir().unwrap();
    let body = format!(
        "state_dir: {}\n\
         upstreams:\n  u: {{targets: {{etcd: {{endpoints: [\"{}\"], prefix: {PREFIX}, \
         username: root, password: {{env: ETCD_PW}}}}}}}}\n\
         routes:\n  - {{name: r, path_prefix: /r, upstream: u}}\n",
        state.path().display(),
        etcd.url()
    );
    let gw = Gateway::start_with_env(&body, &[("ETCD_PW", "rootpw")]);
    assert_eq!(gw.get("/r/x").status, 200);
    assert_eq!(a.count(), 1);
    // A wrong password: etcd refuses, and there is no cached set in a fresh state_dir.
    let fresh = tempfile::tempdir().unwrap();
    let bad = body.replace(
        &state.path().display().to_string(),
        &fresh.path().display().to_string(),
    );
    let (code, out) = check_config_with_env(&bad, &[("ETCD_PW", "wrong")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("authenticate"), "{out}");
}

#[test]
fn a_backend_that_stays_keeps_its_open_circuit() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let etcd = Etcd::start();
    etcd.put(&format!("{PREFIX}a"), &a.addr.to_string());
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&format!(
        "state_dir: {}\n\
         upstreams:\n  u: {{targets: {{etcd: {{endpoints: [\"{}\"], prefix: {PREFIX}}}}}, retries: 0,\n\
         \x20     circuit_breaker: {{failures: 1, open_for: 1h}}}}\n\
         routes:\n  - {{name: r, path_prefix: /r, upstream: u}}\n",
        state.path().display(),
        etcd.url()
    ));
    let circuit = |addr: &str| -> String {
        let h = gw.admin_get("/health").json();
        h["upstreams"]["u"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["address"] == addr)
            .map(|x| x["circuit"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(gw.get("/r/x?status=503").status, 503);
    assert_eq!(circuit(&a.addr.to_string()), "open");

    etcd.put(&format!("{PREFIX}b"), &b.addr.to_string());
    assert!(eventually(WAIT, || backend_addresses(&gw, "u") == sorted(&[&a, &b])));
    assert_eq!(circuit(&a.addr.to_string()), "open", "a keeps its state");
    assert_eq!(circuit(&b.addr.to_string()), "closed");
    let before = a.count();
    for _ in 0..4 {
        assert_eq!(gw.get("/r/x").status, 200);
    }
    assert_eq!((a.count(), b.count()), (before, 4));
}

#[test]
fn https_endpoints_are_verified_against_the_ca() {
    let a = Backend::start("a");
    let etcd = Etcd::start_with(true);
    etcd.put(&format!("{PREFIX}a"), &a.addr.to_string());
    let state = tempfile::tempdir().unwrap();
    let body = |ca: &str| {
        format!(
            "state_dir: {}\n\
             upstreams:\n  u: {{targets: {{etcd: {{endpoints: [\"{}\"], prefix: {PREFIX}{ca}}}}}}}\n\
             routes:\n  - {{name: r, path_prefix: /r, upstream: u}}\n",
            state.path().display(),
            etcd.url()
        )
    };
    let ca = format!(", ca: \"{}\"", etcd.ca().unwrap().display());
    let gw = Gateway::start(&body(&ca));
    assert_eq!(gw.get("/r/x").status, 200);
    assert_eq!(a.count(), 1);
    drop(gw);

    // The system roots do not know etcd's certificate: refused, and with no cached set
    // in a fresh state_dir the start fails.
    let fresh = tempfile::tempdir().unwrap();
    let untrusted = body("").replace(
        &state.path().display().to_string(),
        &fresh.path().display().to_string(),
    );
    let (code, out) = check_config(&untrusted);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("upstreams.u.targets.etcd"), "{out}");
    assert!(out.contains("certificate verify failed"), "{out}");
}
