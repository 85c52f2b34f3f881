//! JWT verification in one pass over the token, on the request path.
//!
//! `jsonwebtoken::decode` decodes the header twice, parses the claims twice (once for its own
//! checks, once for the caller), and keys a fresh HMAC for every token; on a gateway that is
//! most of a JWT route's cost. Here the header and the claims are decoded once, an HMAC
//! secret is keyed once at config load (each check clones the keyed state), and the claim
//! rules are ours, so they are also stricter: an `issuer` or `audience` the provider requires
//! must be *in* the token (`jsonwebtoken` only compares them when present). Public-key
//! signatures still go through `jsonwebtoken::crypto::verify`.

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Sha256, Sha384, Sha512};

use super::Reason;

/// A refusal: the metric's reason and the message a client may read.
pub type Refusal = (Reason, &'static str);

const MALFORMED: Refusal = (
    Reason::Malformed,
    "malformed token: a JWT has three dot-separated parts",
);
const BAD_ENCODING: Refusal = (Reason::Malformed, "malformed token: bad base64 or JSON");
const BAD_ALG: Refusal = (Reason::BadAlgorithm, "token algorithm is not accepted");

/// A token cut at its two dots.
pub struct Parts<'a> {
    /// `header.payload`: what the signature covers.
    pub signed: &'a [u8],
    pub header: &'a [u8],
    pub payload: &'a [u8],
    pub signature: &'a str,
}

pub fn split(token: &str) -> Result<Parts<'_>, Refusal> {
    let b = token.as_bytes();
    let first = b.iter().position(|&c| c == b'.').ok_or(MALFORMED)?;
    let second = first
        + 1
        + b[first + 1..]
            .iter()
            .position(|&c| c == b'.')
            .ok_or(MALFORMED)?;
    if b[second + 1..].contains(&b'.') {
        return Err(MALFORMED);
    }
    Ok(Parts {
        signed: &b[..second],
        header: &b[..first],
        payload: &b[first + 1..second],
        signature: &token[second + 1..],
    })
}

/// The JOSE header fields tollgate reads; the rest are ignored.
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<Vec<serde::de::IgnoredAny>>,
}

/// A JSON object in which no object, at any depth, names a member twice. RFC 7519 §4 lets a
/// parser take the last of duplicates, but the backend behind the gateway may take the first
/// (`{"sub":"bob",...,"sub":"admin"}`), so such a token is refused as malformed instead.
fn unique_object(json: &[u8], malformed: Refusal) -> Result<Map<String, Value>, Refusal> {
    match serde_json::from_slice::<Unique>(json) {
        Ok(Unique(Value::Object(m))) => Ok(m),
        Ok(_) => Err(malformed),
        // The visitor's only error: anything else is JSON syntax.
        Err(e) if e.classify() == serde_json::error::Category::Data => Err(REPEATED),
        Err(_) => Err(malformed),
    }
}

/// A JSON value parsed by [`unique_object`]'s rule.
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON whose objects repeat no member name")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let Unique(v) = map.next_value()?;
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom("a member name is repeated"));
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

const REPEATED: Refusal = (
    Reason::Malformed,
    "malformed token: a JSON member name is repeated",
);

/// The decoded header: the algorithm, and the key id when there is one.
pub struct Header {
    pub alg: Algorithm,
    pub kid: Option<Box<str>>,
}

/// Decode the header and check its algorithm is one of `accepted`.
pub fn header(part: &[u8], accepted: &[Algorithm]) -> Result<Header, Refusal> {
    let mut buf = [0u8; 256];
    let owned;
    let json: &[u8] = match URL_SAFE_NO_PAD.decode_slice(part, &mut buf) {
        Ok(n) => &buf[..n],
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
            owned = URL_SAFE_NO_PAD.decode(part).map_err(|_| BAD_ENCODING)?;
            &owned
        }
        Err(_) => return Err(BAD_ENCODING),
    };
    let malformed = (Reason::Malformed, "malformed token header");
    unique_object(json, malformed)?;
    let raw: RawHeader = serde_json::from_slice(json).map_err(|_| malformed)?;
    let alg: Algorithm = raw
        .alg
        .as_deref()
        .ok_or(BAD_ALG)?
        .parse()
        .map_err(|_| BAD_ALG)?;
    if !accepted.contains(&alg) {
        return Err(BAD_ALG);
    }
    if raw.crit.is_some_and(|c| !c.is_empty()) {
        return Err((
            Reason::InvalidToken,
            "token has critical header parameters tollgate does not understand",
        ));
    }
    Ok(Header {
        alg,
        kid: raw.kid.map(|k| k.into()),
    })
}

/// An HMAC secret keyed once for each accepted HS algorithm.
#[derive(Clone)]
pub struct HmacKeys {
    hs256: Option<Hmac<Sha256>>,
    hs384: Option<Hmac<Sha384>>,
    hs512: Option<Hmac<Sha512>>,
}

impl HmacKeys {
    pub fn new(secret: &[u8], algorithms: &[Algorithm]) -> HmacKeys {
        let has = |a| algorithms.contains(&a);
        HmacKeys {
            hs256: has(Algorithm::HS256).then(|| keyed(secret)),
            hs384: has(Algorithm::HS384).then(|| keyed(secret)),
            hs512: has(Algorithm::HS512).then(|| keyed(secret)),
        }
    }

    /// Check `signature` (base64url) over `signed`, in constant time.
    fn verify(&self, alg: Algorithm, signed: &[u8], signature: &str) -> Result<bool, Refusal> {
        let mut buf = [0u8; 64];
        let n = URL_SAFE_NO_PAD
            .decode_slice(signature, &mut buf)
            .map_err(|_| BAD_ENCODING)?;
        let sig = &buf[..n];
        Ok(match alg {
            Algorithm::HS256 => self.hs256.as_ref().is_some_and(|m| check(m, signed, sig)),
            Algorithm::HS384 => self.hs384.as_ref().is_some_and(|m| check(m, signed, sig)),
            Algorithm::HS512 => self.hs512.as_ref().is_some_and(|m| check(m, signed, sig)),
            _ => false,
        })
    }
}

fn keyed<M: Mac + hmac::digest::KeyInit>(secret: &[u8]) -> M {
    // Any key length is valid for HMAC.
    <M as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

fn check<M: Mac + Clone>(keyed: &M, signed: &[u8], sig: &[u8]) -> bool {
    let mut m = keyed.clone();
    m.update(signed);
    m.verify_slice(sig).is_ok()
}

/// What checks a token's signature.
pub enum Verifier<'a> {
    Hmac(&'a HmacKeys),
    Public(&'a DecodingKey),
}

pub fn verify_signature(v: Verifier, alg: Algorithm, parts: &Parts) -> Result<(), Refusal> {
    let ok = match v {
        Verifier::Hmac(k) => k.verify(alg, parts.signed, parts.signature)?,
        Verifier::Public(k) => jsonwebtoken::crypto::verify(parts.signature, parts.signed, k, alg)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::Base64(_) => BAD_ENCODING,
                _ => (Reason::BadSignature, "bad token signature"),
            })?,
    };
    if ok {
        Ok(())
    } else {
        Err((Reason::BadSignature, "bad token signature"))
    }
}

/// The claim rules of a provider.
#[derive(Debug, Clone)]
pub struct Rules {
    pub leeway: u64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Decode the claims (after the signature is checked) and apply the rules at `now` (Unix
/// seconds): `exp` required, `nbf` when present, `iss` and `aud` when the provider names them.
pub fn claims(payload: &[u8], rules: &Rules, now: u64) -> Result<Map<String, Value>, Refusal> {
    let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| BAD_ENCODING)?;
    let claims = unique_object(&json, BAD_ENCODING)?;
    let wrong_type = (Reason::Malformed, "token claims have the wrong type");
    let exp = match claims.get("exp") {
        None | Some(Value::Null) => return Err((Reason::InvalidToken, "token has no exp claim")),
        Some(v) => seconds(v).ok_or(wrong_type)?,
    };
    if exp < now.saturating_sub(rules.leeway) {
        return Err((Reason::Expired, "token expired"));
    }
    match claims.get("nbf") {
        None | Some(Value::Null) => {}
        Some(v) => {
            if seconds(v).ok_or(wrong_type)? > now.saturating_add(rules.leeway) {
                return Err((Reason::NotYetValid, "token not yet valid (nbf)"));
            }
        }
    }
    if let Some(iss) = &rules.issuer {
        if !names(claims.get("iss"), iss) {
            return Err((Reason::WrongIssuer, "wrong token issuer"));
        }
    }
    if let Some(aud) = &rules.audience {
        if !names(claims.get("aud"), aud) {
            return Err((Reason::WrongAudience, "wrong token audience"));
        }
    }
    Ok(claims)
}

/// A NumericDate: whole seconds (a fraction is dropped); negative is not a date.
/// A verified token's `exp` and `nbf` (for [`super::cache::Verified::current`]). `exp` is 0,
/// so never current, if it is somehow missing: such a token is verified, and refused, afresh.
pub fn window(claims: &Map<String, Value>) -> (u64, Option<u64>) {
    let exp = claims.get("exp").and_then(seconds).unwrap_or(0);
    (exp, claims.get("nbf").and_then(seconds))
}

fn seconds(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    }
}

/// `iss`/`aud` is `want`, or a list holding it.
fn names(v: Option<&Value>, want: &str) -> bool {
    match v {
        Some(Value::String(s)) => s == want,
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(want)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str, claims: &str, secret: &[u8]) -> String {
        let signed = format!("{}.{}", b64(header), b64(claims));
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
        m.update(signed.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
        format!("{signed}.{sig}")
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    fn run(t: &str, rules: &Rules, now: u64) -> Result<Map<String, Value>, Refusal> {
        let keys = HmacKeys::new(b"secret", &[Algorithm::HS256]);
        let parts = split(t)?;
        let h = header(parts.header, &[Algorithm::HS256])?;
        verify_signature(Verifier::Hmac(&keys), h.alg, &parts)?;
        claims(parts.payload, rules, now)
    }

    fn rules() -> Rules {
        Rules {
            leeway: 0,
            issuer: Some("idp".into()),
            audience: Some("api".into()),
        }
    }

    fn reason(r: Result<Map<String, Value>, Refusal>) -> Reason {
        r.expect_err("refused").0
    }

    #[test]
    fn accepts_a_good_token_and_agrees_with_jsonwebtoken_on_the_signature() {
        let t = token(
            HS256,
            r#"{"sub":"u","exp":2000,"iss":"idp","aud":["x","api"]}"#,
            b"secret",
        );
        let c = run(&t, &rules(), 1000).unwrap();
        assert_eq!(c["sub"], "u");
        // The same token through jsonwebtoken's own verifier.
        let p = split(&t).unwrap();
        assert!(jsonwebtoken::crypto::verify(
            p.signature,
            p.signed,
            &DecodingKey::from_secret(b"secret"),
            Algorithm::HS256
        )
        .unwrap());
    }

    #[test]
    fn refusals_say_why() {
        let r = rules();
        let ok = r#"{"exp":2000,"iss":"idp","aud":"api"}"#;
        assert_eq!(
            reason(run(&token(HS256, ok, b"other"), &r, 1000)),
            Reason::BadSignature
        );
        assert_eq!(
            reason(run(&token(HS256, ok, b"secret"), &r, 2001)),
            Reason::Expired
        );
        let lenient = Rules {
            leeway: 5,
            ..r.clone()
        };
        assert!(run(&token(HS256, ok, b"secret"), &lenient, 2004).is_ok());
        let nbf = r#"{"exp":2000,"nbf":1500,"iss":"idp","aud":"api"}"#;
        assert_eq!(
            reason(run(&token(HS256, nbf, b"secret"), &r, 1000)),
            Reason::NotYetValid
        );
        for (claims, why) in [
            (r#"{"iss":"idp","aud":"api"}"#, Reason::InvalidToken),
            (
                r#"{"exp":"soon","iss":"idp","aud":"api"}"#,
                Reason::Malformed,
            ),
            (r#"{"exp":2000,"aud":"api"}"#, Reason::WrongIssuer),
            (
                r#"{"exp":2000,"iss":"evil","aud":"api"}"#,
                Reason::WrongIssuer,
            ),
            (r#"{"exp":2000,"iss":"idp"}"#, Reason::WrongAudience),
            (
                r#"{"exp":2000,"iss":"idp","aud":["x"]}"#,
                Reason::WrongAudience,
            ),
            (r#"[1,2]"#, Reason::Malformed),
        ] {
            assert_eq!(
                reason(run(&token(HS256, claims, b"secret"), &r, 1000)),
                why,
                "{claims}"
            );
        }
        for h in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":"RS256"}"#,
        ] {
            assert_eq!(
                reason(run(&token(h, ok, b"secret"), &r, 1000)),
                Reason::BadAlgorithm,
                "{h}"
            );
        }
        let crit = r#"{"alg":"HS256","crit":["b64"]}"#;
        assert_eq!(
            reason(run(&token(crit, ok, b"secret"), &r, 1000)),
            Reason::InvalidToken
        );
        for (h, claims) in [
            (
                HS256,
                r#"{"sub":"bob","exp":2000,"iss":"idp","aud":"api","sub":"admin"}"#,
            ),
            (
                HS256,
                r#"{"exp":2000,"iss":"idp","aud":"api","x":{"a":1,"a":2}}"#,
            ),
            (r#"{"alg":"HS256","alg":"HS256"}"#, ok),
            (r#"{"alg":"HS256","typ":"JWT","typ":"x"}"#, ok),
        ] {
            let r = run(&token(h, claims, b"secret"), &r, 1000);
            assert_eq!(r.expect_err(claims).1, REPEATED.1, "{h} {claims}");
        }
        for t in ["a.b", "a.b.c.d", "", "..", "!!.e30.e30"] {
            assert_eq!(reason(run(t, &r, 1000)), Reason::Malformed, "{t}");
        }
    }
}
