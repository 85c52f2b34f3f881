//! Per-backend circuit breaker: closed → open after `failures` consecutive failures → after
//! `open_for`, half-open admits `half_open_requests` probes → closed on success, open again on
//! failure. All state is in atomics: no lock on the hot path.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::time::Duration;

/// The compiled `circuit_breaker` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failures: u32,
    pub open_for: Duration,
    pub half_open_requests: u32,
    /// Upstream statuses that count as failures (default 502, 503, 504).
    pub failure_statuses: Vec<u16>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            open_for: Duration::from_secs(10),
            half_open_requests: 1,
            failure_statuses: vec![502, 503, 504],
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// The system-wide monotonic clock ([`crate::clock`]), so `opened_at` can be handed to the
/// next process on a graceful upgrade as it is.
fn now_ms() -> u64 {
    crate::clock::mono_millis()
}

#[derive(Debug, Default)]
pub struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    opened_at: AtomicU64,
    probes: AtomicU32,
}

impl Breaker {
    /// The state as a client would see it now (an expired open circuit reads half-open).
    pub fn state(&self, cfg: &BreakerConfig) -> State {
        match self.state.load(Acquire) {
            CLOSED => State::Closed,
            OPEN if now_ms().saturating_sub(self.opened_at.load(Acquire))
                >= cfg.open_for.as_millis() as u64 =>
            {
                State::HalfOpen
            }
            OPEN => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// Could a request go to this backend now? Does not take a probe slot.
    pub fn usable(&self, cfg: &BreakerConfig) -> bool {
        match self.state.load(Acquire) {
            CLOSED => true,
            OPEN => self.state(cfg) == State::HalfOpen,
            _ => self.probes.load(Acquire) < cfg.half_open_requests,
        }
    }

    /// Take the right to send a request: `None` = refused, `Some(true)` = a half-open probe
    /// slot was taken (give it back with [`Breaker::release_probe`] if the attempt ends
    /// without an outcome), `Some(false)` = closed circuit.
    pub fn admit(&self, cfg: &BreakerConfig) -> Option<bool> {
        loop {
            match self.state.load(Acquire) {
                CLOSED => return Some(false),
                OPEN => {
                    if self.state(cfg) != State::HalfOpen {
                        return None;
                    }
                    if self
                        .state
                        .compare_exchange(OPEN, HALF_OPEN, AcqRel, Acquire)
                        .is_ok()
                    {
                        self.probes.store(0, Release);
                    }
                }
                _ => {
                    let n = self.probes.fetch_add(1, AcqRel);
                    if n < cfg.half_open_requests {
                        return Some(true);
                    }
                    self.probes.fetch_sub(1, AcqRel);
                    return None;
                }
            }
        }
    }

    /// A probe ended without telling success from failure (say the client went away).
    pub fn release_probe(&self) {
        if self.state.load(Acquire) == HALF_OPEN {
            let _ = self
                .probes
                .fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
        }
    }

    /// Returns true when this closed the circuit.
    pub fn success(&self) -> bool {
        self.failures.store(0, Release);
        self.state
            .compare_exchange(HALF_OPEN, CLOSED, AcqRel, Acquire)
            .is_ok()
    }

    /// Returns true when this opened the circuit.
    pub fn failure(&self, cfg: &BreakerConfig) -> bool {
        match self.state.load(Acquire) {
            HALF_OPEN => {
                self.opened_at.store(now_ms(), Release);
                self.state
                    .compare_exchange(HALF_OPEN, OPEN, AcqRel, Acquire)
                    .is_ok()
            }
            CLOSED => {
                let n = self.failures.fetch_add(1, AcqRel) + 1;
                if n >= cfg.failures {
                    self.opened_at.store(now_ms(), Release);
                    return self
                        .state
                        .compare_exchange(CLOSED, OPEN, AcqRel, Acquire)
                        .is_ok();
                }
                false
            }
            _ => false,
        }
    }

    /// Time until an open circuit lets a probe through.
    pub fn remaining(&self, cfg: &BreakerConfig) -> Option<Duration> {
        (self.state.load(Acquire) == OPEN).then(|| {
            let el = now_ms().saturating_sub(self.opened_at.load(Acquire));
            Duration::from_millis((cfg.open_for.as_millis() as u64).saturating_sub(el))
        })
    }
}

/// A breaker's state as handed to the next process on a graceful upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    pub state: State,
    /// Consecutive failures while closed.
    pub failures: u32,
    /// When it (last) opened, in CLOCK_MONOTONIC milliseconds.
    pub opened_at_ms: u64,
}

impl Breaker {
    /// The raw state (an expired open circuit stays `Open`: the next process judges expiry
    /// with its own `open_for`).
    pub fn save(&self) -> Saved {
        let state = match self.state.load(Acquire) {
            CLOSED => State::Closed,
            OPEN => State::Open,
            _ => State::HalfOpen,
        };
        Saved {
            state,
            failures: self.failures.load(Acquire),
            opened_at_ms: self.opened_at.load(Acquire),
        }
    }

    /// Take over a saved state, before serving. A half-open circuit starts with all its probe
    /// slots free (the old process's probes report there, not here). `opened_at` is capped at
    /// now, so a bad snapshot cannot hold a circuit open longer than `open_for`.
    pub fn restore(&self, s: Saved) {
        self.failures.store(s.failures, Release);
        self.opened_at.store(s.opened_at_ms.min(now_ms()), Release);
        self.probes.store(0, Release);
        let state = match s.state {
            State::Closed => CLOSED,
            State::Open => OPEN,
            State::HalfOpen => HALF_OPEN,
        };
        self.state.store(state, Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_open_half_open_closed() {
        let cfg = BreakerConfig {
            failures: 2,
            open_for: Duration::from_millis(0),
            half_open_requests: 1,
            failure_statuses: vec![],
        };
        let b = Breaker::default();
        assert!(!b.failure(&cfg));
        assert!(b.failure(&cfg));
        assert_eq!(b.state(&cfg), State::HalfOpen); // open_for 0 expires at once
        assert_eq!(b.admit(&cfg), Some(true));
        assert_eq!(b.admit(&cfg), None, "one probe only");
        b.release_probe();
        assert_eq!(
            b.admit(&cfg),
            Some(true),
            "a probe without outcome is given back"
        );
        assert!(b.failure(&cfg), "a failed probe reopens");
        assert_eq!(b.admit(&cfg), Some(true));
        assert!(b.success());
        assert_eq!(b.admit(&cfg), Some(false));
        assert_eq!(b.state(&cfg), State::Closed);
    }

    #[test]
    fn open_blocks_until_open_for() {
        let cfg = BreakerConfig {
            failures: 1,
            open_for: Duration::from_secs(60),
            ..Default::default()
        };
        let b = Breaker::default();
        assert!(b.failure(&cfg));
        assert!(!b.usable(&cfg));
        assert_eq!(b.admit(&cfg), None);
        assert_eq!(b.state(&cfg), State::Open);
    }

    #[test]
    fn save_restore_keeps_an_open_circuit_open() {
        let cfg = BreakerConfig {
            failures: 1,
            open_for: Duration::from_secs(60),
            ..Default::default()
        };
        let old = Breaker::default();
        assert!(old.failure(&cfg));
        let new = Breaker::default();
        new.restore(old.save());
        assert_eq!(new.state(&cfg), State::Open);
        assert_eq!(new.admit(&cfg), None);
        assert!(new.remaining(&cfg).unwrap() > Duration::from_secs(59));

        let closed = Breaker::default();
        let c2 = BreakerConfig { failures: 3, ..cfg };
        closed.failure(&c2);
        closed.failure(&c2);
        let next = Breaker::default();
        next.restore(closed.save());
        assert!(next.failure(&c2), "the third consecutive failure opens it");
    }
}
