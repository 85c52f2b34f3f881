//! The load balancer of an upstream: Pingora's `LoadBalancer` over the backend set tollgate's
//! discovery maintains. It runs the active health checks of every upstream, and picks the
//! backend only for `consistent_hash` (its ketama ring); round robin, random and least
//! connections pick over the membership snapshot (`members.rs`).

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures::FutureExt;
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};

use super::health::Judge;
use super::{Balance, Members, Spec};

pub(super) enum Lb {
    /// Checks only: its own selection is never asked.
    Checks(LoadBalancer<RoundRobin>),
    Hash(LoadBalancer<Consistent>),
}

macro_rules! with_lb {
    ($lb:expr, $l:ident => $e:expr) => {
        match $lb {
            Lb::Checks($l) => $e,
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
    /// The balancer `spec.balance` needs, with the spec's health checks, whose verdicts go to
    /// the backends of `members`.
    pub(super) fn new(
        spec: &Spec,
        set: &Arc<ArcSwap<BTreeSet<Backend>>>,
        name: &str,
        changes: &Arc<AtomicU64>,
        members: &Arc<ArcSwap<Members>>,
    ) -> Lb {
        let host = spec
            .targets
            .first()
            .map(|(a, _)| a.to_string())
            .unwrap_or_default();
        let h = spec.health.as_ref();
        let t = spec.tls.as_ref();
        let checks = h.map(|h| {
            let judge = Judge {
                changes: changes.clone(),
                members: members.clone(),
            };
            h.build(name, &host, judge, spec.protocol, t)
        });
        match spec.balance {
            Balance::ConsistentHash => Lb::Hash(make_lb(set, checks)),
            _ => Lb::Checks(make_lb(set, checks)),
        }
    }
}

fn make_lb<S>(
    set: &Arc<ArcSwap<BTreeSet<Backend>>>,
    checks: Option<Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync>>,
) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + Send + Sync + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let mut lb = LoadBalancer::<S>::from_backends(Backends::new(Box::new(SharedSet(set.clone()))));
    if let Some(c) = checks {
        lb.set_health_check(c);
    }
    // The shared set never blocks nor fails.
    let _ = lb.update().now_or_never();
    lb
}
