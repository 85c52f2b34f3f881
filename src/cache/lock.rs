//! A route's cache lock: one upstream fetch per key on a miss storm, across both engines.
//! Pingora's path takes it through pingora-cache's [`CacheKeyLock`], with its lock cores,
//! read locks and statuses, as `CacheLock` does. The own engine's miss takes it without
//! them ([`KeyLock::own`]): a mark in the table, turned into a lock core (the waiters' and
//! the permit the own engine then releases) only when a request of Pingora's path comes to
//! wait on the key. Most misses are alone; they pay a table insert and remove.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use http::Extensions;
use parking_lot::Mutex;
use pingora::cache::key::CacheHashKey;
use pingora::cache::lock::{CacheKeyLock, LockStatus, LockStub, Locked, WritePermit};
use pingora::cache::CacheKey;

/// The table's hasher: its keys are keyed hashes already ([`super::RouteCache::key`]).
#[derive(Default)]
struct Hash128(u64);

impl Hasher for Hash128 {
    fn write(&mut self, _: &[u8]) {}

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Who fills a key.
enum Slot {
    /// The own engine, and nobody waits on it yet.
    Own,
    /// A writer that requests wait on. `permit`: the own engine's writer's, made for the
    /// first request that came to wait (Pingora's writers hold their own).
    Core {
        stub: LockStub,
        permit: Option<WritePermit>,
    },
}

type Table = HashMap<u128, Slot, BuildHasherDefault<Hash128>>;

const SHARDS: usize = 16;

pub struct KeyLock {
    shards: [Mutex<Table>; SHARDS],
    /// How long a writer may hold a key before waiting requests stop counting on it.
    age_timeout: Duration,
}

/// The own engine's hold of a key, given back by [`KeyLock::release_own`].
#[must_use]
pub struct OwnPermit(u128);

fn hash_of(key: &CacheKey) -> u128 {
    u128::from_be_bytes(key.combined_bin())
}

impl KeyLock {
    pub fn new(age_timeout: Duration) -> Self {
        KeyLock {
            shards: Default::default(),
            age_timeout,
        }
    }

    fn shard(&self, hash: u128) -> &Mutex<Table> {
        &self.shards[(hash as usize) % SHARDS]
    }

    fn core(&self, stale_writer: bool) -> (WritePermit, LockStub) {
        WritePermit::new(self.age_timeout, stale_writer, Extensions::new())
    }

    /// The own engine's miss takes the key if nobody holds it.
    pub fn own(&self, key: &CacheKey) -> Option<OwnPermit> {
        let hash = hash_of(key);
        let mut table = self.shard(hash).lock();
        if table.contains_key(&hash) {
            return None;
        }
        table.insert(hash, Slot::Own);
        Some(OwnPermit(hash))
    }

    /// Give the key back: the requests waiting on it go on as `status` says.
    pub fn release_own(&self, permit: OwnPermit, status: LockStatus) {
        let mut table = self.shard(permit.0).lock();
        match table.remove(&permit.0) {
            Some(Slot::Own) | None => {}
            Some(Slot::Core {
                permit: Some(mut p),
                stub,
            }) => {
                // As `CacheLock::release`: a lock its waiters aged out stays for the next
                // request to replace.
                if p.lock_status() == LockStatus::AgeTimeout {
                    p.unlock(LockStatus::AgeTimeout);
                    table.insert(permit.0, Slot::Core { stub, permit: None });
                } else {
                    p.unlock(status);
                }
            }
            // A writer of Pingora's path took the key over after this one aged out.
            Some(other) => {
                table.insert(permit.0, other);
            }
        }
    }
}

/// Whether waiting requests may still count on a lock's writer (as `CacheLock::lock`).
fn live(stub: &LockStub) -> bool {
    !matches!(
        stub.0.lock_status(),
        LockStatus::Dangling | LockStatus::AgeTimeout
    )
}

impl CacheKeyLock for KeyLock {
    fn lock(&self, key: &CacheKey, stale_writer: bool) -> Locked {
        let hash = hash_of(key);
        let mut table = self.shard(hash).lock();
        match table.get_mut(&hash) {
            Some(slot @ Slot::Own) => {
                let (permit, stub) = self.core(false);
                let read = stub.read_lock();
                *slot = Slot::Core {
                    stub,
                    permit: Some(permit),
                };
                return Locked::Read(read);
            }
            Some(Slot::Core { stub, .. }) if live(stub) => return Locked::Read(stub.read_lock()),
            _ => {}
        }
        let (permit, stub) = self.core(stale_writer);
        // A writer that aged out or quit is replaced; the own engine's, if it was one,
        // finds the key taken over when it releases.
        if let Some(Slot::Core {
            permit: Some(mut own),
            ..
        }) = table.insert(hash, Slot::Core { stub, permit: None })
        {
            own.unlock(LockStatus::AgeTimeout);
        }
        Locked::Write(permit)
    }

    fn release(&self, key: &CacheKey, mut permit: WritePermit, reason: LockStatus) {
        let hash = hash_of(key);
        if permit.lock_status() == LockStatus::AgeTimeout {
            permit.unlock(LockStatus::AgeTimeout);
            return;
        }
        self.shard(hash).lock().remove(&hash);
        permit.unlock(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key whose hash is its path's bytes (distinct for the tests' short paths).
    fn key(path: &str) -> CacheKey {
        let mut hash = [0u8; 16];
        hash[..path.len()].copy_from_slice(path.as_bytes());
        let mut k = CacheKey::new(path, "");
        k.set_primary_bin_override(hash);
        k
    }

    #[test]
    fn an_own_fill_holds_the_key_against_both_engines() {
        let l = KeyLock::new(Duration::from_secs(5));
        let k = key("/a");
        let own = l.own(&k).expect("a free key");
        assert!(l.own(&k).is_none(), "a second own miss of the key");
        let Locked::Read(r) = l.lock(&k, false) else {
            panic!("Pingora's path must wait on the own engine's fill");
        };
        assert!(r.locked());
        l.release_own(own, LockStatus::Done);
        assert!(!r.locked());
        assert_eq!(r.lock_status(), LockStatus::Done);
        assert!(l.own(&k).is_some(), "the key is free again");
    }

    #[test]
    fn a_pingora_writer_holds_the_key_against_the_own_engine() {
        let l = KeyLock::new(Duration::from_secs(5));
        let k = key("/b");
        let Locked::Write(w) = l.lock(&k, false) else {
            panic!("a free key");
        };
        assert!(l.own(&k).is_none());
        assert!(!l.lock(&k, false).is_write());
        l.release(&k, w, LockStatus::TransientError);
        let own = l.own(&k).expect("released");
        l.release_own(own, LockStatus::GiveUp);
    }

    #[test]
    fn an_aged_out_own_fill_is_replaced_and_its_release_leaves_the_new_writer() {
        let l = KeyLock::new(Duration::ZERO);
        let k = key("/c");
        let own = l.own(&k).unwrap();
        let Locked::Read(r) = l.lock(&k, false) else {
            panic!("the own fill holds the key");
        };
        // A waiter finds the writer aged out (as `ReadLock::wait` marks it).
        assert_eq!(r.lock_status(), LockStatus::AgeTimeout);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(r.wait());
        let Locked::Write(w) = l.lock(&k, false) else {
            panic!("an aged-out writer is replaced");
        };
        l.release_own(own, LockStatus::Done);
        assert!(l.own(&k).is_none(), "the new writer still holds the key");
        l.release(&k, w, LockStatus::Done);
        assert!(l.own(&k).is_some());
    }
}
