//! An upstream's backends as the request path sees them: one lock-free snapshot holding each
//! backend's live state and the weighted order round robin and random walk them in.
//!
//! Round robin and random pick here rather than through Pingora's `LoadBalancer`, whose
//! `select_with` asks the health registry about every candidate, hashing the backend twice with
//! SipHash, on every request. Pingora still schedules the active checks; each probe's result
//! is judged on the backend here ([`BackendState::observe`]), so a pick reads one atomic per
//! candidate and a reload can carry the verdicts.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr as PSocketAddr;

use super::breaker::Breaker;

/// One backend's live state. Shared (`Arc`) between membership snapshots, so an address that
/// stays across a re-resolution keeps its breaker, in-flight count and health.
#[derive(Debug)]
pub struct BackendState {
    pub addr: SocketAddr,
    pub weight: usize,
    pub(super) backend: Backend,
    pub breaker: Breaker,
    pub inflight: AtomicU64,
    /// Attempts that ended, and of them those that failed (the dashboard's error rate).
    pub answered: AtomicU64,
    pub failed: AtomicU64,
    /// The active checks' verdict (healthy until they say otherwise, as in Pingora).
    pub(super) healthy: AtomicBool,
    /// Consecutive probe results against the verdict (the verdict flips at the threshold).
    streak: AtomicUsize,
}

impl BackendState {
    pub(super) fn new(addr: SocketAddr, weight: usize) -> Self {
        BackendState {
            addr,
            weight,
            backend: Backend {
                addr: PSocketAddr::Inet(addr),
                weight,
                ext: Default::default(),
            },
            breaker: Breaker::default(),
            inflight: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            streak: AtomicUsize::new(0),
        }
    }

    /// Healthy by the active checks (always, without them).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Count one probe result; the verdict flips after `threshold` consecutive results
    /// against it (a result that agrees resets the count). Returns whether it flipped. One
    /// writer: the checks probe a backend once per round, rounds one after the other.
    pub(super) fn observe(&self, ok: bool, threshold: usize) -> bool {
        if ok == self.healthy() {
            self.streak.store(0, Relaxed);
            return false;
        }
        let streak = self.streak.load(Relaxed) + 1;
        if streak < threshold.max(1) {
            self.streak.store(streak, Relaxed);
            return false;
        }
        self.streak.store(0, Relaxed);
        self.healthy.store(ok, Relaxed);
        true
    }

    /// The verdict and the streak against it, to carry to the next config.
    pub(super) fn health(&self) -> (bool, usize) {
        (self.healthy(), self.streak.load(Relaxed))
    }

    pub(super) fn set_health(&self, (healthy, streak): (bool, usize)) {
        self.healthy.store(healthy, Relaxed);
        self.streak.store(streak, Relaxed);
    }
}

/// A membership snapshot: the current backends, read lock-free on the request path.
#[derive(Debug)]
pub struct Members {
    list: Vec<Arc<BackendState>>,
    /// Indexes into `list`, each backend as many times as its share of the weights, spread
    /// out as nginx's smooth weighted round robin spreads them (weights 3 and 1 give
    /// a a b a, not a a a b), so a heavy backend does not take bursts.
    weighted: Box<[u32]>,
}

/// The most steps the smooth table may take to build (entries × backends); past it the
/// table lists each backend's entries one after the other, as Pingora's does.
const SMOOTH_BUDGET: usize = 1 << 22;

impl Members {
    pub fn new(list: Vec<Arc<BackendState>>) -> Members {
        let weighted = weighted_order(&list.iter().map(|b| b.weight).collect::<Vec<_>>());
        Members { list, weighted }
    }

    /// The `n`th pick of the weighted order (`n` from a counter or a random number), or
    /// `None` without backends.
    pub(super) fn nth(&self, n: usize) -> Option<usize> {
        let len = self.weighted.len();
        (len > 0).then(|| self.weighted[n % len] as usize)
    }
}

impl Deref for Members {
    type Target = [Arc<BackendState>];
    fn deref(&self) -> &Self::Target {
        &self.list
    }
}

/// The order of smooth weighted round robin over `weights`, one cycle long (the weights
/// divided by their greatest common divisor first, so 100 and 300 cycle as 1 and 3).
fn weighted_order(weights: &[usize]) -> Box<[u32]> {
    let weights: Vec<usize> = weights.iter().map(|&w| w.max(1)).collect();
    let g = weights.iter().copied().reduce(gcd).unwrap_or(1);
    let weights: Vec<i64> = weights.iter().map(|&w| (w / g) as i64).collect();
    let total: i64 = weights.iter().sum();
    if total as usize * weights.len() > SMOOTH_BUDGET {
        let mut order = Vec::with_capacity(total as usize);
        for (i, &w) in weights.iter().enumerate() {
            order.extend(std::iter::repeat_n(i as u32, w as usize));
        }
        return order.into();
    }
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += w;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best as u32
        })
        .collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_order_spreads_a_heavy_backend() {
        assert_eq!(&*weighted_order(&[3, 1]), &[0, 0, 1, 0]);
        assert_eq!(&*weighted_order(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(&*weighted_order(&[1, 1, 1]), &[0, 1, 2]);
    }

    #[test]
    fn order_holds_each_backend_by_its_share() {
        assert_eq!(
            &*weighted_order(&[300, 100]),
            &[0, 0, 1, 0],
            "divided by the gcd"
        );
        let w = [7, 2, 13, 1];
        let order = weighted_order(&w);
        assert_eq!(order.len(), 23);
        for (i, &wi) in w.iter().enumerate() {
            assert_eq!(order.iter().filter(|&&x| x as usize == i).count(), wi);
        }
    }

    #[test]
    fn large_weight_sets_fall_back_to_runs() {
        // 1000 backends of distinct weights: too many steps for the smooth table.
        let w: Vec<usize> = (1..=1000).collect();
        let order = weighted_order(&w);
        assert_eq!(order.len(), 500_500);
        assert_eq!(&order[..3], &[0, 1, 1]);
    }

    #[test]
    fn no_backends_no_pick() {
        let m = Members::new(Vec::new());
        assert_eq!(m.nth(7), None);
        let m = Members::new(vec![Arc::new(BackendState::new(
            "10.0.0.1:80".parse().unwrap(),
            2,
        ))]);
        assert_eq!(m.nth(7), Some(0));
    }
}
