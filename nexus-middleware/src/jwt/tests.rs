use super::*;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::{EncodingKey, Header, encode};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower::{Service, ServiceBuilder, ServiceExt};

const RSA1: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa1.pem");
const RSA1_PUB: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa1.pub.pem");
const RSA2: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa2.pem");
const EC1: &[u8] = include_bytes!("../../tests/fixtures/jwt/ec1.pem");
const ED1: &[u8] = include_bytes!("../../tests/fixtures/jwt/ed1.pem");
const JWKS1: &str = include_str!("../../tests/fixtures/jwt/jwks-1.json");
const ISS: &str = "https://issuer.example.com";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(extra: Value) -> Value {
    let mut c =
        serde_json::json!({"sub": "alice", "iss": ISS, "aud": "nexus", "exp": now() + 600, "scope": "read write"});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn rs256(kid: &str, key: &[u8], c: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    encode(&h, c, &EncodingKey::from_rsa_pem(key).unwrap()).unwrap()
}

fn config(keys: KeySource, algorithms: Vec<Algorithm>) -> JwtConfig {
    JwtConfig {
        issuer: Some(ISS.into()),
        audiences: vec!["nexus".into(), "other".into()],
        algorithms,
        keys,
        forward_claims: vec![("sub".into(), HeaderName::from_static("x-user-id"))],
        required_claims: vec![("scope".into(), "read".into())],
        ..JwtConfig::default()
    }
}

fn jwks_auth() -> JwtAuth {
    JwtAuth::new(config(KeySource::Jwks(JWKS1.into()), vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]))
        .unwrap()
}

/// The layer around a service that counts calls and echoes the forwarded user header.
fn guarded(
    auth: &JwtAuth,
) -> (impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone, Arc<AtomicUsize>) {
    guarded_by(JwtAuthLayer::new(auth.clone()))
}

/// [`guarded`] with a layer set up by the caller.
fn guarded_by(
    layer: JwtAuthLayer,
) -> (impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let svc = ServiceBuilder::new().layer(layer).service_fn(move |req: Request<()>| {
        seen.fetch_add(1, Ordering::SeqCst);
        let user = req.headers().get("x-user-id").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let has_claims = req.extensions().get::<VerifiedClaims>().is_some();
        let auth = req.headers().contains_key(header::AUTHORIZATION);
        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("{user}|{has_claims}|{auth}"))))) }
    });
    (svc, calls)
}

fn with_token(token: &str) -> Request<()> {
    Request::get("/").header("authorization", format!("Bearer {token}")).body(()).unwrap()
}

async fn expect(auth: &JwtAuth, token: &str, status: u16, reason: Reason) {
    let (svc, calls) = guarded(auth);
    let res = svc.oneshot(with_token(token)).await.unwrap();
    assert_eq!(res.status(), status, "{reason:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "a rejected request never reaches the inner service");
    assert_eq!(auth.verify(with_token(token).headers()).unwrap_err(), reason);
    let challenge = res.headers()["www-authenticate"].to_str().unwrap().to_string();
    if status == 401 {
        assert!(
            challenge.starts_with("Bearer realm=\"nexus\", error=\"invalid_token\", error_description="),
            "{challenge}"
        );
    }
}

/// Port of the seed's `TestJWTAuth_RejectsExpiredToken`.
#[tokio::test]
async fn jwt_auth_rejects_expired_token() {
    let auth = jwks_auth();
    let token = rs256("key-1", RSA1, &claims(serde_json::json!({"exp": now() - 3600})));
    expect(&auth, &token, 401, Reason::Expired).await;
}

#[tokio::test]
async fn a_valid_token_passes_with_claims_forwarded() {
    let auth = jwks_auth();
    let (svc, calls) = guarded(&auth);
    let mut req = with_token(&rs256("key-1", RSA1, &claims(serde_json::json!({}))));
    // A client cannot choose the forwarded identity.
    req.headers_mut().insert("x-user-id", "mallory".parse().unwrap());
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
    assert_eq!(body, "alice|true|true");
}

/// Without the claims extension the forwarded claims still reach the inner service as headers
/// (the client's own `X-User-Id` replaced), and a bad token is still refused.
#[tokio::test]
async fn without_the_claims_extension_claims_are_still_forwarded() {
    let auth = jwks_auth();
    let (svc, calls) = guarded_by(JwtAuthLayer::new(auth.clone()).without_claims_extension());
    let mut req = with_token(&rs256("key-1", RSA1, &claims(serde_json::json!({}))));
    req.headers_mut().insert("x-user-id", "mallory".parse().unwrap());
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
    assert_eq!(body, "alice|false|true");
    let expired = with_token(&rs256("key-1", RSA1, &claims(serde_json::json!({"exp": now() - 3600}))));
    assert_eq!(svc.oneshot(expired).await.unwrap().status(), 401);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn es256_and_eddsa_keys_from_the_jwks_verify() {
    let auth = jwks_auth();
    let c = claims(serde_json::json!({}));
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec-1".into());
    let es = encode(&h, &c, &EncodingKey::from_ec_pem(EC1).unwrap()).unwrap();
    assert!(auth.verify(with_token(&es).headers()).is_ok());
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some("ed-1".into());
    let ed = encode(&h, &c, &EncodingKey::from_ed_pem(ED1).unwrap()).unwrap();
    assert!(auth.verify(with_token(&ed).headers()).is_ok());
}

#[tokio::test]
async fn every_rejection_has_its_reason() {
    let auth = jwks_auth();
    let t = |extra: Value| rs256("key-1", RSA1, &claims(extra));
    expect(&auth, &t(serde_json::json!({"nbf": now() + 3600})), 401, Reason::NotYetValid).await;
    expect(&auth, &t(serde_json::json!({"iss": "https://evil.example.com"})), 401, Reason::BadIssuer).await;
    expect(&auth, &t(serde_json::json!({"iss": null})), 401, Reason::BadIssuer).await;
    expect(&auth, &t(serde_json::json!({"aud": "someone-else"})), 401, Reason::BadAudience).await;
    expect(&auth, &t(serde_json::json!({"exp": null})), 401, Reason::Malformed).await;
    // Signed by another key under key-1's name.
    expect(&auth, &rs256("key-1", RSA2, &claims(serde_json::json!({}))), 401, Reason::BadSignature).await;
    expect(&auth, &rs256("key-9", RSA1, &claims(serde_json::json!({}))), 401, Reason::UnknownKey).await;
    for bad in ["abc", "a.b", "a.b.c", "!!.??.**", "a.b.c.d"] {
        expect(&auth, bad, 401, Reason::Malformed).await;
    }
}

#[tokio::test]
async fn alg_none_is_never_accepted() {
    let auth = jwks_auth();
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    for alg in ["none", "None", "NONE"] {
        let token = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": alg, "kid": "key-1"})),
            b64(&claims(serde_json::json!({})))
        );
        expect(&auth, &token, 401, Reason::BadAlgorithm).await;
    }
}

#[tokio::test]
async fn an_algorithm_outside_the_allow_list_is_refused() {
    let auth = JwtAuth::new(config(KeySource::Jwks(JWKS1.into()), vec![Algorithm::RS256])).unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec-1".into());
    let es = encode(&h, &claims(serde_json::json!({})), &EncodingKey::from_ec_pem(EC1).unwrap()).unwrap();
    expect(&auth, &es, 401, Reason::BadAlgorithm).await;
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_fails() {
    // The classic confusion: the attacker "signs" HS256 with the public key as the secret.
    let forged =
        encode(&Header::new(Algorithm::HS256), &claims(serde_json::json!({})), &EncodingKey::from_secret(RSA1_PUB))
            .unwrap();
    let pem = JwtAuth::new(config(KeySource::PublicKeyPem(RSA1_PUB.to_vec()), vec![Algorithm::RS256])).unwrap();
    expect(&pem, &forged, 401, Reason::BadAlgorithm).await;
    // A careless policy that allows HS256 beside a public key is refused when it is built.
    let careless =
        JwtAuth::new(config(KeySource::PublicKeyPem(RSA1_PUB.to_vec()), vec![Algorithm::RS256, Algorithm::HS256]));
    assert_eq!(careless.unwrap_err(), JwtConfigError::HmacWithoutSecret(Algorithm::HS256));
    // The genuine RS256 token passes with the same PEM.
    assert!(pem.verify(with_token(&rs256("any", RSA1, &claims(serde_json::json!({})))).headers()).is_ok());
}

#[tokio::test]
async fn a_missing_token_is_401_without_an_error_code() {
    let auth = jwks_auth();
    let (svc, calls) = guarded(&auth);
    for req in [
        Request::new(()),
        Request::get("/").header("authorization", "Basic YWxpY2U6c2VjcmV0").body(()).unwrap(),
        Request::get("/").header("authorization", "Bearer ").body(()).unwrap(),
    ] {
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"nexus\"");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn required_claims_are_403_when_missing_or_different() {
    let auth = jwks_auth();
    let t = |extra: Value| rs256("key-1", RSA1, &claims(extra));
    expect(&auth, &t(serde_json::json!({"scope": "write"})), 403, Reason::Forbidden).await;
    expect(&auth, &t(serde_json::json!({"scope": null})), 403, Reason::Forbidden).await;
    expect(&auth, &t(serde_json::json!({"scope": "reader"})), 403, Reason::Forbidden).await;
    assert!(
        auth.verify(with_token(&t(serde_json::json!({"scope": null, "scp": ["write", "read"]}))).headers()).is_ok()
    );
    let plain = JwtAuth::new(JwtConfig {
        required_claims: vec![("tier".into(), "gold".into()), ("level".into(), "3".into())],
        ..config(KeySource::Jwks(JWKS1.into()), vec![Algorithm::RS256])
    })
    .unwrap();
    let ok = t(serde_json::json!({"tier": "gold", "level": 3}));
    assert!(plain.verify(with_token(&ok).headers()).is_ok());
    let res = plain.verify(with_token(&t(serde_json::json!({"tier": "silver", "level": 3}))).headers());
    assert_eq!(res.unwrap_err(), Reason::Forbidden);
    let (svc, _) = guarded(&plain);
    let res = svc.oneshot(with_token(&t(serde_json::json!({"tier": "silver"})))).await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"nexus\", error=\"insufficient_scope\"");
}

#[tokio::test]
async fn leeway_accepts_small_clock_skew() {
    let auth = jwks_auth();
    let token = rs256("key-1", RSA1, &claims(serde_json::json!({"exp": now() - 10, "nbf": now() + 10})));
    assert!(auth.verify(with_token(&token).headers()).is_ok(), "within the default 30 s leeway");
}

#[tokio::test]
async fn cookie_and_header_sources_and_stripping_authorization() {
    let auth = JwtAuth::new(JwtConfig {
        token_sources: vec![
            TokenSource::Cookie("session".into()),
            TokenSource::Header(HeaderName::from_static("x-token")),
        ],
        strip_authorization: true,
        ..config(KeySource::Jwks(JWKS1.into()), vec![Algorithm::RS256])
    })
    .unwrap();
    let token = rs256("key-1", RSA1, &claims(serde_json::json!({})));
    let (svc, _) = guarded(&auth);
    let req = Request::get("/")
        .header("cookie", format!("theme=dark; session={token}"))
        .header("authorization", "Bearer not-used")
        .body(())
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
    assert_eq!(body, "alice|true|false", "Authorization was stripped");
    let req = Request::get("/").header("x-token", token.as_str()).body(()).unwrap();
    assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), 200);
    // Only the configured sources count.
    assert_eq!(svc.oneshot(with_token(&token)).await.unwrap().status(), 401);
}

#[tokio::test]
async fn hmac_secrets_verify_hs256() {
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let auth = JwtAuth::new(config(KeySource::Secret(secret.clone()), vec![Algorithm::HS256])).unwrap();
    let c = claims(serde_json::json!({}));
    let good = encode(&Header::new(Algorithm::HS256), &c, &EncodingKey::from_secret(&secret)).unwrap();
    assert!(auth.verify(with_token(&good).headers()).is_ok());
    let bad = encode(&Header::new(Algorithm::HS256), &c, &EncodingKey::from_secret(b"another secret")).unwrap();
    assert_eq!(auth.verify(with_token(&bad).headers()).unwrap_err(), Reason::BadSignature);
    let hs512 = encode(&Header::new(Algorithm::HS512), &c, &EncodingKey::from_secret(&secret)).unwrap();
    assert_eq!(auth.verify(with_token(&hs512).headers()).unwrap_err(), Reason::BadAlgorithm);
}

#[test]
fn unsafe_policies_are_refused_when_they_are_built() {
    let secret = |s: &[u8]| KeySource::Secret(s.to_vec());
    // An HMAC secret with the default algorithms (RS256), or too short, or empty.
    let default_algs =
        JwtAuth::new(JwtConfig { keys: secret(b"0123456789abcdef0123456789abcdef"), ..JwtConfig::default() });
    assert_eq!(default_algs.unwrap_err(), JwtConfigError::SecretWithAsymmetric(Algorithm::RS256));
    for short in [&b""[..], b"x", b"0123456789abcdef0123456789abcde"] {
        let e = JwtAuth::new(config(secret(short), vec![Algorithm::HS256])).unwrap_err();
        assert_eq!(e, JwtConfigError::ShortSecret(short.len()));
        assert!(e.to_string().contains("at least 32 bytes"), "{e}");
    }
    let jwks_hs = JwtAuth::new(config(KeySource::Jwks(JWKS1.into()), vec![Algorithm::HS256]));
    assert_eq!(jwks_hs.unwrap_err(), JwtConfigError::HmacWithoutSecret(Algorithm::HS256));
    let none = JwtAuth::new(config(KeySource::Jwks(JWKS1.into()), vec![]));
    assert_eq!(none.unwrap_err(), JwtConfigError::NoAlgorithm);
    let garbage = JwtAuth::new(config(KeySource::Jwks("not json".into()), vec![Algorithm::RS256]));
    assert!(matches!(garbage.unwrap_err(), JwtConfigError::Keys(_)));
}

#[test]
fn a_jwks_with_a_secret_key_is_not_trusted_for_hmac() {
    let set = keys::KeySet::jwks(br#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}"#).unwrap();
    assert_eq!(set.len(), 0);
}

#[tokio::test]
async fn a_cached_token_is_still_checked_for_expiry_and_required_claims() {
    let auth = JwtAuth::new(JwtConfig {
        leeway: Duration::ZERO,
        ..config(KeySource::Jwks(JWKS1.into()), vec![Algorithm::RS256])
    })
    .unwrap();
    // Valid for one more second.
    let short = rs256("key-1", RSA1, &claims(serde_json::json!({ "exp": now() + 1 })));
    assert!(auth.verify(with_token(&short).headers()).is_ok());
    assert!(auth.verify(with_token(&short).headers()).is_ok(), "the second use is a cache hit");
    assert_eq!(auth.cached(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(auth.verify(with_token(&short).headers()).unwrap_err(), Reason::Expired, "cached, and expired");
    // Required claims are checked on every use, cached or not.
    let no_scope = rs256("key-1", RSA1, &claims(serde_json::json!({ "scope": "write" })));
    for _ in 0..2 {
        assert_eq!(auth.verify(with_token(&no_scope).headers()).unwrap_err(), Reason::Forbidden);
    }
    // A token that fails verification is never cached.
    let forged = rs256("key-1", RSA2, &claims(serde_json::json!({})));
    assert_eq!(auth.verify(with_token(&forged).headers()).unwrap_err(), Reason::BadSignature);
    assert_eq!(auth.cached(), 2, "the short token and the one without the scope, not the forged one");
}

#[test]
fn cache_size_0_verifies_every_request() {
    let auth =
        JwtAuth::new(JwtConfig { cache_size: 0, ..config(KeySource::Jwks(JWKS1.into()), vec![Algorithm::RS256]) })
            .unwrap();
    let token = rs256("key-1", RSA1, &claims(serde_json::json!({})));
    for _ in 0..3 {
        assert!(auth.verify(with_token(&token).headers()).is_ok());
    }
    assert_eq!(auth.cached(), 0);
}

#[test]
fn a_token_field_is_read_as_text_exactly_when_to_str_would() {
    // Every byte a field value may hold, alone and inside a token-like value.
    for b in 0..=u8::MAX {
        for bytes in [vec![b], [b"Bearer abc".as_slice(), &[b], b"def"].concat()] {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                assert_eq!(ascii(&v), v.to_str().ok().map(str::as_bytes), "byte {b:#04x}");
            }
        }
    }
    // A token with a byte outside ASCII is no token: the request is answered as one without.
    let auth =
        JwtAuth::new(config(KeySource::Secret(b"a secret of 32 bytes or more....".to_vec()), vec![Algorithm::HS256]))
            .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, HeaderValue::from_bytes(b"Bearer a.b.\xe9").unwrap());
    assert_eq!(auth.verify(&headers).unwrap_err(), Reason::Missing);
}

#[test]
fn the_bearer_scheme_is_matched_in_any_case_with_spaces_and_tabs_around() {
    assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
    assert_eq!(bearer(b"\tbEARER   abc \t"), Some(&b"abc"[..]));
    assert_eq!(bearer(b"Basic abc"), None);
    assert_eq!(bearer(b"Bearerabc"), None);
    assert_eq!(bearer(b"Bearer "), None, "no token after the scheme");
}

/// Forwarded claims come out the same from a verification and from a cache hit (whose values
/// were made when the token was verified), and with the cache off: strings as they are,
/// numbers printed, an absent claim or one that is no valid field value left out, and a
/// client's own values replaced every time.
#[tokio::test]
async fn forwarded_claims_are_the_same_from_the_cache_as_from_a_verification() {
    let forward =
        ["sub", "level", "missing", "note"].map(|c| (c.to_string(), HeaderName::try_from(format!("x-{c}")).unwrap()));
    for cache_size in [10_000, 0] {
        let mut config = config(KeySource::Jwks(JWKS1.into()), vec![Algorithm::RS256]);
        config.forward_claims = forward.to_vec();
        config.cache_size = cache_size;
        let auth = JwtAuth::new(config).unwrap();
        let svc = ServiceBuilder::new().layer(JwtAuthLayer::new(auth.clone())).service_fn(|req: Request<()>| {
            let seen: Vec<String> = ["x-sub", "x-level", "x-missing", "x-note"]
                .iter()
                .map(|h| {
                    req.headers()
                        .get_all(*h)
                        .iter()
                        .map(|v| v.to_str().unwrap().to_string())
                        .collect::<Vec<_>>()
                        .join("+")
                })
                .collect();
            async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen.join("|"))))) }
        });
        let token = rs256("key-1", RSA1, &claims(serde_json::json!({"level": 3, "note": "line\nbreak"})));
        for round in 0..3 {
            let mut req = with_token(&token);
            for h in ["x-sub", "x-level", "x-missing", "x-note"] {
                req.headers_mut().insert(h, "spoofed".parse().unwrap());
            }
            let res = svc.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), 200);
            let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
            assert_eq!(body, "alice|3||", "cache_size {cache_size}, request {round}");
        }
        assert_eq!(auth.cached(), u64::from(cache_size > 0));
    }
}
