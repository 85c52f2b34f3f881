//! Zero-downtime reload: `tollgate -u` beside a running instance, then SIGQUIT to the old one.
//! Under load, no request fails, in-flight slow requests finish, and the new config is live.
//! Local rate-limit buckets and circuit breakers are handed over to the new process.

mod support;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

fn body(up: std::net::SocketAddr, extra_route: &str) -> String {
    format!(
        "upstreams: {{up: {{targets: [\"{up}\"]}}}}\nroutes:\n  - {{name: api, path_prefix: /api, upstream: up}}\n{extra_route}"
    )
}

/// Wait (bounded) for a drained old process to exit on its own.
fn wait_exit(gw: &mut Gateway) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gw.exited() {
        assert!(Instant::now() < deadline, "the old process never exited");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn upgrade_under_load_drops_nothing_and_serves_the_new_config() {
    let up = echo("up");
    let mut gw = Gateway::start(&body(up, ""));
    assert_eq!(gw.get("/new/x").status, 404);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));

    // Keep-alive clients hammering the gateway.
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failures, addr) = (stop.clone(), ok.clone(), failures.clone(), gw.addr);
        workers.push(std::thread::spawn(move || {
            let mut c = KeepAlive::new(addr);
            while !stop.load(Ordering::Relaxed) {
                match c.get("/api/x") {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status)),
                    Err(e) => failures.lock().unwrap().push(format!("error {e}")),
                }
            }
        }));
    }
    // Slow requests in flight across the switch.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let addr = gw.addr;
            std::thread::spawn(move || {
                request(
                    addr,
                    "GET /api/slow?delay_ms=2000 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
                )
            })
        })
        .collect();

    let before = Instant::now();
    while ok.load(Ordering::Relaxed) < 200 {
        assert!(
            before.elapsed() < Duration::from_secs(20),
            "load never got going"
        );
        std::thread::yield_now();
    }

    let mut next = gw.upgrade(&body(
        up,
        "  - {name: new, path_prefix: /new, upstream: up}\n",
    ));

    // The new route answers once the new process has taken over.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if gw.get("/new/x").status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the new config never went live");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Keep the load on while the old process closes its listeners and drains.
    let served_at_switch = ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    for s in slow {
        let r = s.join().unwrap().expect("slow request completed");
        assert_eq!(r.status, 200, "in-flight slow request: {r:?}");
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > served_at_switch + 100,
        "load continued after the switch"
    );
    // The old process finishes draining and exits on its own (5 s hand-over + grace 3 s + 1 s).
    wait_exit(&mut gw);
    assert_eq!(gw.get("/new/x").status, 200, "the new process serves alone");
    let _ = next.kill();
    let _ = next.wait();
}

/// The old process of an upgrade ends its idle keep-alive connections once it stops
/// accepting, so their clients move to the new one, but still answers a connection it
/// accepted before whose request comes only then (its client could not tell a drop from a
/// failure).
#[test]
fn an_upgrade_closes_idle_connections_and_still_answers_ones_accepted_before() {
    let up = echo("up");
    let mut gw = Gateway::start(&body(up, ""));
    // Idle for longer than a second, a connection waits out of its task (`src/conn/park.rs`):
    // the same goes for it.
    let mut idle_long = Client::connect(gw.addr);
    assert_eq!(idle_long.get("/api/x", "").status, 200);
    let mut waiting_long = Client::connect(gw.addr);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut idle = Client::connect(gw.addr);
    assert_eq!(idle.get("/api/x", "").status, 200);
    let mut waiting = Client::connect(gw.addr);
    // Served after `waiting` was queued, so the one accept loop has taken `waiting` too.
    assert_eq!(gw.get("/api/x").status, 200);

    let _next = gw.upgrade(&body(
        up,
        "  - {name: new, path_prefix: /new, upstream: up}\n",
    ));
    // Ends about 5 s after the hand-over, inside the client's 10 s read timeout.
    idle.assert_closed();
    idle_long.assert_closed();
    for (which, c) in [
        ("waiting", &mut waiting),
        ("waiting long", &mut waiting_long),
    ] {
        let late = c.get("/api/x", "");
        assert_eq!(late.status, 200, "{which}: {late:?}");
        c.assert_closed();
    }
    assert_eq!(gw.get("/new/x").status, 200, "the new process serves");
    wait_exit(&mut gw);
}

#[test]
fn reload_command_refuses_a_bad_config_and_the_old_instance_keeps_serving() {
    let up = echo("up");
    let mut gw = Gateway::start(&body(up, ""));
    let bad = gw.write_conf(
        "bad.yaml",
        &body(up, "  - {name: x, path_prefix: /x, upstream: nope}\n"),
    );
    let (code, out) = reload_cmd(&bad, gw.pid(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("routes[1].upstream: unknown upstream \"nope\""),
        "{out}"
    );
    assert!(out.contains("keeps serving"), "{out}");
    // `reload` has exited: had it signalled, the old process would have logged the hand-over.
    assert!(
        !gw.logs().contains("SIGQUIT received"),
        "the old instance must not be signalled"
    );
    assert!(!gw.exited());
    assert_eq!(gw.get("/api/x").status, 200);
}

#[test]
fn reload_command_hands_over_to_a_daemonized_new_process() {
    let up = echo("up");
    let mut gw = Gateway::start(&body(up, ""));
    // The running file itself (a process reloads the file it was started with), with a
    // change that needs a new process (`threads`).
    let next = gw.conf_path();
    let yaml = gw.yaml_for(&body(
        up,
        "  - {name: new, path_prefix: /new, upstream: up}\n",
    ));
    std::fs::write(&next, yaml.replace("threads: 2", "threads: 1")).unwrap();
    let (code, out) = reload_cmd(&next, gw.pid(), &[]);
    assert!(
        out.contains("reloaded by upgrade (threads changed)"),
        "{out}"
    );
    // Whatever happens, stop the daemon at the end.
    let _daemon = KillPidFile(gw.dir.path().join("tollgate.pid"));
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while gw.get("/new/x").status != 200 {
        assert!(Instant::now() < deadline, "new config never went live");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_exit(&mut gw);
    assert_eq!(gw.get("/api/x").status, 200);
}

/// A package upgrade replaced the binary: `tollgate reload` (the new binary, another file than
/// the one the process runs) hands over to a new process running it, even for a change that
/// would apply in process, since only a new process runs the new code.
#[test]
fn reload_command_upgrades_to_a_replaced_binary() {
    let up = echo("up");
    let mut gw = Gateway::start(&body(up, ""));
    let old = gw.pid();
    let conf = gw.conf_path();
    let route = "  - {name: new, path_prefix: /new, upstream: up}\n";
    std::fs::write(&conf, gw.yaml_for(&body(up, route))).unwrap();
    let upgraded = gw.dir.path().join("tollgate-upgraded");
    std::fs::copy(bin(), &upgraded).unwrap();
    let (code, text) = reload_cmd_of(&upgraded, &conf, old, &[]);
    let _daemon = KillPidFile(gw.dir.path().join("tollgate.pid"));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("reloaded by upgrade (the tollgate binary changed)"),
        "{text}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while gw.get("/new/x").status != 200 {
        assert!(Instant::now() < deadline, "new config never went live");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_exit(&mut gw);
    let now = health_pid(&gw);
    assert_ne!(now, u64::from(old), "a new process answers");
    let exe = std::fs::read_link(format!("/proc/{now}/exe")).unwrap();
    assert_eq!(exe, upgraded, "the new process runs the replaced binary");
}

/// Routes keyed per `X-Client`, so one test can tell a limited client from a fresh one.
fn limited_body(up: std::net::SocketAddr, policies: &str, routes: &str) -> String {
    format!("upstreams: {{up: {{targets: [\"{up}\"]}}}}\nrate_limits:\n{policies}routes:\n{routes}")
}

fn as_client(gw: &Gateway, path: &str, client: &str) -> u16 {
    gw.send("GET", path, &[("X-Client", client)]).status
}

/// The pid that answers the admin `/health`.
fn health_pid(gw: &Gateway) -> u64 {
    gw.admin_get("/health").json()["pid"].as_u64().unwrap()
}

/// Upgrade to `conf` and wait until the old process has exited and the new one answers.
fn take_over(gw: &mut Gateway, conf: &str) -> Successor {
    let next = gw.upgrade(conf);
    wait_exit(gw);
    assert_eq!(
        health_pid(gw),
        u64::from(next.id()),
        "the new process answers"
    );
    next
}

#[test]
fn a_client_at_its_limit_stays_limited_across_an_upgrade() {
    let up = echo("up");
    // 3 per 10 minutes: no token comes back during the test.
    let conf = limited_body(
        up,
        "  strict: {requests: 3, per: 10m, key: \"header:X-Client\"}\n",
        "  - {name: api, path_prefix: /api, upstream: up, rate_limit: strict}\n",
    );
    let mut gw = Gateway::start(&conf);
    for _ in 0..3 {
        assert_eq!(as_client(&gw, "/api/x", "alice"), 200);
    }
    assert_eq!(as_client(&gw, "/api/x", "alice"), 429);
    assert_eq!(as_client(&gw, "/api/x", "bob"), 200);

    // Until the old process is gone, it may still accept; afterwards only the new one serves.
    let mut next = take_over(&mut gw, &conf);
    let r = gw.send("GET", "/api/x", &[("X-Client", "alice")]);
    assert_eq!(r.status, 429, "alice is still limited: {r:?}");
    assert!(r.header("retry-after").is_some());
    // bob had used one of three: two left, then limited.
    assert_eq!(as_client(&gw, "/api/x", "bob"), 200);
    assert_eq!(as_client(&gw, "/api/x", "bob"), 200);
    assert_eq!(as_client(&gw, "/api/x", "bob"), 429);
    assert_eq!(
        as_client(&gw, "/api/x", "carol"),
        200,
        "a new client is not"
    );
    let log = std::fs::read_to_string(gw.dir.path().join("next-stderr.log")).unwrap();
    assert!(
        log.contains("took over state from the previous process: 2 rate-limit keys"),
        "{log}"
    );
    let _ = next.kill();
    let _ = next.wait();
}

#[test]
fn reload_carries_limits_by_name_and_drops_state_of_a_renamed_policy() {
    let up = echo("up");
    let routes = "  - {name: api, path_prefix: /api, upstream: up, rate_limit: strict}\n  \
                  - {name: other, path_prefix: /other, upstream: up, rate_limit: POLICY}\n";
    let policies = "  strict: {requests: 2, per: 10m, key: \"header:X-Client\"}\n  \
                    POLICY: {requests: 2, per: 10m, key: \"header:X-Client\"}\n";
    let with = |name: &str| {
        limited_body(
            up,
            &policies.replace("POLICY", name),
            &routes.replace("POLICY", name),
        )
    };
    let mut gw = Gateway::start(&with("old"));
    for path in ["/api/x", "/other/x"] {
        assert_eq!(as_client(&gw, path, "alice"), 200);
        assert_eq!(as_client(&gw, path, "alice"), 200);
        assert_eq!(as_client(&gw, path, "alice"), 429);
    }
    // The new config lists its routes in another order and renames one policy.
    let reordered = limited_body(
        up,
        &policies.replace("POLICY", "renamed"),
        "  - {name: other, path_prefix: /other, upstream: up, rate_limit: renamed}\n  \
         - {name: api, path_prefix: /api, upstream: up, rate_limit: strict}\n",
    );
    // The running file, and a new process whatever the change (`--upgrade`).
    let next = gw.conf_path();
    std::fs::write(&next, gw.yaml_for(&reordered)).unwrap();
    let (code, out) = reload_cmd(&next, gw.pid(), &["--upgrade"]);
    let pid_file = gw.dir.path().join("tollgate.pid");
    let daemon_pid = || -> u64 {
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let _daemon = KillPidFile(pid_file.clone());
    assert_eq!(code, 0, "{out}");
    wait_exit(&mut gw);
    assert_eq!(
        health_pid(&gw),
        daemon_pid(),
        "the daemonized new process answers"
    );
    assert_eq!(
        as_client(&gw, "/api/x", "alice"),
        429,
        "same policy, same route: still limited"
    );
    assert_eq!(
        as_client(&gw, "/other/x", "alice"),
        200,
        "a renamed policy starts fresh"
    );
}

#[test]
fn an_open_circuit_stays_open_across_an_upgrade() {
    let b = Backend::start("b");
    let conf = format!(
        "upstreams:\n  u:\n    targets: [\"{}\"]\n    circuit_breaker: {{failures: 2, open_for: 10m, failure_statuses: [500]}}\n\
         routes:\n  - {{name: r, path_prefix: /r, upstream: u}}\n",
        b.addr
    );
    let circuit = |gw: &Gateway| {
        gw.admin_get("/health").json()["upstreams"]["u"]["backends"][0]["circuit"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut gw = Gateway::start(&conf);
    assert_eq!(gw.get("/r/x?status=500").status, 500);
    assert_eq!(gw.get("/r/x?status=500").status, 500);
    assert_eq!(circuit(&gw), "open");
    let sent = b.count();

    let mut next = take_over(&mut gw, &conf);
    assert_eq!(circuit(&gw), "open");
    let r = gw.get("/r/x");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.error_code(), "unavailable");
    assert_eq!(
        b.count(),
        sent,
        "the backend gets nothing while its circuit is open"
    );
    let _ = next.kill();
    let _ = next.wait();
}
