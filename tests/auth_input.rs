//! Auth input that must forge nothing: secrets too short to protect anything are refused at
//! load with their key path, tokens whose JSON repeats a member name are refused, oversized
//! credentials get a clear answer. Tokens here are signed with OpenSSL's HMAC, not with the
//! `jsonwebtoken` crate tollgate verifies with.

mod support;
use support::*;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};

const SECRET: &str = "auth-input-test-secret-0123456789abcdef";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT over exactly these header and payload texts, HS256 with `secret`, by OpenSSL.
fn sign(header: &str, payload: &str, secret: &[u8]) -> String {
    let signed = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let key = PKey::hmac(secret).unwrap();
    let mut s = Signer::new(MessageDigest::sha256(), &key).unwrap();
    s.update(signed.as_bytes()).unwrap();
    format!("{signed}.{}", B64.encode(s.sign_to_vec().unwrap()))
}

fn gateway() -> Gateway {
    let up = echo("up");
    Gateway::start(&format!(
        "upstreams: {{u: {{targets: [\"{up}\"]}}}}\n\
         auth: {{p: {{type: jwt, algorithms: [HS256], secret: \"{SECRET}\", \
                 forward_claims: {{sub: X-User-ID}}}}}}\n\
         routes: [{{name: t, path_prefix: /t, upstream: u, auth: [p]}}]\n"
    ))
}

fn bearer(gw: &Gateway, token: &str) -> Resp {
    gw.send(
        "GET",
        "/t/x",
        &[("Authorization", &format!("Bearer {token}"))],
    )
}

#[test]
fn a_token_repeating_a_member_name_is_refused_not_read_last_wins() {
    let gw = gateway();
    let exp = now() + 300;
    let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
    // The same signature scheme, once without and once with the repeated member.
    let fine = sign(
        hs,
        &format!(r#"{{"sub":"bob","exp":{exp}}}"#),
        SECRET.as_bytes(),
    );
    let r = bearer(&gw, &fine);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("bob"));

    for (header, payload) in [
        (hs, format!(r#"{{"sub":"bob","exp":{exp},"sub":"admin"}}"#)),
        (
            hs,
            format!(r#"{{"sub":"bob","exp":{exp},"x":{{"a":1,"a":2}}}}"#),
        ),
        (
            r#"{"alg":"HS256","typ":"JWT","typ":"at+jwt"}"#,
            format!(r#"{{"sub":"bob","exp":{exp}}}"#),
        ),
    ] {
        let r = bearer(&gw, &sign(header, &payload, SECRET.as_bytes()));
        assert_401(&r, "repeated");
        assert_eq!(r.upstream_header("x-user-id"), None, "{payload}");
    }
}

#[test]
fn a_credential_over_8_kib_is_401_and_a_head_over_the_limit_431() {
    let gw = gateway();
    assert_401(&bearer(&gw, &"a".repeat(9 * 1024)), "too large");
    let r = bearer(&gw, &"a".repeat(40 * 1024));
    assert_eq!(
        (r.status, r.error_code()),
        (431, "headers_too_large".into())
    );
}

/// `-t` on a one-provider config with these JWT settings.
fn check_provider(settings: &str) -> (i32, String) {
    check_config(&format!(
        "upstreams: {{u: {{targets: [\"127.0.0.1:1\"]}}}}\n\
         auth: {{t: {settings}}}\n\
         routes: [{{name: t, path_prefix: /t, upstream: u, auth: [t]}}]\n"
    ))
}

#[test]
fn hmac_secrets_shorter_than_the_hash_are_refused_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let short = dir.path().join("short");
    // 31 bytes and the newline an editor adds: the newline does not count.
    std::fs::write(&short, format!("{}\n", "s".repeat(31))).unwrap();
    let enough = dir.path().join("enough");
    std::fs::write(&enough, format!("{}\n", "s".repeat(32))).unwrap();

    for (settings, says) in [
        (
            r#"{type: jwt, algorithms: [HS256], secret: ""}"#.to_owned(),
            "auth.t.secret: an HS256 secret needs at least 32 bytes (RFC 7518 §3.2); this one has 0",
        ),
        (
            format!("{{type: jwt, algorithms: [HS256], secret: {{file: {:?}}}}}", empty.display().to_string()),
            "auth.t.secret: an HS256 secret needs at least 32 bytes (RFC 7518 §3.2); this one has 0",
        ),
        (
            format!("{{type: jwt, algorithms: [HS256], secret: {{file: {:?}}}}}", short.display().to_string()),
            "this one has 31 (file",
        ),
        (
            format!("{{type: jwt, algorithms: [HS384], secret: {:?}}}", "s".repeat(47)),
            "an HS384 secret needs at least 48 bytes",
        ),
        (
            format!("{{type: jwt, algorithms: [HS256, HS512], secret: {:?}}}", "s".repeat(40)),
            "an HS512 secret needs at least 64 bytes",
        ),
    ] {
        let (code, out) = check_provider(&settings);
        assert_eq!(code, 1, "{settings}: {out}");
        assert!(out.contains(says), "{settings}: expected {says:?} in {out}");
    }

    let env = check_config_with_env(
        "upstreams: {u: {targets: [\"127.0.0.1:1\"]}}\n\
         auth: {t: {type: jwt, algorithms: [HS256], secret: {env: TOLLGATE_SHORT_SECRET}}}\n\
         routes: [{name: t, path_prefix: /t, upstream: u, auth: [t]}]\n",
        &[("TOLLGATE_SHORT_SECRET", "sixteen-bytes-ok")],
    );
    assert_eq!(env.0, 1, "{}", env.1);
    assert!(
        env.1
            .contains("this one has 16 (environment variable TOLLGATE_SHORT_SECRET)"),
        "{}",
        env.1
    );
    assert!(
        !env.1.contains("sixteen-bytes-ok"),
        "the secret is never printed: {}",
        env.1
    );

    let (code, out) = check_provider(&format!(
        "{{type: jwt, algorithms: [HS256], secret: {{file: {:?}}}}}",
        enough.display().to_string()
    ));
    assert_eq!(code, 0, "{out}");
}
