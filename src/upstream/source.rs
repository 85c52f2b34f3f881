//! `targets` as a discovery source instead of a list: `{srv: NAME}` (DNS SRV, `srv.rs`) or
//! `{etcd: {...}}` (`etcd.rs`), and the top-level `dns: {servers}` that SRV and, when
//! given, A/AAAA host-name targets ask.
//!
//! A source's background task hands every new set to
//! [`Upstream::apply_from`](super::Upstream::apply_from), which keeps the state of the
//! backends that stay, logs the change once and counts it.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use pingora::server::ShutdownWatch;
use serde::Deserialize;

use super::discovery::Resolver;
use super::dns::DnsClient;
use super::etcd::{Etcd, EtcdFile};
use super::Upstream;
use crate::config::ConfigErrors;

/// `targets: {srv: NAME}` or `targets: {etcd: {...}}`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    #[serde(default)]
    pub srv: Option<String>,
    #[serde(default)]
    pub etcd: Option<EtcdFile>,
}

/// The top-level `dns: {servers: ["IP:PORT", ...]}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsFile {
    #[serde(default)]
    pub servers: Option<Vec<String>>,
}

/// The DNS client `dns` configures; `None` without the section (the system's servers).
pub fn dns(f: Option<DnsFile>, errs: &mut ConfigErrors) -> Option<DnsClient> {
    let servers = f?.servers.unwrap_or_default();
    if servers.is_empty() {
        errs.push(
            "dns.servers",
            "needs at least one server \"IP:PORT\" (or leave dns out for /etc/resolv.conf's)",
        );
        return None;
    }
    let mut parsed = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        match s
            .parse::<SocketAddr>()
            .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        {
            Ok(a) => parsed.push(a),
            Err(_) => errs.push(
                format!("dns.servers[{i}]"),
                format!("{s:?} is not an IP address with an optional port (e.g. \"10.0.0.2:53\")"),
            ),
        }
    }
    Some(DnsClient { servers: parsed })
}

/// What a compiled source watches.
#[derive(Debug)]
pub enum Kind {
    Srv {
        name: String,
        client: DnsClient,
        /// The load-time answer's TTL: the wait before the first lookup.
        first_wait: Duration,
    },
    Etcd(Etcd),
}

/// A compiled source and whether it is failing now (shown on `/health`).
#[derive(Debug)]
pub struct Source {
    pub kind: Kind,
    pub failing: AtomicBool,
}

impl Source {
    /// `srv` or `etcd`: the metric's and log's label.
    pub fn label(&self) -> &'static str {
        match self.kind {
            Kind::Srv { .. } => "srv",
            Kind::Etcd(_) => "etcd",
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let mut v = match &self.kind {
            Kind::Srv { name, .. } => serde_json::json!({"srv": name}),
            Kind::Etcd(e) => serde_json::json!({"etcd": e.prefix}),
        };
        v["failing"] = self.failing.load(Relaxed).into();
        v
    }
}

/// What compiling a source needs besides its own keys.
pub struct Ctx<'a> {
    pub dns: &'a DnsClient,
    pub resolver: &'a Arc<dyn Resolver>,
    pub state_dir: &'a Path,
}

/// Compile `f` at `base` (`upstreams.NAME.targets`): the backends to start with and the
/// source that keeps them current.
pub fn compile(
    base: &str,
    upstream: &str,
    f: SourceFile,
    ctx: &Ctx,
    errs: &mut ConfigErrors,
) -> Option<(Vec<(SocketAddr, usize)>, Source)> {
    let (set, kind) = match (f.srv, f.etcd) {
        (Some(_), Some(_)) => {
            errs.push(base, "give srv or etcd, not both");
            return None;
        }
        (None, None) => {
            errs.push(
                base,
                "a list of \"host:port\", {srv: NAME} or {etcd: {endpoints, prefix}}",
            );
            return None;
        }
        (Some(name), None) => {
            let path = format!("{base}.srv");
            let name = name.trim().trim_end_matches('.').to_owned();
            if name.is_empty() {
                errs.push(
                    path,
                    "must name an SRV record (e.g. _http._tcp.svc.example)",
                );
                return None;
            }
            let (set, first_wait) = super::srv::resolve(ctx.dns, &name)
                .map_err(|e| errs.push(path, e))
                .ok()?;
            let client = ctx.dns.clone();
            let kind = Kind::Srv {
                name,
                client,
                first_wait,
            };
            (set, kind)
        }
        (None, Some(e)) => {
            let path = format!("{base}.etcd");
            let resolver = ctx.resolver.clone();
            let etcd = Etcd::compile(&path, upstream, e, resolver, ctx.state_dir, errs)?;
            let set = etcd.at_load().map_err(|e| errs.push(path, e)).ok()?;
            (set, Kind::Etcd(etcd))
        }
    };
    Some((set, source(kind)))
}

fn source(kind: Kind) -> Source {
    Source {
        kind,
        failing: AtomicBool::new(false),
    }
}

/// Keep `up`'s backends current from its source until shutdown.
pub async fn run(up: &Upstream, src: &Source, mut shutdown: ShutdownWatch) {
    let task = async {
        match &src.kind {
            Kind::Srv {
                name,
                client,
                first_wait,
            } => srv_loop(up, src, name, client, *first_wait).await,
            Kind::Etcd(e) => etcd_loop(up, src, e).await,
        }
    };
    tokio::select! {
        _ = task => {}
        _ = shutdown.changed() => {}
    }
}

/// Note a failure once (not at every retry), with the set that stays in service.
fn failed(up: &Upstream, src: &Source, e: &str) {
    if !src.failing.swap(true, Relaxed) {
        log::warn!(
            "upstream {} ({}): {e}; keeping {}",
            up.name,
            src.label(),
            super::discovery::list_weighted(&up.weighted())
        );
    }
}

fn recovered(up: &Upstream, src: &Source) {
    if src.failing.swap(false, Relaxed) {
        log::info!("upstream {} ({}): answering again", up.name, src.label());
    }
}

async fn srv_loop(up: &Upstream, src: &Source, name: &str, client: &DnsClient, first: Duration) {
    let mut wait = first;
    loop {
        tokio::time::sleep(wait).await;
        let (c, n) = (client.clone(), name.to_owned());
        let r = tokio::task::spawn_blocking(move || super::srv::resolve(&c, &n))
            .await
            .unwrap_or_else(|e| Err(format!("lookup task failed: {e}")));
        match r {
            Ok((set, ttl)) => {
                recovered(up, src);
                up.apply_from(src.label(), &set).await;
                wait = ttl;
            }
            Err(e) => {
                failed(up, src, &e);
                wait = super::srv::RETRY;
            }
        }
    }
}

/// The longest wait between two attempts while etcd cannot be reached.
const ETCD_BACKOFF: Duration = Duration::from_secs(10);
/// The wait after a watch that could not be held, before reading the prefix again.
const WATCH_RETRY: Duration = Duration::from_secs(1);

async fn etcd_loop(up: &Upstream, src: &Source, etcd: &Etcd) {
    let c = etcd.connector();
    let mut backoff = Duration::from_millis(250);
    let mut persisted: Option<Vec<(SocketAddr, usize)>> = None;
    loop {
        match etcd.snapshot(&c).await {
            Ok((set, revision)) => {
                backoff = Duration::from_millis(250);
                if set.is_empty() {
                    failed(up, src, &format!("no usable key under {}", etcd.prefix));
                } else {
                    recovered(up, src);
                    up.apply_from(src.label(), &set).await;
                    if persisted.as_ref() != Some(&set) {
                        match etcd.persist(&set) {
                            Ok(()) => persisted = Some(set),
                            Err(e) => log::warn!("upstream {}: {e}", up.name),
                        }
                    }
                }
                if let Err(e) = etcd.watch(&c, revision + 1).await {
                    log::debug!("upstream {}: etcd watch: {e}", up.name);
                    tokio::time::sleep(WATCH_RETRY).await;
                }
            }
            Err(e) => {
                failed(up, src, &format!("etcd: {e}"));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ETCD_BACKOFF);
            }
        }
    }
}
