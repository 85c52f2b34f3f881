//! The load balancer of an upstream: Pingora's `LoadBalancer` with the selection the config
//! asks for, over the backend set tollgate's discovery maintains.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures::FutureExt;
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};

use super::health::HealthConfig;
use super::{protocol, tls, Balance, Spec};

pub(super) enum Lb {
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

/// The backend set Pingora's load balancer discovers: whatever tollgate's discovery last
/// stored. Never blocks, never fails; the DNS work happens before, in `discovery`.
struct SharedSet(Arc<ArcSwap<BTreeSet<Backend>>>);

#[async_trait::async_trait]
impl pingora::lb::discovery::ServiceDiscovery for SharedSet {
    async fn discover(
        &self,
    ) -> pingora::Result<(BTreeSet<Backend>, std::collections::HashMap<u64, bool>)> {
        Ok((BTreeSet::clone(&self.0.load()), Default::default()))
    }
}

pub(super) use with_lb;

impl Lb {
    /// The balancer `spec.balance` asks for (`least_conn` picks by itself, over a round-robin
    /// one), with the spec's health checks.
    pub(super) fn new(
        spec: &Spec,
        set: &Arc<ArcSwap<BTreeSet<Backend>>>,
        name: &str,
        changes: &Arc<AtomicU64>,
    ) -> Lb {
        let host = spec
            .targets
            .first()
            .map(|(a, _)| a.to_string())
            .unwrap_or_default();
        let h = spec.health.as_ref();
        let t = spec.tls.as_ref();
        match spec.balance {
            Balance::RoundRobin | Balance::LeastConn => {
                Lb::RoundRobin(make_lb(set, h, name, &host, changes, t, spec.protocol))
            }
            Balance::Random => Lb::Random(make_lb(set, h, name, &host, changes, t, spec.protocol)),
            Balance::ConsistentHash => {
                Lb::Hash(make_lb(set, h, name, &host, changes, t, spec.protocol))
            }
        }
    }
}

fn make_lb<S>(
    set: &Arc<ArcSwap<BTreeSet<Backend>>>,
    health: Option<&HealthConfig>,
    name: &str,
    host: &str,
    changes: &Arc<AtomicU64>,
    tls: Option<&tls::UpstreamTls>,
    proto: protocol::Protocol,
) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + Send + Sync + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let mut lb = LoadBalancer::<S>::from_backends(Backends::new(Box::new(SharedSet(set.clone()))));
    if let Some(h) = health {
        lb.set_health_check(h.build(name, host, changes.clone(), proto, tls));
    }
    // The shared set never blocks nor fails.
    let _ = lb.update().now_or_never();
    lb
}
