//! Rate limiting seen from a client: burst then sustained rate, per-key and per-route
//! isolation, the RateLimit headers, Retry-After, and which client address is believed.
//! (The 1M-key flood is driven in-process: `limit::local::tests::million_key_flood_*`.)

mod support;
use std::time::{Duration, Instant};
use support::*;

/// `slow`: 2/s with a burst of 3 (one token every 500 ms).
fn gateway(extra: &str) -> Gateway {
    let a = echo("a");
    Gateway::start(&format!(
        r#"
{extra}
upstreams:
  a: {{targets: ["{a}"]}}
rate_limits:
  slow: {{requests: 2, per: 1s, burst: 3, headers: both}}
  plain: {{requests: 100, per: 1m}}
  silent: {{requests: 100, per: 1m, headers: none}}
  by-key: {{requests: 1, per: 10s, burst: 2, key: "header:X-Api-Key"}}
  shared: {{requests: 1, per: 10s, burst: 2, key: route}}
  wide: {{requests: 100, per: 1s}}
  exact6: {{requests: 1, per: 10s, burst: 1, ipv6_prefix: 128}}
routes:
  - {{name: slow, path_prefix: /slow, upstream: a, rate_limit: slow}}
  - {{name: slow2, path_prefix: /slow2, upstream: a, rate_limit: slow}}
  - {{name: keyed, path_prefix: /keyed, upstream: a, rate_limit: by-key}}
  - {{name: shared, path_prefix: /shared, upstream: a, rate_limit: shared}}
  - {{name: both, path_prefix: /both, upstream: a, rate_limit: [wide, slow]}}
  - {{name: free, path_prefix: /free, upstream: a}}
  - {{name: ietf, path_prefix: /ietf, upstream: a, rate_limit: plain}}
  - {{name: silent, path_prefix: /silent, upstream: a, rate_limit: silent}}
  - {{name: exact6, path_prefix: /exact6, upstream: a, rate_limit: exact6}}
"#
    ))
}

fn statuses(gw: &Gateway, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| gw.send("GET", path, headers).status)
        .collect()
}

fn admitted(s: &[u16]) -> usize {
    s.iter().filter(|&&c| c == 200).count()
}

#[test]
fn burst_then_sustained_rate_admits_exact_counts() {
    let gw = gateway("");
    let t0 = Instant::now();
    let first = statuses(&gw, "/slow/x", &[], 8);
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "too slow to be exact"
    );
    assert_eq!(first, [200, 200, 200, 429, 429, 429, 429, 429]);
    // One token every 500 ms: after 1 s, exactly two more pass.
    std::thread::sleep(Duration::from_millis(1000));
    let t1 = Instant::now();
    let second = statuses(&gw, "/slow/x", &[], 5);
    assert!(t1.elapsed() < Duration::from_millis(400));
    assert_eq!(admitted(&second), 2, "{second:?}");
}

#[test]
fn headers_on_success_and_on_429() {
    let gw = gateway("");
    let r = gw.get("/slow/x");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), Some("\"slow\";q=2;w=1"));
    assert_eq!(r.header("ratelimit"), Some("\"slow\";r=2;t=1"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
    assert_eq!(r.header("x-ratelimit-reset"), Some("1"));
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(
        r.json()["service"],
        "a",
        "a success is the upstream's answer"
    );
    gw.get("/slow/x");
    let r = gw.get("/slow/x");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("ratelimit"), Some("\"slow\";r=0;t=2"));
    let r = gw.get("/slow/x");
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"slow\";q=2;w=1"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert!(r
        .header("ratelimit")
        .is_some_and(|v| v.starts_with("\"slow\";r=0;t=")));
    // A route without a limit carries no RateLimit headers.
    let r = gw.get("/free/x");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), None);
    assert_eq!(r.header("x-ratelimit-limit"), None);
    // By default only the IETF pair; `headers: none` reports nothing (the limit still holds).
    let r = gw.get("/ietf/x");
    assert_eq!(r.header("ratelimit-policy"), Some("\"plain\";q=100;w=60"));
    assert_eq!(r.header("ratelimit"), Some("\"plain\";r=99;t=1"));
    assert_eq!(r.header("x-ratelimit-limit"), None);
    assert_eq!(r.header("x-ratelimit-remaining"), None);
    let r = gw.get("/silent/x");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), None);
    assert_eq!(r.header("ratelimit"), None);
    assert_eq!(r.header("x-ratelimit-limit"), None);
}

#[test]
fn retry_after_is_honoured() {
    let gw = gateway("");
    let s = statuses(&gw, "/slow/x", &[], 4);
    assert_eq!(s[3], 429);
    let r = gw.get("/slow/x");
    assert_eq!(r.status, 429);
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait));
    std::thread::sleep(Duration::from_secs(wait));
    assert_eq!(gw.get("/slow/x").status, 200);
}

#[test]
fn keys_and_routes_are_isolated() {
    let gw = gateway("");
    // header:X-Api-Key: one key's budget does not touch another's.
    assert_eq!(
        statuses(&gw, "/keyed", &[("X-Api-Key", "k1")], 3),
        [200, 200, 429]
    );
    assert_eq!(
        statuses(&gw, "/keyed", &[("X-Api-Key", "k2")], 2),
        [200, 200]
    );
    // Without the header the client IP is the key: its own budget.
    assert_eq!(statuses(&gw, "/keyed", &[], 3), [200, 200, 429]);
    // The same policy on another route is another budget.
    assert_eq!(admitted(&statuses(&gw, "/slow/x", &[], 5)), 3);
    assert_eq!(admitted(&statuses(&gw, "/slow2/x", &[], 5)), 3);
    // key: route is one budget for every client of the route.
    assert_eq!(statuses(&gw, "/shared", &[("X-Api-Key", "a")], 1), [200]);
    assert_eq!(
        statuses(&gw, "/shared", &[("X-Api-Key", "b")], 2),
        [200, 429]
    );
}

#[test]
fn every_listed_policy_must_pass() {
    let gw = gateway("");
    let s = statuses(&gw, "/both/x", &[], 5);
    assert_eq!(admitted(&s), 3, "{s:?}");
    let r = gw.get("/both/x");
    // The denying policy is the one reported.
    assert_eq!(r.header("ratelimit-policy"), Some("\"slow\";q=2;w=1"));
}

#[test]
fn spoofed_forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let gw = gateway("");
    let s: Vec<u16> = (0..6)
        .map(|i| {
            let ip = format!("10.0.0.{i}");
            gw.send(
                "GET",
                "/slow/x",
                &[
                    ("X-Forwarded-For", &ip),
                    ("X-Real-IP", &ip),
                    ("Forwarded", &format!("for={ip}")),
                ],
            )
            .status
        })
        .collect();
    assert_eq!(s, [200, 200, 200, 429, 429, 429]);
}

#[test]
fn trusted_proxy_forwarded_for_is_the_key() {
    let gw = gateway("trusted_proxies: [\"127.0.0.0/8\"]");
    let a = [("X-Forwarded-For", "203.0.113.7")];
    assert_eq!(statuses(&gw, "/slow/x", &a, 4), [200, 200, 200, 429]);
    let b = [("X-Forwarded-For", "203.0.113.8")];
    assert_eq!(statuses(&gw, "/slow/x", &b, 1), [200]);
    // IPv6 clients share a budget per /64.
    let v6a = [("X-Forwarded-For", "2001:db8:1:2::1")];
    let v6b = [("X-Forwarded-For", "2001:db8:1:2:ffff::9")];
    let v6c = [("X-Forwarded-For", "2001:db8:1:3::1")];
    assert_eq!(statuses(&gw, "/slow/x", &v6a, 3), [200, 200, 200]);
    assert_eq!(statuses(&gw, "/slow/x", &v6b, 1), [429]);
    assert_eq!(statuses(&gw, "/slow/x", &v6c, 1), [200]);
    // ipv6_prefix: 128 keys each address on its own.
    assert_eq!(statuses(&gw, "/exact6", &v6a, 2), [200, 429]);
    assert_eq!(statuses(&gw, "/exact6", &v6b, 1), [200]);
}

#[test]
fn config_errors_name_the_key_path() {
    let base = "upstreams:\n  a: {targets: [\"127.0.0.1:1\"]}\n";
    let cases = [
        (
            "rate_limits:\n  per-client: {requests: 1, per: 1s}\n  login: {requests: 1, per: 1s}\nroutes:\n  - {name: r, path_prefix: /, upstream: a, rate_limit: per-clien}\n",
            "routes[0].rate_limit: unknown rate limit \"per-clien\" (known: login, per-client)",
        ),
        (
            "rate_limits:\n  login: {requests: 1, per: soon}\n",
            "rate_limits.login.per: bad duration",
        ),
        (
            "rate_limits:\n  login: {requests: 1, per: 1s, store: redis}\n",
            "rate_limits.login.store: store: redis needs a top-level redis section",
        ),
        (
            "rate_limits:\n  login: {requests: 1, per: 1s, key: cookie}\n",
            "rate_limits.login.key: unknown key \"cookie\"",
        ),
        (
            "rate_limits:\n  login: {requests: 0, per: 1s, burst: 0}\n",
            "rate_limits.login.burst: must be at least 1",
        ),
        (
            "rate_limits:\n  login: {requests: 1, per: 1s, sync: 10ms}\n",
            "rate_limits.login.sync: only for store: redis",
        ),
        (
            "redis: {url: \"redis://127.0.0.1:6379\"}\nrate_limits:\n  login: {requests: 1, per: 1s, store: redis, sync: 0s}\n",
            "rate_limits.login.sync: must be greater than 0",
        ),
        (
            "rate_limits:\n  login: {requests: 1, per: 1s, store: redis, sync: often}\n",
            "rate_limits.login.sync",
        ),
        (
            "redis: {url: \"redis://127.0.0.1:6379\", on_error: maybe}\n",
            "redis.on_error: unknown value \"maybe\"",
        ),
    ];
    for (yaml, want) in cases {
        let (code, out) = check_config(&format!("{base}{yaml}"));
        assert_eq!(code, 1, "{yaml}\n{out}");
        assert!(out.contains(want), "{yaml}\nwant {want}\ngot {out}");
    }
    let ok = "rate_limits:\n  a: {requests: 5, per: 1m, burst: 2, key: consumer}\n  b: {requests: 5, per: 1m, key: \"claim:sub\"}\nroutes:\n  - {name: r, path_prefix: /, upstream: a, rate_limit: [a, b]}\n";
    let (code, out) = check_config(&format!("{base}{ok}"));
    assert_eq!(code, 0, "{out}");
}

/// At `burst: 1` the time between a token coming free and the next request reaching the
/// decision is not lost: far above the limit, the rate is what the policy says.
#[test]
fn burst_one_admits_the_configured_rate_under_load() {
    let a = echo("a");
    let gw = Gateway::start(&format!(
        "upstreams:\n  a: {{targets: [\"{a}\"]}}\nrate_limits:\n  p: {{requests: 1000, per: 1s, burst: 1, key: route}}\nroutes:\n  - {{name: p, path_prefix: /p, upstream: a, rate_limit: p}}\n"
    ));
    let secs = Duration::from_secs(3);
    let expected = 1000.0 * secs.as_secs_f64() + 1.0;
    let ok = best_of_two(|| drive(&[&gw], "/p", 4, secs), expected, 0.1);
    assert_near(ok, expected, 0.1);
}
