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
