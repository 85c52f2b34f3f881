//! `GET /api/status`: what the dashboard draws, read now. Routes with their rules and
//! counters, upstreams with every backend's state and counters, and the recent refusals.
//! Counters are totals: the page takes rates from their differences between polls.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime};

use serde_json::{json, Value};

use crate::gateway::Gateway;
use crate::observe::refusals::Refusal;
use crate::observe::Observe;
use crate::policy::router::Route;

pub fn status(gw: &Gateway, obs: &Observe, started: Instant) -> Value {
    let routes: Vec<Value> = gw
        .router
        .routes()
        .iter()
        .map(|r| route(gw, obs, r))
        .collect();
    let upstreams: Vec<Value> = gw.upstreams.iter().map(|u| upstream(u)).collect();
    let refusals: Vec<Value> = obs.refusals.recent().iter().map(refusal).collect();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    json!({
        "time_ms": now.as_millis() as u64,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_seconds": started.elapsed().as_secs(),
        "routes": routes,
        "upstreams": upstreams,
        "refusals_kept": gw.admin.as_ref().map_or(0, |a| a.refusals_kept),
        "refusals": refusals,
    })
}

fn route(gw: &Gateway, obs: &Observe, r: &Route) -> Value {
    let requests: serde_json::Map<String, Value> = obs
        .metrics
        .route_classes(r.id)
        .map(|(class, n)| (class.to_owned(), n.into()))
        .collect();
    let methods = r.methods.map(|m| m.allow_header());
    let auth = r.auth.as_ref().map(|a| {
        json!({
            "providers": a.providers.iter().map(|p| gw.auth.describe(*p)).collect::<Vec<_>>(),
            "consumers": a.consumers,
        })
    });
    let limits: Vec<String> = r
        .rate_limits
        .iter()
        .map(|p| gw.rate_limits.policies[*p].describe())
        .collect();
    let split = r.split.as_ref().map(|s| {
        s.branches
            .iter()
            .map(|(u, w)| json!({"upstream": &*gw.upstreams[*u].name, "weight": w}))
            .collect::<Vec<_>>()
    });
    json!({
        "name": &*r.name,
        "host": r.host.as_ref().map(|h| h.describe()),
        "path_prefix": r.prefix,
        "methods": methods,
        "match": r.match_rules.as_ref().map(|m| m.describe()),
        "priority": r.priority,
        "auth": auth,
        "rate_limits": limits,
        "upstream": split.is_none().then(|| &*gw.upstreams[r.upstream].name),
        "split": split,
        "requests": requests,
    })
}

fn upstream(u: &crate::upstream::Upstream) -> Value {
    let mut v = crate::upstream::health_json(u);
    let counters = u
        .backends()
        .iter()
        .map(|b| (b.answered.load(Relaxed), b.failed.load(Relaxed)))
        .collect::<Vec<_>>();
    if let Some(list) = v["backends"].as_array_mut() {
        for (b, (answered, failed)) in list.iter_mut().zip(counters) {
            b["answered"] = answered.into();
            b["failed"] = failed.into();
        }
    }
    v["name"] = (*u.name).into();
    v
}

fn refusal(r: &Refusal) -> Value {
    json!({
        "time": humantime::format_rfc3339_millis(r.at).to_string(),
        "status": r.status,
        "method": &*r.method,
        "path": &*r.path,
        "route": r.route.as_deref(),
        "client_ip": r.client_ip.map(|ip| ip.to_string()),
        "consumer": r.consumer.as_deref(),
        "reason": r.reason,
        "request_id": &*r.request_id,
    })
}
