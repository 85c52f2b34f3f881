//! The local store: exact GCRA state per key, sharded so no request takes a global lock.
//!
//! Each key is one `u64` hash (policy + key bytes, fixed seeds) mapped to its theoretical
//! arrival time (TAT, nanoseconds on the system's monotonic clock). A key whose TAT is in the
//! past is indistinguishable from a key never seen, so it can be dropped at any time: that is
//! the idle eviction. Memory is bounded by `max_keys` (a shard that is full after sweeping its
//! idle keys admits a new key without storing it, so a flood can never produce a false 429 for
//! anybody else; it only means the flood itself is briefly not limited).
//!
//! Why not pingora-limits' `Rate` for the decision: it is a count-min sketch whose collisions
//! only over-count, so under a million active keys a quiet client would share slots with busy
//! ones and get false 429s. Exact state is a few words per key (`benches/limit.rs` measures
//! it).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use parking_lot::Mutex;

/// Number of shards (a power of two). 64 mutexes: contention is negligible with a few threads.
const SHARDS: usize = 64;

/// The default bound on stored keys across all local policies, well within the memory target
/// of the rate-limiter's keys.
pub const DEFAULT_MAX_KEYS: usize = 4 << 20;

/// The key is already a good hash; do not hash it again.
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>;

/// Nanoseconds on the system-wide monotonic clock ([`crate::clock`]): a TAT stored by one
/// process means the same instant to its successor after a graceful upgrade.
pub fn now_nanos() -> u64 {
    crate::clock::mono_nanos()
}

/// A GCRA verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Requests that could still pass right now.
    pub remaining: u64,
    /// Nanoseconds until the bucket is full again (the `RateLimit` reset).
    pub reset_nanos: u64,
    /// When denied: nanoseconds until one request would pass.
    pub retry_after_nanos: u64,
}

/// GCRA parameters of one policy: one request every `interval`, up to `burst` at once.
#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    pub interval: u64,
    pub burst: u64,
}

impl Gcra {
    /// `requests` per `per` with bursts up to `burst`.
    pub fn new(requests: u64, per_nanos: u64, burst: u64) -> Gcra {
        Gcra {
            interval: (per_nanos / requests.max(1)).max(1),
            burst: burst.max(1),
        }
    }

    /// How far ahead of now a TAT of this policy can ever be.
    pub fn tolerance(&self) -> u64 {
        self.interval * self.burst
    }

    /// How long a token that came free is kept for the request that takes it: half a refill
    /// interval (always less than one, so never more than `burst` pass at once).
    pub fn credit(&self) -> u64 {
        self.interval / 2
    }

    /// Decide for a key whose stored TAT is `tat` (0 = unknown) at `now`; returns the verdict
    /// and the TAT to store when admitted.
    ///
    /// A request arriving within [`Gcra::credit`] after its token came free (`tat < now`) is
    /// charged from `tat`, not from `now`: under load the gap between a token coming free and
    /// the next request reaching this decision (scheduling, a Redis pipeline's round trip,
    /// requests timed before they took the lock) would otherwise be lost at every token, which
    /// at `burst: 1` is a large part of the rate. A key idle for longer starts from `now`, so
    /// an idle client still gets exactly `burst` tokens.
    pub fn decide(&self, tat: u64, now: u64) -> (Verdict, u64) {
        let tat = if tat == 0 || tat.saturating_add(self.credit()) < now {
            now
        } else {
            tat
        };
        let new_tat = tat + self.interval;
        let tol = self.tolerance();
        if new_tat <= now + tol {
            let used = new_tat.saturating_sub(now);
            (
                Verdict {
                    allowed: true,
                    remaining: (tol - used) / self.interval,
                    reset_nanos: used,
                    retry_after_nanos: 0,
                },
                new_tat,
            )
        } else {
            (
                Verdict {
                    allowed: false,
                    remaining: 0,
                    reset_nanos: tat.saturating_sub(now),
                    retry_after_nanos: new_tat - now - tol,
                },
                tat,
            )
        }
    }
}

/// Sharded exact per-key state.
pub struct LocalStore {
    shards: Box<[Mutex<Map>]>,
    per_shard_cap: usize,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("per_shard_cap", &self.per_shard_cap)
            .finish()
    }
}

impl Default for LocalStore {
    fn default() -> Self {
        LocalStore::new(DEFAULT_MAX_KEYS)
    }
}

impl LocalStore {
    pub fn new(max_keys: usize) -> LocalStore {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Map::default())).collect(),
            per_shard_cap: (max_keys / SHARDS).max(1),
        }
    }

    /// The shard of a key: six bits from the middle of the hash. Not the low bits, which pick
    /// the bucket inside the shard's table, and not the top seven, which hashbrown keeps as the
    /// tag it filters a probe with: were those fixed within a shard, every probe would
    /// compare against most of the keys it passes.
    fn shard(&self, key: u64) -> &Mutex<Map> {
        &self.shards[(key >> 51) as usize % SHARDS]
    }

    /// Check and, when admitted, record one request for `key` (a hash) under `gcra`.
    pub fn check(&self, gcra: &Gcra, key: u64, now: u64) -> Verdict {
        let mut map = self.shard(key).lock();
        if let Some(tat) = map.get_mut(&key) {
            let (v, new) = gcra.decide(*tat, now);
            *tat = new;
            return v;
        }
        let (v, new) = gcra.decide(0, now);
        if v.allowed {
            if map.len() >= self.per_shard_cap {
                // Sweep idle keys (TAT in the past = a full bucket, same as unknown).
                map.retain(|_, tat| *tat > now);
            }
            if map.len() < self.per_shard_cap {
                map.insert(key, new);
            }
        }
        v
    }

    /// Every key whose bucket is not full at `now`, with its TAT (keys with a TAT in the past
    /// hold no information). Takes each shard's lock once, for the copy only.
    pub fn export(&self, now: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(
                shard
                    .lock()
                    .iter()
                    .filter(|(_, t)| **t > now)
                    .map(|(k, t)| (*k, *t)),
            );
        }
        out
    }

    /// Take over keys exported by another process on the same clock. A TAT is capped at
    /// `now + max_ahead` (no bucket of the current config can owe more), so a corrupt or
    /// stale entry can never lock a client out for longer than the strictest policy would.
    /// Keeps the per-shard bound; a key already present keeps the later TAT. Returns how
    /// many keys were stored.
    pub fn import(&self, entries: &[(u64, u64)], now: u64, max_ahead: u64) -> usize {
        let cap = now.saturating_add(max_ahead);
        let mut stored = 0;
        for &(key, tat) in entries {
            if tat <= now {
                continue;
            }
            let mut map = self.shard(key).lock();
            if map.len() >= self.per_shard_cap && !map.contains_key(&key) {
                continue;
            }
            let t = map.entry(key).or_insert(0);
            *t = (*t).max(tat.min(cap));
            stored += 1;
        }
        stored
    }

    /// Keys currently stored (for tests and benches).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_sustained_rate() {
        // 10/s, burst 5: five at once, then one every 100 ms.
        let g = Gcra::new(10, S, 5);
        let store = LocalStore::new(1024);
        let admitted = (0..20).filter(|_| store.check(&g, 1, 0).allowed).count();
        assert_eq!(admitted, 5);
        // Over the next second, exactly 10 more (one per 100 ms).
        let mut more = 0;
        for ms in 1..=1000u64 {
            if store.check(&g, 1, ms * 1_000_000).allowed {
                more += 1;
            }
        }
        assert_eq!(more, 10);
    }

    /// Requests every 0.3 interval at burst 1: each token is taken by a request up to 0.3
    /// interval after it came free; charged from when it came free, the rate is exact (charged
    /// from arrival, it would be one per 1.2 intervals). An idle key still gets one at once.
    #[test]
    fn burst_one_loses_no_time_between_a_token_and_its_request() {
        let g = Gcra::new(1_000_000, S, 1); // one token per 1000 ns
        let store = LocalStore::new(1024);
        let admitted = (0..10_000u64)
            .filter(|i| store.check(&g, 1, i * 300).allowed)
            .count();
        assert_eq!(admitted, 3000, "3,000,000 ns at one per 1000 ns");
        // Idle (longer than the credit): exactly the burst at once, the next a full interval on.
        let t = 10 * S;
        assert!(store.check(&g, 1, t).allowed);
        assert!(!store.check(&g, 1, t).allowed);
        assert!(!store.check(&g, 1, t + 999).allowed);
        assert!(store.check(&g, 1, t + 1000).allowed);
    }

    #[test]
    fn remaining_and_retry_after() {
        let g = Gcra::new(10, S, 5);
        let store = LocalStore::new(1024);
        let v = store.check(&g, 7, 0);
        assert_eq!((v.allowed, v.remaining, v.reset_nanos), (true, 4, S / 10));
        for _ in 0..4 {
            store.check(&g, 7, 0);
        }
        let v = store.check(&g, 7, 0);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_nanos, S / 10);
        assert_eq!(v.reset_nanos, S / 2);
        assert!(store.check(&g, 7, S / 10).allowed);
    }

    #[test]
    fn million_key_flood_never_denies_a_quiet_client_and_stays_bounded() {
        // In-process (1M over HTTP is too slow for a test): 1M distinct keys, each spending
        // its whole budget, while a quiet client makes 10 requests within its 10/min budget.
        let g = Gcra::new(10, 60 * S, 10);
        let store = LocalStore::new(1 << 20);
        let quiet = u64::MAX / 3;
        for k in 0..1_000_000u64 {
            let key = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert!(store.check(&g, key, k * 1000).allowed);
            if k % 100_000 == 0 {
                assert!(store.check(&g, quiet, k * 1000).allowed, "false 429 at {k}");
            }
        }
        assert!(store.len() <= 1 << 20);
    }

    #[test]
    fn export_then_import_keeps_a_limited_client_limited() {
        let g = Gcra::new(3, 60 * S, 3);
        let old = LocalStore::new(1024);
        for _ in 0..3 {
            assert!(old.check(&g, 42, 10 * S).allowed);
        }
        assert!(!old.check(&g, 42, 10 * S).allowed);
        old.check(&g, 7, 0); // one token, back at 20 s: full again, not exported
        let snap = old.export(25 * S);
        assert_eq!(snap.len(), 1);
        let new = LocalStore::new(1024);
        assert_eq!(new.import(&snap, 26 * S, g.tolerance()), 1);
        assert!(!new.check(&g, 42, 26 * S).allowed, "still limited");
        assert!(new.check(&g, 43, 26 * S).allowed, "others unaffected");
    }

    #[test]
    fn import_caps_a_tat_from_the_far_future() {
        let g = Gcra::new(1, S, 1);
        let new = LocalStore::new(1024);
        new.import(&[(5, u64::MAX)], 100 * S, g.tolerance());
        assert!(
            new.check(&g, 5, 101 * S).allowed,
            "at most one tolerance ahead"
        );
    }

    #[test]
    fn idle_keys_are_evicted_when_a_shard_is_full() {
        let g = Gcra::new(1, S, 1);
        let store = LocalStore::new(SHARDS * 4);
        for k in 0..10_000u64 {
            store.check(&g, k.wrapping_mul(0x9E37_79B9_7F4A_7C15), k * S);
        }
        assert!(store.len() <= SHARDS * 4);
    }
}
