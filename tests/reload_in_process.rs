//! Reload in process: `SIGHUP` reads the `-c` file again and swaps the config for new requests;
//! connections stay open, state carries by name, a bad or upgrade-only change changes nothing
//! (counted, and shown on `/health`). `SIGUSR1` reopens the access log.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::redis::Redis;
use support::tls_client::{cert, dns_names, tls_handshake};
use support::ws::{handshake, WsEcho, TEXT};
use support::*;

fn body(up: std::net::SocketAddr, extra_route: &str) -> String {
    format!(
        "upstreams: {{up: {{targets: [\"{up}\"]}}}}\nroutes:\n  - {{name: api, path_prefix: /api, upstream: up}}\n{extra_route}"
    )
}

fn config(gw: &Gateway) -> serde_json::Value {
    gw.admin_get("/health").json()["config"].clone()
}

/// Wait until the process handles SIGHUP (`/health` shows `config`); its generation.
fn ready(gw: &Gateway) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(g) = config(gw)["generation"].as_u64() {
            return g;
        }
        assert!(
            Instant::now() < deadline,
            "no config on /health:\n{}",
            gw.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(gw: &Gateway, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &gw.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn reloads(gw: &Gateway, result: &str) -> u64 {
    let series = format!("tollgate_reloads_total{{result=\"{result}\"}} ");
    let text = gw.admin_get("/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Rewrite the running file with `body`, send SIGHUP and wait until `/health` shows the
/// outcome: the next generation (`true`) or a new counted refusal (`false`).
fn hup(gw: &Gateway, body: &str) -> bool {
    let before = ready(gw);
    let refused = reloads(gw, "invalid") + reloads(gw, "needs_upgrade");
    std::fs::write(gw.conf_path(), gw.yaml_for(body)).unwrap();
    signal(gw, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if config(gw)["generation"].as_u64() == Some(before + 1) {
            return true;
        }
        if reloads(gw, "invalid") + reloads(gw, "needs_upgrade") > refused {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "no reload outcome:\n{}",
            gw.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_route_added_by_sighup_is_served_and_a_keep_alive_connection_sees_it() {
    let up = echo("up");
    let gw = Gateway::start(&body(up, ""));
    assert_eq!(ready(&gw), 1);
    assert_eq!(config(&gw)["last_error"], serde_json::Value::Null);
    let mut conn = KeepAlive::new(gw.addr);
    assert_eq!(conn.get("/api/x").unwrap().status, 200);
    assert_eq!(conn.get("/new/x").unwrap().status, 404);
    let pid = gw.pid();

    assert!(hup(
        &gw,
        &body(up, "  - {name: new, path_prefix: /new, upstream: up}\n")
    ));
    assert_eq!(config(&gw)["generation"], 2);
    assert_eq!(reloads(&gw, "ok"), 1);
    assert_eq!(gw.get("/new/x").status, 200, "{}", gw.logs());
    // The same connection: its next request takes the new config.
    let r = conn.get("/new/y").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(conn.get("/api/x").unwrap().status, 200);
    assert_eq!(gw.pid(), pid);
    // The series of the route that stayed continue: 2 requests, one before the reload (each
    // is counted once its log line is written, just after its answer).
    let api = || {
        let metrics = gw.admin_get("/metrics").body;
        metrics
            .lines()
            .filter(|l| l.starts_with("tollgate_requests_total{") && l.contains("route=\"api\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    assert!(
        eventually(Duration::from_secs(5), || api() == 2),
        "{}",
        api()
    );
    assert!(
        gw.logs().contains("config reloaded in process"),
        "{}",
        gw.logs()
    );
}

#[test]
fn a_bad_config_changes_nothing_and_health_says_why() {
    let up = echo("up");
    let gw = Gateway::start(&body(up, ""));
    ready(&gw);
    assert!(!hup(
        &gw,
        &body(up, "  - {name: x, path_prefix: /x, upstream: nope}\n")
    ));
    let c = config(&gw);
    assert_eq!(c["generation"], 1);
    let err = c["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(err.contains("routes[1].upstream"), "{c}");
    assert_eq!(reloads(&gw, "invalid"), 1);
    assert_eq!(reloads(&gw, "ok"), 0);
    assert_eq!(gw.get("/api/x").status, 200);
    assert_eq!(gw.get("/x/y").status, 404);

    // Fixed: the next reload applies and clears the error.
    assert!(hup(
        &gw,
        &body(up, "  - {name: x, path_prefix: /x, upstream: up}\n")
    ));
    assert_eq!(config(&gw)["last_error"], serde_json::Value::Null);
    assert_eq!(gw.get("/x/y").status, 200);
}

#[test]
fn a_listen_change_is_refused_as_needing_an_upgrade() {
    let up = echo("up");
    let gw = Gateway::start(&body(up, ""));
    ready(&gw);
    let other = free_port();
    let yaml = gw
        .yaml_for(&body(
            up,
            "  - {name: new, path_prefix: /new, upstream: up}\n",
        ))
        .replace(
            &format!("listen: [\"{}\"]", gw.addr),
            &format!("listen: [\"{}\", \"127.0.0.1:{other}\"]", gw.addr),
        );
    std::fs::write(gw.conf_path(), yaml).unwrap();
    signal(&gw, "-HUP");
    assert!(
        eventually(Duration::from_secs(10), || reloads(&gw, "needs_upgrade")
            == 1),
        "{}",
        gw.logs()
    );
    let c = config(&gw);
    assert_eq!(c["generation"], 1);
    assert_eq!(c["last_error"], "needs an upgrade: listen changed");
    assert!(gw.logs().contains("needs an upgrade: listen changed"));
    assert_eq!(gw.get("/new/x").status, 404, "nothing changed");
}

/// Alice's request on `/api` (a policy keyed on `X-Client`): its status.
fn alice(gw: &Gateway) -> u16 {
    gw.send("GET", "/api/x", &[("X-Client", "alice")]).status
}

/// Alice spends a budget of two requests.
fn spend_alice(gw: &Gateway) {
    assert_eq!(alice(gw), 200);
    assert_eq!(alice(gw), 200);
    assert_eq!(alice(gw), 429);
}

#[test]
fn a_spent_limit_and_an_open_breaker_carry_over() {
    let up = echo("up");
    let b = Backend::start("b");
    let conf = |extra: &str| {
        format!(
            "upstreams:\n  up: {{targets: [\"{up}\"]}}\n  u:\n    targets: [\"{}\"]\n    circuit_breaker: {{failures: 2, open_for: 10m, failure_statuses: [500]}}\n\
             rate_limits:\n  strict: {{requests: 2, per: 10m, key: \"header:X-Client\"}}\n\
             routes:\n  - {{name: api, path_prefix: /api, upstream: up, rate_limit: strict}}\n  - {{name: r, path_prefix: /r, upstream: u}}\n{extra}",
            b.addr
        )
    };
    let gw = Gateway::start(&conf(""));
    ready(&gw);
    spend_alice(&gw);
    assert_eq!(gw.get("/r/x?status=500").status, 500);
    assert_eq!(gw.get("/r/x?status=500").status, 500);
    let sent = b.count();

    assert!(hup(
        &gw,
        &conf("  - {name: new, path_prefix: /new, upstream: up}\n")
    ));
    assert_eq!(alice(&gw), 429, "a spent limit stays spent");
    assert_eq!(gw.send("GET", "/api/x", &[("X-Client", "bob")]).status, 200);
    let circuit = gw.admin_get("/health").json()["upstreams"]["u"]["backends"][0]["circuit"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(circuit, "open");
    assert_eq!(gw.get("/r/x").status, 503);
    assert_eq!(b.count(), sent, "the open circuit sends nothing");
}

fn backend_healthy(gw: &Gateway, addr: std::net::SocketAddr) -> bool {
    let h = gw.admin_get("/health").json();
    let backends = h["upstreams"]["u"]["backends"].as_array().unwrap().clone();
    let b = backends.iter().find(|b| b["address"] == addr.to_string());
    b.unwrap()["healthy"].as_bool().unwrap()
}

#[test]
fn a_backend_marked_down_by_health_checks_stays_out_after_sighup_until_it_recovers() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    // Three failed probes a second apart mark a backend down: a fresh verdict would let it
    // take traffic for two seconds after the reload.
    let conf = |extra: &str| {
        format!(
            "upstreams:\n  u:\n    targets: [\"{}\", \"{}\"]\n    health_check: {{type: http, path: /hc, interval: 1s, timeout: 500ms, healthy: 1, unhealthy: 3}}\n\
             routes:\n  - {{name: r, path_prefix: /r, upstream: u}}\n{extra}",
            a.addr, b.addr
        )
    };
    let gw = Gateway::start(&conf(""));
    ready(&gw);
    b.fail_health(true);
    assert!(
        eventually(Duration::from_secs(10), || !backend_healthy(&gw, b.addr)),
        "never marked down:\n{}",
        gw.logs()
    );

    assert!(hup(
        &gw,
        &conf("  - {name: new, path_prefix: /new, upstream: u}\n")
    ));
    let before = b.count_of(" /x ");
    for _ in 0..20 {
        assert_eq!(gw.get("/r/x").status, 200);
    }
    assert_eq!(
        b.count_of(" /x ") - before,
        0,
        "a backend marked down takes no request after the reload"
    );
    assert!(!backend_healthy(&gw, b.addr));

    b.fail_health(false);
    assert!(
        eventually(Duration::from_secs(10), || backend_healthy(&gw, b.addr)),
        "never back:\n{}",
        gw.logs()
    );
    let seen: Vec<String> = (0..10)
        .map(|_| {
            gw.get("/r/x").json()["service"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert!(seen.iter().any(|s| s == "b"), "traffic returns: {seen:?}");
}

/// A `sync` policy decides from its local copy between syncs: a reload keeps that copy (and
/// the admissions not pushed yet), so a client at its limit stays limited.
#[test]
fn a_spent_sync_limit_stays_spent_across_sighup() {
    let redis = Redis::start_on(free_port());
    let up = echo("up");
    let conf = |extra: &str| {
        format!(
            "upstreams: {{up: {{targets: [\"{up}\"]}}}}\nredis: {{url: \"redis://127.0.0.1:{}\", timeout: 200ms}}\n\
             rate_limits:\n  p: {{requests: 2, per: 10m, key: \"header:X-Client\", store: redis, sync: 1h}}\n\
             routes:\n  - {{name: api, path_prefix: /api, upstream: up, rate_limit: p}}\n{extra}",
            redis.port
        )
    };
    let gw = Gateway::start(&conf(""));
    ready(&gw);
    spend_alice(&gw);
    assert!(hup(
        &gw,
        &conf("  - {name: new, path_prefix: /new, upstream: up}\n")
    ));
    assert_eq!(alice(&gw), 429, "a spent limit stays spent");
    assert_eq!(gw.send("GET", "/api/x", &[("X-Client", "bob")]).status, 200);
}

#[test]
fn sigusr1_reopens_a_renamed_access_log() {
    let up = echo("up");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = Gateway::start(&format!(
        "access_log: {{path: \"{}\"}}\n{}",
        log.display(),
        body(up, "")
    ));
    ready(&gw);
    assert_eq!(gw.get("/api/first").status, 200);
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/api/first"))
    }));
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    signal(&gw, "-USR1");
    assert!(eventually(Duration::from_secs(5), || log.exists()));
    assert_eq!(gw.get("/api/second").status, 200);
    assert!(
        eventually(Duration::from_secs(5), || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/api/second"))
        }),
        "{}",
        gw.logs()
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("/api/first") && !old.contains("/api/second"));
}

#[test]
fn a_websocket_keeps_echoing_across_ten_reloads_under_load() {
    let up = echo("up");
    let ws = WsEcho::start();
    let conf = |n: usize| {
        format!(
            "upstreams: {{up: {{targets: [\"{up}\"]}}, ws: {{targets: [\"{}\"]}}}}\nroutes:\n  - {{name: api, path_prefix: /api, upstream: up}}\n  - {{name: chat, path_prefix: /chat, upstream: ws}}\n  - {{name: gen{n}, path_prefix: /gen{n}, upstream: up}}\n",
            ws.addr
        )
    };
    let gw = Gateway::start(&conf(0));
    ready(&gw);
    let (head, client) = handshake(gw.addr, "/chat/room", &[]);
    assert_eq!(head.status, 101, "{head:?}");
    let mut client = client.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, sent, failed, addr) = (stop.clone(), sent.clone(), failed.clone(), gw.addr);
        std::thread::spawn(move || {
            let mut conn = KeepAlive::new(addr);
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                if !conn.get("/api/load").is_ok_and(|r| r.status == 200) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    for n in 1..=10 {
        assert!(hup(&gw, &conf(n)), "reload {n}:\n{}", gw.logs());
        let msg = format!("after reload {n}");
        client.send(TEXT, msg.as_bytes());
        let (op, payload, _) = client.recv();
        assert_eq!((op, payload), (TEXT, msg.into_bytes()));
        assert_eq!(gw.get(&format!("/gen{n}/x")).status, 200);
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{}", gw.logs());
    assert_eq!(config(&gw)["generation"], 11);
}

#[test]
fn the_reload_command_reloads_in_process_and_refuses_another_file_or_a_refused_change() {
    let up = echo("up");
    let gw = Gateway::start(&body(up, ""));
    ready(&gw);
    let pid = gw.pid();

    let other = gw.write_conf("other.yaml", &body(up, ""));
    let (code, out) = reload_cmd(&other, pid, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not ") && out.contains("other.yaml"), "{out}");

    // The running file rewritten with `extra_route`, then `tollgate reload` on it.
    let reload_with = |extra_route: &str| {
        std::fs::write(gw.conf_path(), gw.yaml_for(&body(up, extra_route))).unwrap();
        reload_cmd(&gw.conf_path(), pid, &[])
    };
    let (code, out) = reload_with("  - {name: new, path_prefix: /new, upstream: up}\n");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reloaded in process"), "{out}");
    assert!(out.contains("generation 2"), "{out}");
    assert_eq!(gw.get("/new/x").status, 200);
    assert_eq!(gw.admin_get("/health").json()["pid"], u64::from(pid));

    // A bad file is refused before anything is signalled.
    let (code, out) = reload_with("  - {name: x, path_prefix: /x, upstream: nope}\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("keeps serving"), "{out}");
    assert_eq!(config(&gw)["generation"], 2, "nothing was signalled");
}

/// The DNS names of the certificate a TLS listener presents to a new handshake.
fn presented(addr: std::net::SocketAddr) -> Vec<String> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let mut cfg = b.build().configure().unwrap();
    cfg.set_verify_hostname(false);
    let ssl = cfg.into_ssl("a.test").unwrap();
    dns_names(&runtime().block_on(tls_handshake(ssl, addr)).unwrap())
}

#[test]
fn a_renewed_listener_certificate_is_served_after_sighup_without_a_new_process() {
    let up = echo("up");
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = cert(dir.path(), "site", &["a.test"]);
    let conf = body(up, "");
    let (gw, tls) = Gateway::with_listener(
        |a| {
            format!(
                "{{address: \"{a}\", tls: {{cert: \"{}\", key: \"{}\"}}}}",
                c.display(),
                k.display()
            )
        },
        &conf,
    );
    ready(&gw);
    assert_eq!(presented(tls), ["a.test"]);
    // Renewed in place, as certbot does: same paths, new files.
    cert(dir.path(), "site", &["a.test", "renewed.a.test"]);
    assert!(hup(&gw, &conf), "{}", gw.logs());
    assert_eq!(presented(tls), ["a.test", "renewed.a.test"]);
    assert_eq!(reloads(&gw, "ok"), 1);
    assert!(gw
        .logs()
        .contains("listen[1]: new handshakes get the certificates read now"));
}

#[test]
fn a_thousand_routes_reload_in_process_and_the_time_is_logged() {
    let up = echo("up");
    let routes = |n: usize| {
        let mut b = format!("upstreams: {{up: {{targets: [\"{up}\"]}}}}\nroutes:\n");
        for i in 0..n {
            b.push_str(&format!(
                "  - {{name: r{i}, path_prefix: /r{i}/, upstream: up}}\n"
            ));
        }
        b
    };
    let gw = Gateway::start(&routes(1000));
    ready(&gw);
    let sent = Instant::now();
    assert!(hup(&gw, &routes(1001)), "{}", gw.logs());
    let seen = sent.elapsed();
    assert_eq!(gw.get("/r1000/x").status, 200);
    let logs = gw.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("config reloaded in process (1001 routes) in "))
        .unwrap_or_else(|| panic!("no reload time logged:\n{logs}"));
    eprintln!("reload of 1,001 routes: {line:?}; seen on /health after {seen:?}");
}

/// The status of `GET path` as a new stream on an open HTTP/2 connection.
async fn h2_status(client: &mut h2::client::SendRequest<bytes::Bytes>, path: &str) -> u16 {
    let req = http::Request::get(format!("http://gw{path}"))
        .body(())
        .unwrap();
    let mut ready = client.clone().ready().await.unwrap();
    let (resp, _) = ready.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.unwrap().len());
    }
    status
}

#[test]
fn an_http2_connection_stays_open_and_its_next_stream_sees_the_new_routes() {
    let up = echo("up");
    let conf = body(up, "");
    let (gw, h2c) = Gateway::with_listener(|a| format!("{{address: \"{a}\", h2c: true}}"), &conf);
    ready(&gw);
    let rt = runtime();
    let (mut client, conn) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(h2c).await.unwrap();
        h2::client::handshake(tcp).await.unwrap()
    });
    let conn = rt.spawn(conn);
    assert_eq!(rt.block_on(h2_status(&mut client, "/api/x")), 200);
    assert_eq!(rt.block_on(h2_status(&mut client, "/new/x")), 404);
    assert!(hup(
        &gw,
        &body(up, "  - {name: new, path_prefix: /new, upstream: up}\n")
    ));
    assert_eq!(rt.block_on(h2_status(&mut client, "/new/x")), 200);
    assert_eq!(rt.block_on(h2_status(&mut client, "/api/x")), 200);
    assert!(!conn.is_finished(), "the connection stayed open");
}

#[test]
fn a_changed_access_log_section_applies_and_the_old_file_keeps_its_lines() {
    let up = echo("up");
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let with = |log: &std::path::Path| {
        format!(
            "access_log: {{path: \"{}\"}}\n{}",
            log.display(),
            body(up, "")
        )
    };
    let gw = Gateway::start(&with(&first));
    ready(&gw);
    assert_eq!(gw.get("/api/before").status, 200);
    assert!(hup(&gw, &with(&second)));
    assert_eq!(gw.get("/api/after").status, 200);
    let has =
        |p: &std::path::Path, s: &str| std::fs::read_to_string(p).is_ok_and(|t| t.contains(s));
    assert!(eventually(Duration::from_secs(5), || has(
        &second,
        "/api/after"
    )));
    assert!(eventually(Duration::from_secs(5), || has(
        &first,
        "/api/before"
    )));
    assert!(!has(&first, "/api/after") && !has(&second, "/api/before"));
}

#[test]
fn a_request_in_flight_finishes_on_the_config_it_began_on() {
    let b = Backend::start("b");
    let conf = |routes: &str| {
        format!(
            "upstreams: {{u: {{targets: [\"{}\"], timeouts: {{read: 30s}}}}}}\nroutes:\n{routes}",
            b.addr
        )
    };
    let gw = Gateway::start(&conf("  - {name: slow, path_prefix: /slow, upstream: u}\n"));
    ready(&gw);
    let addr = gw.addr;
    let slow = std::thread::spawn(move || {
        request(
            addr,
            "GET /slow/x?delay_ms=1500 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .status
    });
    // Reached the backend: it is in flight.
    assert!(eventually(Duration::from_secs(5), || b.count() == 1));
    // The new config has no such route.
    assert!(hup(
        &gw,
        &conf("  - {name: other, path_prefix: /other, upstream: u}\n")
    ));
    assert_eq!(gw.get("/slow/y").status, 404);
    assert_eq!(slow.join().unwrap(), 200, "{}", gw.logs());
}

#[test]
fn the_response_cache_survives_a_reload_unless_its_store_changes() {
    let up = Backend::start("up");
    let cached = |size: &str, extra: &str| {
        format!(
            "caches: {{mem: {{max_size: {size}}}}}\n\
             upstreams: {{up: {{targets: [\"{}\"]}}}}\n\
             routes:\n\
             \x20 - {{name: c, path_prefix: /c, upstream: up, cache: {{ttl: 1m}}}}\n{extra}",
            up.addr
        )
    };
    let gw = Gateway::start(&cached("1MiB", ""));
    ready(&gw);
    assert_eq!(gw.get("/c/a").header("x-cache-status"), Some("MISS"));
    assert_eq!(gw.get("/c/a").header("x-cache-status"), Some("HIT"));
    // A route added, the store as it was: the entry is still there.
    let other = "  - {name: other, path_prefix: /other, upstream: up}\n";
    assert!(hup(&gw, &cached("1MiB", other)), "{}", gw.logs());
    assert_eq!(gw.get("/other/x").status, 200);
    assert_eq!(gw.get("/c/a").header("x-cache-status"), Some("HIT"));
    assert_eq!(
        up.count(),
        2,
        "the origin saw the first miss and /other only"
    );
    // The store resized: a new, empty one.
    assert!(hup(&gw, &cached("2MiB", other)), "{}", gw.logs());
    assert_eq!(gw.get("/c/a").header("x-cache-status"), Some("MISS"));
    assert_eq!(up.count(), 3);
}
