//! Prometheus metrics, lock-free on the hot path.
//!
//! Every series is created at load: counters and histogram buckets are plain atomics indexed by
//! (route, method, status class), so recording a request is a handful of relaxed atomic adds,
//! with no map lookup and no lock. Labels are route and upstream names from the config, never
//! raw paths, so cardinality is bounded by the config. `/metrics` renders the text format,
//! leaving out request series that never moved.
//!
//! Auth failures (by route and [`Reason`]) and 429s (by route and policy) are counted the
//! same way, in slots laid out at load for the routes that authenticate or limit. Backend
//! health, circuit state and in-flight counts are not recorded here at all:
//! [`render_upstreams`] (`scrape.rs`) reads them at scrape time from the state `/health` shows.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::policy::auth::Reason;

mod carry;
mod scrape;

pub use scrape::{render_introspection, render_mirrors, render_upstreams};

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
/// Upper bounds in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn method_slot(m: &Method) -> usize {
    METHODS[..7]
        .iter()
        .position(|x| *x == m.as_str())
        .unwrap_or(7)
}

fn class_slot(status: u16) -> usize {
    match status {
        100..=599 => (status / 100 - 1) as usize,
        _ => 5,
    }
}

#[derive(Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0u64;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
        }
        cum += self.buckets[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cum}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cum}");
    }
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
pub(crate) fn label(s: &str) -> Arc<str> {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// What the metrics need to know about the config, to lay out every series at load.
#[derive(Debug, Default, Clone)]
pub struct Layout {
    /// Route names, by route id.
    pub routes: Vec<Arc<str>>,
    /// Whether each route authenticates.
    pub auth: Vec<bool>,
    /// Rate-limit policy names, by policy id.
    pub policies: Vec<Arc<str>>,
    /// The policies of each route.
    pub limits: Vec<Vec<usize>>,
    /// Whether each route forwards WebSocket upgrades.
    pub websocket: Vec<bool>,
}

impl Layout {
    pub fn of(
        routes: &[crate::policy::router::Route],
        limits: &crate::policy::limit::Limits,
    ) -> Layout {
        Layout {
            routes: routes.iter().map(|r| r.name.clone()).collect(),
            auth: routes.iter().map(|r| r.auth.is_some()).collect(),
            policies: limits
                .policies
                .iter()
                .map(|p| Arc::from(&*p.name))
                .collect(),
            limits: routes.iter().map(|r| r.rate_limits.clone()).collect(),
            websocket: routes.iter().map(|r| r.websocket.is_some()).collect(),
        }
    }
}

/// The gateway's metrics. Route slot `routes.len()` is "no route matched" (label `-`).
pub struct Metrics {
    /// Route names as label values.
    routes: Vec<Arc<str>>,
    layout: Layout,
    /// Route × [`Reason`].
    auth_failures: Box<[AtomicU64]>,
    /// Route × policy.
    rate_limited: Box<[AtomicU64]>,
    requests: Box<[AtomicU64]>,
    duration: Box<[Histogram]>,
    upstream_duration: Box<[Histogram]>,
    in_flight: AtomicI64,
    /// Open WebSocket tunnels, by route.
    websockets: Box<[AtomicI64]>,
    /// Local answers by error code (the JSON contract's `error`).
    rejects: Box<[(&'static str, AtomicU64)]>,
    /// Connections a `proxy_protocol` listener closed, by reason ([`PROXY_REFUSALS`]); `None`
    /// without such a listener (no series then).
    proxy_refused: Option<Box<[AtomicU64]>>,
}

/// `tollgate_proxy_protocol_refused_total`'s reasons (`crate::conn::proxy_protocol::Refused`).
pub const PROXY_REFUSALS: [&str; 4] = ["untrusted", "timeout", "closed", "invalid"];

impl Metrics {
    /// Metrics for routes without auth or limits.
    pub fn new(routes: Vec<Arc<str>>) -> Self {
        let n = routes.len();
        Metrics::with_layout(Layout {
            routes,
            auth: vec![false; n],
            policies: Vec::new(),
            limits: vec![Vec::new(); n],
            websocket: vec![false; n],
        })
    }

    pub fn with_layout(layout: Layout) -> Self {
        let routes: Vec<Arc<str>> = layout.routes.iter().map(|r| label(r)).collect();
        let slots = routes.len() + 1;
        let codes = crate::error::Reject::ALL
            .iter()
            .map(|r| (r.code(), AtomicU64::new(0)));
        Metrics {
            requests: (0..slots * METHODS.len() * CLASSES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            duration: (0..slots).map(|_| Histogram::default()).collect(),
            upstream_duration: (0..slots).map(|_| Histogram::default()).collect(),
            in_flight: AtomicI64::new(0),
            websockets: (0..routes.len()).map(|_| AtomicI64::new(0)).collect(),
            rejects: codes.collect(),
            proxy_refused: None,
            auth_failures: (0..routes.len() * Reason::ALL.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            rate_limited: (0..routes.len() * layout.policies.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            routes,
            layout,
        }
    }

    /// A credential was refused on `route` (401, or 403 by consumers/claims).
    pub fn auth_failed(&self, route: usize, reason: Reason) {
        if let Some(c) = self
            .auth_failures
            .get(route * Reason::ALL.len() + reason.index())
        {
            c.fetch_add(1, Relaxed);
        }
    }

    /// A request on `route` was refused (429) by `policy`.
    pub fn rate_limited(&self, route: usize, policy: usize) {
        let n = self.layout.policies.len();
        if policy < n {
            if let Some(c) = self.rate_limited.get(route * n + policy) {
                c.fetch_add(1, Relaxed);
            }
        }
    }

    fn slot(&self, route: Option<usize>) -> usize {
        route
            .filter(|r| *r < self.routes.len())
            .unwrap_or(self.routes.len())
    }

    /// The requests route `route` answered so far, by status class (`1xx` to `5xx`, and
    /// `none` for those that got no answer).
    pub fn route_classes(&self, route: usize) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let slot = self.slot(Some(route));
        CLASSES.iter().enumerate().map(move |(c, class)| {
            let n = (0..METHODS.len())
                .map(|m| {
                    self.requests[(slot * METHODS.len() + m) * CLASSES.len() + c].load(Relaxed)
                })
                .sum();
            (*class, n)
        })
    }

    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// Pairs with `request_started`.
    pub fn request_done(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// A WebSocket tunnel opened (`+1`) or closed (`-1`) on `route`.
    pub fn websocket(&self, route: usize, delta: i64) {
        if let Some(g) = self.websockets.get(route) {
            g.fetch_add(delta, Relaxed);
        }
    }

    /// Record a finished request (called once, from `logging`).
    pub fn request_finished(
        &self,
        route: Option<usize>,
        method: &Method,
        status: u16,
        total: Duration,
        upstream: Option<Duration>,
    ) {
        let slot = self.slot(route);
        self.count(slot, method_slot(method), status, total);
        if let Some(u) = upstream {
            self.upstream_duration[slot].observe(u);
        }
    }

    /// Record a request refused at its head: no route, its method not known (`OTHER`).
    pub fn head_refused(&self, status: u16, total: Duration) {
        self.count(self.slot(None), METHODS.len() - 1, status, total);
    }

    fn count(&self, slot: usize, method: usize, status: u16, total: Duration) {
        let i = (slot * METHODS.len() + method) * CLASSES.len() + class_slot(status);
        self.requests[i].fetch_add(1, Relaxed);
        self.duration[slot].observe(total);
    }

    /// Count the refusals of `proxy_protocol` listeners (there are some).
    pub fn with_proxy_protocol(mut self, some: bool) -> Self {
        self.proxy_refused =
            some.then(|| PROXY_REFUSALS.iter().map(|_| AtomicU64::new(0)).collect());
        self
    }

    /// A `proxy_protocol` listener closed a connection, for `reason` (one of
    /// [`PROXY_REFUSALS`]).
    pub fn proxy_protocol_refused(&self, reason: &str) {
        let slot = PROXY_REFUSALS.iter().position(|r| *r == reason);
        if let (Some(counts), Some(i)) = (&self.proxy_refused, slot) {
            counts[i].fetch_add(1, Relaxed);
        }
    }

    pub fn rejected(&self, code: &str) {
        if let Some((_, c)) = self.rejects.iter().find(|(k, _)| *k == code) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus text exposition; `extra` appends other modules' series.
    pub fn render(&self, extra: &dyn Fn(&mut String)) -> String {
        let mut o = String::with_capacity(4096);
        o.push_str("# HELP tollgate_requests_total Requests by route, method and status class.\n");
        o.push_str("# TYPE tollgate_requests_total counter\n");
        let name = |slot: usize| self.routes.get(slot).map_or("-", |r| &**r);
        for slot in 0..=self.routes.len() {
            for (m, method) in METHODS.iter().enumerate() {
                for (c, class) in CLASSES.iter().enumerate() {
                    let v =
                        self.requests[(slot * METHODS.len() + m) * CLASSES.len() + c].load(Relaxed);
                    if v > 0 {
                        let _ = writeln!(
                            o,
                            "tollgate_requests_total{{route=\"{}\",method=\"{method}\",status=\"{class}\"}} {v}",
                            name(slot)
                        );
                    }
                }
            }
        }
        for (metric, help, hs) in [
            (
                "tollgate_request_duration_seconds",
                "Time from request head to the end of the response, by route.",
                &self.duration,
            ),
            (
                "tollgate_upstream_duration_seconds",
                "Time from picking a backend to its response head, by route.",
                &self.upstream_duration,
            ),
        ] {
            let _ = writeln!(o, "# HELP {metric} {help}\n# TYPE {metric} histogram");
            for (slot, h) in hs.iter().enumerate() {
                if h.buckets.iter().any(|b| b.load(Relaxed) > 0) {
                    h.render(&mut o, metric, &format!("route=\"{}\"", name(slot)));
                }
            }
        }
        o.push_str("# HELP tollgate_in_flight_requests Requests being handled now.\n");
        o.push_str("# TYPE tollgate_in_flight_requests gauge\n");
        let _ = writeln!(
            o,
            "tollgate_in_flight_requests {}",
            self.in_flight.load(Relaxed).max(0)
        );
        o.push_str(
            "# HELP tollgate_local_answers_total Answers the gateway made itself, by error code.\n",
        );
        o.push_str("# TYPE tollgate_local_answers_total counter\n");
        for (code, c) in self.rejects.iter() {
            let _ = writeln!(
                o,
                "tollgate_local_answers_total{{error=\"{code}\"}} {}",
                c.load(Relaxed)
            );
        }
        if let Some(counts) = &self.proxy_refused {
            o.push_str("# HELP tollgate_proxy_protocol_refused_total Connections of proxy_protocol listeners closed before HTTP, by reason: untrusted (peer not in trusted_proxies), timeout, closed (ended before a whole header), invalid (not a PROXY header).\n");
            o.push_str("# TYPE tollgate_proxy_protocol_refused_total counter\n");
            for (reason, c) in PROXY_REFUSALS.iter().zip(counts.iter()) {
                let _ = writeln!(
                    o,
                    "tollgate_proxy_protocol_refused_total{{reason=\"{reason}\"}} {}",
                    c.load(Relaxed)
                );
            }
        }
        o.push_str("# HELP tollgate_auth_failures_total Requests refused by authentication or authorization, by route and reason.\n");
        o.push_str("# TYPE tollgate_auth_failures_total counter\n");
        for (slot, _) in self.layout.auth.iter().enumerate().filter(|(_, a)| **a) {
            for r in Reason::ALL {
                let v = self.auth_failures[slot * Reason::ALL.len() + r.index()].load(Relaxed);
                let _ = writeln!(
                    o,
                    "tollgate_auth_failures_total{{route=\"{}\",reason=\"{}\"}} {v}",
                    name(slot),
                    r.as_str()
                );
            }
        }
        o.push_str(
            "# HELP tollgate_rate_limited_total Requests refused with 429, by route and policy.\n",
        );
        o.push_str("# TYPE tollgate_rate_limited_total counter\n");
        let n = self.layout.policies.len();
        for (slot, ids) in self.layout.limits.iter().enumerate() {
            for &p in ids.iter().filter(|p| **p < n) {
                let v = self.rate_limited[slot * n + p].load(Relaxed);
                let _ = writeln!(
                    o,
                    "tollgate_rate_limited_total{{route=\"{}\",policy=\"{}\"}} {v}",
                    name(slot),
                    label(&self.layout.policies[p])
                );
            }
        }
        o.push_str("# HELP tollgate_websocket_connections Open WebSocket tunnels, by route.\n");
        o.push_str("# TYPE tollgate_websocket_connections gauge\n");
        for (slot, _) in self
            .layout
            .websocket
            .iter()
            .enumerate()
            .filter(|(_, w)| **w)
        {
            let v = self.websockets[slot].load(Relaxed).max(0);
            let _ = writeln!(
                o,
                "tollgate_websocket_connections{{route=\"{}\"}} {v}",
                name(slot)
            );
        }
        extra(&mut o);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_renders() {
        let m = Metrics::new(vec!["api".into()]);
        m.request_started();
        m.request_finished(
            Some(0),
            &Method::GET,
            200,
            Duration::from_millis(3),
            Some(Duration::from_millis(2)),
        );
        m.request_done();
        m.request_finished(
            None,
            &Method::from_bytes(b"PURGE").unwrap(),
            404,
            Duration::from_micros(100),
            None,
        );
        m.rejected("no_route");
        let t = m.render(&|_| {});
        assert!(
            t.contains("tollgate_requests_total{route=\"api\",method=\"GET\",status=\"2xx\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("tollgate_requests_total{route=\"-\",method=\"OTHER\",status=\"4xx\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("tollgate_request_duration_seconds_bucket{route=\"api\",le=\"0.0025\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("tollgate_request_duration_seconds_bucket{route=\"api\",le=\"0.005\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("tollgate_upstream_duration_seconds_count{route=\"api\"} 1"),
            "{t}"
        );
        assert!(t.contains("tollgate_in_flight_requests 0"), "{t}");
        assert!(
            t.contains("tollgate_local_answers_total{error=\"no_route\"} 1"),
            "{t}"
        );
    }

    #[test]
    fn auth_and_limit_series_exist_from_load_for_configured_routes_only() {
        let m = Metrics::with_layout(Layout {
            routes: vec!["open".into(), "we\"ird".into()],
            auth: vec![false, true],
            policies: vec!["p0".into(), "p1".into()],
            limits: vec![vec![], vec![1]],
            websocket: vec![true, false],
        });
        let t = m.render(&|_| {});
        assert!(
            t.contains("tollgate_auth_failures_total{route=\"we\\\"ird\",reason=\"expired\"} 0"),
            "{t}"
        );
        assert!(!t.contains("route=\"open\",reason"), "{t}");
        assert!(
            t.contains("tollgate_rate_limited_total{route=\"we\\\"ird\",policy=\"p1\"} 0"),
            "{t}"
        );
        assert!(!t.contains("policy=\"p0\""), "{t}");
        m.auth_failed(1, Reason::Expired);
        m.auth_failed(1, Reason::Forbidden);
        m.rate_limited(1, 1);
        m.rate_limited(7, 9);
        m.websocket(0, 1);
        let t = m.render(&|_| {});
        assert!(
            t.contains("tollgate_websocket_connections{route=\"open\"} 1"),
            "{t}"
        );
        assert!(!t.contains("websocket_connections{route=\"we"), "{t}");
        assert!(
            t.contains("tollgate_auth_failures_total{route=\"we\\\"ird\",reason=\"expired\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("tollgate_auth_failures_total{route=\"we\\\"ird\",reason=\"forbidden\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("tollgate_rate_limited_total{route=\"we\\\"ird\",policy=\"p1\"} 1"),
            "{t}"
        );
    }

    #[test]
    fn proxy_protocol_refusals_by_reason_only_with_such_listeners() {
        let reasons: Vec<_> = crate::conn::proxy_protocol::Refused::ALL
            .iter()
            .map(|r| r.label())
            .collect();
        assert_eq!(reasons, PROXY_REFUSALS);
        let none = Metrics::new(vec![]);
        none.proxy_protocol_refused("untrusted");
        assert!(!none.render(&|_| {}).contains("proxy_protocol"));
        let m = Metrics::new(vec![]).with_proxy_protocol(true);
        m.proxy_protocol_refused("untrusted");
        let t = m.render(&|_| {});
        assert!(
            t.contains("tollgate_proxy_protocol_refused_total{reason=\"untrusted\"} 1")
                && t.contains("tollgate_proxy_protocol_refused_total{reason=\"invalid\"} 0"),
            "{t}"
        );
    }
}
