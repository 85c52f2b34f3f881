//! Per-process secret keys for keyed hashes (SipHash) whose inputs a client controls: API-key
//! digests, cache keys. Drawn from ahash's random per-process seeds (the OS's randomness).

/// A fresh 128-bit key.
pub fn key16() -> [u8; 16] {
    let mut key = [0u8; 16];
    let seeds = ahash::RandomState::new();
    for (i, chunk) in key.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&seeds.hash_one(i).to_le_bytes());
    }
    key
}
