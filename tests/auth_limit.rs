//! Authentication and rate limiting together: limits key on who the caller is, not where
//! they connect from, and a refused credential never spends anyone's budget.

mod support;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use support::*;

const SECRET: &str = "auth-limit-test-secret-0123456789";

fn token(sub: &str, tenant: serde_json::Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let claims = json!({"sub": sub, "tenant": tenant, "exp": exp});
    let t = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    format!("Bearer {t}")
}

fn gateway() -> Gateway {
    let up = echo("up");
    Gateway::start(&format!(
        r#"
upstreams: {{u: {{targets: ["{up}"]}}}}
consumers:
  alice: {{api_keys: ["alice-key-0123456789"]}}
  bob: {{api_keys: ["bob-key-0123456789"]}}
auth:
  keys: {{type: api_key}}
  tokens: {{type: jwt, algorithms: [HS256], secret: "{SECRET}"}}
rate_limits:
  per-consumer: {{requests: 2, per: 1m, key: consumer}}
  per-tenant: {{requests: 2, per: 1m, key: "claim:tenant"}}
routes:
  - {{name: keys, path_prefix: /keys, upstream: u, auth: [keys], rate_limit: per-consumer}}
  - {{name: tokens, path_prefix: /tokens, upstream: u, auth: [tokens], rate_limit: per-tenant}}
"#
    ))
}

fn with_key(gw: &Gateway, key: &str) -> Resp {
    gw.send("GET", "/keys/x", &[("X-Api-Key", key)])
}

#[test]
fn each_consumer_has_its_own_budget_from_the_same_address() {
    let gw = gateway();
    for _ in 0..2 {
        assert_eq!(with_key(&gw, "alice-key-0123456789").status, 200);
    }
    let r = with_key(&gw, "alice-key-0123456789");
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.error_code(), "rate_limited");
    // Same client IP, another consumer: a budget of its own.
    let r = with_key(&gw, "bob-key-0123456789");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("X-Consumer").as_deref(), Some("bob"));
}

#[test]
fn refused_credentials_are_401_and_spend_no_budget() {
    let gw = gateway();
    for _ in 0..5 {
        let r = with_key(&gw, "not-a-key");
        assert_eq!(r.status, 401, "{r:?}");
        assert!(r.header("RateLimit").is_none(), "{r:?}");
    }
    for _ in 0..2 {
        assert_eq!(with_key(&gw, "alice-key-0123456789").status, 200);
    }
}

#[test]
fn a_claim_key_shares_a_budget_across_subjects_of_one_tenant() {
    let gw = gateway();
    let get = |sub: &str, tenant: serde_json::Value| {
        gw.send(
            "GET",
            "/tokens/x",
            &[("Authorization", &token(sub, tenant))],
        )
    };
    assert_eq!(get("ann", json!("acme")).status, 200);
    assert_eq!(get("ben", json!("acme")).status, 200);
    let r = get("cat", json!("acme"));
    assert_eq!(r.status, 429, "the tenant's budget is shared: {r:?}");
    // Another tenant, numeric claim values work too.
    assert_eq!(get("ann", json!(42)).status, 200);
    assert_eq!(get("ann", json!(42)).status, 200);
    assert_eq!(get("ann", json!(42)).status, 429);
}
