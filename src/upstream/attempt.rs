//! One attempt on one backend, from its pick to its outcome.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;

use super::{BackendState, Upstream};

/// One attempt on one backend: counted in flight until dropped; its outcome feeds the
/// backend's circuit breaker once.
#[derive(Debug)]
pub struct Attempt {
    up: Arc<Upstream>,
    /// Held even if a re-resolution removes the address meanwhile.
    backend: Arc<BackendState>,
    /// Holds a half-open probe slot.
    probe: bool,
    done: bool,
}

impl Attempt {
    /// An attempt on `backend`, already counted in flight; `probe`: it holds a half-open
    /// probe slot.
    pub(super) fn new(up: Arc<Upstream>, backend: Arc<BackendState>, probe: bool) -> Attempt {
        Attempt {
            up,
            backend,
            probe,
            done: false,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.backend.addr
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
        self.backend.answered.fetch_add(1, Relaxed);
        self.backend.failed.fetch_add(1, Relaxed);
        if let Some(c) = &self.up.breaker {
            if self.backend.breaker.failure(c) {
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
        self.backend.answered.fetch_add(1, Relaxed);
        if self.up.breaker.is_some() && self.backend.breaker.success() {
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
        let b = &self.backend;
        if self.probe && !self.done {
            b.breaker.release_probe();
        }
        b.inflight.fetch_sub(1, Relaxed);
    }
}
