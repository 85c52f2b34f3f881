//! Authentication end to end: a real gateway, an echo upstream that reports what it received.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use support::*;

const SECRET: &str = "test-jwt-secret-0123456789abcdef";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// A gateway with a public route, a key route, a token route and a key route for alice only.
fn gateway(extra_auth: &str) -> Gateway {
    let up = echo("up");
    let keyfile = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keyfile.path(), "filesourcedkey-123\n").unwrap();
    let (_, keypath) = keyfile.keep().unwrap();
    let yaml = format!(
        r#"
upstreams: {{u: {{targets: ["{up}"]}}}}
consumers:
  alice: {{api_keys: ["supersecretapikey"]}}
  ci-bot: {{api_keys: ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]}}
  env-bot: {{api_keys: [{{env: TEST_API_KEY}}]}}
  file-bot: {{api_keys: [{{file: "{keypath}"}}]}}
auth:
  keys: {{type: api_key}}
  tokens:
    type: jwt
    algorithms: [HS256]
    secret: {{env: TEST_JWT_SECRET}}
    issuer: auth.example.com
    audience: api
    leeway: 30s
    forward_claims: {{sub: X-User-ID, role: X-User-Role}}
{extra_auth}
routes:
  - {{name: public, path_prefix: /public, upstream: u}}
  - {{name: keys, path_prefix: /keys, upstream: u, auth: [keys]}}
  - {{name: tokens, path_prefix: /tokens, upstream: u, auth: [tokens]}}
  - {{name: both, path_prefix: /both, upstream: u, auth: [keys, tokens]}}
  - {{name: alice-only, path_prefix: /alice, upstream: u, auth: [keys], consumers: [alice]}}
  - {{name: admins, path_prefix: /admin, upstream: u, auth: [tokens], claims: {{role: [admin]}}}}
  - {{name: scoped, path_prefix: /orders, upstream: u, auth: [tokens], claims: {{scope: ["orders:read"]}}}}
"#,
        keypath = keypath.display()
    );
    Gateway::start_with_env(
        &yaml,
        &[
            ("TEST_API_KEY", "envsourcedkey-456"),
            ("TEST_JWT_SECRET", SECRET),
        ],
    )
}

/// A gateway whose route `/t` is guarded by one JWT provider `p` with these settings.
fn one_provider(settings: &str) -> Gateway {
    let up = echo("up");
    Gateway::start(&format!(
        "upstreams: {{u: {{targets: [\"{up}\"]}}}}\nauth: {{p: {settings}}}\n\
         routes: [{{name: t, path_prefix: /t, upstream: u, auth: [p]}}]\n"
    ))
}

fn good_claims() -> serde_json::Value {
    json!({"sub": "alice", "role": "admin", "iss": "auth.example.com", "aud": "api", "exp": now() + 300})
}

#[test]
fn api_keys_admit_plain_hashed_env_and_file_keys_and_strip_the_key() {
    let gw = gateway("");
    for (key, consumer) in [
        ("supersecretapikey", "alice"),
        ("test", "ci-bot"),
        ("envsourcedkey-456", "env-bot"),
        ("filesourcedkey-123", "file-bot"),
    ] {
        let r = gw.send("GET", "/keys/x", &[("X-Api-Key", key)]);
        assert_eq!(r.status, 200, "{key}: {r:?}");
        assert_eq!(r.upstream_header("x-consumer").as_deref(), Some(consumer));
        assert_eq!(
            r.upstream_header("x-api-key"),
            None,
            "key forwarded upstream"
        );
    }
}

#[test]
fn api_key_missing_wrong_or_duplicated_is_401() {
    let gw = gateway("");
    assert_401(&gw.get("/keys/x"), "missing");
    assert_401(
        &gw.send("GET", "/keys/x", &[("X-Api-Key", "wrongkeywrongkey")]),
        "invalid API key",
    );
    let r = gw.send(
        "GET",
        "/keys/x",
        &[
            ("X-Api-Key", "supersecretapikey"),
            ("X-Api-Key", "supersecretapikey"),
        ],
    );
    assert_401(&r, "more than once");
    let big = "k".repeat(9 * 1024);
    let r = gw.send("GET", "/keys/x", &[("X-Api-Key", &big)]);
    assert!(r.status == 401 || r.status == 431, "{r:?}");
}

#[test]
fn public_routes_stay_open_and_identity_headers_cannot_be_spoofed() {
    let gw = gateway("");
    let spoof = [
        ("X-Consumer", "root"),
        ("X-User-ID", "root"),
        ("X-User-Role", "admin"),
    ];
    let r = gw.send("GET", "/public/x", &spoof);
    assert_eq!(r.status, 200, "{r:?}");
    for (h, _) in spoof {
        assert_eq!(r.upstream_header(h), None, "{h} spoofed on a public route");
    }
    let mut hs = spoof.to_vec();
    hs.push(("X-Api-Key", "supersecretapikey"));
    let r = gw.send("GET", "/keys/x", &hs);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-consumer").as_deref(), Some("alice"));
    assert_eq!(r.upstream_header("x-user-id"), None);
    assert_eq!(r.upstream_header("x-user-role"), None);
}

#[test]
fn wrong_consumer_or_claim_is_403() {
    let gw = gateway("");
    let r = gw.send("GET", "/alice/x", &[("X-Api-Key", "test")]);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.error_code(), "forbidden");
    let r = gw.send("GET", "/alice/x", &[("X-Api-Key", "supersecretapikey")]);
    assert_eq!(r.status, 200, "{r:?}");
    let mut c = good_claims();
    c["role"] = json!("user");
    let r = gw.send("GET", "/admin/x", &[("Authorization", &bearer(&token(c)))]);
    assert_eq!(r.status, 403, "{r:?}");
    let r = gw.send(
        "GET",
        "/admin/x",
        &[("Authorization", &bearer(&token(good_claims())))],
    );
    assert_eq!(r.status, 200, "{r:?}");
}

/// OAuth 2 scopes are one space-separated string (RFC 6749 §3.3, RFC 9068): a route's
/// `claims: {scope: [...]}` admits a token holding any listed scope among its others.
#[test]
fn a_scope_claim_is_a_list_of_scopes() {
    let gw = gateway("");
    for (scope, status) in [
        (json!("openid orders:read profile"), 200),
        (json!("orders:read"), 200),
        (json!(["openid", "orders:read"]), 200),
        (json!("orders:write orders:readx"), 403),
        (json!("openid  orders:read\tx"), 403),
        (json!(""), 403),
    ] {
        let mut c = good_claims();
        c["scope"] = scope.clone();
        let r = gw.send("GET", "/orders/x", &[("Authorization", &bearer(&token(c)))]);
        assert_eq!(r.status, status, "scope {scope}: {r:?}");
    }
    // Only scopes are split: another claim's value is compared whole.
    let mut c = good_claims();
    c["role"] = json!("user admin");
    let r = gw.send("GET", "/admin/x", &[("Authorization", &bearer(&token(c)))]);
    assert_eq!(r.status, 403, "{r:?}");
}

#[test]
fn valid_jwt_forwards_claims_and_strips_authorization() {
    let gw = gateway("");
    let t = token(good_claims());
    let r = gw.send(
        "GET",
        "/tokens/x",
        &[("Authorization", &bearer(&t)), ("X-User-Role", "root")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("alice"));
    assert_eq!(r.upstream_header("x-user-role").as_deref(), Some("admin"));
    assert_eq!(r.upstream_header("x-consumer").as_deref(), Some("alice"));
    assert_eq!(r.upstream_header("authorization"), None);
    // Either provider admits on a route with both.
    let r = gw.send("GET", "/both/x", &[("Authorization", &bearer(&t))]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = gw.send("GET", "/both/x", &[("X-Api-Key", "supersecretapikey")]);
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn jwt_time_claims_are_enforced_with_leeway() {
    let gw = gateway("");
    let send = |c: serde_json::Value| {
        gw.send("GET", "/tokens/x", &[("Authorization", &bearer(&token(c)))])
    };
    let mut c = good_claims();
    c["exp"] = json!(now() - 120);
    assert_401(&send(c), "expired");
    let mut c = good_claims();
    c["exp"] = json!(now() - 5);
    assert_eq!(send(c).status, 200, "within leeway");
    let mut c = good_claims();
    c["nbf"] = json!(now() + 600);
    assert_401(&send(c), "not yet valid");
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_401(&send(c), "exp");
    let mut c = good_claims();
    c["iss"] = json!("evil.example.com");
    assert_401(&send(c), "issuer");
    let mut c = good_claims();
    c["aud"] = json!("other");
    assert_401(&send(c), "audience");
    // A provider that names an issuer and an audience requires them: leaving them out of
    // the token is not a way around the check.
    for claim in ["iss", "aud"] {
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove(claim);
        assert_401(&send(c), if claim == "iss" { "issuer" } else { "audience" });
    }
    let mut c = good_claims();
    c["aud"] = json!(["other", "api"]);
    assert_eq!(send(c).status, 200, "api among several audiences");
}

#[test]
fn tampered_none_and_malformed_tokens_are_401() {
    let gw = gateway("");
    let send = |t: &str| gw.send("GET", "/tokens/x", &[("Authorization", &bearer(t))]);
    let t = token(good_claims());
    let parts: Vec<&str> = t.split('.').collect();
    let mut c = good_claims();
    c["role"] = json!("superadmin");
    let forged = B64.encode(serde_json::to_vec(&c).unwrap());
    let r = send(&format!("{}.{forged}.{}", parts[0], parts[2]));
    assert_401(&r, "signature");
    for alg in ["none", "None", "NONE"] {
        let h = B64.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let r = send(&format!("{h}.{}.", parts[1]));
        assert_eq!(r.status, 401, "alg {alg}: {r:?}");
    }
    assert_401(&send(&format!("{}.{}", parts[0], parts[1])), "malformed");
    assert_401(&send(&format!("{t}.x")), "malformed");
    // The signature is checked before the payload is decoded: a bad payload fails there.
    assert_eq!(send(&format!("{}.!!!.{}", parts[0], parts[2])).status, 401);
    assert_401(
        &send(&format!("!!!.{}.{}", parts[1], parts[2])),
        "malformed",
    );
    let notjson = B64.encode("not json");
    assert_eq!(
        send(&format!("{}.{notjson}.{}", parts[0], parts[2])).status,
        401
    );
    let big = "a".repeat(9 * 1024);
    let r = send(&big);
    assert!(r.status == 401 || r.status == 431, "{r:?}");
    let r = gw.send(
        "GET",
        "/tokens/x",
        &[
            ("Authorization", &bearer(&t)),
            ("Authorization", &bearer(&t)),
        ],
    );
    assert_401(&r, "more than once");
}

#[test]
fn rfc7515_a1_token_is_rejected_as_expired() {
    let key = B64
        .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("a1.key");
    std::fs::write(&keyfile, &key).unwrap();
    let gw = one_provider(&format!(
        "{{type: jwt, algorithms: [HS256], secret: {{file: \"{}\"}}}}",
        keyfile.display()
    ));
    let t = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let r = gw.send("GET", "/t/x", &[("Authorization", &bearer(t))]);
    assert_401(&r, "expired");
}

#[test]
fn hs256_signed_with_the_rsa_public_pem_is_refused_by_an_rs256_provider() {
    let pem = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa_public.pem");
    let priv_pem = include_bytes!("fixtures/rsa_private.pem");
    let gw = one_provider(&format!(
        "{{type: jwt, algorithms: [RS256], public_key: {{file: \"{pem}\"}}}}"
    ));
    let claims = json!({"sub": "bob", "exp": now() + 300});
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&std::fs::read(pem).unwrap()),
    )
    .unwrap();
    let r = gw.send("GET", "/t/x", &[("Authorization", &bearer(&confused))]);
    assert_401(&r, "algorithm");
    let good = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(priv_pem).unwrap(),
    )
    .unwrap();
    let r = gw.send("GET", "/t/x", &[("Authorization", &bearer(&good))]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-consumer").as_deref(), Some("bob"));
}

#[test]
fn auth_config_errors_name_the_key() {
    let (code, out) = check_config(
        r#"
upstreams: {u: {targets: ["127.0.0.1:1"]}}
auth:
  keys: {type: api_key}
  tokens: {type: jwt, algorithms: [HS256], secret: {env: TOLLGATE_TEST_UNSET_SECRET}}
routes:
  - {name: r, path_prefix: /r, upstream: u, auth: [tokns]}
"#,
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(r#"routes[0].auth[0]: unknown auth "tokns" (known: keys"#),
        "{out}"
    );
    assert!(
        out.contains(
            "auth.tokens.secret.env: environment variable TOLLGATE_TEST_UNSET_SECRET is not set"
        ),
        "{out}"
    );
}

#[test]
fn jwks_picks_the_key_by_kid_and_an_unknown_kid_is_401() {
    let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks.json");
    let priv_pem = include_bytes!("fixtures/rsa_private.pem");
    let gw = one_provider(&format!(
        "{{type: jwt, algorithms: [RS256], jwks: {{file: \"{jwks}\"}}}}"
    ));
    let claims = json!({"sub": "carol", "exp": now() + 300});
    let signed = |kid: Option<&str>| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = kid.map(str::to_owned);
        encode(&h, &claims, &EncodingKey::from_rsa_pem(priv_pem).unwrap()).unwrap()
    };
    let r = gw.send(
        "GET",
        "/t/x",
        &[("Authorization", &bearer(&signed(Some("k1"))))],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-consumer").as_deref(), Some("carol"));
    let r = gw.send(
        "GET",
        "/t/x",
        &[("Authorization", &bearer(&signed(Some("k9"))))],
    );
    assert_401(&r, "unknown key");
    let r = gw.send("GET", "/t/x", &[("Authorization", &bearer(&signed(None)))]);
    assert_401(&r, "unknown key");
}

#[test]
fn token_subcommand_mints_a_token_the_gateway_accepts() {
    let up = echo("up");
    let pem = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa_public.pem");
    let body = format!(
        r#"
upstreams: {{u: {{targets: ["{up}"]}}}}
auth:
  tokens: {{type: jwt, algorithms: [HS256], secret: "an-inline-demo-secret-0123456789abcdef", issuer: me, audience: api,
           forward_claims: {{role: X-User-Role}}}}
  rs: {{type: jwt, algorithms: [RS256], public_key: {{file: "{pem}"}}}}
routes:
  - {{name: t, path_prefix: /t, upstream: u, auth: [tokens]}}
"#
    );
    let gw = Gateway::start(&body);
    let conf = gw.dir.path().join("tollgate.yaml");
    let mint = |auth: &str| {
        std::process::Command::new(bin())
            .args(["token", "--config"])
            .arg(&conf)
            .args([
                "--auth",
                auth,
                "--sub",
                "alice",
                "--claim",
                "role=admin",
                "--ttl",
                "1h",
            ])
            .output()
            .unwrap()
    };
    let out = mint("tokens");
    assert!(out.status.success(), "{out:?}");
    let t = String::from_utf8(out.stdout).unwrap();
    let r = gw.send("GET", "/t/x", &[("Authorization", &bearer(t.trim()))]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-consumer").as_deref(), Some("alice"));
    assert_eq!(r.upstream_header("x-user-role").as_deref(), Some("admin"));
    let out = mint("rs");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("private key"));
}

#[test]
fn api_key_in_a_query_parameter_is_removed_before_forwarding() {
    let up = echo("up");
    let gw = Gateway::start(&format!(
        r#"
upstreams: {{u: {{targets: ["{up}"]}}}}
consumers:
  alice: {{api_keys: ["supersecretapikey"]}}
auth:
  q: {{type: api_key, query: api_key}}
routes:
  - {{name: q, path_prefix: /q, upstream: u, auth: [q]}}
"#
    ));
    let r = gw.get("/q/x?a=1&api_key=supersecretapikey&b=2");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-consumer").as_deref(), Some("alice"));
    let seen = r.json().to_string();
    assert!(!seen.contains("supersecretapikey"), "{seen}");
    assert!(seen.contains("a=1&b=2"), "{seen}");
    assert_eq!(gw.get("/q/x?api_key=nope-nope-nope").status, 401);
}

#[test]
fn a_token_with_a_critical_header_is_401() {
    let gw = gateway("");
    let mut h = Header::new(Algorithm::HS256);
    h.crit = Some(vec!["exp".to_owned()]);
    let t = encode(
        &h,
        &good_claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let r = gw.send("GET", "/tokens/x", &[("Authorization", &bearer(&t))]);
    assert_401(&r, "critical");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer error=\"invalid_token\""));
}

/// The gateway remembers tokens it verified (`src/auth/cache.rs`): a remembered token gives the
/// same identity, still expires on time, and lends nothing to a token that differs from it.
#[test]
fn a_remembered_token_still_expires_and_lends_nothing_to_a_forgery() {
    let gw = one_provider(&format!(
        "{{type: jwt, algorithms: [HS256], secret: \"{SECRET}\", leeway: 0s, \
         forward_claims: {{sub: X-User-ID}}}}"
    ));
    let exp = now() + 2;
    let t = token(json!({"sub": "alice", "exp": exp}));
    for _ in 0..3 {
        let r = gw.send("GET", "/t/x", &[("Authorization", &bearer(&t))]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["headers"]["x-user-id"], "alice");
    }
    // Alice's signature on other claims: refused although her token is remembered.
    let (head, rest) = t.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let claims = B64.encode(json!({"sub": "mallory", "exp": exp}).to_string());
    let forged = format!("{head}.{claims}.{sig}");
    let r = gw.send("GET", "/t/x", &[("Authorization", &bearer(&forged))]);
    assert_401(&r, "signature");
    // The passing of time is what is under test: wait until `exp` is behind us.
    while now() <= exp {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let r = gw.send("GET", "/t/x", &[("Authorization", &bearer(&t))]);
    assert_401(&r, "expired");
}
