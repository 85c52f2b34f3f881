//! Discovery: turning an upstream's `targets` into backend addresses, at load and, with
//! `resolve_every`, again in the background so a changed DNS record takes effect without a
//! reload.
//!
//! DNS never runs on the request path. A background service asks the [`Resolver`] for every
//! host-name target of an upstream, builds the new address set and hands it to
//! [`Upstream::apply`](super::Upstream::apply), which keeps the live state (breaker, in-flight
//! count, active-health state) of every address that stays. The resolver is a trait so tests
//! can drive the discovery with DNS answers that change over time; production uses the
//! system resolver (`getaddrinfo`, so `/etc/hosts` and `nsswitch` apply as for any program).

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::Upstream;

/// How long one background lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers "which IP addresses does this host name have?". Blocking: the background service
/// calls it on Tokio's blocking pool, and config loading calls it directly.
pub trait Resolver: Send + Sync + 'static {
    fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>>;
}

/// The operating system's resolver, through `std::net::ToSocketAddrs` (what
/// `tokio::net::lookup_host` runs on its blocking pool too).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        Ok((host, 0u16).to_socket_addrs()?.map(|a| a.ip()).collect())
    }
}

/// One `targets[i]` entry that names a host (IP literals never change and need no lookup).
#[derive(Debug, Clone)]
pub struct NamedTarget {
    pub host: String,
    pub port: u16,
    pub weight: usize,
}

/// What a target string is, before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetAddr {
    Ip(SocketAddr),
    Name(String, u16),
}

/// Split `host:port`; the error says how to write it.
pub fn parse_target(addr: &str) -> Result<TargetAddr, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(TargetAddr::Ip(a));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} needs a port, e.g. \"{addr}:80\""));
    };
    match port.parse::<u16>() {
        Ok(port) if !host.is_empty() && !host.contains(':') => {
            Ok(TargetAddr::Name(host.to_owned(), port))
        }
        _ => Err(format!("{addr:?} is not host:port")),
    }
}

/// Resolve one host name to socket addresses (sorted, deduplicated). An empty answer is an
/// error: a name with no address is as useless as one that does not resolve.
pub fn resolve(resolver: &dyn Resolver, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    match resolver.lookup(host) {
        Ok(ips) => {
            let set: BTreeSet<SocketAddr> = ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect();
            if set.is_empty() {
                Err(format!("{host:?} resolved to no address"))
            } else {
                Ok(set.into_iter().collect())
            }
        }
        Err(e) => Err(format!("cannot resolve {host:?}: {e}")),
    }
}

/// The discovery state of one upstream: its targets in config order, and for each named
/// target the last good answer and whether the last lookup failed. Touched only by the
/// background service (the mutex is never taken on the request path).
pub struct Discovery {
    pub every: Duration,
    resolver: Arc<dyn Resolver>,
    targets: Vec<Entry>,
    last: Mutex<Vec<Last>>,
    /// Named targets whose last lookup failed (shown on `/health`).
    pub failing: AtomicUsize,
}

#[derive(Debug, Clone)]
enum Entry {
    Fixed(SocketAddr, usize),
    Named(NamedTarget),
}

#[derive(Debug, Clone, Default)]
struct Last {
    /// The last good answer (the load-time one to begin with).
    addrs: Vec<SocketAddr>,
    /// The error of the last lookup, while it keeps failing.
    failing: Option<String>,
}

/// What one refresh found, for logging and tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Refresh {
    /// The address set changed and was applied.
    pub changed: bool,
    /// Targets whose lookup failed (their last good answer was kept).
    pub failing: usize,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("every", &self.every)
            .field("targets", &self.targets)
            .finish()
    }
}

/// One target as compiled at load: an IP literal, or a name with its load-time answer.
#[derive(Debug, Clone)]
pub enum Compiled {
    Fixed(SocketAddr, usize),
    Named(NamedTarget, Vec<SocketAddr>),
}

impl Discovery {
    pub fn new(every: Duration, resolver: Arc<dyn Resolver>, targets: Vec<Compiled>) -> Self {
        let mut entries = Vec::with_capacity(targets.len());
        let mut last = Vec::with_capacity(targets.len());
        for t in targets {
            match t {
                Compiled::Fixed(a, w) => {
                    entries.push(Entry::Fixed(a, w));
                    last.push(Last::default());
                }
                Compiled::Named(n, addrs) => {
                    entries.push(Entry::Named(n));
                    last.push(Last {
                        addrs,
                        failing: None,
                    });
                }
            }
        }
        Discovery {
            every,
            resolver,
            targets: entries,
            last: Mutex::new(last),
            failing: AtomicUsize::new(0),
        }
    }

    /// Look every named target up again (on the blocking pool) and return the full address
    /// set with weights, in config order, the first target naming an address winning. A
    /// failed or empty lookup keeps that target's last good answer; each change between
    /// failing and resolving is logged once, not every interval.
    pub async fn resolve_all(&self, upstream: &str) -> (Vec<(SocketAddr, usize)>, usize) {
        let mut answers = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            answers.push(match t {
                Entry::Fixed(..) => None,
                Entry::Named(n) => {
                    let (r, host, port) = (self.resolver.clone(), n.host.clone(), n.port);
                    let lookup = tokio::task::spawn_blocking(move || resolve(&*r, &host, port));
                    // A hung resolver must not stall the loop: give up, keep the last answer.
                    let res = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                        Ok(Ok(res)) => res,
                        Ok(Err(e)) => Err(format!("lookup task failed: {e}")),
                        Err(_) => Err(format!(
                            "cannot resolve {:?}: no answer within {LOOKUP_TIMEOUT:?}",
                            n.host
                        )),
                    };
                    Some(res)
                }
            });
        }
        self.merge(upstream, answers)
    }

    /// Fold fresh answers (None for IP literals) into the last good ones and log changes.
    fn merge(
        &self,
        upstream: &str,
        answers: Vec<Option<Result<Vec<SocketAddr>, String>>>,
    ) -> (Vec<(SocketAddr, usize)>, usize) {
        let mut last = self.last.lock();
        let mut out: Vec<(SocketAddr, usize)> = Vec::new();
        let mut failing = 0;
        for ((t, l), answer) in self.targets.iter().zip(last.iter_mut()).zip(answers) {
            let (addrs, weight) = match (t, answer) {
                (Entry::Fixed(a, w), _) => (vec![*a], *w),
                (Entry::Named(n), Some(Ok(addrs))) => {
                    if l.failing.take().is_some() {
                        log::info!(
                            "upstream {upstream} target {}:{} resolves again",
                            n.host,
                            n.port
                        );
                    }
                    if addrs != l.addrs {
                        log::info!(
                            "upstream {upstream} target {}:{} now resolves to {}",
                            n.host,
                            n.port,
                            list(&addrs)
                        );
                        l.addrs = addrs;
                    }
                    (l.addrs.clone(), n.weight)
                }
                (Entry::Named(n), Some(Err(e))) => {
                    failing += 1;
                    if l.failing.as_deref() != Some(&e) {
                        log::warn!(
                            "upstream {upstream} target {}:{}: {e}; keeping {}",
                            n.host,
                            n.port,
                            list(&l.addrs)
                        );
                        l.failing = Some(e);
                    }
                    (l.addrs.clone(), n.weight)
                }
                (Entry::Named(n), None) => (l.addrs.clone(), n.weight),
            };
            for a in addrs {
                if !out.iter().any(|(x, _)| *x == a) {
                    out.push((a, weight));
                }
            }
        }
        self.failing.store(failing, Relaxed);
        (out, failing)
    }
}

/// `[10.0.0.1:80 (weight 2), ...]`, for logs.
pub fn list_weighted(set: &[(SocketAddr, usize)]) -> String {
    let v: Vec<String> = set
        .iter()
        .map(|(a, w)| format!("{a} (weight {w})"))
        .collect();
    format!("[{}]", v.join(", "))
}

fn list(addrs: &[SocketAddr]) -> String {
    let v: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    format!("[{}]", v.join(", "))
}

/// Re-resolve `upstream` once and apply the result.
pub async fn refresh(up: &Upstream) -> Refresh {
    let Some(d) = &up.discovery else {
        return Refresh::default();
    };
    let (set, failing) = d.resolve_all(&up.name).await;
    Refresh {
        changed: up.apply_from("dns", &set).await,
        failing,
    }
}

/// One background service re-resolving every upstream that has `resolve_every`, and
/// following every SRV or etcd source (`super::source`).
pub struct ResolveService {
    pub upstreams: Vec<Arc<Upstream>>,
}

#[async_trait]
impl BackgroundService for ResolveService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let loops = self.upstreams.iter().filter_map(|u| {
            let every = u.discovery.as_ref()?.every;
            let mut shutdown = shutdown.clone();
            let u = u.clone();
            Some(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = shutdown.changed() => return,
                    }
                    tokio::select! {
                        _ = refresh(&u) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            })
        });
        let sources = self
            .upstreams
            .iter()
            .filter(|u| u.source.is_some())
            .map(|u| {
                let (u, shutdown) = (u.clone(), shutdown.clone());
                async move {
                    if let Some(src) = &u.source {
                        super::source::run(&u, src, shutdown).await;
                    }
                }
            });
        futures::future::join(
            futures::future::join_all(loops),
            futures::future::join_all(sources),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_targets() {
        assert_eq!(
            parse_target("10.0.0.1:80"),
            Ok(TargetAddr::Ip("10.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            parse_target("[::1]:80"),
            Ok(TargetAddr::Ip("[::1]:80".parse().unwrap()))
        );
        assert_eq!(
            parse_target("svc.internal:8080"),
            Ok(TargetAddr::Name("svc.internal".into(), 8080))
        );
        assert!(parse_target("svc").unwrap_err().contains("needs a port"));
        assert!(parse_target(":80").unwrap_err().contains("not host:port"));
        assert!(parse_target("svc:http")
            .unwrap_err()
            .contains("not host:port"));
    }

    #[test]
    fn system_resolver_knows_localhost() {
        let a = resolve(&SystemResolver, "localhost", 8080).unwrap();
        assert!(a.iter().all(|a| a.ip().is_loopback() && a.port() == 8080));
    }

    struct Script(Mutex<io::Result<Vec<IpAddr>>>);
    impl Resolver for Script {
        fn lookup(&self, _: &str) -> io::Result<Vec<IpAddr>> {
            match &*self.0.lock() {
                Ok(v) => Ok(v.clone()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            }
        }
    }

    /// Captures this module's log lines (the unit-test binary's one global logger).
    struct Capture;
    static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            if r.target().ends_with("discovery") {
                LINES.lock().push(r.args().to_string());
            }
        }
        fn flush(&self) {}
    }

    #[test]
    fn failures_and_changes_are_logged_once_per_change() {
        let _ = log::set_logger(&Capture);
        log::set_max_level(log::LevelFilter::Info);
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let named = NamedTarget {
            host: "logged.test".into(),
            port: 80,
            weight: 1,
        };
        let d = Discovery::new(
            Duration::from_secs(1),
            Arc::new(SystemResolver),
            vec![Compiled::Named(named, vec![a])],
        );
        let ours = || -> Vec<String> {
            LINES
                .lock()
                .iter()
                .filter(|l| l.contains("logged.test"))
                .cloned()
                .collect()
        };
        for _ in 0..3 {
            d.merge(
                "u",
                vec![Some(Err("cannot resolve \"logged.test\": x".into()))],
            );
        }
        for _ in 0..3 {
            d.merge("u", vec![Some(Ok(vec![b]))]);
        }
        assert_eq!(
            ours(),
            [
                "upstream u target logged.test:80: cannot resolve \"logged.test\": x; keeping [10.0.0.1:80]",
                "upstream u target logged.test:80 resolves again",
                "upstream u target logged.test:80 now resolves to [10.0.0.2:80]",
            ]
        );
    }

    #[test]
    fn merge_keeps_last_good_and_counts_failures() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let fixed: SocketAddr = "10.0.0.9:80".parse().unwrap();
        let named = NamedTarget {
            host: "svc".into(),
            port: 80,
            weight: 3,
        };
        let d = Discovery::new(
            Duration::from_secs(1),
            Arc::new(Script(Mutex::new(Ok(vec![])))),
            vec![
                Compiled::Named(named, vec![a]),
                Compiled::Fixed(fixed, 1),
                Compiled::Fixed(a, 1),
            ],
        );
        let (set, failing) = d.merge("u", vec![Some(Ok(vec![a, b])), None, None]);
        assert_eq!(
            set,
            vec![(a, 3), (b, 3), (fixed, 1)],
            "first target wins a dup"
        );
        assert_eq!(failing, 0);
        let (set, failing) = d.merge("u", vec![Some(Err("boom".into())), None, None]);
        assert_eq!(
            set,
            vec![(a, 3), (b, 3), (fixed, 1)],
            "last good answer kept"
        );
        assert_eq!(failing, 1);
        assert_eq!(d.last.lock()[0].failing.as_deref(), Some("boom"));
        let (set, _) = d.merge("u", vec![Some(Ok(vec![b])), None, None]);
        assert_eq!(set, vec![(b, 3), (fixed, 1), (a, 1)]);
        assert_eq!(d.last.lock()[0].failing, None);
    }
}
