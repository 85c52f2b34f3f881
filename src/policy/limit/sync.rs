//! The hybrid store (`store: redis` with `sync: DURATION`): each instance decides from its own
//! copy of the policy's buckets, without waiting for Redis, and a background task reconciles
//! that copy with Redis every `sync`: it pushes the requests this instance admitted per key
//! (advancing the shared TAT by `admitted × interval` in one script) and takes back the
//! shared TAT, which then includes every instance's admissions.
//!
//! Between two syncs every instance can admit up to what its copy allows, so the cluster may
//! admit up to `(instances − 1) × (burst + requests/per × sync)` more than one bucket in a
//! short window; over time the shared TAT charges every admission, so the sustained rate holds.
//! A failed sync sets the store failing until the next one succeeds: the policy's `on_error`
//! then applies, so it takes effect within one interval (plus the timeout).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::ConnectionManager;

use super::local::{now_nanos, Gcra, Verdict};
use super::StoreUnavailable;

/// Keys a policy holds at most between two syncs.
const MAX_KEYS: usize = 1 << 20;

/// Keys per script call.
const BATCH: usize = 500;

/// KEYS = the buckets; ARGV[1] = how far back (µs) this batch's admissions may be charged
/// from (the time since the previous push, plus the credit), then per key: admitted,
/// interval (µs). Returns per key the shared TAT − now (µs). A key's TTL covers its TAT.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local back = tonumber(ARGV[1])
local out = {}
for i, k in ipairs(KEYS) do
  local n = tonumber(ARGV[2 * i])
  local interval = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', k) or '0')
  if n > 0 then
    if tat < now - back then tat = now - back end
    tat = tat + n * interval
    redis.call('SET', k, string.format('%.0f', tat), 'PX', math.ceil((tat - now + back) / 1000) + 1)
  end
  out[i] = tat - now
end
return out
";

struct Entry {
    /// This instance's view of the TAT (monotonic ns).
    tat: u64,
    /// Admitted here since the last push.
    pending: u64,
}

struct Inner {
    keys: Mutex<HashMap<u64, Entry>>,
    gcra: Gcra,
    failing: AtomicBool,
}

/// One `sync` policy's buckets and its reconciling task.
pub struct SyncStore {
    inner: Arc<Inner>,
    client: redis::Client,
    every: Duration,
    timeout: Duration,
    started: AtomicBool,
}

impl std::fmt::Debug for SyncStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SyncStore {{ every: {:?} }}", self.every)
    }
}

impl SyncStore {
    pub fn new(client: redis::Client, gcra: Gcra, every: Duration, timeout: Duration) -> Self {
        SyncStore {
            inner: Arc::new(Inner {
                keys: Mutex::new(HashMap::new()),
                gcra,
                failing: AtomicBool::new(false),
            }),
            client,
            every,
            timeout,
            started: AtomicBool::new(false),
        }
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// Decide locally; `Err` while the last sync failed (the caller applies `on_error`).
    /// The first call starts the task, on the runtime serving the request (as the Redis
    /// store's connection); it ends when this store is dropped (a reload or shutdown).
    pub fn check(&self, key: u64, now: u64) -> Result<Verdict, StoreUnavailable> {
        self.start();
        if self.inner.failing.load(Ordering::Relaxed) {
            return Err(StoreUnavailable);
        }
        let mut keys = self.inner.keys.lock();
        if keys.len() >= MAX_KEYS && !keys.contains_key(&key) {
            // As the local store: a flood of new keys is admitted unstored rather than
            // evicting anybody's state (the task drops keys whose bucket is full again).
            return Ok(self.inner.gcra.decide(0, now).0);
        }
        let e = keys.entry(key).or_insert(Entry { tat: 0, pending: 0 });
        let (v, tat) = self.inner.gcra.decide(e.tat, now);
        if v.allowed {
            e.tat = tat;
            e.pending += 1;
        }
        Ok(v)
    }

    fn start(&self) {
        if !self.started.swap(true, Ordering::Relaxed) {
            let task = Task {
                inner: Arc::downgrade(&self.inner),
                client: self.client.clone(),
                every: self.every,
                timeout: self.timeout,
            };
            tokio::spawn(task.run());
        }
    }

    /// On an in-process reload, take over `old`'s buckets: each key's view of the TAT (capped
    /// at `now` plus this policy's tolerance) and the admissions not pushed to Redis yet, taken
    /// from `old` so that they are pushed once, by this store's task (started now when there
    /// are some, not at the first request). Returns how many keys were taken over.
    pub fn take_over(&self, old: &SyncStore, now: u64) -> usize {
        let max = now.saturating_add(self.inner.gcra.tolerance());
        let mut pending = false;
        let taken = {
            let mut from = old.inner.keys.lock();
            let mut keys = self.inner.keys.lock();
            for (k, e) in from.iter_mut() {
                if keys.len() >= MAX_KEYS {
                    break;
                }
                let n = std::mem::take(&mut e.pending);
                pending |= n > 0;
                keys.insert(
                    *k,
                    Entry {
                        tat: e.tat.min(max),
                        pending: n,
                    },
                );
            }
            keys.len()
        };
        if pending && tokio::runtime::Handle::try_current().is_ok() {
            self.start();
        }
        taken
    }
}

struct Task {
    inner: Weak<Inner>,
    client: redis::Client,
    every: Duration,
    timeout: Duration,
}

impl Task {
    async fn run(self) {
        let script = redis::Script::new(SCRIPT);
        let mut conn: Option<ConnectionManager> = None;
        let mut last = now_nanos();
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = self.inner.upgrade() else {
                return;
            };
            let now = now_nanos();
            let since = now.saturating_sub(last);
            last = now;
            let batch = take_batch(&inner, now);
            let call = async {
                if conn.is_none() {
                    conn = Some(super::redis::connect(&self.client, self.timeout).await?);
                }
                let c = conn.as_mut().expect("connected above");
                let g = inner.gcra;
                let interval = g.interval.div_ceil(1000).max(1);
                let back = (since + g.credit()).div_ceil(1000);
                let mut shared = Vec::with_capacity(batch.len());
                // With nothing to push, one call without keys still tells whether Redis
                // answers (else `failing` would clear while Redis is down).
                let empty: &[(u64, u64)] = &[];
                let chunks: Vec<_> = if batch.is_empty() {
                    vec![empty]
                } else {
                    batch.chunks(BATCH).collect()
                };
                for chunk in chunks {
                    let mut inv = script.prepare_invoke();
                    inv.arg(back);
                    for (key, n) in chunk {
                        inv.key(format!("tollgate:rl:{key:016x}"))
                            .arg(*n)
                            .arg(interval);
                    }
                    let deltas: Vec<i64> = inv.invoke_async(c).await.map_err(|e| e.to_string())?;
                    shared.extend(chunk.iter().map(|(k, _)| *k).zip(deltas));
                }
                Ok::<_, String>(shared)
            };
            match tokio::time::timeout(self.timeout.max(self.every), call).await {
                Ok(Ok(shared)) => {
                    apply(&inner, &shared, now_nanos());
                    inner.failing.store(false, Ordering::Relaxed);
                }
                Ok(Err(e)) => failed(&inner, &e),
                Err(_) => failed(&inner, "no answer in time"),
            }
        }
    }
}

/// Every key with admissions to push or a bucket not yet full (whose shared state may have
/// moved), taking the pending counts; keys whose bucket is full again are dropped.
fn take_batch(inner: &Inner, now: u64) -> Vec<(u64, u64)> {
    let credit = inner.gcra.credit();
    let mut keys = inner.keys.lock();
    keys.retain(|_, e| e.pending > 0 || e.tat.saturating_add(credit) >= now);
    keys.iter_mut()
        .map(|(k, e)| (*k, std::mem::take(&mut e.pending)))
        .collect()
}

/// Take the shared TATs: a key's view becomes the later of its own and the shared one plus
/// what was admitted here since the push.
fn apply(inner: &Inner, shared: &[(u64, i64)], now: u64) {
    let interval = inner.gcra.interval;
    let mut keys = inner.keys.lock();
    for &(key, delta_us) in shared {
        if let Some(e) = keys.get_mut(&key) {
            let at = now.saturating_add_signed(delta_us.saturating_mul(1000));
            e.tat = e.tat.max(at + e.pending * interval);
        }
    }
}

fn failed(inner: &Inner, e: &str) {
    if !inner.failing.swap(true, Ordering::Relaxed) {
        log::warn!("rate limit sync with Redis failed ({e}); on_error applies until it succeeds");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_takes_the_copy_over_and_moves_the_admissions_not_pushed() {
        let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
        let g = Gcra::new(10, 1_000_000_000, 2);
        let every = Duration::from_secs(1);
        let old = SyncStore::new(client.clone(), g, every, every);
        let new = SyncStore::new(client, g, every, every);
        let now = 5_000_000_000;
        let ahead = Entry {
            tat: now + 10 * g.tolerance(),
            pending: 3,
        };
        old.inner.keys.lock().insert(1, ahead);
        assert_eq!(new.take_over(&old, now), 1);
        let keys = new.inner.keys.lock();
        assert_eq!(keys[&1].tat, now + g.tolerance(), "capped at the tolerance");
        assert_eq!(keys[&1].pending, 3);
        assert_eq!(
            old.inner.keys.lock()[&1].pending,
            0,
            "pushed once, by the new store"
        );
    }
}
