//! Upstreams: a set of backends behind Pingora's load balancer, with per-upstream timeouts,
//! a retry budget, active health checks, a circuit breaker per backend and in-flight counts.

pub mod breaker;
pub mod config;
pub mod health;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};

use futures::FutureExt;
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora::upstreams::peer::HttpPeer;

/// Per-upstream timeouts. `read` and `write` are per operation (between reads), as in nginx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    /// Optional bound on connect including the TCP handshake and any TLS.
    pub total: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(30),
            write: Duration::from_secs(30),
            total: None,
        }
    }
}

use breaker::{Breaker, BreakerConfig};
use health::HealthConfig;

/// How an upstream picks a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    Random,
    ConsistentHash,
    LeastConn,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::Random => "random",
            Balance::ConsistentHash => "consistent_hash",
            Balance::LeastConn => "least_conn",
        }
    }
}

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashKey {
    #[default]
    ClientIp,
    Consumer,
    Header(http::HeaderName),
}

/// Everything the config says about one upstream, compiled.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub targets: Vec<(SocketAddr, usize)>,
    pub timeouts: Timeouts,
    pub retries: u32,
    pub balance: Balance,
    pub hash_key: HashKey,
    pub health: Option<HealthConfig>,
    pub breaker: Option<BreakerConfig>,
}

/// One backend's live state.
#[derive(Debug)]
pub struct BackendState {
    pub addr: SocketAddr,
    pub weight: usize,
    backend: Backend,
    pub breaker: Breaker,
    pub inflight: AtomicU64,
}

enum Lb {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Hash(LoadBalancer<Consistent>),
}

macro_rules! with_lb {
    ($lb:expr, $l:ident => $e:expr) => {
        match $lb {
            Lb::RoundRobin($l) => $e,
            Lb::Random($l) => $e,
            Lb::Hash($l) => $e,
        }
    };
}

/// A compiled upstream.
pub struct Upstream {
    pub name: Arc<str>,
    pub backends: Vec<BackendState>,
    lb: Lb,
    pub timeouts: Timeouts,
    /// How many other backends a failed attempt may be retried on.
    pub retries: u32,
    pub balance: Balance,
    pub hash_key: HashKey,
    pub health: Option<HealthConfig>,
    pub breaker: Option<BreakerConfig>,
    rr: AtomicUsize,
    /// Health state changes seen by the active checks.
    pub health_changes: Arc<AtomicU64>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("backends", &self.backends)
            .field("timeouts", &self.timeouts)
            .field("retries", &self.retries)
            .field("balance", &self.balance)
            .finish()
    }
}

fn make_lb<S>(
    set: BTreeSet<Backend>,
    health: Option<&HealthConfig>,
    name: &str,
    host: &str,
    changes: &Arc<std::sync::atomic::AtomicU64>,
) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + Send + Sync + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let mut lb = LoadBalancer::<S>::from_backends(Backends::new(discovery::Static::new(set)));
    if let Some(h) = health {
        lb.set_health_check(h.build(name, host, changes.clone()));
    }
    // Static discovery never blocks nor fails.
    let _ = lb.update().now_or_never();
    lb
}

impl Upstream {
    pub fn new(name: &str, spec: Spec) -> Upstream {
        let backends: Vec<BackendState> = spec
            .targets
            .iter()
            .map(|(addr, weight)| BackendState {
                addr: *addr,
                weight: *weight,
                backend: Backend {
                    addr: PSocketAddr::Inet(*addr),
                    weight: *weight,
                    ext: Default::default(),
                },
                breaker: Breaker::default(),
                inflight: AtomicU64::new(0),
            })
            .collect();
        let set: BTreeSet<Backend> = backends.iter().map(|b| b.backend.clone()).collect();
        let host = spec
            .targets
            .first()
            .map(|(a, _)| a.to_string())
            .unwrap_or_default();
        let h = spec.health.as_ref();
        let changes = Arc::new(AtomicU64::new(0));
        let lb = match spec.balance {
            Balance::RoundRobin | Balance::LeastConn => {
                Lb::RoundRobin(make_lb(set, h, name, &host, &changes))
            }
            Balance::Random => Lb::Random(make_lb(set, h, name, &host, &changes)),
            Balance::ConsistentHash => Lb::Hash(make_lb(set, h, name, &host, &changes)),
        };
        Upstream {
            name: name.into(),
            backends,
            lb,
            timeouts: spec.timeouts,
            retries: spec.retries,
            balance: spec.balance,
            hash_key: spec.hash_key,
            health: spec.health,
            breaker: spec.breaker,
            rr: AtomicUsize::new(0),
            health_changes: changes,
        }
    }

    fn index(&self, b: &Backend) -> Option<usize> {
        let a = b.addr.as_inet()?;
        self.backends.iter().position(|s| s.addr == *a)
    }

    /// Healthy by the active checks (always true without them).
    pub fn healthy(&self, i: usize) -> bool {
        with_lb!(&self.lb, lb => lb.backends().ready(&self.backends[i].backend))
    }

    /// Healthy and its circuit lets requests through.
    pub fn usable(&self, i: usize) -> bool {
        self.healthy(i)
            && self
                .breaker
                .as_ref()
                .is_none_or(|c| self.backends[i].breaker.usable(c))
    }

    /// Does this upstream have at least one usable backend?
    pub fn available(&self) -> bool {
        (0..self.backends.len()).any(|i| self.usable(i))
    }

    pub(crate) async fn run_health_check(&self) {
        with_lb!(&self.lb, lb => lb.backends().run_health_check(true).await)
    }

    /// Pick a backend, skipping unusable ones and those already tried for this request, and
    /// count it in flight. `key` feeds `consistent_hash`.
    pub fn select(self: &Arc<Self>, key: &[u8], tried: &[SocketAddr]) -> Option<Attempt> {
        let mut refused: Vec<usize> = Vec::new();
        loop {
            let idx = self.pick(key, tried, &refused)?;
            let st = &self.backends[idx];
            let probe = match &self.breaker {
                None => false,
                Some(c) => match st.breaker.admit(c) {
                    Some(probe) => probe,
                    // Lost a race for the last probe slot: try the others.
                    None => {
                        refused.push(idx);
                        continue;
                    }
                },
            };
            st.inflight.fetch_add(1, Relaxed);
            return Some(Attempt {
                up: self.clone(),
                idx,
                probe,
                done: false,
            });
        }
    }

    fn pick(&self, key: &[u8], tried: &[SocketAddr], refused: &[usize]) -> Option<usize> {
        let ok = |i: usize| {
            !refused.contains(&i) && !tried.contains(&self.backends[i].addr) && self.usable(i)
        };
        match self.balance {
            Balance::LeastConn => {
                let n = self.backends.len();
                let start = self.rr.fetch_add(1, Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| ok(i))
                    .min_by_key(|&i| {
                        let b = &self.backends[i];
                        // weighted: in-flight per unit of weight, scaled to stay integral
                        b.inflight.load(Relaxed) * 1000 / b.weight.max(1) as u64
                    })
            }
            _ => {
                let max = self.backends.len() * 8 + 8;
                with_lb!(&self.lb, lb => lb.select_with(key, max, |b, healthy| {
                    healthy && self.index(b).is_some_and(ok)
                }))
                .and_then(|b| self.index(&b))
            }
        }
    }

    /// Seconds a client should wait before retrying when nothing is usable.
    pub fn retry_after(&self) -> u64 {
        let open = self.breaker.as_ref().and_then(|c| {
            self.backends
                .iter()
                .filter_map(|b| b.breaker.remaining(c))
                .min()
        });
        let d = open
            .or(self.health.as_ref().map(|h| h.interval))
            .unwrap_or(Duration::from_secs(1));
        d.as_secs_f64().ceil().max(1.0) as u64
    }

    /// The peer for `addr` with this upstream's timeouts.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.timeouts.connect);
        o.total_connection_timeout = self.timeouts.total;
        o.read_timeout = Some(self.timeouts.read);
        o.write_timeout = Some(self.timeouts.write);
        o.idle_timeout = Some(Duration::from_secs(60));
        peer
    }

    /// Is this upstream status a failure for the circuit breaker?
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.breaker
            .as_ref()
            .is_some_and(|c| c.failure_statuses.contains(&status))
    }
}

/// The bytes `consistent_hash` hashes for this request (empty for other balancers). A
/// missing consumer or header falls back to the client IP.
pub fn hash_key(
    up: &Upstream,
    req: &pingora::http::RequestHeader,
    consumer: Option<&str>,
    client_ip: Option<std::net::IpAddr>,
) -> Vec<u8> {
    if up.balance != Balance::ConsistentHash {
        return Vec::new();
    }
    let ip = || {
        client_ip
            .map(|ip| ip.to_string().into_bytes())
            .unwrap_or_default()
    };
    match &up.hash_key {
        HashKey::ClientIp => ip(),
        HashKey::Consumer => consumer.map_or_else(ip, |c| c.as_bytes().to_vec()),
        HashKey::Header(h) => req
            .headers
            .get(h)
            .map_or_else(ip, |v| v.as_bytes().to_vec()),
    }
}

/// One attempt on one backend: counted in flight until dropped; its outcome feeds the
/// backend's circuit breaker once.
#[derive(Debug)]
pub struct Attempt {
    up: Arc<Upstream>,
    idx: usize,
    /// Holds a half-open probe slot.
    probe: bool,
    done: bool,
}

impl Attempt {
    pub fn addr(&self) -> SocketAddr {
        self.up.backends[self.idx].addr
    }

    pub fn peer(&self) -> HttpPeer {
        self.up.peer(self.addr())
    }

    pub fn upstream(&self) -> &Upstream {
        &self.up
    }

    pub fn failure(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if let Some(c) = &self.up.breaker {
            if self.up.backends[self.idx].breaker.failure(c) {
                log::warn!(
                    "upstream {} backend {}: circuit open",
                    self.up.name,
                    self.addr()
                );
            }
        }
    }

    pub fn success(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if self.up.breaker.is_some() && self.up.backends[self.idx].breaker.success() {
            log::warn!(
                "upstream {} backend {}: circuit closed",
                self.up.name,
                self.addr()
            );
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let b = &self.up.backends[self.idx];
        if self.probe && !self.done {
            b.breaker.release_probe();
        }
        b.inflight.fetch_sub(1, Relaxed);
    }
}

/// The `/health` view of one upstream: each backend's health, breaker state, in-flight count.
pub fn health_json(u: &Upstream) -> serde_json::Value {
    let backends: Vec<_> = u
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let breaker = u
                .breaker
                .as_ref()
                .map_or("closed", |c| b.breaker.state(c).as_str());
            serde_json::json!({
                "address": b.addr.to_string(),
                "weight": b.weight,
                "healthy": u.healthy(i),
                "circuit": breaker,
                "usable": u.usable(i),
                "in_flight": b.inflight.load(Relaxed),
            })
        })
        .collect();
    serde_json::json!({
        "balance": u.balance.as_str(),
        "available": u.available(),
        "health_changes": u.health_changes.load(Relaxed),
        "backends": backends,
    })
}
