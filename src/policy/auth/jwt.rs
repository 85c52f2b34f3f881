//! JWT bearer tokens: a provider's algorithms and key, decoded once at load (the token's
//! header only has to agree with them), verified by [`super::token`].

use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use std::sync::Arc;

use super::cache::{TokenCache, Verified};
use super::config::SecretFile;
use super::jwks::KeySet;
use super::remote::Remote;
use super::token::{self, HmacKeys, Refusal, Rules, Verifier};
use crate::config::ConfigErrors;

/// The verification key: one, or a JWKS chosen by `kid`, read once or kept fresh from the
/// identity provider.
enum Keys {
    One(DecodingKey),
    Set(ahash::AHashMap<String, DecodingKey>),
    Remote(Arc<Remote>),
}

/// A provider's `jwks`: a document read at load, or a remote set.
pub enum Jwks {
    Local(SecretFile),
    Remote(Arc<Remote>),
}

pub struct Jwt {
    key: Keys,
    /// The HMAC secret, keyed once (HS* providers).
    hmac: Option<HmacKeys>,
    algorithms: Vec<Algorithm>,
    rules: Rules,
    pub forward: Vec<(String, HeaderName)>,
    pub consumer_claim: String,
    /// Tokens verified before, with what they gave (`cache.rs`).
    cache: TokenCache,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// A verified token's claims.
pub type Claims = Map<String, Value>;

impl Jwt {
    #[allow(clippy::too_many_arguments)]
    pub fn compile(
        base: &str,
        algorithms: &[String],
        secret: Option<&SecretFile>,
        public_key: Option<&SecretFile>,
        jwks: Option<Jwks>,
        issuer: Option<String>,
        audience: Option<String>,
        leeway: u64,
        forward: Vec<(String, HeaderName)>,
        consumer_claim: String,
        errs: &mut ConfigErrors,
    ) -> Option<Jwt> {
        let before = errs.0.len();
        let mut algs = Vec::new();
        if algorithms.is_empty() {
            errs.push(
                format!("{base}.algorithms"),
                "must list at least one algorithm",
            );
        }
        for (i, a) in algorithms.iter().enumerate() {
            match a.parse::<Algorithm>() {
                Ok(al) => algs.push(al),
                Err(_) => errs.push(
                    format!("{base}.algorithms[{i}]"),
                    format!("unknown algorithm {a:?} (HS256/384/512, RS*, PS*, ES256/384, EdDSA; never none)"),
                ),
            }
        }
        let hmac = algs
            .iter()
            .all(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
        let asym = algs
            .iter()
            .all(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
        if !hmac && !asym {
            errs.push(
                format!("{base}.algorithms"),
                "do not mix HMAC (HS*) and public-key algorithms in one provider",
            );
        }
        if let Some(j) = jwks {
            if secret.is_some() || public_key.is_some() {
                errs.push(
                    base,
                    "give one of secret, public_key, jwks or discovery: true",
                );
                return None;
            }
            let key = match j {
                Jwks::Local(file) => {
                    let path = format!("{base}.jwks");
                    let text = file.load(&path, errs)?;
                    match super::jwks::decode(&text) {
                        Ok(d) => {
                            for p in d.problems {
                                errs.push(&*path, p);
                            }
                            Keys::Set(d.keys)
                        }
                        Err(e) => {
                            errs.push(path, e);
                            return None;
                        }
                    }
                }
                Jwks::Remote(_) if hmac && !algs.is_empty() => {
                    errs.push(
                        format!("{base}.algorithms"),
                        "a remote JWKS publishes public keys: list RS*, PS*, ES* or EdDSA",
                    );
                    return None;
                }
                Jwks::Remote(r) => Keys::Remote(r),
            };
            if errs.0.len() > before {
                return None;
            }
            return Some(Jwt {
                key,
                hmac: None,
                algorithms: algs,
                rules: Rules {
                    leeway,
                    issuer,
                    audience,
                },
                forward,
                consumer_claim,
                cache: TokenCache::default(),
            });
        }
        let mut hmac_keys = None;
        let key = match (secret, public_key) {
            (Some(s), None) if hmac => {
                let path = format!("{base}.secret");
                let b = s.load(&path, errs)?;
                match hmac_secret_rule(&algs, &b) {
                    Some(rule) => {
                        errs.push(path, format!("{rule}{}", s.describe()));
                        None
                    }
                    None => {
                        hmac_keys = Some(HmacKeys::new(&b, &algs));
                        Some(DecodingKey::from_secret(&b))
                    }
                }
            }
            (Some(_), None) => {
                errs.push(
                    format!("{base}.secret"),
                    "a secret only applies to HS* algorithms; use public_key for these",
                );
                None
            }
            (None, Some(p)) if asym && !algs.is_empty() => {
                let pem = p.load(&format!("{base}.public_key"), errs)?;
                let r = match algs[0] {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                };
                match r {
                    Ok(k) => Some(k),
                    Err(e) => {
                        errs.push(
                            format!("{base}.public_key"),
                            format!("not a PEM public key for {:?}: {e}", algs[0]),
                        );
                        None
                    }
                }
            }
            (None, Some(_)) => {
                errs.push(
                    format!("{base}.public_key"),
                    "a public key only applies to RS*, PS*, ES*, EdDSA algorithms",
                );
                None
            }
            (None, None) => {
                errs.push(base, "needs secret (HS*) or public_key");
                None
            }
            (Some(_), Some(_)) => {
                errs.push(base, "give either secret or public_key, not both");
                None
            }
        };
        if errs.0.len() > before {
            return None;
        }
        Some(Jwt {
            key: Keys::One(key?),
            hmac: hmac_keys,
            algorithms: algs,
            rules: Rules {
                leeway,
                issuer,
                audience,
            },
            forward,
            consumer_claim,
            cache: TokenCache::default(),
        })
    }

    /// Mint a token with this provider's HMAC secret (`tollgate token`), adding `iss`/`aud`
    /// when configured. Refuses public-key providers: tollgate holds no private key.
    pub fn mint(&self, mut claims: Claims) -> Result<String, String> {
        let Keys::One(key) = &self.key else {
            return Err("this provider verifies with a JWKS: tollgate cannot sign for it".into());
        };
        let secret = key.try_get_hmac_secret().map_err(|_| {
            "this provider uses a public key: tollgate has no private key to sign with".to_owned()
        })?;
        if let Some(iss) = &self.rules.issuer {
            claims.entry("iss").or_insert(Value::String(iss.clone()));
        }
        if let Some(aud) = &self.rules.audience {
            claims.entry("aud").or_insert(Value::String(aud.clone()));
        }
        let alg = self.algorithms[0];
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .map_err(|e| format!("cannot sign: {e}"))
    }

    /// Verify a token, or recall the verdict on it while it is inside its time window
    /// (`cache.rs`), with the consumer and the forwarded claim headers it gives.
    pub fn check(&self, token: &str) -> Result<Arc<Verified>, Refusal> {
        let now = crate::clock::unix_seconds();
        // A remote set is read once; its tokens are remembered beside it.
        let remote = match &self.key {
            Keys::Remote(r) => Some(r.keys()),
            _ => None,
        };
        let cache = remote.as_ref().map_or(&self.cache, |s| &s.cache);
        if let Some(v) = cache.get(token.as_bytes(), now, self.rules.leeway) {
            return Ok(v);
        }
        let claims = self.verify_at(token, now, remote.as_deref().map(|s| &**s))?;
        let (exp, nbf) = token::window(&claims);
        let v = Arc::new(Verified::new(
            claims,
            &self.forward,
            &self.consumer_claim,
            exp,
            nbf,
        ));
        cache.put(token.as_bytes(), v.clone());
        Ok(v)
    }

    /// Verify a token; the error is the refusal's reason and the message a client may read.
    pub fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        let remote = match &self.key {
            Keys::Remote(r) => Some(r.keys()),
            _ => None,
        };
        self.verify_at(
            token,
            crate::clock::unix_seconds(),
            remote.as_deref().map(|s| &**s),
        )
    }

    /// `remote`: the remote set read for this check (`None` for other keys).
    fn verify_at(&self, token: &str, now: u64, remote: Option<&KeySet>) -> Result<Claims, Refusal> {
        let parts = token::split(token)?;
        let header = token::header(parts.header, &self.algorithms)?;
        let kid = header.kid.as_deref();
        let verifier = match (&self.hmac, &self.key) {
            (Some(h), _) => Verifier::Hmac(h),
            (None, Keys::One(k)) => Verifier::Public(k),
            (None, Keys::Set(m)) => {
                Verifier::Public(kid.and_then(|kid| m.get(kid)).ok_or(UNKNOWN_KID)?)
            }
            (None, Keys::Remote(r)) => {
                let set = remote.ok_or(NO_KEYS)?;
                match kid.and_then(|kid| set.get(kid)) {
                    Some(k) => Verifier::Public(k),
                    None => {
                        if kid.is_some() {
                            r.unknown_kid();
                        }
                        return Err(if set.is_empty() { NO_KEYS } else { UNKNOWN_KID });
                    }
                }
            }
        };
        token::verify_signature(verifier, header.alg, &parts)?;
        token::claims(parts.payload, &self.rules, now)
    }

    /// The accepted algorithms, for `tollgate explain`.
    pub fn algorithms(&self) -> Vec<String> {
        self.algorithms.iter().map(|a| format!("{a:?}")).collect()
    }

    /// The remote key set, if the keys come from an identity provider.
    pub fn remote(&self) -> Option<&Arc<Remote>> {
        match &self.key {
            Keys::Remote(r) => Some(r),
            _ => None,
        }
    }

    /// The required issuer and audience, for `tollgate explain`.
    pub fn issuer_audience(&self) -> (Option<String>, Option<String>) {
        (self.rules.issuer.clone(), self.rules.audience.clone())
    }
}

const UNKNOWN_KID: Refusal = (
    super::Reason::UnknownKid,
    "unknown key: the token's kid is not in the key set",
);
const NO_KEYS: Refusal = (
    super::Reason::KeysUnavailable,
    "the identity provider's keys are not available yet",
);

/// RFC 7518 §3.2: an HMAC key at least as long as the hash's output, so a guessable (empty,
/// short) secret cannot pass the load. With several HS algorithms the largest hash rules.
/// The rule it breaks, or `None` when `secret` is long enough.
fn hmac_secret_rule(algs: &[Algorithm], secret: &[u8]) -> Option<String> {
    let (alg, need) = algs
        .iter()
        .filter_map(|a| match a {
            Algorithm::HS256 => Some(("HS256", 32)),
            Algorithm::HS384 => Some(("HS384", 48)),
            Algorithm::HS512 => Some(("HS512", 64)),
            _ => None,
        })
        .max_by_key(|(_, n)| *n)?;
    (secret.len() < need).then(|| {
        format!(
            "an {alg} secret needs at least {need} bytes (RFC 7518 §3.2); this one has {}",
            secret.len()
        )
    })
}

/// A claim as a header value: strings and numbers as-is, other JSON compact.
pub fn claim_value(v: &Value) -> Option<HeaderValue> {
    match v {
        Value::String(s) => HeaderValue::from_str(s).ok(),
        Value::Number(n) => HeaderValue::from_str(&n.to_string()).ok(),
        other => HeaderValue::from_str(&other.to_string()).ok(),
    }
}
