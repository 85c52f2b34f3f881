//! The one conversion from what the file says to what the proxy runs. It owns every config
//! error message: each names the key path and, where it can, says what would be valid.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

use super::file::{FileConfig, RouteFile, TimeoutsFile, UpstreamFile};
use super::ConfigErrors;
use crate::client::TrustedProxies;
use crate::router::{normalise_prefix, HostPattern, MethodSet, Route, Router};
use crate::upstream::{Timeouts, Upstream};

/// Everything the proxy runs, compiled and validated. The hot path only reads it.
#[derive(Debug)]
pub struct Gateway {
    pub listen: Vec<String>,
    pub admin: Option<String>,
    pub trusted_proxies: TrustedProxies,
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
    pub auth: crate::auth::Auth,
}

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// Headers tollgate owns on the response; a route may not override them.
const RESERVED_RESPONSE_HEADERS: &[&str] = &[
    "x-gateway",
    "x-request-id",
    "content-length",
    "transfer-encoding",
    "connection",
];

pub fn compile(file: FileConfig, errs: &mut ConfigErrors) -> Option<Gateway> {
    let before = errs.0.len();
    let listen = listen(file.listen, errs);
    let admin = file.admin.filter(|a| check_socket_addr("admin", a, errs));
    if let Some(a) = &admin {
        if listen.contains(a) {
            errs.push(
                "admin",
                format!("{a} is also in listen: give the admin endpoint its own address"),
            );
        }
    }
    let trusted_proxies = trusted(&file.trusted_proxies, errs);
    let auth = crate::auth::config::compile(file.consumers, file.auth, errs);
    not_yet(&file.rate_limits, "rate_limits", "rate limiting", errs);
    not_yet(&file.redis, "redis", "the Redis store", errs);

    let mut names = Vec::new();
    let mut upstreams = Vec::new();
    for (name, u) in file.upstreams {
        if let Some(up) = upstream(&name, u, errs) {
            names.push(name);
            upstreams.push(Arc::new(up));
        }
    }
    let routes = routes(file.routes, &names, &auth, errs);
    if errs.0.len() > before {
        return None;
    }
    let router = match Router::new(routes) {
        Ok(r) => r,
        Err(conflicts) => {
            for c in conflicts {
                errs.push(
                    format!("routes[{}]", c.route),
                    format!(
                        "same host, path_prefix and overlapping methods as routes[{}]: one of them could never match",
                        c.other
                    ),
                );
            }
            return None;
        }
    };
    if router.routes().is_empty() {
        log::warn!("config has no routes: every request will get 404 no_route");
    }
    Some(Gateway {
        listen,
        admin,
        trusted_proxies,
        router,
        upstreams,
        auth,
    })
}

fn not_yet(v: &Option<serde_yaml::Value>, path: &str, what: &str, errs: &mut ConfigErrors) {
    if v.is_some() {
        errs.push(
            path,
            format!("{what} is not supported yet in this version of tollgate; remove this section"),
        );
    }
}

fn listen(l: Option<Vec<String>>, errs: &mut ConfigErrors) -> Vec<String> {
    let l = l.unwrap_or_else(|| vec![DEFAULT_LISTEN.to_owned()]);
    if l.is_empty() {
        errs.push(
            "listen",
            "needs at least one address, e.g. [\"0.0.0.0:8080\"]",
        );
    }
    let mut seen = HashSet::new();
    for (i, a) in l.iter().enumerate() {
        let path = format!("listen[{i}]");
        if check_socket_addr(&path, a, errs) && !seen.insert(a.clone()) {
            errs.push(path, format!("{a} is listed twice"));
        }
    }
    l
}

fn check_socket_addr(path: &str, a: &str, errs: &mut ConfigErrors) -> bool {
    match a.parse::<SocketAddr>() {
        Ok(_) => true,
        Err(_) => {
            errs.push(
                path,
                format!("{a:?} is not an IP:port address (e.g. \"0.0.0.0:8080\" or \"[::]:8080\")"),
            );
            false
        }
    }
}

fn trusted(cidrs: &[String], errs: &mut ConfigErrors) -> TrustedProxies {
    let mut nets = Vec::new();
    for (i, c) in cidrs.iter().enumerate() {
        let parsed = c
            .parse::<IpNet>()
            .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => nets.push(n.trunc()),
            Err(_) => errs.push(
                format!("trusted_proxies[{i}]"),
                format!("{c:?} is not a CIDR or IP (e.g. \"10.0.0.0/8\", \"::1\")"),
            ),
        }
    }
    TrustedProxies::new(nets)
}

fn upstream(name: &str, u: UpstreamFile, errs: &mut ConfigErrors) -> Option<Upstream> {
    let base = format!("upstreams.{name}");
    let before = errs.0.len();
    if u.targets.is_empty() {
        errs.push(
            format!("{base}.targets"),
            "needs at least one target \"host:port\"",
        );
    }
    let mut targets = Vec::new();
    for (i, t) in u.targets.iter().enumerate() {
        let path = format!("{base}.targets[{i}]");
        if t.weight == 0 || t.weight > 1000 {
            errs.push(format!("{path}.weight"), "must be between 1 and 1000");
        }
        match resolve(&t.address) {
            Ok(addrs) => {
                for a in addrs {
                    if targets.iter().any(|(x, _)| *x == a) {
                        errs.push(&*path, format!("{a} is listed twice"));
                    } else {
                        targets.push((a, t.weight as usize));
                    }
                }
            }
            Err(m) => errs.push(path, m),
        }
    }
    match u.balance.as_deref() {
        None | Some("round_robin") => {}
        Some(b @ ("random" | "consistent_hash" | "least_conn")) => errs.push(
            format!("{base}.balance"),
            format!("{b} is not supported yet in this version of tollgate (supported: round_robin)"),
        ),
        Some(other) => errs.push(
            format!("{base}.balance"),
            format!("unknown balancing {other:?} (one of: round_robin, random, consistent_hash, least_conn)"),
        ),
    }
    if u.hash_key.is_some() {
        errs.push(
            format!("{base}.hash_key"),
            "only applies to balance: consistent_hash",
        );
    }
    if u.health_check.is_some() {
        errs.push(
            format!("{base}.health_check"),
            "active health checks are not supported yet in this version of tollgate",
        );
    }
    if u.circuit_breaker.is_some() {
        errs.push(
            format!("{base}.circuit_breaker"),
            "the circuit breaker is not supported yet in this version of tollgate",
        );
    }
    let timeouts = timeouts(&base, u.timeouts.unwrap_or_default(), errs);
    let retries = u.retries.unwrap_or(1);
    if retries > 10 {
        errs.push(format!("{base}.retries"), "must be between 0 and 10");
    }
    (errs.0.len() == before).then(|| Upstream::new(name, targets, timeouts, retries))
}

/// Resolve `host:port` once, at load. A name that does not resolve is a config error, never
/// a panic at request time.
fn resolve(addr: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} needs a port, e.g. \"{addr}:80\""));
    };
    if port.parse::<u16>().is_err() || host.is_empty() {
        return Err(format!("{addr:?} is not host:port"));
    }
    match addr.to_socket_addrs() {
        Ok(it) => {
            let v: Vec<_> = it.collect();
            if v.is_empty() {
                Err(format!("{host:?} resolved to no address"))
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(format!("cannot resolve {host:?}: {e}")),
    }
}

fn timeouts(base: &str, t: TimeoutsFile, errs: &mut ConfigErrors) -> Timeouts {
    let d = Timeouts::default();
    let mut check = |key: &str, v: Option<super::file::Dur>, default| match v {
        Some(v) if v.0.is_zero() => {
            errs.push(format!("{base}.timeouts.{key}"), "must be greater than 0");
            default
        }
        Some(v) => v.0,
        None => default,
    };
    Timeouts {
        connect: check("connect", t.connect, d.connect),
        read: check("read", t.read, d.read),
        write: check("write", t.write, d.write),
        total: t.total.map(|v| check("total", Some(v), v.0)),
    }
}

fn routes(
    files: Vec<Option<RouteFile>>,
    upstreams: &[String],
    auth: &crate::auth::Auth,
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
        } else if let Err(e) = crate::path::normalise(&r.path_prefix) {
            errs.push(format!("{base}.path_prefix"), e.message());
        } else if crate::path::normalise(&r.path_prefix).is_ok_and(|n| n != r.path_prefix) {
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
        let upstream = upstreams.iter().position(|u| *u == r.upstream);
        if upstream.is_none() {
            let known = if upstreams.is_empty() {
                "none defined".to_owned()
            } else {
                upstreams.join(", ")
            };
            errs.push(
                format!("{base}.upstream"),
                format!("unknown upstream {:?} (known: {known})", r.upstream),
            );
        }
        let response_headers = response_headers(&base, &r.response_headers, errs);
        let route_auth = crate::auth::config::route(
            &base,
            auth,
            r.auth.as_ref(),
            r.consumers.as_ref(),
            r.claims.as_ref(),
            errs,
        );
        for (key, what) in [(r.rate_limit.is_some(), "rate_limit")] {
            if key {
                errs.push(
                    format!("{base}.{what}"),
                    "is not supported yet in this version of tollgate",
                );
            }
        }
        if errs.0.len() == before {
            out.push(Route {
                id: 0,
                name: r.name.as_str().into(),
                host,
                prefix: normalise_prefix(&r.path_prefix),
                methods,
                strip_prefix: r.strip_prefix.unwrap_or(true),
                upstream: upstream.unwrap_or_default(),
                response_headers,
                auth: route_auth,
            });
        }
    }
    out
}

fn response_headers(
    base: &str,
    h: &BTreeMap<String, String>,
    errs: &mut ConfigErrors,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (k, v) in h {
        let path = format!("{base}.response_headers.{k}");
        let name = match HeaderName::from_bytes(k.as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                errs.push(path, "is not a valid header name");
                continue;
            }
        };
        if RESERVED_RESPONSE_HEADERS.contains(&name.as_str()) {
            errs.push(path, "is set by tollgate itself and cannot be overridden");
            continue;
        }
        match HeaderValue::from_str(v) {
            Ok(val) => out.push((name, val)),
            Err(_) => errs.push(path, "value has characters not allowed in a header"),
        }
    }
    out
}
