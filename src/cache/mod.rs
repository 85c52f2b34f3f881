//! Response caching (`caches`, a route's `cache`) on pingora-cache: Pingora runs the HTTP
//! cache state machine; this module says what a route caches, under which key, for how long
//! ([`rules`]), keeps the entries in an LRU ([`store`]) and the lock both engines take on a
//! miss ([`lock`]).
//!
//! Why here: the decisions are data (a key, a verdict on a response head, a status label), so
//! both the proxy hooks and `explain` use them; the proxy only wires them into Pingora.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::{HeaderName, Method};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use pingora::cache::{CacheKey, CacheOptionOverrides, CachePhase, NoCacheReason};
use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;

pub mod config;
pub mod lock;
#[allow(unsafe_code)] // a prefetch hint
mod lru;
mod packed;
mod rules;
pub mod store;

pub use rules::{cacheable, storable, variance, Freshness, Storable};
pub use store::Store;

/// The secret of cache keys' hashes: one per process, so a cache kept across an in-process
/// reload keeps its keys.
static KEY_SECRET: Lazy<[u8; 16]> = Lazy::new(crate::random::key16);

/// An extra key part (`key: [header:NAME, claim:NAME]`).
#[derive(Debug, Clone)]
pub enum KeyPart {
    Header(HeaderName),
    Claim(Box<str>),
}

/// A route's `cache` settings, compiled.
#[derive(Debug)]
pub struct Rules {
    pub ttl: Duration,
    /// (GET, HEAD)
    pub methods: (bool, bool),
    pub statuses: Vec<u16>,
    pub key: Vec<KeyPart>,
    pub shared: bool,
    /// The route authenticates: the consumer is in the key unless `shared`.
    pub auth: bool,
    pub store_set_cookie: bool,
    pub honour_client_no_cache: bool,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
    pub lock: Duration,
    pub max_object: usize,
}

/// What the cache step did for a request: the `X-Cache-Status` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Hit,
    Miss,
    Expired,
    Stale,
    Updating,
    Revalidated,
    Bypass,
}

const STATUSES: [Status; 7] = [
    Status::Hit,
    Status::Miss,
    Status::Expired,
    Status::Stale,
    Status::Updating,
    Status::Revalidated,
    Status::Bypass,
];

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "HIT",
            Status::Miss => "MISS",
            Status::Expired => "EXPIRED",
            Status::Stale => "STALE",
            Status::Updating => "UPDATING",
            Status::Revalidated => "REVALIDATED",
            Status::Bypass => "BYPASS",
        }
    }

    /// The status of a response head about to be sent, from Pingora's cache phase.
    pub fn of(phase: CachePhase) -> Status {
        match phase {
            CachePhase::Hit => Status::Hit,
            CachePhase::Miss => Status::Miss,
            CachePhase::Expired => Status::Expired,
            CachePhase::Stale => Status::Stale,
            CachePhase::StaleUpdating => Status::Updating,
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => Status::Revalidated,
            // Looked up, fetched, and not stored (the response said so, or was too large).
            CachePhase::Disabled(r) if r != NoCacheReason::NeverEnabled => Status::Miss,
            _ => Status::Bypass,
        }
    }
}

/// A route's cache: its rules, store, lock and counters.
pub struct RouteCache {
    pub route: Box<str>,
    /// The keys' hasher, fed the route's part already (see [`Self::key`]).
    hasher: SipHasher24,
    pub store: &'static Store,
    pub lock: &'static lock::KeyLock,
    pub rules: Rules,
    requests: [AtomicU64; 7],
    lock_waits: AtomicU64,
}

impl std::fmt::Debug for RouteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteCache")
            .field("route", &self.route)
            .field("store", &self.store.name)
            .field("rules", &self.rules)
            .finish()
    }
}

impl RouteCache {
    pub fn new(route: &str, store: &'static Store, rules: Rules) -> Self {
        let lock: &'static lock::KeyLock = Box::leak(Box::new(lock::KeyLock::new(rules.lock)));
        let mut hasher = SipHasher24::new_with_key(&KEY_SECRET);
        let mut route_part = Vec::new();
        write_route(route, &mut route_part);
        hasher.write(&route_part);
        RouteCache {
            route: route.into(),
            hasher,
            store,
            lock,
            rules,
            requests: Default::default(),
            lock_waits: AtomicU64::new(0),
        }
    }

    /// Whether a request of this method takes the cache (GET, HEAD by `methods`).
    pub fn takes(&self, m: &Method) -> bool {
        config::cached_method(self.rules.methods, m)
    }

    /// Whether the key is known before admission: it names no consumer and no claim.
    pub fn key_before_admission(&self) -> bool {
        let consumer = self.rules.auth && !self.rules.shared;
        let claim = self
            .rules
            .key
            .iter()
            .any(|p| matches!(p, KeyPart::Claim(_)));
        !consumer && !claim
    }

    /// How long a request waits on the one that fills its key.
    pub fn lock_options(&self) -> CacheOptionOverrides {
        let mut o = CacheOptionOverrides::default();
        o.wait_timeout = Some(self.rules.lock);
        o
    }

    /// Count a request that went through the cache step; `waited`: behind the cache lock.
    pub fn count(&self, status: Status, waited: bool) {
        let i = STATUSES.iter().position(|s| *s == status).unwrap_or(6);
        self.requests[i].fetch_add(1, Relaxed);
        if waited {
            self.lock_waits.fetch_add(1, Relaxed);
        }
    }

    /// Requests by status, for `/metrics`.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        STATUSES
            .iter()
            .zip(&self.requests)
            .map(|(s, n)| (s.as_str(), n.load(Relaxed)))
    }

    pub fn lock_waits(&self) -> u64 {
        self.lock_waits.load(Relaxed)
    }
}

/// What the key is made of, for a request: [`RouteCache::key`] and `explain`.
pub struct KeyInput<'a> {
    pub host: &'a [u8],
    /// The client's path and query, as sent (before strip or rewrite).
    pub target: &'a [u8],
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
    pub identity: Option<&'a crate::policy::auth::Identity>,
    /// The `split` branch (upstream index) the request goes to.
    pub branch: Option<usize>,
}

impl RouteCache {
    /// The readable key: every part length-prefixed, so no two requests' parts run together.
    pub fn key_text(&self, k: &KeyInput<'_>) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + k.target.len());
        self.write_key(k, &mut out);
        out
    }

    /// The key's parts, as [`Self::key_text`] spells them, into `out`.
    fn write_key(&self, k: &KeyInput<'_>, out: &mut impl Sink) {
        write_route(&self.route, out);
        self.write_request(k, out);
    }

    /// The parts of the key after the route's: the request's.
    fn write_request(&self, k: &KeyInput<'_>, out: &mut impl Sink) {
        match k.host.iter().any(u8::is_ascii_uppercase) {
            true => part(out, b"host=", &k.host.to_ascii_lowercase()),
            false => part(out, b"host=", k.host),
        }
        part(out, b"target=", k.target);
        if self.rules.auth && !self.rules.shared {
            let consumer = k.identity.and_then(|i| i.consumer_bytes());
            part(out, b"consumer=", consumer.unwrap_or(b"-"));
        }
        if let Some(b) = k.branch {
            part(out, b"branch=", b.to_string().as_bytes());
        }
        for p in &self.rules.key {
            match p {
                KeyPart::Header(h) => {
                    let mut v = Vec::new();
                    for (i, x) in k.headers.get_all(h).iter().enumerate() {
                        if i > 0 {
                            v.extend_from_slice(b", ");
                        }
                        v.extend_from_slice(x.as_bytes());
                    }
                    part(out, format!("header:{h}=").as_bytes(), &v);
                }
                KeyPart::Claim(c) => {
                    let v = k.identity.and_then(|i| i.claim(c)).map(|v| v.to_string());
                    let label = format!("claim:{c}=");
                    part(out, label.as_bytes(), v.unwrap_or_default().as_bytes());
                }
            }
        }
    }

    /// The request's cache key; its primary bytes name the route and client path, for purges.
    /// Its hash (of [`Self::key_text`]'s bytes, fed to the hasher as they are made, the
    /// route's part once for the route) is taken once here (Pingora, the store and the lock
    /// each ask for it), keyed with a secret of this process: no client can make two keys
    /// collide.
    pub fn key(&self, k: &KeyInput<'_>) -> CacheKey {
        let mut h = self.hasher;
        let mut buffered = Buffered {
            hasher: &mut h,
            buf: [0; 256],
            len: 0,
        };
        self.write_request(k, &mut buffered);
        buffered.flush();
        let hash = h.finish128().as_bytes();
        // The primary bytes name what purges look for; the hash is of the whole key. The user
        // tag stays empty: Pingora copies it with every key it keeps.
        let mut key = CacheKey::new(tag(&self.route, k.path), String::new());
        key.set_primary_bin_override(hash);
        key
    }
}

/// Where a key's parts go: its readable text, or straight into its hash.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// The hasher fed through a buffer: a key is a score of short parts, and each `write` of
/// the hasher costs more than copying them into one.
struct Buffered<'h> {
    hasher: &'h mut SipHasher24,
    buf: [u8; 256],
    len: usize,
}

impl Buffered<'_> {
    fn flush(&mut self) {
        self.hasher.write(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Sink for Buffered<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > self.buf.len() {
            self.flush();
            if bytes.len() > self.buf.len() {
                self.hasher.write(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

/// The key's first part: its route (routes that differ only by `match` rules or methods
/// share a path: each its own).
fn write_route(route: &str, out: &mut impl Sink) {
    part(out, b"route=", route.as_bytes());
}

/// One key part: `label`, the value's length in decimal, `:`, the value, a space.
fn part(out: &mut impl Sink, label: &[u8], v: &[u8]) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = v.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put(label);
    out.put(&digits[at..]);
    out.put(b":");
    out.put(v);
    out.put(b" ");
}

/// An entry's tag: the route and the client's path (no query).
fn tag(route: &str, path: &str) -> String {
    let mut t = String::with_capacity(route.len() + 1 + path.len());
    t.push_str(route);
    t.push('\n');
    t.push_str(path);
    t
}

/// What `POST /cache/purge` removes under a route.
pub enum Purge<'a> {
    /// One path as clients send it.
    Path(&'a str),
    /// Every path under a prefix, on segment boundaries.
    Prefix(&'a str),
}

impl Purge<'_> {
    fn covers(&self, path: &str) -> bool {
        match self {
            Purge::Path(p) => path == *p,
            Purge::Prefix(p) => {
                path.starts_with(p)
                    && (p.ends_with('/')
                        || path.len() == p.len()
                        || path.as_bytes()[p.len()] == b'/')
            }
        }
    }
}

/// The stores of a config (`caches`), by name.
#[derive(Default)]
pub struct Stores {
    list: Vec<&'static Store>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|s| &s.name))
            .finish()
    }
}

/// The stores this process has made, by name and size: a config compiled again with the same
/// store keeps its entries (a store lives as long as the process).
static LIVE: Lazy<Mutex<HashMap<(String, usize), &'static Store>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));

impl Stores {
    fn add(&mut self, name: String, max_size: usize) {
        let store = *LIVE
            .lock()
            .entry((name.clone(), max_size))
            .or_insert_with(|| Box::leak(Box::new(Store::new(&name, max_size))));
        self.list.push(store);
    }

    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|s| &*s.name).collect()
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|s| &*s.name == name)
    }

    fn get(&self, i: usize) -> &'static Store {
        self.list[i]
    }

    pub fn iter(&self) -> impl Iterator<Item = &'static Store> + '_ {
        self.list.iter().copied()
    }

    /// Remove `route`'s entries under `what` from every store: how many.
    pub fn purge(&self, route: &str, what: &Purge<'_>) -> usize {
        self.list
            .iter()
            .map(|s| {
                s.purge_where(|t| {
                    t.split_once('\n')
                        .is_some_and(|(r, path)| r == route && what.covers(path))
                })
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::key::CacheHashKey;

    fn rules(auth: bool, shared: bool, key: Vec<KeyPart>) -> Rules {
        Rules {
            ttl: Duration::from_secs(60),
            methods: (true, true),
            statuses: vec![200],
            key,
            shared,
            auth,
            store_set_cookie: false,
            honour_client_no_cache: false,
            stale_while_revalidate: None,
            stale_if_error: None,
            lock: Duration::from_secs(1),
            max_object: 1024,
        }
    }

    #[test]
    fn the_key_names_every_part_and_the_caller_unless_shared() {
        let store: &'static Store = Box::leak(Box::new(Store::new("s", 1 << 20)));
        let claims: crate::policy::auth::jwt::Claims =
            serde_json::from_str(r#"{"tenant": "t7"}"#).unwrap();
        let id = crate::policy::auth::Identity {
            consumer: Some(http::HeaderValue::from_static("alice")),
            claims: Some(std::sync::Arc::new(claims)),
            ..Default::default()
        };
        let mut headers = http::HeaderMap::new();
        headers.append("x-v", http::HeaderValue::from_static("1"));
        headers.append("x-v", http::HeaderValue::from_static("2"));
        let input = KeyInput {
            host: b"Shop.Example",
            target: b"/c/a?x=1",
            path: "/c/a",
            headers: &headers,
            identity: Some(&id),
            branch: Some(1),
        };
        let parts = vec![
            KeyPart::Header(HeaderName::from_static("x-v")),
            KeyPart::Claim("tenant".into()),
        ];
        let own = RouteCache::new("r", store, rules(true, false, parts.clone()));
        let text = String::from_utf8(own.key_text(&input)).unwrap();
        assert_eq!(
            text,
            "route=1:r host=12:shop.example target=8:/c/a?x=1 consumer=5:alice branch=1:1 \
             header:x-v=4:1, 2 claim:tenant=4:\"t7\" "
        );
        let shared = RouteCache::new("r", store, rules(true, true, parts));
        let text = String::from_utf8(shared.key_text(&input)).unwrap();
        assert!(!text.contains("alice"), "{text}");
        let key = own.key(&input);
        assert_eq!(key.primary_key(), b"r\n/c/a");
        assert_eq!(key.user_tag, "");
        // The hash fed part by part is the text's.
        let mut h = SipHasher24::new_with_key(&KEY_SECRET);
        h.write(&own.key_text(&input));
        assert_eq!(key.primary_bin(), h.finish128().as_bytes());
        // Also when the parts outgrow the hasher's buffer, one of them alone included.
        for n in [200, 300, 1000] {
            let target = format!("/c/a?q={}", "x".repeat(n));
            let long = KeyInput {
                target: target.as_bytes(),
                ..input
            };
            let mut h = SipHasher24::new_with_key(&KEY_SECRET);
            h.write(&own.key_text(&long));
            let hash = h.finish128().as_bytes();
            assert_eq!(own.key(&long).primary_bin(), hash, "{n}");
            assert_ne!(hash, key.primary_bin());
        }
    }

    #[test]
    fn prefixes_purge_on_segment_boundaries() {
        let p = Purge::Prefix("/c");
        assert!(p.covers("/c") && p.covers("/c/a"));
        assert!(!p.covers("/cx"));
        let p = Purge::Prefix("/c/");
        assert!(p.covers("/c/a") && !p.covers("/c"));
        assert!(Purge::Path("/c/a").covers("/c/a") && !Purge::Path("/c/a").covers("/c/ab"));
    }
}
