//! Hot-path auth costs: API key lookup, HS256 / RS256 / ES256 verification, a remembered
//! introspection verdict (ns per op).
//! Keys come from tests/fixtures (generated with openssl).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use tollgate::config::ConfigErrors;
use tollgate::policy::auth::api_key::KeyTable;
use tollgate::policy::auth::config::SecretFile;
use tollgate::policy::auth::jwt::Jwt;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn provider(alg: &str, secret: Option<SecretFile>, public_key: Option<SecretFile>) -> Jwt {
    let mut errs = ConfigErrors::default();
    Jwt::compile(
        "bench",
        &[alg.to_owned()],
        secret.as_ref(),
        public_key.as_ref(),
        None,
        None,
        None,
        0,
        Vec::new(),
        "sub".to_owned(),
        &mut errs,
    )
    .unwrap_or_else(|| panic!("{errs}"))
}

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let claims = serde_json::json!({"sub": "alice", "role": "admin", "exp": 4_000_000_000u64});
    encode(&Header::new(alg), &claims, key).unwrap()
}

fn benches(c: &mut Criterion) {
    let mut table = KeyTable::default();
    for i in 0..1000 {
        table
            .insert(format!("key-number-{i:06}").as_bytes(), i, true)
            .unwrap();
    }
    c.bench_function("api_key_lookup_hit_1000_keys", |b| {
        b.iter(|| table.lookup(black_box(b"key-number-000500")))
    });
    c.bench_function("api_key_lookup_miss_1000_keys", |b| {
        b.iter(|| table.lookup(black_box(b"not-a-key-at-all!")))
    });

    let secret = "bench-secret-0123456789abcdef0123";
    let hs = provider("HS256", Some(SecretFile::Inline(secret.into())), None);
    let t = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
    );
    c.bench_function("jwt_verify_hs256", |b| {
        b.iter(|| hs.verify(black_box(&t)).unwrap())
    });

    let rs = provider(
        "RS256",
        None,
        Some(SecretFile::File {
            file: format!("{FIX}/rsa_public.pem"),
        }),
    );
    let rk = std::fs::read(format!("{FIX}/rsa_private.pem")).unwrap();
    let t = token(Algorithm::RS256, &EncodingKey::from_rsa_pem(&rk).unwrap());
    c.bench_function("jwt_verify_rs256", |b| {
        b.iter(|| rs.verify(black_box(&t)).unwrap())
    });

    let es = provider(
        "ES256",
        None,
        Some(SecretFile::File {
            file: format!("{FIX}/ec_public.pem"),
        }),
    );
    let ek = std::fs::read(format!("{FIX}/ec_private.pem")).unwrap();
    let t = token(Algorithm::ES256, &EncodingKey::from_ec_pem(&ek).unwrap());
    c.bench_function("jwt_verify_es256", |b| {
        b.iter(|| es.verify(black_box(&t)).unwrap())
    });
}

/// A remembered introspection verdict: the token's SHA-256 and the probe of a well-filled cache
/// (12,000 tokens), what a request with a known opaque token costs beyond the JWT-free path.
fn introspection(c: &mut Criterion) {
    use std::sync::Arc;
    use tollgate::policy::auth::cache::Verified;
    use tollgate::policy::auth::introspect::cache::{digest, Verdicts};
    let v = Verdicts::default();
    let claims = serde_json::json!({"sub": "alice", "scope": "read write"});
    let verified = Arc::new(Verified::new(
        claims.as_object().unwrap().clone(),
        &[],
        "sub",
        u64::MAX,
        None,
    ));
    // 43 characters: 32 random bytes in base64url, a common opaque token.
    let token = |i: usize| format!("{i:0>11}-aBcDeFgHiJkLmNoPqRsTuVwXyZ0123");
    for i in 0..12_000 {
        v.put(&digest(&token(i)), Some(verified.clone()), u64::MAX, 0);
    }
    let t = token(8_000);
    c.bench_function("introspection_cached_hit_43b_token", |b| {
        b.iter(|| v.get(&digest(black_box(&t)), 1).unwrap())
    });
    let long = "x".repeat(1024);
    v.put(&digest(&long), Some(verified.clone()), u64::MAX, 0);
    c.bench_function("introspection_cached_hit_1kib_token", |b| {
        b.iter(|| v.get(&digest(black_box(&long)), 1).unwrap())
    });
}

criterion_group!(auth, benches, introspection);
criterion_main!(auth);
