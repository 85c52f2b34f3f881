//! API keys: one hash probe on the key's SHA-256 digest, then a constant-time compare of the
//! full digest. Keys are hashed once at load; plain keys are never kept in memory.

use std::sync::Arc;

use ahash::AHashMap;
use http::HeaderName;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Digest → consumer index. Probed by the digest's first 16 bytes.
#[derive(Debug, Default)]
pub struct KeyTable {
    map: AHashMap<u128, ([u8; 32], usize)>,
}

impl KeyTable {
    /// Add a key: plain, or `sha256:<hex>` when `may_be_hashed`... any source may be hashed.
    pub fn insert(&mut self, key: &[u8], consumer: usize, _inline: bool) -> Result<(), String> {
        let digest = match key.strip_prefix(b"sha256:") {
            Some(hex) => {
                let mut d = [0u8; 32];
                hex::decode_to_slice(hex, &mut d)
                    .map_err(|_| "sha256: must be followed by 64 hex digits".to_owned())?;
                d
            }
            None => {
                if key.len() < 8 {
                    return Err("an API key needs at least 8 characters".to_owned());
                }
                Sha256::digest(key).into()
            }
        };
        let probe = u128::from_le_bytes(digest[..16].try_into().unwrap_or_default());
        if self.map.insert(probe, (digest, consumer)).is_some() {
            return Err("this key is given twice".to_owned());
        }
        Ok(())
    }

    /// The consumer owning `key`, if any. No allocation.
    pub fn lookup(&self, key: &[u8]) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        let probe = u128::from_le_bytes(digest[..16].try_into().unwrap_or_default());
        let (stored, consumer) = self.map.get(&probe)?;
        bool::from(stored.ct_eq(&digest)).then_some(*consumer)
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
    }
}
