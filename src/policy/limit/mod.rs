//! Rate limiting: compiled policies, the key a request is counted under, the check in
//! `request_filter`, and the RateLimit headers on every response of a limited route.
//!
//! Semantics (see `docs/rate-limiting.md`): GCRA, i.e. a token bucket of `burst` tokens
//! refilled at `requests / per`. A route may name several policies; all must pass.

pub mod config;
mod headers;
pub mod local;
pub mod redis;
pub mod sync;

pub use headers::Headers;

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::time::Duration;

use http::header::HeaderMap;
use http::{HeaderName, HeaderValue};

use crate::policy::auth::Identity;
use local::{Gcra, LocalStore, Verdict};

/// Index of a policy in [`Limits::policies`].
pub type PolicyId = usize;

/// What a request is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// The resolved client IP (IPv6 per `ipv6_prefix`, default /64).
    ClientIp,
    /// One budget shared by every client of the route.
    Route,
    /// The value of a request header; a request without it is keyed by client IP.
    Header(HeaderName),
    /// The authenticated consumer ([`Identity::consumer`]); falls back to client IP.
    Consumer,
    /// A JWT claim ([`Identity::claim`]); falls back to client IP.
    Claim(Box<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Local,
    Redis,
}

/// One compiled policy. Header values that never change are formatted here, at load.
#[derive(Debug)]
pub struct Policy {
    pub name: Box<str>,
    /// As configured: `requests` per `per`, bursts up to `burst`.
    pub requests: u64,
    pub per: Duration,
    pub burst: u64,
    pub gcra: Gcra,
    pub key: KeyKind,
    pub store: Store,
    /// `sync`: decide locally, reconcile with Redis every so often (`store: redis` only).
    pub sync: Option<sync::SyncStore>,
    pub ipv6_prefix: u8,
    pub headers: Headers,
    /// What identifies this policy's buckets across processes and config reloads: its name
    /// and what it keys on (not its index, which moves when the config is reordered, and not
    /// its rate: a changed rate applies to the state a client has built up, as with Redis).
    scope: u64,
    /// `"name";q=REQUESTS;w=SECONDS`
    policy_header: HeaderValue,
    /// `REQUESTS`
    limit_header: HeaderValue,
    /// `"name";r=`: the start of every `RateLimit` value.
    ratelimit_prefix: Box<[u8]>,
}

impl KeyKind {
    /// As the config writes it.
    pub fn describe(&self) -> String {
        match self {
            KeyKind::ClientIp => "client_ip".to_owned(),
            KeyKind::Route => "route".to_owned(),
            KeyKind::Header(h) => format!("header:{h}"),
            KeyKind::Consumer => "consumer".to_owned(),
            KeyKind::Claim(c) => format!("claim:{c}"),
        }
    }
}

impl Policy {
    /// One line for `tollgate explain`.
    pub fn describe(&self) -> String {
        format!(
            "{}: {} requests per {}, burst {}, key {}, store {}{}",
            self.name,
            self.requests,
            humantime::format_duration(self.per),
            self.burst,
            self.key.describe(),
            match self.store {
                Store::Local => "local",
                Store::Redis => "redis",
            },
            match &self.sync {
                Some(s) => format!(", sync {}", humantime::format_duration(s.every())),
                None => String::new(),
            }
        )
    }

    pub fn new(
        name: &str,
        requests: u64,
        per: Duration,
        burst: u64,
        key: KeyKind,
        store: Store,
        ipv6_prefix: u8,
    ) -> Policy {
        let w = per.as_secs().max(1);
        let policy_header = HeaderValue::try_from(format!("\"{name}\";q={requests};w={w}"))
            .unwrap_or_else(|_| HeaderValue::from_static("\"policy\""));
        let mut h = seeded();
        name.hash(&mut h);
        match &key {
            KeyKind::ClientIp => 0u8.hash(&mut h),
            KeyKind::Route => 1u8.hash(&mut h),
            KeyKind::Header(n) => (2u8, n.as_str()).hash(&mut h),
            KeyKind::Consumer => 3u8.hash(&mut h),
            KeyKind::Claim(c) => (4u8, &**c).hash(&mut h),
        }
        ipv6_prefix.hash(&mut h);
        Policy {
            name: name.into(),
            requests,
            per,
            burst,
            gcra: Gcra::new(requests, per.as_nanos() as u64, burst),
            scope: h.finish(),
            key,
            store,
            sync: None,
            ipv6_prefix,
            headers: Headers::IETF,
            policy_header,
            limit_header: HeaderValue::from(requests),
            ratelimit_prefix: format!("\"{name}\";r=").into_bytes().into(),
        }
    }
}

/// All compiled policies plus the local store they share.
#[derive(Debug, Default)]
pub struct Limits {
    pub policies: Vec<Policy>,
    local: LocalStore,
    /// The shared store of `store: redis` policies (when a `redis` section exists).
    pub redis: Option<redis::RedisStore>,
}

/// Redis failed and `on_error: deny`: answer 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUnavailable;

/// Who a request comes from, as a limit keys it.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub client_ip: Option<std::net::IpAddr>,
    pub identity: Option<&'a Identity>,
}

/// The outcome of one policy for one request, kept with the request for its response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub policy: PolicyId,
    pub allowed: bool,
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset: u64,
    /// Seconds to wait before retrying (0 when allowed).
    pub retry_after: u64,
}

impl Decision {
    fn from_verdict(policy: PolicyId, v: Verdict) -> Decision {
        Decision {
            policy,
            allowed: v.allowed,
            remaining: v.remaining,
            reset: ceil_secs(v.reset_nanos),
            retry_after: if v.allowed {
                0
            } else {
                ceil_secs(v.retry_after_nanos).max(1)
            },
        }
    }
}

fn ceil_secs(n: u64) -> u64 {
    n.div_ceil(1_000_000_000)
}

/// Fixed seeds: the same key hashes the same in every worker (and across reloads).
const SEEDS: (u64, u64, u64, u64) = (
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
);

fn seeded() -> ahash::AHasher {
    ahash::RandomState::with_seeds(SEEDS.0, SEEDS.1, SEEDS.2, SEEDS.3).build_hasher()
}

/// The client IP as keyed: IPv6 truncated to `prefix` bits.
pub fn ip_key(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if prefix < 128 => {
            let bits = u128::from(v6);
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((bits & mask).into())
        }
        other => other,
    }
}

impl Limits {
    pub fn find(&self, name: &str) -> Option<PolicyId> {
        self.policies.iter().position(|p| &*p.name == name)
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The 64-bit key of a request under policy `id` on the route named `route` (no
    /// allocation). It depends only on names and the request, never on positions in the
    /// config: the same client has the same key in the next process after a reload, which is
    /// what lets [`crate::handover`] carry the local state over as it is.
    pub fn key_hash(&self, id: PolicyId, route: &str, who: Caller, headers: &HeaderMap) -> u64 {
        let p = &self.policies[id];
        let mut h = seeded();
        // Every budget is per route: a policy named by two routes limits each separately.
        (p.scope, route).hash(&mut h);
        let ip = |h: &mut ahash::AHasher| {
            0u8.hash(h);
            who.client_ip.map(|ip| ip_key(ip, p.ipv6_prefix)).hash(h);
        };
        match &p.key {
            KeyKind::ClientIp => ip(&mut h),
            KeyKind::Route => 1u8.hash(&mut h),
            KeyKind::Header(name) => match headers.get(name) {
                Some(v) => {
                    2u8.hash(&mut h);
                    v.as_bytes().hash(&mut h);
                }
                None => ip(&mut h),
            },
            KeyKind::Consumer => match who.identity.and_then(Identity::consumer_bytes) {
                Some(c) => {
                    3u8.hash(&mut h);
                    // What `str::hash` feeds the hasher (the bytes, then 0xff), so the keys
                    // stay those of earlier versions, whose state a new process is handed;
                    // without checking every byte is visible ASCII first.
                    h.write(c);
                    h.write_u8(0xff);
                }
                None => ip(&mut h),
            },
            KeyKind::Claim(name) => match who.identity.and_then(|i| i.claim(name)) {
                Some(serde_json::Value::String(c)) => {
                    4u8.hash(&mut h);
                    c.hash(&mut h);
                }
                Some(other) => {
                    4u8.hash(&mut h);
                    other.to_string().hash(&mut h);
                }
                None => ip(&mut h),
            },
        }
        h.finish()
    }

    /// The local store's live keys (see [`LocalStore::export`]), for a graceful upgrade.
    pub fn export_local(&self, now: u64) -> Vec<(u64, u64)> {
        self.local.export(now)
    }

    /// Take over another process's live keys. Nothing is imported when no `store: local`
    /// policy remains; otherwise each TAT is capped at the largest tolerance of a local policy.
    /// Keys of policies or routes that no longer exist are never looked up again and age out
    /// as idle keys. Returns how many keys were stored.
    pub fn import_local(&self, entries: &[(u64, u64)], now: u64) -> usize {
        let max_ahead = self
            .policies
            .iter()
            .filter(|p| p.store == Store::Local || self.redis.is_none())
            .map(|p| p.gcra.tolerance())
            .max();
        match max_ahead {
            Some(m) => self.local.import(entries, now, m),
            None => 0,
        }
    }

    /// On an in-process reload, take over the `sync` policies' local state of `old` (the
    /// running config): by policy name and what it keys on, as the local store carries. Returns
    /// how many keys were taken over.
    pub fn carry_sync(&self, old: &Limits, now: u64) -> usize {
        let mut taken = 0;
        for p in &self.policies {
            let Some(sync) = &p.sync else { continue };
            let before = old
                .policies
                .iter()
                .find(|o| o.scope == p.scope && o.name == p.name)
                .and_then(|o| o.sync.as_ref());
            if let Some(before) = before {
                taken += sync.take_over(before, now);
            }
        }
        taken
    }

    /// Check every policy of a route (all must pass). Returns the decision to report: the
    /// denying policy, or else the one with the fewest remaining requests. `None` when the
    /// route has no limits.
    ///
    /// Policies are checked in order and a request denied by a later one has already been
    /// counted by the earlier ones (as with any chain of independent limiters).
    ///
    /// A `store: redis` policy whose call fails is skipped (`on_error: allow`) or answers
    /// `Err(StoreUnavailable)` (`on_error: deny`).
    pub async fn check(
        &self,
        ids: &[PolicyId],
        route: &str,
        who: Caller<'_>,
        headers: &HeaderMap,
    ) -> Result<Option<Decision>, StoreUnavailable> {
        let now = local::now_nanos();
        let mut best: Option<Decision> = None;
        for &id in ids {
            let key = self.key_hash(id, route, who, headers);
            let p = &self.policies[id];
            let v = match (p.store, &self.redis) {
                // Boxed: the call's future is 3 KiB, which every request's future would
                // carry (and move) inline, limited by Redis or not; this one makes a round
                // trip anyway.
                (Store::Redis, Some(r)) if p.sync.is_some() => {
                    match p.sync.as_ref().map(|s| s.check(key, now)) {
                        Some(Ok(v)) => v,
                        _ if r.deny_on_error => return Err(StoreUnavailable),
                        _ => continue,
                    }
                }
                (Store::Redis, Some(r)) => match Box::pin(r.check(&p.gcra, key)).await {
                    Ok(v) => v,
                    Err(_) if r.deny_on_error => return Err(StoreUnavailable),
                    Err(_) => continue,
                },
                _ => self.local.check(&p.gcra, key, now),
            };
            let d = Decision::from_verdict(id, v);
            if !d.allowed {
                return Ok(Some(d));
            }
            if best.is_none_or(|b| d.remaining < b.remaining) {
                best = Some(d);
            }
        }
        Ok(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_keyed_per_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a, 64), ip_key(b, 64));
        assert_ne!(ip_key(a, 64), ip_key(c, 64));
        assert_ne!(ip_key(a, 128), ip_key(b, 128));
        assert_eq!(ip_key(a, 48), ip_key(c, 48));
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(v4, 64), v4);
    }

    /// A consumer's bucket keeps the key it had when the name was hashed as a `str`, so the
    /// buckets an older process hands over still match; and a name that is not ASCII (a JWT
    /// `sub`) is keyed by the name, not by the client's IP.
    #[test]
    fn consumer_keys_are_those_of_the_name_as_a_str() {
        let mut limits = Limits::default();
        let mut p = Policy::new(
            "per-consumer",
            10,
            Duration::from_secs(1),
            10,
            KeyKind::Consumer,
            Store::Local,
            64,
        );
        p.scope = 42;
        limits.policies.push(p);
        let client_ip = Some("10.0.0.1".parse().unwrap());
        let id = |name: &[u8]| Identity {
            consumer: Some(HeaderValue::from_bytes(name).unwrap()),
            ..Identity::default()
        };
        let (alice, jose) = (id(b"alice"), id("jos\u{e9}".as_bytes()));
        let ctx = |identity| Caller {
            client_ip,
            identity: Some(identity),
        };
        let as_str = |name: &str| {
            let mut h = seeded();
            (42u64, "r").hash(&mut h);
            3u8.hash(&mut h);
            name.hash(&mut h);
            h.finish()
        };
        let headers = HeaderMap::new();
        let alice = limits.key_hash(0, "r", ctx(&alice), &headers);
        assert_eq!(alice, as_str("alice"));
        let jose = limits.key_hash(0, "r", ctx(&jose), &headers);
        assert_eq!(jose, as_str("jos\u{e9}"));
        let anonymous = Caller {
            client_ip,
            identity: None,
        };
        let by_ip = limits.key_hash(0, "r", anonymous, &headers);
        assert_ne!(jose, by_ip);
    }
}
