//! JWT verification cost per token (keys parsed once, as the gateway does):
//! HS256, RS256 (2048-bit) and ES256 (P-256), with issuer, audience, expiry
//! and one required claim checked. The `verify_*` rows are misses (the verified-token cache
//! off: every request verified); `cached_rs256` is a hit (a token seen before: expiry and the
//! required claim checked, no signature).
//!
//! Run with `cargo bench -p nexus-benches --bench jwt`.

use criterion::{Criterion, criterion_main};
use http::HeaderMap;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use nexus_middleware::jwt::{JwtAuth, JwtConfig, KeySource};
use std::hint::black_box;

const RSA1: &[u8] = include_bytes!("../../nexus-middleware/tests/fixtures/jwt/rsa1.pem");
const EC1: &[u8] = include_bytes!("../../nexus-middleware/tests/fixtures/jwt/ec1.pem");
const JWKS1: &str = include_str!("../../nexus-middleware/tests/fixtures/jwt/jwks-1.json");
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn headers(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> HeaderMap {
    let claims = serde_json::json!({"sub": "alice", "iss": "https://issuer.test", "aud": "nexus",
        "exp": 4_000_000_000u64, "scope": "read write"});
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    let token = encode(&h, &claims, key).expect("sign");
    let mut map = HeaderMap::new();
    map.insert("authorization", format!("Bearer {token}").parse().expect("header"));
    map
}

fn auth(keys: KeySource, alg: Algorithm, cache_size: usize) -> JwtAuth {
    JwtAuth::new(JwtConfig {
        cache_size,
        issuer: Some("https://issuer.test".into()),
        audiences: vec!["nexus".into()],
        algorithms: vec![alg],
        keys,
        required_claims: vec![("scope".into(), "read".into())],
        ..JwtConfig::default()
    })
    .expect("valid policy")
}

fn bench_jwt(c: &mut Criterion) {
    let cases = [
        ("jwt/verify_hs256", auth(KeySource::Secret(SECRET.to_vec()), Algorithm::HS256, 0), {
            headers(Algorithm::HS256, None, &EncodingKey::from_secret(SECRET))
        }),
        ("jwt/verify_rs256", auth(KeySource::Jwks(JWKS1.into()), Algorithm::RS256, 0), {
            headers(Algorithm::RS256, Some("key-1"), &EncodingKey::from_rsa_pem(RSA1).expect("rsa"))
        }),
        ("jwt/cached_rs256", auth(KeySource::Jwks(JWKS1.into()), Algorithm::RS256, 10_000), {
            headers(Algorithm::RS256, Some("key-1"), &EncodingKey::from_rsa_pem(RSA1).expect("rsa"))
        }),
        ("jwt/verify_es256", auth(KeySource::Jwks(JWKS1.into()), Algorithm::ES256, 0), {
            headers(Algorithm::ES256, Some("ec-1"), &EncodingKey::from_ec_pem(EC1).expect("ec"))
        }),
    ];
    for (name, auth, headers) in &cases {
        assert!(auth.verify(headers).is_ok(), "{name}: the token verifies");
        c.bench_function(name, |b| b.iter(|| black_box(auth.verify(black_box(headers)).is_ok())));
    }
}

mod group {
    #![allow(missing_docs)]
    use super::bench_jwt;
    criterion::criterion_group!(benches, bench_jwt);
}

criterion_main!(group::benches);
