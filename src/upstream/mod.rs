//! Upstreams: a set of backends behind Pingora's load balancer, with per-upstream timeouts
//! and a retry budget.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use pingora::lb::{discovery, selection::RoundRobin, Backend, Backends, LoadBalancer};
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

/// A compiled upstream.
pub struct Upstream {
    pub name: Arc<str>,
    pub targets: Vec<(SocketAddr, usize)>,
    lb: LoadBalancer<RoundRobin>,
    pub timeouts: Timeouts,
    /// How many other backends a failed attempt may be retried on.
    pub retries: u32,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("targets", &self.targets)
            .field("timeouts", &self.timeouts)
            .field("retries", &self.retries)
            .finish()
    }
}

impl Upstream {
    pub fn new(
        name: &str,
        targets: Vec<(SocketAddr, usize)>,
        timeouts: Timeouts,
        retries: u32,
    ) -> Upstream {
        let set: BTreeSet<Backend> = targets
            .iter()
            .map(|(addr, weight)| Backend {
                addr: PSocketAddr::Inet(*addr),
                weight: *weight,
                ext: Default::default(),
            })
            .collect();
        let lb = LoadBalancer::from_backends(Backends::new(discovery::Static::new(set)));
        // Static discovery never blocks nor fails.
        let _ = lb.update().now_or_never();
        Upstream {
            name: name.into(),
            targets,
            lb,
            timeouts,
            retries,
        }
    }

    /// Pick a backend, skipping those already tried for this request.
    pub fn select(&self, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let max = self.targets.len() * 4 + 4;
        self.lb
            .select_with(b"", max, |b, healthy| {
                healthy && b.addr.as_inet().is_some_and(|a| !tried.contains(a))
            })
            .and_then(|b| b.addr.as_inet().copied())
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
}
