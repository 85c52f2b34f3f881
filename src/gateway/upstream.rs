//! Compiling one `upstreams` entry: its targets (static, DNS, SRV, etcd), balancing, health
//! checks, breaker, retries, timeouts, protocol and TLS; each error at its key path.

use std::time::Duration;

use super::compile::positive;
use super::file::{TargetsFile, TimeoutsFile, UpstreamFile};
use crate::config::ConfigErrors;
use crate::upstream::discovery::{self, Compiled, Discovery, NamedTarget, TargetAddr};
use crate::upstream::{Timeouts, Upstream};

pub(super) fn upstream(
    name: &str,
    u: UpstreamFile,
    ctx: &crate::upstream::source::Ctx,
    errs: &mut ConfigErrors,
) -> Option<Upstream> {
    let base = format!("upstreams.{name}");
    let before = errs.0.len();
    let resolver = ctx.resolver;
    let (list, source) = match u.targets {
        TargetsFile::List(l) => (l, None),
        TargetsFile::Source(f) => {
            if u.resolve_every.is_some() {
                errs.push(
                    format!("{base}.resolve_every"),
                    "only applies to a list of targets: srv follows its TTLs, etcd its watch",
                );
            }
            let path = format!("{base}.targets");
            (
                Vec::new(),
                Some(crate::upstream::source::compile(&path, name, f, ctx, errs)),
            )
        }
    };
    if list.is_empty() && source.is_none() {
        errs.push(
            format!("{base}.targets"),
            "needs at least one target \"host:port\"",
        );
    }
    let mut targets = Vec::new();
    let mut compiled = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let path = format!("{base}.targets[{i}]");
        if t.weight == 0 || t.weight > 1000 {
            errs.push(format!("{path}.weight"), "must be between 1 and 1000");
        }
        let weight = t.weight as usize;
        let addrs = match discovery::parse_target(&t.address) {
            Ok(TargetAddr::Ip(a)) => {
                compiled.push(Compiled::Fixed(a, weight));
                vec![a]
            }
            Ok(TargetAddr::Name(host, port)) => {
                match discovery::resolve(&**resolver, &host, port) {
                    Ok(addrs) => {
                        let n = NamedTarget { host, port, weight };
                        compiled.push(Compiled::Named(n, addrs.clone()));
                        addrs
                    }
                    Err(m) => {
                        errs.push(path, m);
                        continue;
                    }
                }
            }
            Err(m) => {
                errs.push(path, m);
                continue;
            }
        };
        for a in addrs {
            if targets.iter().any(|(x, _)| *x == a) {
                errs.push(&*path, format!("{a} is listed twice"));
            } else {
                targets.push((a, weight));
            }
        }
    }
    let hosts: Vec<&str> = compiled
        .iter()
        .filter_map(|c| match c {
            Compiled::Named(n, _) => Some(n.host.as_str()),
            Compiled::Fixed(..) => None,
        })
        .collect();
    let tls = u
        .tls
        .and_then(|t| crate::upstream::tls::UpstreamTls::compile(&base, t, &hosts, errs));
    let source = source.flatten().map(|(set, src)| {
        targets = set;
        src
    });
    let discovery = u
        .resolve_every
        .filter(|_| source.is_none())
        .and_then(|every| {
            let path = format!("{base}.resolve_every");
            let every = every.0;
            if every < Duration::from_millis(100) || every > Duration::from_secs(86400) {
                errs.push(path, "must be between 100ms and 24h (e.g. \"30s\")");
                return None;
            }
            if !compiled.iter().any(|c| matches!(c, Compiled::Named(..))) {
                errs.push(
                    path,
                    "no target is a host name: IP addresses never need re-resolving",
                );
                return None;
            }
            Some(Discovery::new(every, resolver.clone(), compiled))
        });
    let (balance, hash_key) =
        crate::upstream::config::balance(&base, u.balance.as_deref(), u.hash_key.as_deref(), errs);
    let health = u
        .health_check
        .map(|h| crate::upstream::config::health(&base, h, errs));
    let breaker = u
        .circuit_breaker
        .map(|c| crate::upstream::config::breaker(&base, c, errs));
    let protocol =
        crate::upstream::protocol::compile(&base, u.protocol.as_deref(), u.max_h2_streams, errs);
    let timeouts = timeouts(&base, u.timeouts.unwrap_or_default(), errs);
    let retries = u.retries.unwrap_or(1);
    if retries > 10 {
        errs.push(format!("{base}.retries"), "must be between 0 and 10");
    }
    (errs.0.len() == before).then(|| {
        let spec = crate::upstream::Spec {
            targets,
            discovery,
            source,
            timeouts,
            retries,
            balance,
            hash_key,
            health,
            breaker,
            protocol,
            tls,
        };
        Upstream::new(name, spec)
    })
}

fn timeouts(base: &str, t: TimeoutsFile, errs: &mut ConfigErrors) -> Timeouts {
    let d = Timeouts::default();
    let mut check =
        |key: &str, v, default| positive(format!("{base}.timeouts.{key}"), v, default, errs);
    Timeouts {
        connect: check("connect", t.connect, d.connect),
        read: check("read", t.read, d.read),
        write: check("write", t.write, d.write),
        total: t.total.map(|v| check("total", Some(v), v.0)),
        idle: idle(base, t.idle, d.idle, errs),
    }
}

/// `timeouts.idle`: how long an idle upstream connection is kept, from 10ms to 1h.
fn idle(
    base: &str,
    v: Option<crate::config::Dur>,
    default: Duration,
    errs: &mut ConfigErrors,
) -> Duration {
    match v {
        Some(d) if d.0 < Duration::from_millis(10) || d.0 > Duration::from_secs(3600) => {
            errs.push(
                format!("{base}.timeouts.idle"),
                "must be between 10ms and 1h (e.g. \"60s\")",
            );
            default
        }
        Some(d) => d.0,
        None => default,
    }
}
