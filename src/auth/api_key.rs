//! API keys: one hash probe on the key's digest, then a constant-time compare of the full
//! digest. Keys are digested once at load; plain keys are never kept in memory.
//!
//! Two digests, because two kinds of key: a key given in the config (or its file or
//! variable) is kept as its keyed BLAKE3 digest, under a key drawn at random per process, and a
//! key given as `sha256:<hex>` as that SHA-256 digest. A presented key is checked against the
//! first table, and against the second only when it has entries and the first said no.
//! BLAKE3 on a short key costs about a fifth of SHA-256 where the CPU has no SHA instructions
//! (many x86 servers before Ice Lake), which is most of what an API-key check costs.

use std::sync::Arc;

use ahash::AHashMap;
use http::HeaderName;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Digest → consumer index, probed by the digest's first 16 bytes.
type Table = AHashMap<u128, ([u8; 32], usize)>;

#[derive(Debug)]
pub struct KeyTable {
    /// Keys known in plain at load, by keyed BLAKE3 digest.
    plain: Table,
    /// Keys known only by their SHA-256 digest (`sha256:<hex>`).
    sha256: Table,
    /// The BLAKE3 key of this process: nobody can precompute `plain`'s digests.
    blake3_key: [u8; 32],
}

impl Default for KeyTable {
    fn default() -> Self {
        // From ahash's random per-process seeds (the OS's randomness, mixed with a counter).
        let mut blake3_key = [0u8; 32];
        let seeds = ahash::RandomState::new();
        for (i, chunk) in blake3_key.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&seeds.hash_one(i).to_le_bytes());
        }
        KeyTable {
            plain: Table::default(),
            sha256: Table::default(),
            blake3_key,
        }
    }
}

fn probe(digest: &[u8; 32]) -> u128 {
    u128::from_le_bytes(digest[..16].try_into().unwrap_or_default())
}

fn find(table: &Table, digest: &[u8; 32]) -> Option<usize> {
    let (stored, consumer) = table.get(&probe(digest))?;
    bool::from(stored.ct_eq(digest)).then_some(*consumer)
}

impl KeyTable {
    /// Add a key: plain, or `sha256:<hex>`.
    pub fn insert(&mut self, key: &[u8], consumer: usize, _inline: bool) -> Result<(), String> {
        let (table, digest) = match key.strip_prefix(b"sha256:") {
            Some(hex) => {
                let mut d = [0u8; 32];
                hex::decode_to_slice(hex, &mut d)
                    .map_err(|_| "sha256: must be followed by 64 hex digits".to_owned())?;
                (&mut self.sha256, d)
            }
            None => {
                if key.len() < 8 {
                    return Err("an API key needs at least 8 characters".to_owned());
                }
                let d = self.plain_digest(key);
                (&mut self.plain, d)
            }
        };
        if table.insert(probe(&digest), (digest, consumer)).is_some() {
            return Err("this key is given twice".to_owned());
        }
        Ok(())
    }

    fn plain_digest(&self, key: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.blake3_key, key).as_bytes()
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
        find(&self.sha256, &Sha256::digest(key).into())
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
