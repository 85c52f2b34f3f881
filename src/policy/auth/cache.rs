//! Verified JWTs, remembered until they expire.
//!
//! A client sends the same token on every request until it expires, and checking its signature
//! and decoding its claims is most of what a JWT route costs. So each provider keeps the tokens it
//! verified (as Envoy's `jwt_cache_config` does) with what was derived from them: the consumer, the
//! forwarded claim headers, the claims for `claim:NAME` rate-limit keys. A hit re-checks only the
//! time window (`exp`, `nbf`, with the provider's leeway); a token that failed is never kept.
//!
//! Nothing that decided a token's fate changes while the cache lives: algorithms, issuer, audience
//! and keys are fixed at load (a reload is a new process), except a remote JWKS's keys, whose
//! tokens are kept per key set (`super::jwks::KeySet`), so a new set starts empty. A hit needs the
//! whole token to match, compared in constant time, so a forged token never borrows a verdict and
//! timing says nothing of cached ones; the probe hash is random per process, so nobody can aim
//! tokens at a slot. [`SHARDS`] shards (so threads rarely meet on a lock) of at most
//! [`PER_SHARD`] tokens each; a full shard drops an arbitrary entry for a new one.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use http::{HeaderName, HeaderValue};

use super::jwt::{claim_value, Claims};

const SHARDS: usize = 16;
/// 16 × 256 = 4,096 tokens per provider.
const PER_SHARD: usize = 256;
/// Tokens longer than this are verified every time rather than kept.
const MAX_TOKEN: usize = 4096;

/// What a verified token gave, shared by every request that presents it.
#[derive(Debug)]
pub struct Verified {
    pub claims: Arc<Claims>,
    /// The consumer named by the provider's consumer claim.
    pub consumer: Option<HeaderValue>,
    /// The provider's `forward_claims`, as upstream headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `exp` and `nbf` (Unix seconds), to re-check the time window on a hit.
    pub exp: u64,
    pub nbf: Option<u64>,
}

impl Verified {
    /// What `claims` give: the consumer named by `consumer_claim`, the headers of `forward`
    /// (claim, header), and the time window.
    pub fn new(
        claims: Claims,
        forward: &[(String, HeaderName)],
        consumer_claim: &str,
        exp: u64,
        nbf: Option<u64>,
    ) -> Verified {
        let headers = forward
            .iter()
            .filter_map(|(claim, h)| Some((h.clone(), claim_value(claims.get(claim)?)?)))
            .collect();
        Verified {
            consumer: claims.get(consumer_claim).and_then(claim_value),
            claims: Arc::new(claims),
            headers,
            exp,
            nbf,
        }
    }

    /// Whether the token is inside its time window at `now`, with `leeway` seconds either side:
    /// the same test `token::claims` applies.
    pub fn current(&self, now: u64, leeway: u64) -> bool {
        self.exp >= now.saturating_sub(leeway)
            && self.nbf.is_none_or(|nbf| nbf <= now.saturating_add(leeway))
    }
}

type Shard = HashMap<u64, (Box<[u8]>, Arc<Verified>), NoHash>;

pub struct TokenCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: ahash::RandomState,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: ahash::RandomState::new(),
        }
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("TokenCache").finish_non_exhaustive()
    }
}

impl TokenCache {
    fn slot(&self, token: &[u8]) -> (u64, &Mutex<Shard>) {
        let h = self.hasher.hash_one(token);
        (h, &self.shards[(h >> 32) as usize % SHARDS])
    }

    /// The verdict on `token` if it was verified before and is still inside its time window.
    pub fn get(&self, token: &[u8], now: u64, leeway: u64) -> Option<Arc<Verified>> {
        let (h, shard) = self.slot(token);
        let mut m = shard.lock().unwrap_or_else(|e| e.into_inner());
        let (kept, verified) = m.get(&h)?;
        if !super::ct::eq(kept, token) {
            return None;
        }
        if verified.current(now, leeway) {
            return Some(verified.clone());
        }
        // Expired (or not yet valid): verify afresh, which says why.
        m.remove(&h);
        None
    }

    /// Remember a token that was just verified.
    pub fn put(&self, token: &[u8], verified: Arc<Verified>) {
        if token.len() > MAX_TOKEN {
            return;
        }
        let (h, shard) = self.slot(token);
        let mut m = shard.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= PER_SHARD && !m.contains_key(&h) {
            if let Some(&evict) = m.keys().next() {
                m.remove(&evict);
            }
        }
        m.insert(h, (token.into(), verified));
    }
}

/// The probe is already a keyed hash of the token: the map uses it as it is.
#[derive(Default, Clone, Copy)]
pub(crate) struct NoHash;

impl BuildHasher for NoHash {
    type Hasher = Passthrough;
    fn build_hasher(&self) -> Passthrough {
        Passthrough(0)
    }
}

pub(crate) struct Passthrough(u64);

impl std::hash::Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(exp: u64, nbf: Option<u64>) -> Arc<Verified> {
        Arc::new(Verified {
            claims: Arc::default(),
            consumer: Some(HeaderValue::from_static("alice")),
            headers: Vec::new(),
            exp,
            nbf,
        })
    }

    #[test]
    fn a_hit_needs_the_whole_token_and_its_time_window() {
        let c = TokenCache::default();
        c.put(b"aaa.bbb.ccc", verified(1000, Some(500)));
        assert!(c.get(b"aaa.bbb.ccc", 900, 0).is_some());
        assert!(c.get(b"aaa.bbb.ccd", 900, 0).is_none(), "another token");
        assert!(c.get(b"aaa.bbb.cc", 900, 0).is_none(), "a prefix");
        assert!(
            c.get(b"aaa.bbb.ccc", 1010, 30).is_some(),
            "expired, within leeway"
        );
        c.put(b"early", verified(1000, Some(500)));
        assert!(c.get(b"early", 400, 0).is_none(), "before nbf");
        assert!(c.get(b"aaa.bbb.ccc", 1001, 0).is_none(), "expired");
        // An expired entry is dropped: nothing comes back even inside the window again.
        assert!(c.get(b"aaa.bbb.ccc", 900, 0).is_none());
    }

    #[test]
    fn it_stays_bounded() {
        let c = TokenCache::default();
        for i in 0..(SHARDS * PER_SHARD * 3) {
            c.put(format!("token-{i}").as_bytes(), verified(u64::MAX, None));
        }
        let kept: usize = c.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(kept <= SHARDS * PER_SHARD, "{kept} tokens kept");
        let last = format!("token-{}", SHARDS * PER_SHARD * 3 - 1);
        assert!(c.get(last.as_bytes(), 0, 0).is_some(), "the newest is kept");
        assert!(c.get(&[b'x'; MAX_TOKEN + 1], 0, 0).is_none());
    }
}
