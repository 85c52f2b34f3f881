//! Series read at scrape time from the state of other parts (upstreams' health, breakers and
//! in-flight counts, token introspection, mirrors), rather than counted by [`super::Metrics`]:
//! nothing is recorded on the request path for them.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::label;
use crate::upstream::Upstream;

/// The help and type lines of `tollgate_introspection_total`.
const INTROSPECTION_HEAD: &str = "# HELP tollgate_introspection_total Token introspection, by \
    provider: hit (answered without a call: remembered, or another request's call), miss (the \
    endpoint was asked and answered), error (it could not answer; the request got 503).\n\
    # TYPE tollgate_introspection_total counter\n";

/// `tollgate_introspection_total`, when a provider introspects.
pub fn render_introspection(o: &mut String, auth: &crate::policy::auth::Auth) {
    let mut head = Some(INTROSPECTION_HEAD);
    for (name, i) in auth.introspections() {
        if let Some(h) = head.take() {
            o.push_str(h);
        }
        let name = label(name);
        for (result, n) in i.counts() {
            let _ = writeln!(
                o,
                "tollgate_introspection_total{{provider=\"{name}\",result=\"{result}\"}} {n}"
            );
        }
    }
}

/// `tollgate_mirror_requests_total`, when a route mirrors: each route's copies by outcome.
pub fn render_mirrors(o: &mut String, mirrors: &[(&str, &crate::mirror::Mirror)]) {
    if mirrors.is_empty() {
        return;
    }
    o.push_str("# HELP tollgate_mirror_requests_total Copies of requests sent to a route's mirror, by outcome: sent, dropped (too many in flight), failed (no answer in time), or the shadow's status class.\n");
    o.push_str("# TYPE tollgate_mirror_requests_total counter\n");
    for (route, m) in mirrors {
        let route = label(route);
        for (outcome, n) in m.counts() {
            let _ = writeln!(
                o,
                "tollgate_mirror_requests_total{{route=\"{route}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    o.push_str("# HELP tollgate_mirror_bodies_too_large_total Mirrored requests whose body outgrew the mirror's max_body: copied without it.\n");
    o.push_str("# TYPE tollgate_mirror_bodies_too_large_total counter\n");
    for (route, m) in mirrors {
        let n = m.truncated.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(
            o,
            "tollgate_mirror_bodies_too_large_total{{route=\"{}\"}} {n}",
            label(route)
        );
    }
}

/// Backend health, circuit state and in-flight requests, read at scrape time from the same
/// state `/health` shows (nothing is recorded on the request path for them).
pub fn render_upstreams(o: &mut String, upstreams: &[Arc<Upstream>]) {
    use crate::upstream::breaker::State;
    let gauges: [(&str, &str, &str); 3] = [
        (
            "tollgate_backend_healthy",
            "gauge",
            "1 when the backend passes its active health checks (always 1 without them).",
        ),
        (
            "tollgate_backend_breaker_state",
            "gauge",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
        ),
        (
            "tollgate_backend_in_flight",
            "gauge",
            "Requests being sent to or answered by the backend now.",
        ),
    ];
    for (metric, kind, help) in gauges {
        let _ = writeln!(o, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for u in upstreams {
            let up = label(&u.name);
            for b in u.backends().iter() {
                let v = match metric {
                    "tollgate_backend_healthy" => u64::from(b.healthy()),
                    "tollgate_backend_breaker_state" => {
                        match u.breaker.as_ref().map(|c| b.breaker.state(c)) {
                            None | Some(State::Closed) => 0,
                            Some(State::Open) => 1,
                            Some(State::HalfOpen) => 2,
                        }
                    }
                    _ => b.inflight.load(Relaxed),
                };
                let _ = writeln!(
                    o,
                    "{metric}{{upstream=\"{up}\",backend=\"{}\"}} {v}",
                    b.addr
                );
            }
        }
    }
    o.push_str("# HELP tollgate_backend_health_changes_total Backend health state changes seen by the active checks, by upstream.\n");
    o.push_str("# TYPE tollgate_backend_health_changes_total counter\n");
    for u in upstreams {
        let _ = writeln!(
            o,
            "tollgate_backend_health_changes_total{{upstream=\"{}\"}} {}",
            label(&u.name),
            u.health_changes.load(Relaxed)
        );
    }
    o.push_str("# HELP tollgate_discovery_changes_total Backend set changes applied by discovery, by upstream and source (dns: resolve_every, srv, etcd).\n");
    o.push_str("# TYPE tollgate_discovery_changes_total counter\n");
    for u in upstreams {
        let source = match (&u.source, &u.discovery) {
            (Some(s), _) => s.label(),
            (None, Some(_)) => "dns",
            (None, None) => continue,
        };
        let _ = writeln!(
            o,
            "tollgate_discovery_changes_total{{upstream=\"{}\",source=\"{source}\"}} {}",
            label(&u.name),
            u.discovery_changes.load(Relaxed)
        );
    }
}
