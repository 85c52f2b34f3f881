//! Upstreams: a set of backends with per-upstream timeouts, a retry budget, active health
//! checks (run by Pingora's load balancer, `balancer.rs`), a circuit breaker per backend and
//! in-flight counts. Round robin, random and least connections pick over tollgate's own
//! membership snapshot (`members.rs`); consistent hashing picks on Pingora's ketama ring.

mod attempt;
mod balancer;
pub mod breaker;
pub mod config;
pub mod discovery;
pub mod dns;
pub mod etcd;
pub mod health;
mod members;
pub mod protocol;
pub mod source;
pub mod srv;
pub mod tls;
#[allow(unsafe_code)] // openssl-probe sets the environment (set_var)
pub mod trust;

pub use attempt::Attempt;
use balancer::{with_lb, Lb};
pub use members::{BackendState, Members};

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};

use arc_swap::ArcSwap;
use pingora::lb::Backend;
use pingora::upstreams::peer::HttpPeer;

/// Per-upstream timeouts. `read` and `write` are per operation (between reads), as in nginx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    /// Optional bound on connect including the TCP handshake and any TLS.
    pub total: Option<Duration>,
    /// How long an idle connection to a backend is kept for reuse, on either path (nginx's
    /// upstream `keepalive_timeout`).
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(30),
            write: Duration::from_secs(30),
            total: None,
            idle: Duration::from_secs(60),
        }
    }
}

use breaker::BreakerConfig;
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
#[derive(Debug, Default)]
pub struct Spec {
    /// The addresses at load (host names already expanded), with weights.
    pub targets: Vec<(SocketAddr, usize)>,
    /// Re-resolution of host-name targets (`resolve_every`), if configured.
    pub discovery: Option<discovery::Discovery>,
    /// `targets: {srv: ...}` or `{etcd: ...}`: the source that keeps `targets` current.
    pub source: Option<source::Source>,
    pub timeouts: Timeouts,
    pub retries: u32,
    pub balance: Balance,
    pub hash_key: HashKey,
    pub health: Option<HealthConfig>,
    pub breaker: Option<BreakerConfig>,
    pub protocol: protocol::Protocol,
    /// TLS to the backends (`tls`), verified unless turned off.
    pub tls: Option<tls::UpstreamTls>,
}

/// A compiled upstream.
pub struct Upstream {
    pub name: Arc<str>,
    members: Arc<ArcSwap<Members>>,
    /// What the load balancer's discovery returns; written only by `apply`.
    set: Arc<ArcSwap<BTreeSet<Backend>>>,
    /// Re-resolution of host-name targets, when `resolve_every` is set.
    pub discovery: Option<discovery::Discovery>,
    /// The SRV or etcd source, when `targets` names one.
    pub source: Option<source::Source>,
    /// Backend set changes applied by discovery (`tollgate_discovery_changes_total`).
    pub discovery_changes: AtomicU64,
    lb: Lb,
    pub timeouts: Timeouts,
    /// How many other backends a failed attempt may be retried on.
    pub retries: u32,
    pub balance: Balance,
    pub hash_key: HashKey,
    pub health: Option<HealthConfig>,
    pub breaker: Option<BreakerConfig>,
    pub protocol: protocol::Protocol,
    pub tls: Option<tls::UpstreamTls>,
    rr: AtomicUsize,
    /// Health state changes seen by the active checks.
    pub health_changes: Arc<AtomicU64>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("backends", &self.backends())
            .field("timeouts", &self.timeouts)
            .field("retries", &self.retries)
            .field("balance", &self.balance)
            .finish()
    }
}

impl Upstream {
    pub fn new(name: &str, spec: Spec) -> Upstream {
        let backends = Members::new(
            spec.targets
                .iter()
                .map(|(addr, weight)| Arc::new(BackendState::new(*addr, *weight)))
                .collect(),
        );
        let set = Arc::new(ArcSwap::from_pointee(backend_set(&backends)));
        let members = Arc::new(ArcSwap::from_pointee(backends));
        let changes = Arc::new(AtomicU64::new(0));
        let lb = Lb::new(&spec, &set, name, &changes, &members);
        Upstream {
            name: name.into(),
            members,
            set,
            discovery: spec.discovery,
            source: spec.source,
            discovery_changes: AtomicU64::new(0),
            lb,
            timeouts: spec.timeouts,
            retries: spec.retries,
            balance: spec.balance,
            hash_key: spec.hash_key,
            health: spec.health,
            breaker: spec.breaker,
            protocol: spec.protocol,
            tls: spec.tls,
            rr: AtomicUsize::new(0),
            health_changes: changes,
        }
    }

    /// The current backends (a lock-free snapshot; re-resolution replaces it).
    pub fn backends(&self) -> arc_swap::Guard<Arc<Members>> {
        self.members.load()
    }

    /// Healthy and its circuit lets requests through.
    pub fn usable(&self, b: &BackendState) -> bool {
        b.healthy() && self.breaker.as_ref().is_none_or(|c| b.breaker.usable(c))
    }

    /// Does this upstream have at least one usable backend?
    pub fn available(&self) -> bool {
        self.backends().iter().any(|b| self.usable(b))
    }

    pub(crate) async fn run_health_check(&self) {
        with_lb!(&self.lb, lb => lb.backends().run_health_check(true).await)
    }

    /// The current backends with their weights.
    pub fn weighted(&self) -> Vec<(SocketAddr, usize)> {
        self.backends().iter().map(|b| (b.addr, b.weight)).collect()
    }

    /// [`apply`](Self::apply) a set found by discovery source `label` (`dns`, `srv`,
    /// `etcd`): a change is logged once and counted.
    pub async fn apply_from(&self, label: &str, targets: &[(SocketAddr, usize)]) -> bool {
        let before = self.weighted();
        if !self.apply(targets).await {
            return false;
        }
        self.discovery_changes.fetch_add(1, Relaxed);
        log::info!(
            "upstream {} ({label}): backends {} -> {}",
            self.name,
            discovery::list_weighted(&before),
            discovery::list_weighted(targets)
        );
        true
    }

    /// Replace the backend set with `targets` (address, weight) after a re-resolution.
    /// Addresses that stay keep their `BackendState` (breaker, in-flight count, health);
    /// new ones start as new backends do at load, and in Pingora's checks (healthy until the
    /// checks say otherwise); removed ones get no new request once the snapshot changes
    /// (requests in flight finish on them). Returns whether anything changed.
    ///
    /// Only the discovery background task calls this, so updates never overlap.
    pub async fn apply(&self, targets: &[(SocketAddr, usize)]) -> bool {
        let old = self.members.load_full();
        let same = old.len() == targets.len()
            && old
                .iter()
                .zip(targets)
                .all(|(b, (a, w))| b.addr == *a && b.weight == *w);
        if same || targets.is_empty() {
            return false;
        }
        let new = Members::new(
            targets
                .iter()
                .map(|(a, w)| {
                    old.iter()
                        .find(|b| b.addr == *a && b.weight == *w)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(BackendState::new(*a, *w)))
                })
                .collect(),
        );
        // Snapshot first: the checks report on a backend only once Pingora has it, and
        // their reports must find it here. Consistent hashing, which still picks in Pingora,
        // takes only what the snapshot holds, so a removed backend is skipped there too.
        let set = backend_set(&new);
        self.members.store(Arc::new(new));
        self.set.store(Arc::new(set));
        if let Err(e) = with_lb!(&self.lb, lb => lb.update().await) {
            log::warn!("upstream {}: cannot update the balancer: {e}", self.name);
        }
        true
    }

    /// Pick a backend, skipping unusable ones and those already tried for this request, and
    /// count it in flight. `key` feeds `consistent_hash`.
    pub fn select(self: &Arc<Self>, key: &[u8], tried: &[SocketAddr]) -> Option<Attempt> {
        let members = self.members.load();
        let mut refused: Vec<usize> = Vec::new();
        loop {
            let idx = self.pick(&members, key, tried, &refused)?;
            let st = &members[idx];
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
            return Some(Attempt::new(self.clone(), st.clone(), probe));
        }
    }

    fn pick(
        &self,
        members: &Members,
        key: &[u8],
        tried: &[SocketAddr],
        refused: &[usize],
    ) -> Option<usize> {
        let ok = |i: usize| {
            !refused.contains(&i) && !tried.contains(&members[i].addr) && self.usable(&members[i])
        };
        match self.balance {
            Balance::LeastConn => {
                let n = members.len();
                let start = self.rr.fetch_add(1, Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| ok(i))
                    .min_by_key(|&i| {
                        let b = &members[i];
                        // weighted: in-flight per unit of weight, scaled to stay integral
                        b.inflight.load(Relaxed) * 1000 / b.weight.max(1) as u64
                    })
            }
            Balance::RoundRobin | Balance::Random => {
                let n = members.len();
                let first = members.nth(match self.balance {
                    Balance::Random => fastrand::usize(..),
                    _ => self.rr.fetch_add(1, Relaxed),
                })?;
                // The weighted pick, else the next usable backend after it.
                (0..n).map(|k| (first + k) % n).find(|&i| ok(i))
            }
            Balance::ConsistentHash => {
                let index = |b: &Backend| {
                    let a = b.addr.as_inet()?;
                    members.iter().position(|s| s.addr == *a)
                };
                let max = members.len() * 8 + 8;
                with_lb!(&self.lb, lb => lb.select_with(key, max, |b, healthy| {
                    healthy && index(b).is_some_and(ok)
                }))
                .and_then(|b| index(&b))
            }
        }
    }

    /// Seconds a client should wait before retrying when nothing is usable.
    pub fn retry_after(&self) -> u64 {
        let open = self.breaker.as_ref().and_then(|c| {
            self.backends()
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
        let mut peer = match &self.tls {
            Some(t) => t.peer(addr),
            None => HttpPeer::new(addr, false, String::new()),
        };
        let o = &mut peer.options;
        o.connection_timeout = Some(self.timeouts.connect);
        o.total_connection_timeout = self.timeouts.total;
        o.read_timeout = Some(self.timeouts.read);
        o.write_timeout = Some(self.timeouts.write);
        o.idle_timeout = Some(self.timeouts.idle);
        self.protocol.apply(o);
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
    consumer: Option<&[u8]>,
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
        HashKey::Consumer => consumer.map_or_else(ip, <[u8]>::to_vec),
        HashKey::Header(h) => req
            .headers
            .get(h)
            .map_or_else(ip, |v| v.as_bytes().to_vec()),
    }
}

/// The `/health` view of one upstream: each backend's health, breaker state, in-flight count.
pub fn health_json(u: &Upstream) -> serde_json::Value {
    let backends: Vec<_> = u
        .backends()
        .iter()
        .map(|b| {
            let breaker = u
                .breaker
                .as_ref()
                .map_or("closed", |c| b.breaker.state(c).as_str());
            serde_json::json!({
                "address": b.addr.to_string(),
                "weight": b.weight,
                "healthy": b.healthy(),
                "circuit": breaker,
                "usable": u.usable(b),
                "in_flight": b.inflight.load(Relaxed),
            })
        })
        .collect();
    serde_json::json!({
        "balance": u.balance.as_str(),
        "protocol": u.protocol.as_str(),
        "available": u.available(),
        "health_changes": u.health_changes.load(Relaxed),
        "discovery": u.discovery.as_ref().map(|d| serde_json::json!({
            "resolve_every": humantime::format_duration(d.every).to_string(),
            "failing_targets": d.failing.load(Relaxed),
        })).or_else(|| u.source.as_ref().map(source::Source::json)),
        "discovery_changes": u.discovery_changes.load(Relaxed),
        "backends": backends,
    })
}

fn backend_set(members: &Members) -> BTreeSet<Backend> {
    members.iter().map(|b| b.backend.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn apply_keeps_state_of_addresses_that_stay() {
        let (a, b, c) = (
            addr("10.0.0.1:80"),
            addr("10.0.0.2:80"),
            addr("10.0.0.3:80"),
        );
        let cfg = BreakerConfig {
            failures: 1,
            ..Default::default()
        };
        let up = Arc::new(Upstream::new(
            "u",
            Spec {
                targets: vec![(a, 1), (b, 1)],
                breaker: Some(cfg),
                ..Default::default()
            },
        ));
        // `a` has a request in flight and an open circuit.
        let mut held = up.select(b"", &[b]).unwrap();
        assert_eq!(held.addr(), a);
        held.failure();
        let before = up.backends()[0].clone();
        assert_eq!(before.inflight.load(Relaxed), 1);

        assert!(up.apply(&[(a, 1), (c, 1)]).await);
        assert!(!up.apply(&[(a, 1), (c, 1)]).await, "same set: no change");
        let now = up.backends();
        assert!(Arc::ptr_eq(&now[0], &before), "a keeps its state");
        assert_eq!(now[0].inflight.load(Relaxed), 1);
        assert!(!up.usable(&now[0]), "a's circuit is still open");
        assert_eq!(now[1].addr, c);
        // b is gone, c is new and gets the traffic.
        for _ in 0..4 {
            assert_eq!(up.select(b"", &[]).unwrap().addr(), c);
        }
        drop(held);
        assert_eq!(before.inflight.load(Relaxed), 0);
        assert!(!up.apply(&[]).await, "an empty set is never applied");
        assert_eq!(up.backends().len(), 2);
    }

    #[test]
    fn a_check_verdict_takes_a_backend_out_of_round_robin_and_back() {
        let (a, b) = (addr("10.0.0.1:80"), addr("10.0.0.2:80"));
        let up = Arc::new(Upstream::new(
            "u",
            Spec {
                targets: vec![(a, 1), (b, 1)],
                ..Default::default()
            },
        ));
        let picks = |n| -> Vec<SocketAddr> {
            (0..n)
                .map(|_| up.select(b"", &[]).unwrap().addr())
                .collect()
        };
        assert!(picks(4).contains(&b));
        assert!(up.backends()[1].observe(false, 1));
        assert!(!up.backends()[1].healthy());
        assert_eq!(picks(6), vec![a; 6], "the unhealthy backend gets nothing");
        assert!(up.backends()[1].observe(true, 1));
        assert!(picks(4).contains(&b), "and is back once healthy");
    }
}
