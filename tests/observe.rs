//! Operators see every request: Prometheus counters move, and the JSON access log carries the
//! documented fields, never the query string.

mod support;
use std::time::{Duration, Instant};
use support::*;

fn scrape(gw: &Gateway, series: &str) -> u64 {
    let m = gw.admin_get("/metrics");
    assert_eq!(m.status, 200);
    m.body
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

#[test]
fn metrics_count_requests_by_route_method_and_status_class() {
    let up = echo("up");
    let gw = Gateway::start(&format!(
        "upstreams: {{up: {{targets: [\"{up}\"]}}}}\nroutes: [{{name: api, path_prefix: /api, upstream: up, methods: [GET]}}]\n\
         access_log: {{enabled: false}}"
    ));
    let ok = "tollgate_requests_total{route=\"api\",method=\"GET\",status=\"2xx\"}";
    let missing = "tollgate_requests_total{route=\"-\",method=\"GET\",status=\"4xx\"}";
    assert_eq!(scrape(&gw, ok), 0);
    for _ in 0..3 {
        assert_eq!(gw.get("/api/x").status, 200);
    }
    assert_eq!(gw.get("/nope").status, 404);
    assert_eq!(scrape(&gw, ok), 3);
    assert_eq!(scrape(&gw, missing), 1);
    assert_eq!(
        scrape(&gw, "tollgate_local_answers_total{error=\"no_route\"}"),
        1
    );
    assert_eq!(
        scrape(
            &gw,
            "tollgate_request_duration_seconds_count{route=\"api\"}"
        ),
        3
    );
    assert_eq!(
        scrape(
            &gw,
            "tollgate_upstream_duration_seconds_count{route=\"api\"}"
        ),
        3
    );
    assert_eq!(scrape(&gw, "tollgate_in_flight_requests"), 0);
    let text = gw.admin_get("/metrics").body;
    assert!(!text.contains("/api/x"), "raw paths never become labels");
}

#[test]
fn json_access_log_has_the_fields_and_no_query() {
    let up = echo("up");
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("access.log");
    let gw = Gateway::start(&format!(
        "upstreams: {{up: {{targets: [\"{up}\"]}}}}\nroutes: [{{name: api, path_prefix: /api, upstream: up}}]\n\
         access_log: {{format: json, path: \"{}\"}}",
        path.display()
    ));
    assert_eq!(gw.get("/api/x?api_key=supersecret").status, 200);
    let r = gw.raw(b"POST /api/y?token=hunter2 HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nX-Request-Id: rid-2\r\nUser-Agent: t/1\r\nConnection: close\r\n\r\nabc");
    assert_eq!(r.status, 200);
    assert_eq!(gw.get("/missing").status, 404);

    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 3 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "access log not written: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !lines.contains("supersecret") && !lines.contains("hunter2"),
        "query strings leak: {lines}"
    );
    let entries: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let e = entries
        .iter()
        .find(|e| e["request_id"] == "rid-2")
        .expect("rid-2 logged");
    assert_eq!(e["method"], "POST");
    assert_eq!(e["path"], "/api/y");
    assert_eq!(e["route"], "api");
    assert_eq!(e["status"], 200);
    assert_eq!(e["client_ip"], "127.0.0.1");
    assert_eq!(e["bytes_in"], 3);
    assert!(e["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(e["upstream"], up.to_string());
    assert!(e["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert!(e["total_ms"].as_f64().unwrap() >= e["upstream_ms"].as_f64().unwrap());
    assert_eq!(e["user_agent"], "t/1");
    assert!(e["time"].as_str().unwrap().ends_with('Z'));
    for key in ["consumer", "rate_limit"] {
        assert!(e.get(key).is_some(), "{key} field present");
    }
    let miss = entries
        .iter()
        .find(|e| e["status"] == 404)
        .expect("404 logged");
    assert_eq!(miss["route"], serde_json::Value::Null);
    assert_eq!(miss["upstream"], serde_json::Value::Null);
}

/// Wait until the access log at `path` holds at least `n` lines.
fn log_lines(path: &std::path::Path, n: usize) -> String {
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            text = std::fs::read_to_string(path).unwrap_or_default();
            text.lines().count() >= n
        }),
        "access log has fewer than {n} lines: {text:?}"
    );
    text
}

#[test]
fn auth_failures_and_429s_are_counted_by_route_reason_and_policy() {
    let up = echo("up");
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("access.log");
    let gw = Gateway::start(&format!(
        "upstreams: {{up: {{targets: [\"{up}\"]}}}}\n\
         consumers: {{alice: {{api_keys: [\"supersecretapikey\"]}}}}\n\
         auth: {{keys: {{type: api_key, header: X-Api-Key}}}}\n\
         rate_limits: {{tight: {{requests: 2, per: 1m, burst: 2, key: consumer}}}}\n\
         routes: [{{name: api, path_prefix: /api, upstream: up, auth: [keys], rate_limit: tight}},\n\
                  {{name: open, path_prefix: /open, upstream: up}}]\n\
         access_log: {{format: json, path: \"{}\"}}",
        path.display()
    ));
    let missing = "tollgate_auth_failures_total{route=\"api\",reason=\"missing\"}";
    let invalid = "tollgate_auth_failures_total{route=\"api\",reason=\"invalid_key\"}";
    let limited = "tollgate_rate_limited_total{route=\"api\",policy=\"tight\"}";
    let text = gw.admin_get("/metrics").body;
    for series in [missing, invalid, limited] {
        assert!(
            text.lines().any(|l| l == format!("{series} 0")),
            "{series} exists from the start:\n{text}"
        );
    }
    assert!(
        !text.contains("route=\"open\",reason="),
        "public routes have no auth series"
    );

    assert_eq!(gw.get("/api/x").status, 401);
    let wrong = [("X-Api-Key", "wrongwrongwrong")];
    assert_eq!(gw.send("GET", "/api/x", &wrong).status, 401);
    assert_eq!(gw.send("GET", "/api/x", &wrong).status, 401);
    let key = [("X-Api-Key", "supersecretapikey")];
    assert_eq!(gw.send("GET", "/api/x", &key).status, 200);
    assert_eq!(gw.send("GET", "/api/x", &key).status, 200);
    assert_eq!(gw.send("GET", "/api/x", &key).status, 429);
    assert_eq!(scrape(&gw, missing), 1);
    assert_eq!(scrape(&gw, invalid), 2);
    assert_eq!(scrape(&gw, limited), 1);

    let lines = log_lines(&path, 6);
    assert!(
        !lines.contains("supersecretapikey") && !lines.contains("wrongwrongwrong"),
        "credentials leak into the access log: {lines}"
    );
    let entries: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ok: Vec<_> = entries.iter().filter(|e| e["status"] == 200).collect();
    assert_eq!(ok.len(), 2, "{lines}");
    assert!(ok.iter().all(|e| e["consumer"] == "alice"), "{lines}");
    // Lines from different worker threads reach the file batch by batch, not in time order.
    let first = ok.iter().find(|e| e["rate_limit"]["remaining"] == 1);
    assert_eq!(first.expect(&lines)["rate_limit"]["outcome"], "allowed");
    let denied = entries.iter().find(|e| e["status"] == 429).unwrap();
    assert_eq!(denied["consumer"], "alice");
    assert_eq!(denied["rate_limit"]["outcome"], "limited");
    assert_eq!(denied["rate_limit"]["remaining"], 0);
    let refused = entries.iter().find(|e| e["status"] == 401).unwrap();
    assert_eq!(refused["consumer"], serde_json::Value::Null);
    assert_eq!(refused["rate_limit"], serde_json::Value::Null);
}

#[test]
fn combined_access_log_names_the_consumer_never_the_query_key() {
    let up = echo("up");
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("access.log");
    let gw = Gateway::start(&format!(
        "upstreams: {{up: {{targets: [\"{up}\"]}}}}\n\
         consumers: {{ci-bot: {{api_keys: [\"querysecretkey42\"]}}}}\n\
         auth: {{qkeys: {{type: api_key, query: api_key}}}}\n\
         rate_limits: {{roomy: {{requests: 100, per: 1m, key: consumer}}}}\n\
         routes: [{{name: api, path_prefix: /api, upstream: up, auth: [qkeys], rate_limit: roomy}}]\n\
         access_log: {{format: combined, path: \"{}\"}}",
        path.display()
    ));
    let r = gw.send(
        "GET",
        "/api/x?api_key=querysecretkey42",
        &[("Referer", "http://app/page?api_key=querysecretkey42")],
    );
    assert_eq!(r.status, 200);
    let line = log_lines(&path, 1);
    assert!(!line.contains("querysecretkey42"), "{line}");
    assert!(line.starts_with("127.0.0.1 - ci-bot ["), "{line}");
    assert!(line.contains(" rate_limit=allowed:99"), "{line}");
    assert!(line.contains("\"GET /api/x HTTP/1.1\" 200"), "{line}");
    assert!(
        line.contains("\"http://app/page\""),
        "referer without its query: {line}"
    );
}

#[test]
fn backend_health_breaker_and_in_flight_are_gauges_read_at_scrape_time() {
    let checked = Backend::start("checked");
    let guarded = Backend::start("guarded");
    let gw = Gateway::start(&format!(
        "upstreams:\n  checked:\n    targets: [\"{}\"]\n    health_check: {{type: tcp, interval: 100ms, timeout: 200ms, healthy: 1, unhealthy: 1}}\n\
         \x20 guarded:\n    targets: [\"{}\"]\n    circuit_breaker: {{failures: 1, open_for: 1m}}\n\
         routes: [{{name: c, path_prefix: /c, upstream: checked}}, {{name: g, path_prefix: /g, upstream: guarded}}]\n\
         access_log: {{enabled: false}}",
        checked.addr, guarded.addr
    ));
    let healthy = format!(
        "tollgate_backend_healthy{{upstream=\"checked\",backend=\"{}\"}}",
        checked.addr
    );
    let breaker = format!(
        "tollgate_backend_breaker_state{{upstream=\"guarded\",backend=\"{}\"}}",
        guarded.addr
    );
    let in_flight = format!(
        "tollgate_backend_in_flight{{upstream=\"guarded\",backend=\"{}\"}}",
        guarded.addr
    );
    let changes = "tollgate_backend_health_changes_total{upstream=\"checked\"}";
    assert_eq!(scrape(&gw, &healthy), 1);
    assert_eq!(scrape(&gw, &breaker), 0);
    assert_eq!(scrape(&gw, &in_flight), 0);
    let before = scrape(&gw, changes);

    checked.kill();
    assert!(
        eventually(Duration::from_secs(5), || scrape(&gw, &healthy) == 0),
        "a dead backend is reported unhealthy:\n{}",
        gw.admin_get("/metrics").body
    );
    assert!(scrape(&gw, changes) > before);

    guarded.kill();
    assert_eq!(gw.get("/g/x").status, 502);
    assert_eq!(scrape(&gw, &breaker), 1, "one failure opens the circuit");
    assert_eq!(gw.get("/g/x").status, 503);
    assert_eq!(scrape(&gw, &in_flight), 0);
}

#[test]
fn redis_store_failures_are_counted() {
    let up = echo("up");
    let redis = closed_port();
    let gw = Gateway::start(&format!(
        "upstreams: {{up: {{targets: [\"{up}\"]}}}}\n\
         redis: {{url: \"redis://{redis}\", on_error: allow, timeout: 50ms}}\n\
         rate_limits: {{shared: {{requests: 10, per: 1m, store: redis}}}}\n\
         routes: [{{name: api, path_prefix: /api, upstream: up, rate_limit: shared}}]\n\
         access_log: {{enabled: false}}"
    ));
    assert_eq!(scrape(&gw, "tollgate_redis_errors_total"), 0);
    assert_eq!(gw.get("/api/x").status, 200);
    assert_eq!(gw.get("/api/x").status, 200);
    assert!(scrape(&gw, "tollgate_redis_errors_total") >= 2);
}

/// A request that fails is named in the error log by its method, path and Host, whichever
/// codec served it: an API key in its query never is (the access log leaves queries out as
/// well).
#[test]
fn the_error_log_never_shows_a_query_credential() {
    let down = closed_port();
    let gw = Gateway::start(&format!(
        r#"
consumers: {{alice: {{api_keys: ["alice-secret-key-0123456789"]}}}}
auth: {{keys: {{type: api_key, query: api_key}}}}
upstreams: {{down: {{targets: ["{down}"], retries: 0}}}}
routes: [{{name: r, path_prefix: /, upstream: down, auth: [keys]}}]
"#
    ));
    // A body takes Pingora's path, whose failures are logged.
    let r = gw.raw(
        b"POST /x?api_key=alice-secret-key-0123456789 HTTP/1.1\r\nHost: gw\r\n\
          Content-Length: 2\r\nConnection: close\r\n\r\nhi",
    );
    assert_eq!(r.status, 502, "{r:?}");
    // A bodiless GET takes tollgate's own codec, which logs its failures the same way.
    let r = gw.raw(
        b"GET /y?api_key=alice-secret-key-0123456789 HTTP/1.1\r\nHost: gw\r\n\
          Connection: close\r\n\r\n",
    );
    assert_eq!(r.status, 502, "{r:?}");
    let logs = gw.logs();
    assert!(
        logs.contains("POST /x, Host: gw"),
        "the failure is logged: {logs}"
    );
    assert!(
        logs.contains("GET /y, Host: gw"),
        "the failure is logged: {logs}"
    );
    assert!(!logs.contains("alice-secret"), "{logs}");
}

/// A destination that refuses writes (a full disk: /dev/full) loses lines, and says so: they
/// are counted in `tollgate_access_log_dropped_total` and the count is logged.
#[test]
fn access_log_lines_that_cannot_be_written_are_counted_and_logged() {
    let up = echo("up");
    let gw = Gateway::start(&format!(
        "upstreams: {{up: {{targets: [\"{up}\"]}}}}\nroutes: [{{name: api, path_prefix: /api, upstream: up}}]\n\
         access_log: {{path: /dev/full}}"
    ));
    for i in 0..20 {
        assert_eq!(gw.get(&format!("/api/{i}")).status, 200);
    }
    assert!(
        eventually(Duration::from_secs(5), || scrape(
            &gw,
            "tollgate_access_log_dropped_total"
        ) >= 20),
        "lines refused by the destination are counted"
    );
    assert!(
        eventually(Duration::from_secs(5), || gw
            .logs()
            .contains("lines dropped")),
        "the drops are logged: {}",
        gw.logs()
    );
}

/// Every line reaches the file when the gateway stops, including those of the last moments
/// before SIGTERM; and none is written twice or cut.
#[test]
fn the_access_log_is_complete_when_the_gateway_stops() {
    let up = echo("up");
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("access.log");
    let mut gw = Gateway::start(&format!(
        "upstreams: {{up: {{targets: [\"{up}\"]}}}}\nroutes: [{{name: api, path_prefix: /api, upstream: up}}]\n\
         access_log: {{format: json, path: \"{}\"}}",
        path.display()
    ));
    let n = 300;
    for i in 0..n {
        let r = gw.send(
            "GET",
            &format!("/api/{i}"),
            &[("X-Request-Id", &format!("rid-{i}"))],
        );
        assert_eq!(r.status, 200);
    }
    let ok = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(gw.pid().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(
        eventually(Duration::from_secs(15), || gw.exited()),
        "the gateway stops on SIGTERM"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let mut ids: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a whole JSON line");
            v["request_id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("rid-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "each request logged exactly once");
}
