//! The route table: each `routes[i]` compiled against the upstreams, limits and auth
//! providers already compiled, every error with its key path.

use std::collections::BTreeMap;

use super::compile::cidrs;
use super::file::RouteFile;
use crate::config::ConfigErrors;
use crate::policy::guard::{IpRules, Limits};
use crate::policy::router::{normalise_prefix, HostPattern, MethodSet, Route};
use crate::policy::split::{Split, Sticky};

pub(super) fn routes(
    files: Vec<Option<RouteFile>>,
    (upstreams, broken): (&[String], &[String]),
    limits: &Limits,
    (rate_limits, limit_names): (&crate::policy::limit::Limits, &[String]),
    auth: &crate::policy::auth::Auth,
    errs: &mut ConfigErrors,
) -> Vec<Route> {
    let mut out = Vec::new();
    let mut seen_names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, r) in files.into_iter().enumerate() {
        let Some(r) = r else { continue };
        let base = format!("routes[{i}]");
        let before = errs.0.len();
        if r.name.trim().is_empty() {
            errs.push(format!("{base}.name"), "must not be empty");
        } else if let Some(j) = seen_names.insert(r.name.clone(), i) {
            errs.push(
                format!("{base}.name"),
                format!("duplicate route name {:?} (also routes[{j}])", r.name),
            );
        }
        let host = r.host.as_deref().and_then(|h| {
            let p = HostPattern::parse(h);
            if p.is_none() {
                errs.push(
                    format!("{base}.host"),
                    format!("{h:?} is not a host name or *.wildcard"),
                );
            }
            p
        });
        if !r.path_prefix.starts_with('/') {
            errs.push(
                format!("{base}.path_prefix"),
                format!("{:?} must start with /", r.path_prefix),
            );
        } else if let Err(e) = crate::policy::path::normalise(&r.path_prefix) {
            errs.push(format!("{base}.path_prefix"), e.message());
        } else if crate::policy::path::normalise(&r.path_prefix).is_ok_and(|n| n != r.path_prefix) {
            errs.push(
                format!("{base}.path_prefix"),
                format!(
                    "{:?} is not in normal form (no '.', '..', '//' or escapes)",
                    r.path_prefix
                ),
            );
        }
        let methods = r.methods.as_ref().map(|ms| {
            let mut set = MethodSet::default();
            if ms.is_empty() {
                errs.push(
                    format!("{base}.methods"),
                    "must list at least one method, or be left out for all",
                );
            }
            for (j, m) in ms.iter().enumerate() {
                if !set.insert_name(m) {
                    errs.push(
                        format!("{base}.methods[{j}]"),
                        format!("unknown method {m:?} (one of: {})", MethodSet::ALL_KNOWN),
                    );
                }
            }
            set
        });
        let (upstream, split) = route_upstreams(&base, &r, (upstreams, broken), errs);
        let response_headers = crate::policy::transform::config::response_headers(
            &format!("{base}.response_headers"),
            &r.name,
            &r.response_headers,
            errs,
        );
        let max_body = match r.max_body {
            Some(s) if s.0 == 0 => {
                errs.push(format!("{base}.max_body"), "must be greater than 0");
                0
            }
            Some(s) => s.0,
            None => limits.max_body,
        };
        let cors = r
            .cors
            .and_then(|c| crate::policy::cors::Cors::compile(&format!("{base}.cors"), c, errs));
        let ip_rules = (r.ip_allow.is_some() || r.ip_deny.is_some()).then(|| IpRules {
            allow: cidrs(
                &format!("{base}.ip_allow"),
                r.ip_allow.as_deref().unwrap_or_default(),
                errs,
            ),
            deny: cidrs(
                &format!("{base}.ip_deny"),
                r.ip_deny.as_deref().unwrap_or_default(),
                errs,
            ),
        });
        let route_auth = crate::policy::auth::config::route(
            &base,
            auth,
            r.auth.as_ref(),
            r.consumers.as_ref(),
            r.claims.as_ref(),
            errs,
        );
        let route_rate_limits = crate::policy::limit::config::route_limits(
            &base,
            r.rate_limit.as_ref(),
            rate_limits,
            limit_names,
            errs,
        );
        let websocket =
            crate::websocket::route_setting(&base, r.websocket, r.websocket_idle_timeout, errs);
        let compression = r
            .compression
            .and_then(|c| crate::compress::compile(&format!("{base}.compression"), c, errs));
        let rewrites = r.rewrite.is_some();
        let transform = crate::policy::transform::config::compile(
            &base,
            &r.name,
            crate::policy::transform::config::TransformFile {
                rewrite: r.rewrite,
                request_headers: r.request_headers,
                query: r.query,
            },
            r.strip_prefix,
            &auth.identity_headers,
            errs,
        );
        let match_rules = r.match_rules.and_then(|m| {
            crate::policy::router::matching::compile(&format!("{base}.match"), m, errs)
        });
        if errs.0.len() == before {
            out.push(Route {
                id: 0,
                name: r.name.as_str().into(),
                host,
                prefix: normalise_prefix(&r.path_prefix),
                methods,
                strip_prefix: r.strip_prefix.unwrap_or(!rewrites),
                upstream: upstream.unwrap_or_default(),
                split,
                response_headers,
                max_body,
                ip_rules,
                cors,
                rate_limits: route_rate_limits,
                auth: route_auth,
                websocket,
                compression,
                transform,
                match_rules,
                priority: r.priority.unwrap_or(0),
            });
        }
    }
    out
}

/// The route's upstream, or its `split` (whose first branch is the route's upstream); `None`
/// when one is unknown (an upstream in error has its own message: the route naming it is not
/// wrong).
fn route_upstreams(
    base: &str,
    r: &RouteFile,
    (upstreams, broken): (&[String], &[String]),
    errs: &mut ConfigErrors,
) -> (Option<usize>, Option<Split>) {
    let find = |path: String, name: &str, errs: &mut ConfigErrors| {
        let found = upstreams.iter().position(|u| u == name);
        if found.is_none() && !broken.iter().any(|b| b == name) {
            let known = if upstreams.is_empty() {
                "none defined".to_owned()
            } else {
                upstreams.join(", ")
            };
            errs.push(path, format!("unknown upstream {name:?} (known: {known})"));
        }
        found
    };
    let sticky = r.sticky.as_deref().and_then(|s| {
        let path = format!("{base}.sticky");
        if r.split.is_none() {
            errs.push(path, "only a route with a split has sticky callers");
            return None;
        }
        Sticky::parse(&path, s, errs)
    });
    if r.failover.is_some() && r.split.is_none() {
        errs.push(
            format!("{base}.failover"),
            "only a route with a split fails over",
        );
    }
    match (&r.upstream, &r.split) {
        (Some(u), None) => (find(format!("{base}.upstream"), u, errs), None),
        (None, Some(branches)) => {
            if branches.is_empty() {
                errs.push(format!("{base}.split"), "needs at least one branch");
                return (None, None);
            }
            let mut out = Vec::new();
            for (i, b) in branches.iter().enumerate() {
                let path = format!("{base}.split[{i}]");
                let weight = b.weight.unwrap_or(1);
                if weight == 0 {
                    errs.push(format!("{path}.weight"), "must be greater than 0");
                }
                if let Some(up) = find(format!("{path}.upstream"), &b.upstream, errs) {
                    out.push((up, weight));
                }
            }
            if out.len() != branches.len() {
                return (None, None);
            }
            let split = Split {
                branches: out,
                sticky,
                failover: r.failover.unwrap_or(true),
            };
            (Some(split.branches[0].0), Some(split))
        }
        (Some(_), Some(_)) => {
            errs.push(
                base,
                "upstream and split are exclusive: name one upstream, or split among several",
            );
            (None, None)
        }
        (None, None) => {
            errs.push(base, "needs an upstream or a split");
            (None, None)
        }
    }
}
