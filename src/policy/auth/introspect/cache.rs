//! The introspection endpoint's verdicts, remembered by a SHA-256 digest of the token (the
//! token itself is never kept), and the calls in flight, one per token.
//!
//! An active token is remembered until its `exp` or for `cache_ttl`, whichever is sooner; an
//! inactive one for `negative_ttl`; a failed call not at all. Bounded: [`SHARDS`] shards of
//! at most [`PER_SHARD`] verdicts; a full shard drops an expired verdict, else an arbitrary
//! one. Concurrent requests with the same unknown token share one call ([`Flights`]): the
//! first asks, the others wait for its answer; if the first is cancelled (its client went
//! away), one of the others asks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

use crate::policy::auth::cache::{NoHash, Verified};

const SHARDS: usize = 16;
/// 16 × 1,024 = 16,384 tokens per provider.
const PER_SHARD: usize = 1024;

/// A token's SHA-256.
pub type Digest = [u8; 32];

pub fn digest(token: &str) -> Digest {
    Sha256::digest(token.as_bytes()).into()
}

/// What the endpoint said of a token: active (with what it gives), or not.
pub type Verdict = Option<Arc<Verified>>;

/// The outcome of one call, shared with the requests that waited for it.
#[derive(Clone)]
pub enum Outcome {
    Answered(Verdict),
    /// The endpoint could not answer (the reason is logged, never sent to a client).
    Failed,
}

struct Entry {
    digest: Digest,
    /// CLOCK_MONOTONIC milliseconds until which the verdict holds.
    until: u64,
    verdict: Verdict,
}

type Shard = HashMap<u64, Entry, NoHash>;

/// Verdicts by token digest.
pub struct Verdicts {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

/// The digest's first eight bytes: already uniform, so the map's hash as it is.
fn probe(d: &Digest) -> u64 {
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

impl Verdicts {
    fn shard(&self, h: u64) -> &Mutex<Shard> {
        &self.shards[(h >> 56) as usize % SHARDS]
    }

    /// The verdict on the token of digest `d`, if one holds at `now` (monotonic ms).
    pub fn get(&self, d: &Digest, now: u64) -> Option<Verdict> {
        let h = probe(d);
        let mut m = self.shard(h).lock().unwrap_or_else(|e| e.into_inner());
        let e = m.get(&h)?;
        if e.digest != *d {
            return None;
        }
        if now < e.until {
            return Some(e.verdict.clone());
        }
        m.remove(&h);
        None
    }

    /// Remember `verdict` until `until` (monotonic ms).
    pub fn put(&self, d: &Digest, verdict: Verdict, until: u64, now: u64) {
        let h = probe(d);
        let mut m = self.shard(h).lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= PER_SHARD && !m.contains_key(&h) {
            let evict = m
                .iter()
                .find(|(_, e)| e.until <= now)
                .or_else(|| m.iter().next())
                .map(|(k, _)| *k);
            if let Some(k) = evict {
                m.remove(&k);
            }
        }
        m.insert(
            h,
            Entry {
                digest: *d,
                until,
                verdict,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

/// One call in flight for a token: its outcome, once there is one.
pub type Flight = Arc<OnceCell<Outcome>>;

/// A request's part in a call in flight. Dropped (answered, or the request cancelled), it
/// lands the call, so no call is left in the map with nobody to finish it.
pub struct Joined<'a> {
    flights: &'a Flights,
    digest: &'a Digest,
    flight: Flight,
}

impl std::ops::Deref for Joined<'_> {
    type Target = OnceCell<Outcome>;
    fn deref(&self) -> &OnceCell<Outcome> {
        &self.flight
    }
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        self.flights.land(self.digest, &self.flight);
    }
}

/// The calls in flight, by token digest.
#[derive(Default)]
pub struct Flights(Mutex<HashMap<Digest, Flight>>);

impl Flights {
    /// The call in flight for `d`, joined, or a new one; left when dropped.
    pub fn join<'a>(&'a self, d: &'a Digest) -> Joined<'a> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let flight = m.entry(*d).or_default().clone();
        Joined {
            flights: self,
            digest: d,
            flight,
        }
    }

    /// `flight` has its outcome (now remembered, or a failure not to share with later
    /// requests), or its last request went away: the next request for `d` starts afresh.
    fn land(&self, d: &Digest, flight: &Flight) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Held by the map and this request only, unless others still wait for it.
        let done = flight.initialized() || Arc::strong_count(flight) <= 2;
        if done && m.get(d).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            m.remove(d);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    fn active() -> Verdict {
        Some(Arc::new(Verified {
            claims: Arc::default(),
            consumer: None,
            headers: Vec::new(),
            exp: u64::MAX,
            nbf: None,
        }))
    }

    #[test]
    fn a_verdict_holds_until_its_time_for_that_token_only() {
        let v = Verdicts::default();
        let (a, b) = (digest("token-a"), digest("token-b"));
        v.put(&a, active(), 1000, 0);
        v.put(&b, None, 500, 0);
        assert!(matches!(v.get(&a, 999), Some(Some(_))));
        assert!(matches!(v.get(&b, 499), Some(None)), "inactive, remembered");
        assert!(v.get(&b, 500).is_none(), "forgotten at its time");
        assert!(v.get(&digest("token-c"), 0).is_none());
        // Same probe, another digest: not the same token.
        let mut c = a;
        c[31] ^= 1;
        assert!(v.get(&c, 0).is_none());
    }

    #[test]
    fn it_stays_bounded_and_drops_expired_verdicts_first() {
        let v = Verdicts::default();
        for i in 0..SHARDS * PER_SHARD * 2 {
            let until = if i % 2 == 0 { 10 } else { u64::MAX };
            v.put(&digest(&format!("t{i}")), active(), until, 20);
        }
        assert!(v.len() <= SHARDS * PER_SHARD);
        let last = format!("t{}", SHARDS * PER_SHARD * 2 - 1);
        assert!(v.get(&digest(&last), 20).is_some());
    }

    #[tokio::test]
    async fn concurrent_misses_for_one_token_make_one_call() {
        let flights = Arc::new(Flights::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let d = digest("same");
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (flights, calls) = (flights.clone(), calls.clone());
                tokio::spawn(async move {
                    let f = flights.join(&d);
                    f.get_or_init(|| async {
                        calls.fetch_add(1, Relaxed);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Outcome::Answered(None)
                    })
                    .await
                    .clone()
                })
            })
            .collect();
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Outcome::Answered(None)));
        }
        assert_eq!(calls.load(Relaxed), 1);
        assert_eq!(flights.len(), 0, "nothing left in flight");
    }

    #[tokio::test]
    async fn a_call_whose_requests_all_went_away_is_not_left_behind() {
        let flights = Flights::default();
        let d = digest("gone");
        let f = flights.join(&d);
        let call = f.get_or_init(std::future::pending::<Outcome>);
        // The client disconnects: the request's future is dropped mid-call.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), call)
                .await
                .is_err()
        );
        drop(f);
        assert_eq!(flights.len(), 0);

        // One of two waiting goes away: the call stays for the other.
        let (a, b) = (flights.join(&d), flights.join(&d));
        drop(a);
        assert_eq!(flights.len(), 1);
        drop(b);
        assert_eq!(flights.len(), 0);
    }
}
