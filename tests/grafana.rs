//! `conf/grafana/tollgate.json`, the Grafana board for tollgate's metrics: every metric its
//! queries name is in a real `/metrics` scrape, with every label they group by.

mod support;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::*;

/// Every `tollgate_*` name in a PromQL expression, with the labels of its `by (...)` clauses.
fn queried(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    let by: BTreeSet<String> = expr
        .split("by (")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .flat_map(|labels| labels.split(',').map(|l| l.trim().to_owned()))
        .filter(|l| !l.is_empty() && l != "le")
        .collect();
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tollgate_") {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        out.push((rest[..end].to_owned(), by.clone()));
        rest = &rest[end..];
    }
    out
}

/// The scrape's series: metric name → every label name seen on it.
fn series(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_owned()).or_default();
        if let Some(inner) = line[name_end..]
            .strip_prefix('{')
            .and_then(|l| l.split('}').next())
        {
            for pair in inner.split("\",") {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.trim().to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn every_metric_and_label_the_board_queries_is_in_a_real_scrape() {
    let board: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conf/grafana/tollgate.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = board["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");

    // A gateway with every feature that has series: API keys and a limit, a checked
    // upstream with a breaker, a mirror, a token introspection provider, WebSockets, a cache.
    let (up, shadow) = (Backend::start("up"), Backend::start("shadow"));
    let gw = Gateway::start(&format!(
        "consumers: {{alice: {{api_keys: [\"alice-key-0123456789\"]}}}}\n\
         auth:\n\
         \x20 keys: {{type: api_key, header: X-Api-Key}}\n\
         \x20 opaque: {{type: introspection, endpoint: \"https://localhost:1/introspect\", client_id: gw, client_secret: \"introspection-secret-0123456789\"}}\n\
         rate_limits: {{per_consumer: {{requests: 1, per: 1h, key: consumer}}}}\n\
         caches: {{pages: {{max_size: 1MiB}}}}\n\
         upstreams:\n\
         \x20 u: {{targets: [\"{}\"], health_check: {{type: tcp, interval: 100ms}}, circuit_breaker: {{failures: 5, open_for: 10s}}}}\n\
         \x20 shadow: {{targets: [\"{}\"]}}\n\
         routes:\n\
         \x20 - {{name: api, path_prefix: /api, upstream: u, auth: [keys], rate_limit: per_consumer, mirror: {{upstream: shadow}}}}\n\
         \x20 - {{name: tokens, path_prefix: /tokens, upstream: u, auth: [opaque]}}\n\
         \x20 - {{name: pages, path_prefix: /pages, upstream: u, cache: {{ttl: 1m}}}}\n",
        up.addr, shadow.addr
    ));
    let key = [("X-Api-Key", "alice-key-0123456789")];
    assert_eq!(gw.send("GET", "/api/x", &key).status, 200);
    assert_eq!(gw.send("GET", "/api/x", &key).status, 429);
    assert_eq!(gw.get("/api/x").status, 401);
    assert_eq!(gw.get("/nowhere").status, 404);
    assert_eq!(gw.get("/pages/a").status, 200);
    assert!(eventually(Duration::from_secs(10), || shadow.count() == 1));
    let scrape = gw.admin_get("/metrics").body;
    let have = series(&scrape);

    let mut missing = Vec::new();
    for expr in &exprs {
        for (name, by) in queried(expr) {
            match have.get(&name) {
                None => missing.push(format!("{name} (in {expr})")),
                Some(labels) => {
                    for l in by.difference(labels) {
                        missing.push(format!("label {l} of {name} (in {expr})"));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "queried by the board, not in /metrics:\n{}\n\nscrape:\n{scrape}",
        missing.join("\n")
    );
}

#[test]
fn the_checker_reads_names_and_grouping_labels() {
    let q = queried("histogram_quantile(0.99, sum by (le, route) (rate(tollgate_request_duration_seconds_bucket[5m])))");
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0, "tollgate_request_duration_seconds_bucket");
    assert_eq!(q[0].1, BTreeSet::from(["route".to_owned()]));
    let s = series("# HELP x\ntollgate_a{route=\"r\",status=\"2xx\"} 1\ntollgate_b 2\n");
    assert_eq!(
        s["tollgate_a"],
        BTreeSet::from(["route".into(), "status".into()])
    );
    assert!(s["tollgate_b"].is_empty());
}
