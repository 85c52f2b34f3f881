//! The in-memory [`Storage`] a `caches` entry names: whole responses (the serialized
//! [`CacheMeta`] and the body) in a map, bounded by `max_size` through pingora-cache's
//! `simple_lru` eviction manager, which picks what to drop; Pingora purges it here.
//! Each entry keeps the route and client path it was stored for (the key's `user_tag`), so an
//! admin purge finds every host, query, consumer and variant under a path.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use pingora::cache::eviction::simple_lru;
use pingora::cache::eviction::{CacheEntryId, CacheEntryKeyRef, EvictionManager};
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};

/// An entry's place in the map: the primary hash and the variant's.
type Slot = (HashBinary, Option<HashBinary>);

struct Entry {
    id: u64,
    meta: (Vec<u8>, Vec<u8>),
    body: Bytes,
    /// The key's `user_tag`: route and client path ([`super::tag`]).
    tag: Box<str>,
}

impl Entry {
    fn size(&self) -> usize {
        self.meta.0.len() + self.meta.1.len() + self.body.len()
    }
}

/// One in-memory store, shared by the routes that name it.
pub struct Store {
    pub name: Box<str>,
    pub max_size: usize,
    entries: RwLock<HashMap<Slot, Arc<Entry>>>,
    /// What to drop once `max_size` is reached; Pingora consults it on every fill and hit.
    pub eviction: simple_lru::Manager,
    next_id: AtomicU64,
    bytes: AtomicI64,
    evictions: AtomicU64,
}

fn slot_of(primary: HashBinary, variance: Option<HashBinary>) -> Slot {
    (primary, variance)
}

impl Store {
    pub fn new(name: &str, max_size: usize) -> Self {
        Store {
            name: name.into(),
            max_size,
            entries: RwLock::new(HashMap::new()),
            eviction: simple_lru::Manager::new(max_size),
            next_id: AtomicU64::new(1),
            bytes: AtomicI64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// Bytes held (bodies and heads).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed).max(0) as u64
    }

    /// Entries dropped to stay within `max_size`.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Relaxed)
    }

    /// Remove every entry whose tag `hit` accepts: the count removed.
    pub fn purge_where(&self, hit: impl Fn(&str) -> bool) -> usize {
        let mut removed = Vec::new();
        self.entries.write().retain(|slot, e| {
            let gone = hit(&e.tag);
            if gone {
                removed.push((*slot, e.clone()));
            }
            !gone
        });
        for (slot, e) in &removed {
            self.forget(*slot, e);
        }
        removed.len()
    }

    /// An entry that left the map: its bytes, and its place in the LRU.
    fn forget(&self, (primary, variance): Slot, e: &Entry) {
        self.bytes.fetch_sub(e.size() as i64, Relaxed);
        let key = CompactCacheKey {
            primary,
            variance: variance.map(Box::new),
            user_tag: e.tag.clone(),
        };
        let id = Some(CacheEntryId::new(e.id));
        self.eviction
            .remove(CacheEntryKeyRef::from_entry_id(&key, id));
    }

    /// Store `entry`; one it replaces (a full refetch of a stale entry) is forgotten.
    fn insert(&self, slot: Slot, entry: Entry) {
        self.bytes.fetch_add(entry.size() as i64, Relaxed);
        let old = self.entries.write().insert(slot, Arc::new(entry));
        if let Some(old) = old {
            self.forget(slot, &old);
        }
    }
}

#[async_trait]
impl Storage for Store {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let slot = slot_of(key.primary_bin(), key.variance_bin());
        let Some(e) = self.entries.read().get(&slot).cloned() else {
            return Ok(None);
        };
        let meta = CacheMeta::deserialize(&e.meta.0, &e.meta.1)?;
        let hit = Hit {
            body: e.body.clone(),
            range: (0, e.body.len()),
            done: false,
            id: e.id,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Fill {
            store: self,
            slot: slot_of(key.primary_bin(), key.variance_bin()),
            meta: meta.serialize()?,
            body: BytesMut::new(),
            tag: key.user_tag.as_str().into(),
            id: self.next_id.fetch_add(1, Relaxed),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        kind: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key();
        let slot = slot_of(key.primary_bin(), key.variance_bin());
        let wanted = match target {
            PurgeTarget::Exact(e) => e.entry_id(),
            PurgeTarget::Active(_) => None,
        };
        let removed = {
            let mut map = self.entries.write();
            match map.get(&slot) {
                Some(e) if wanted.is_none_or(|id| id.get() == e.id) => map.remove(&slot),
                _ => None,
            }
        };
        let Some(e) = removed else {
            return Ok(PurgeOutcome::NotFound);
        };
        self.bytes.fetch_sub(e.size() as i64, Relaxed);
        if matches!(kind, PurgeType::Eviction) {
            self.evictions.fetch_add(1, Relaxed);
        }
        Ok(PurgeOutcome::Purged(Some(CacheEntryId::new(e.id))))
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let slot = slot_of(key.primary_bin(), key.variance_bin());
        let serialized = meta.serialize()?;
        let mut map = self.entries.write();
        let Some(old) = map.get(&slot).cloned() else {
            return Ok(false);
        };
        let entry = Entry {
            id: old.id,
            meta: serialized,
            body: old.body.clone(),
            tag: old.tag.clone(),
        };
        let grew = entry.size() as i64 - old.size() as i64;
        map.insert(slot, Arc::new(entry));
        self.bytes.fetch_add(grew, Relaxed);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// A hit: the stored body, once, or the part a single range asks for.
struct Hit {
    body: Bytes,
    range: (usize, usize),
    done: bool,
    id: u64,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.range.0..self.range.1)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let end = end.unwrap_or(len).min(len);
        if start > end {
            return Error::e_explain(ErrorType::InternalError, "seek beyond the stored body");
        }
        self.range = (start, end);
        self.done = false;
        Ok(())
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.id))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A fill: the body gathered as it streams to the client, stored whole at its end.
struct Fill {
    store: &'static Store,
    slot: Slot,
    meta: (Vec<u8>, Vec<u8>),
    body: BytesMut,
    tag: Box<str>,
    id: u64,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let entry = Entry {
            id: self.id,
            meta: self.meta,
            body: self.body.freeze(),
            tag: self.tag,
        };
        let size = entry.size();
        self.store.insert(self.slot, entry);
        Ok(MissFinishType::Created(size))
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.id))
    }
}
