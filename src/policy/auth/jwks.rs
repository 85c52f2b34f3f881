//! A JSON Web Key Set, decoded: the verification keys by `kid`.
//!
//! The same decoding serves a set read from a file at load (where a bad key is a config
//! error) and one fetched from an identity provider (where a key tollgate cannot use, or one
//! published for encryption, is skipped with a warning: the others still verify).

use ahash::AHashMap;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::DecodingKey;

use super::cache::TokenCache;

/// Keys by `kid`, and what went wrong with the keys left out.
pub struct Decoded {
    pub keys: AHashMap<String, DecodingKey>,
    pub problems: Vec<String>,
}

/// Decode a JWKS document; an error when it is not one.
pub fn decode(doc: &[u8]) -> Result<Decoded, String> {
    let set: JwkSet =
        serde_json::from_slice(doc).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut out = Decoded {
        keys: AHashMap::new(),
        problems: Vec::new(),
    };
    for (i, k) in set.keys.iter().enumerate() {
        let Some(kid) = k.common.key_id.clone() else {
            out.problems.push(format!("key {i} has no kid"));
            continue;
        };
        if k.common.public_key_use == Some(PublicKeyUse::Encryption) {
            out.problems
                .push(format!("key {kid:?} is for encryption (use: enc)"));
            continue;
        }
        match DecodingKey::from_jwk(k) {
            Ok(d) => {
                if out.keys.insert(kid.clone(), d).is_some() {
                    out.problems.push(format!("kid {kid:?} is given twice"));
                }
            }
            Err(e) => out.problems.push(format!("key {kid:?}: {e}")),
        }
    }
    Ok(out)
}

/// Where a remote provider's current keys came from (`tollgate explain`, logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// None yet.
    Nothing,
    /// Fetched from the identity provider by this process.
    Fetched,
    /// Read from the state directory: the last set a tollgate fetched.
    Cached,
}

/// A remote provider's keys, swapped whole when the identity provider publishes new ones.
/// The tokens verified with them are remembered beside them, so a token verified with a key
/// that is gone is never admitted from memory.
pub struct KeySet {
    keys: AHashMap<String, DecodingKey>,
    pub cache: TokenCache,
    /// The document as served, to tell a changed set from the same one again.
    pub document: Box<[u8]>,
    pub origin: Origin,
}

impl KeySet {
    pub fn empty() -> KeySet {
        KeySet::new(AHashMap::new(), Box::default(), Origin::Nothing)
    }

    pub fn new(keys: AHashMap<String, DecodingKey>, document: Box<[u8]>, origin: Origin) -> KeySet {
        KeySet {
            keys,
            cache: TokenCache::default(),
            document,
            origin,
        }
    }

    pub fn get(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys.get(kid)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key ids, sorted (logs, `tollgate explain`).
    pub fn kids(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tollgate_cannot_use_are_left_out_with_a_reason() {
        let doc = br#"{"keys":[
            {"kty":"EC","crv":"P-256","kid":"a",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","use":"enc","kid":"b",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let d = decode(doc).unwrap();
        assert_eq!(d.keys.len(), 1);
        assert!(d.keys.contains_key("a"));
        assert_eq!(d.problems.len(), 2, "{:?}", d.problems);
        assert!(decode(b"{\"keys\": 3}").is_err());
        assert!(decode(b"<html>").is_err());
    }
}
