//! API keys: one hash probe on the key's digest, then a constant-time compare of the full
//! digest. Keys are digested once at load; plain keys are never kept in memory.
//!
//! Two digests, because two kinds of key: a key given in the config (or its file or
//! variable) is kept as its 128-bit SipHash-2-4 digest, under a key drawn at random per
//! process, and a key given as `sha256:<hex>` as that SHA-256 digest. A presented key is
//! checked against the first table, and against the second only when it has entries and the
//! first said no.
//!
//! Why SipHash: the digest only has to be a keyed PRF (a caller who cannot compute it learns
//! nothing from how long a probe or a compare takes, and a memory dump without the process's
//! key says nothing about a key), and SipHash is one built for short inputs: on a key this
//! short it is cheaper than keyed BLAKE3 or SHA-256, and it is on every request of a
//! key-protected route.

use std::hash::Hasher;
use std::sync::Arc;

use ahash::AHashMap;
use http::HeaderName;
use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher24};
use subtle::ConstantTimeEq;

/// Digest (as little-endian words) → consumer index, probed by the digest's first word.
type Table<const W: usize> = AHashMap<u64, ([u64; W], usize)>;

#[derive(Debug)]
pub struct KeyTable {
    /// Keys known in plain at load, by keyed SipHash-2-4-128 digest.
    plain: Table<2>,
    /// Keys known only by their SHA-256 digest (`sha256:<hex>`).
    sha256: Table<4>,
    /// The SipHash key of this process: nobody can precompute `plain`'s digests.
    sip_key: [u8; 16],
}

impl Default for KeyTable {
    fn default() -> Self {
        KeyTable {
            plain: Table::default(),
            sha256: Table::default(),
            sip_key: crate::random::key16(),
        }
    }
}

/// `bytes` as little-endian words (`N` = 8 × `W`).
fn words<const N: usize, const W: usize>(bytes: &[u8; N]) -> [u64; W] {
    let mut w = [0u64; W];
    for (w, chunk) in w.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
    }
    w
}

fn find<const W: usize>(table: &Table<W>, digest: &[u64; W]) -> Option<usize> {
    let (stored, consumer) = table.get(&digest[0])?;
    bool::from(stored[..].ct_eq(&digest[..])).then_some(*consumer)
}

fn add<const W: usize>(
    table: &mut Table<W>,
    digest: [u64; W],
    consumer: usize,
) -> Result<(), String> {
    if table.insert(digest[0], (digest, consumer)).is_some() {
        return Err("this key is given twice".to_owned());
    }
    Ok(())
}

impl KeyTable {
    /// Add a key: plain, or `sha256:<hex>`.
    pub fn insert(&mut self, key: &[u8], consumer: usize, _inline: bool) -> Result<(), String> {
        match key.strip_prefix(b"sha256:") {
            Some(hex) => {
                let mut d = [0u8; 32];
                hex::decode_to_slice(hex, &mut d)
                    .map_err(|_| "sha256: must be followed by 64 hex digits".to_owned())?;
                add(&mut self.sha256, words(&d), consumer)
            }
            None => {
                if key.len() < 8 {
                    return Err("an API key needs at least 8 characters".to_owned());
                }
                let d = self.plain_digest(key);
                add(&mut self.plain, d, consumer)
            }
        }
    }

    fn plain_digest(&self, key: &[u8]) -> [u64; 2] {
        let mut h = SipHasher24::new_with_key(&self.sip_key);
        h.write(key);
        let d = h.finish128();
        [d.h1, d.h2]
    }

    /// The consumer owning `key`, if any. No allocation.
    pub fn lookup(&self, key: &[u8]) -> Option<usize> {
        if !self.plain.is_empty() {
            if let Some(c) = find(&self.plain, &self.plain_digest(key)) {
                return Some(c);
            }
        }
        if self.sha256.is_empty() {
            return None;
        }
        find(&self.sha256, &words(&Sha256::digest(key).into()))
    }
}

#[derive(Debug)]
pub struct ApiKey {
    pub header: Option<HeaderName>,
    pub query: Option<Arc<str>>,
    pub table: Arc<KeyTable>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_hashed_keys_resolve() {
        let mut t = KeyTable::default();
        t.insert(b"supersecretapikey", 0, true).unwrap();
        t.insert(
            b"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            1,
            true,
        )
        .unwrap();
        assert_eq!(t.lookup(b"supersecretapikey"), Some(0));
        assert_eq!(t.lookup(b"test"), Some(1));
        assert_eq!(t.lookup(b"supersecretapike"), None);
        assert!(t.insert(b"sha256:zz", 2, true).is_err());
        // The same key twice is refused, given plain or by its digest.
        assert!(t.insert(b"supersecretapikey", 3, true).is_err());
        assert!(t
            .insert(
                b"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                3,
                true
            )
            .is_err());
    }

    #[test]
    fn plain_digests_are_keyed_per_table() {
        // Two processes (two tables) keep different digests of the same key, so a digest seen
        // in one process's memory says nothing about another's.
        let (a, b) = (KeyTable::default(), KeyTable::default());
        assert_ne!(
            a.plain_digest(b"supersecretapikey"),
            b.plain_digest(b"supersecretapikey")
        );
    }
}
