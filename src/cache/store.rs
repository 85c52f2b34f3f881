//! The in-memory [`Storage`] a `caches` entry names: whole responses (the [`CacheMeta`]'s
//! fields, and the head and body packed in one allocation, [`super::packed`]) in an LRU
//! bounded by `max_size` ([`super::lru`]), which holds the entries themselves: pingora-cache's
//! eviction managers keep a second map beside a store's, which a store at its size, dropping
//! one entry for each it takes on every miss, would walk twice. Each entry keeps the route
//! and client path it was stored for (the key's primary bytes, [`super::RouteCache::key`]),
//! so an admin purge finds every host, query, consumer and variant under a path.

use std::any::Any;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora::cache::eviction::CacheEntryId;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

use super::lru::{Hashed, Lru};
use super::packed::{Packed, Packing};
use super::{Freshness, Storable};

/// An entry's place in the map: the primary hash and the variant's.
type Slot = (HashBinary, Option<HashBinary>);

/// A slot is made of keyed hashes already: their first bytes are its hash.
impl Hashed for Slot {
    fn hash(&self) -> u64 {
        let word = |h: &HashBinary| u64::from_le_bytes(h[..8].try_into().unwrap_or_default());
        let (primary, variance) = self;
        word(primary).rotate_left(23) ^ variance.as_ref().map_or(0, word)
    }
}

/// The entries, least recently used last.
type Entries = Lru<Slot, Entry>;

struct Entry {
    id: u64,
    meta: Meta,
    /// The head, the tag (route and client path) and the body.
    packed: Packed,
}

/// What an entry holds in memory beyond its packed bytes, counted against `max_size` so that
/// it bounds the memory the store takes, small objects included: the LRU's node (the entry
/// and its key) and the map's slot.
const ENTRY_OVERHEAD: usize = 512;

impl Entry {
    fn size(&self) -> usize {
        ENTRY_OVERHEAD + self.packed.len()
    }
}

/// A fresh entry as [`Store::fresh`] gives it: its head, body and age in seconds.
pub struct Fresh {
    pub header: ResponseHeader,
    pub body: Bytes,
    pub age: u64,
}

/// What [`Store::probe`] finds for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A fresh entry [`Store::fresh`] gives.
    Fresh,
    /// No entry of any kind (no variant, nothing stale).
    Absent,
    /// Something only Pingora's cache path serves: stale, or of a `Vary` family.
    Other,
}

/// What a [`CacheMeta`] says besides its head, kept as it is: `CacheMeta` cannot be cloned,
/// and its serialized form costs a compression on every fill and a decompression on every hit.
#[derive(Clone, Copy)]
struct Meta {
    fresh_until: SystemTime,
    /// When the entry was stored or last revalidated: what its age counts from.
    updated: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
    epoch_override: Option<SystemTime>,
    /// One variant (no `Vary`), framed by `Content-Length`: the own engine may answer it.
    plain: bool,
}

impl Meta {
    /// Whether the own engine may answer from it at `now` as it is.
    fn servable(&self, now: SystemTime) -> bool {
        self.plain && self.fresh_until >= now
    }

    fn of(m: &CacheMeta) -> Meta {
        let freshness = Freshness {
            fresh_until: m.fresh_until(),
            updated: m.updated(),
            stale_while_revalidate: m.stale_while_revalidate_sec(),
            stale_if_error: m.stale_if_error_sec(),
        };
        let variance = m.variance();
        let h = &m.response_header().headers;
        let plain = variance.is_none()
            && !h.contains_key(http::header::VARY)
            && h.contains_key(http::header::CONTENT_LENGTH);
        Meta::new(&freshness, variance, m.epoch_override(), plain)
    }

    /// `plain`: one variant (no `Vary`), framed by `Content-Length`.
    fn new(
        f: &Freshness,
        variance: Option<HashBinary>,
        epoch_override: Option<SystemTime>,
        plain: bool,
    ) -> Meta {
        Meta {
            fresh_until: f.fresh_until,
            updated: f.updated,
            stale_while_revalidate: f.stale_while_revalidate,
            stale_if_error: f.stale_if_error,
            variance,
            epoch_override,
            plain,
        }
    }

    /// A `CacheMeta` for a hit on `header`. Its creation time is the last revalidation's (the
    /// one `CacheMeta` constructor sets both): age and freshness are exact; a `Vary` variant
    /// older than its primary's last revalidation is fetched again rather than served.
    fn to_cache_meta(self, header: ResponseHeader) -> CacheMeta {
        let mut m = CacheMeta::new(
            self.fresh_until,
            self.updated,
            self.stale_while_revalidate,
            self.stale_if_error,
            header,
        );
        if let Some(v) = self.variance {
            m.set_variance(v);
        }
        if let Some(e) = self.epoch_override {
            m.set_epoch_override(e);
        }
        m
    }
}

/// One in-memory store, shared by the routes that name it.
pub struct Store {
    pub name: Box<str>,
    pub max_size: usize,
    entries: Mutex<Entries>,
    next_id: AtomicU64,
    bytes: AtomicI64,
    evictions: AtomicU64,
}

/// A copy of what a hit serves, taken under the store's lock.
struct Found {
    id: u64,
    meta: Meta,
    packed: Packed,
}

fn slot_of(primary: HashBinary, variance: Option<HashBinary>) -> Slot {
    (primary, variance)
}

impl Store {
    pub fn new(name: &str, max_size: usize) -> Self {
        Store {
            name: name.into(),
            max_size,
            entries: Mutex::new(Entries::new()),
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
        let (mut removed, mut freed) = (0, 0);
        let mut entries = self.entries.lock();
        entries.retain(|e| {
            let gone = hit(e.packed.tag());
            if gone {
                removed += 1;
                freed += e.size();
            }
            !gone
        });
        self.count_bytes(-(freed as i64));
        removed
    }

    /// Change the bytes held by `delta`. Under the entries' lock, which orders every change:
    /// a load and a store, not a locked add that would wait for the entry's cold writes.
    fn count_bytes(&self, delta: i64) {
        self.bytes.store(self.bytes.load(Relaxed) + delta, Relaxed);
    }

    /// A copy of `slot`'s entry, made the most recently used.
    fn use_slot(&self, slot: &Slot) -> Option<Found> {
        let mut entries = self.entries.lock();
        let e = entries.get(slot)?;
        Some(Found {
            id: e.id,
            meta: e.meta,
            packed: e.packed.clone(),
        })
    }

    /// What the store holds for `key`'s primary slot at `now`, for the own engine to decide
    /// whether it answers the request (nothing is copied or touched).
    pub fn probe(&self, key: &CacheKey, now: SystemTime) -> Probe {
        let slot = slot_of(key.primary_bin(), None);
        match self.entries.lock().peek(&slot) {
            None => Probe::Absent,
            Some(e) if e.meta.servable(now) => Probe::Fresh,
            Some(_) => Probe::Other,
        }
    }

    /// The entry for `key` when it can be served as it is at `now`: fresh, of one variant
    /// (no `Vary`), framed by `Content-Length`. The LRU learns of the use, as on Pingora's
    /// hits.
    pub fn fresh(&self, key: &CacheKey, now: SystemTime) -> Option<Fresh> {
        let e = self.use_slot(&slot_of(key.primary_bin(), None))?;
        let m = &e.meta;
        if !m.servable(now) {
            return None;
        }
        let epoch = m.epoch_override.unwrap_or(m.updated);
        Some(Fresh {
            header: e.packed.head()?,
            body: e.packed.body(),
            age: now.duration_since(epoch).map_or(0, |d| d.as_secs()),
        })
    }

    /// Remove `slot`'s entry (only if it is `wanted`, when named): its id.
    fn remove(&self, slot: &Slot, wanted: Option<CacheEntryId>) -> Option<u64> {
        let mut entries = self.entries.lock();
        let e = match entries.peek(slot) {
            Some(e) if wanted.is_none_or(|id| id.get() == e.id) => entries.pop(slot),
            _ => None,
        }?;
        self.count_bytes(-(e.size() as i64));
        Some(e.id)
    }

    /// A fill outside Pingora's session (the own engine's miss): the entry its miss handler
    /// would make for `key`, a response `head` [`storable`](super::storable) said yes to and
    /// the request's `variance`, stored by [`Fill::store`]; `length`: the body's
    /// `Content-Length`, when it has one.
    pub fn fill(
        &'static self,
        key: &CacheKey,
        verdict: &Storable,
        variance: Option<HashBinary>,
        head: &ResponseHeader,
        length: Option<usize>,
    ) -> Fill {
        let plain = variance.is_none() && !verdict.has_vary() && length.is_some();
        let meta = Meta::new(&verdict.freshness, variance, None, plain);
        self.fill_with(key, meta, head, length.unwrap_or(0))
    }

    fn fill_with(
        &'static self,
        key: &CacheKey,
        meta: Meta,
        head: &ResponseHeader,
        length: usize,
    ) -> Fill {
        let tag = std::str::from_utf8(key.primary_key()).unwrap_or_default();
        Fill {
            store: self,
            slot: slot_of(key.primary_bin(), key.variance_bin()),
            meta,
            packing: Packing::new(head, tag, length),
            id: self.next_id.fetch_add(1, Relaxed),
        }
    }

    /// Store `entry` as the most recently used, in place of any under its slot (a full
    /// refetch of a stale entry), having dropped the least recently used while the store
    /// would be over `max_size` with it (as pingora-cache's managers admit and evict; the last
    /// dropped entry's node takes it): its size.
    fn insert(&self, slot: Slot, entry: Entry) -> usize {
        let size = entry.size() as i64;
        let mut entries = self.entries.lock();
        let mut held = self.bytes.load(Relaxed) + size;
        let mut evicted = 0;
        while held > self.max_size as i64 {
            let Some(gone) = entries.pop_lru() else {
                break;
            };
            held -= gone.size() as i64;
            evicted += 1;
        }
        if let Some(old) = entries.push(slot, entry) {
            held -= old.size() as i64;
        }
        self.bytes.store(held, Relaxed);
        if evicted > 0 {
            self.evictions
                .store(self.evictions.load(Relaxed) + evicted, Relaxed);
        }
        size as usize
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
        let Some(e) = self.use_slot(&slot) else {
            return Ok(None);
        };
        let Some(header) = e.packed.head() else {
            return Ok(None);
        };
        let meta = e.meta.to_cache_meta(header);
        let body = e.packed.body();
        let hit = Hit {
            range: (0, body.len()),
            body,
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
        let head = meta.response_header();
        Ok(Box::new(self.fill_with(key, Meta::of(meta), head, 0)))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _kind: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let wanted = match target {
            PurgeTarget::Exact(e) => e.entry_id(),
            PurgeTarget::Active(_) => None,
        };
        // Pingora evicts nothing here (the store does, in `insert`): every purge is an admin's
        // or a refetch's.
        let key = target.key();
        Ok(
            match self.remove(&slot_of(key.primary_bin(), key.variance_bin()), wanted) {
                Some(id) => PurgeOutcome::Purged(Some(CacheEntryId::new(id))),
                None => PurgeOutcome::NotFound,
            },
        )
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let slot = slot_of(key.primary_bin(), key.variance_bin());
        let new_head = meta.response_header();
        let meta = Meta::of(meta);
        let mut entries = self.entries.lock();
        let Some(e) = entries.peek_mut(&slot) else {
            return Ok(false);
        };
        let old = e.size() as i64;
        e.meta = meta;
        e.packed = e.packed.with_head(new_head);
        let delta = e.size() as i64 - old;
        self.count_bytes(delta);
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
pub struct Fill {
    store: &'static Store,
    slot: Slot,
    meta: Meta,
    packing: Packing,
    id: u64,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.packing.body(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        Ok(MissFinishType::Created(self.store()))
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.id))
    }
}

impl Fill {
    /// Gather a piece of the body.
    pub fn write(&mut self, data: &[u8]) {
        self.packing.body(data);
    }

    /// Store the entry (see [`Store::insert`]): its size.
    pub fn store(self) -> usize {
        let entry = Entry {
            id: self.id,
            meta: self.meta,
            packed: self.packing.finish(),
        };
        self.store.insert(self.slot, entry)
    }
}
