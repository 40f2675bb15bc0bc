//! JWT authentication through the real binary.

mod support;

use http::{Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use support::*;

const RSA1: &[u8] = include_bytes!("../../nexus-middleware/tests/fixtures/jwt/rsa1.pem");
const RSA2: &[u8] = include_bytes!("../../nexus-middleware/tests/fixtures/jwt/rsa2.pem");
const JWKS1: &str = include_str!("../../nexus-middleware/tests/fixtures/jwt/jwks-1.json");
const JWKS2: &str = include_str!("../../nexus-middleware/tests/fixtures/jwt/jwks-2.json");

fn token(kid: &str, key: &[u8], extra: serde_json::Value) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let mut claims =
        serde_json::json!({"sub": "alice", "iss": "https://issuer.test", "aud": "nexus", "exp": exp, "scope": "read"});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    encode(&h, &claims, &EncodingKey::from_rsa_pem(key).unwrap()).unwrap()
}

fn bearer(gw: &Gateway, path: &str, token: &str) -> Request<Body> {
    Request::get(gw.url(path))
        .header("authorization", format!("Bearer {token}"))
        .header("x-user-id", "mallory")
        .body(Body::default())
        .unwrap()
}

fn protected(up: &Upstream, jwks: &std::path::Path) -> String {
    format!(
        "auth:\n  jwt:\n    main:\n      issuer: https://issuer.test\n      audiences: [nexus]\n      algorithms: [RS256]\n\
         \x20     jwks_file: {}\n      forward_claims: {{ sub: X-User-Id }}\n      required_claims: {{ scope: read }}\n\
         rate_limits:\n  per-user:\n    requests: 2\n    per: 1m\n    key: claim:sub\n\
         upstreams:\n  app:\n    endpoints: [{{ url: \"{}\" }}]\n\
         routes:\n  - name: api\n    paths: [{{ path: /api }}]\n    upstream: app\n    auth: main\n\
         \x20 - name: limited\n    paths: [{{ path: /limited }}]\n    upstream: app\n    auth: main\n    rate_limit: per-user\n\
         \x20 - name: open\n    paths: [{{ path: /open }}]\n    upstream: app\n",
        jwks.display(),
        up.url()
    )
}

#[tokio::test]
async fn a_protected_route_answers_401_403_200_and_forwards_the_claim() {
    let up = upstream("app").await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, JWKS1).unwrap();
    let gw = gateway(&protected(&up, &jwks));

    let (status, headers, text) = get(&gw.url("/api/x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"nexus\"");
    assert!(text.contains("\"unauthorized\""), "{text}");

    let expired = token("key-1", RSA1, serde_json::json!({"exp": 1_000_000}));
    let (status, headers, _) = send(bearer(&gw, "/api/x", &expired)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("error=\"invalid_token\"") && challenge.contains("error_description="), "{challenge}");

    let no_scope = token("key-1", RSA1, serde_json::json!({"scope": "write"}));
    let (status, _, text) = send(bearer(&gw, "/api/x", &no_scope)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(text.contains("\"forbidden\""), "{text}");
    assert_eq!(up.count(), 0, "nothing that failed authentication reached the upstream");

    let good = token("key-1", RSA1, serde_json::json!({}));
    let (status, _, text) = send(bearer(&gw, "/api/x", &good)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let seen = up.last();
    assert_eq!(seen.headers["x-user-id"], "alice", "the verified claim, not the client's header");
    assert_eq!(seen.headers.get_all("x-user-id").iter().count(), 1);

    // A route without auth is untouched (and the client's header passes as sent).
    assert_eq!(send(bearer(&gw, "/open", "whatever")).await.0, StatusCode::OK);

    let metrics = get(&gw.admin_url("/metrics")).await.2;
    for reason in ["missing", "expired", "forbidden"] {
        let line = format!(r#"nexus_auth_failures_total{{route="api",reason="{reason}"}} 1"#);
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
}

#[tokio::test]
async fn claim_keyed_limits_count_per_user_after_authentication() {
    let up = upstream("app").await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, JWKS1).unwrap();
    let gw = gateway(&protected(&up, &jwks));
    let alice = token("key-1", RSA1, serde_json::json!({}));
    let bob = token("key-1", RSA1, serde_json::json!({"sub": "bob"}));
    for _ in 0..2 {
        assert_eq!(send(bearer(&gw, "/limited", &alice)).await.0, StatusCode::OK);
    }
    assert_eq!(send(bearer(&gw, "/limited", &alice)).await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(send(bearer(&gw, "/limited", &bob)).await.0, StatusCode::OK, "bob has his own bucket");
}

#[tokio::test]
async fn rotating_the_jwks_file_takes_effect_without_a_restart() {
    let up = upstream("app").await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, JWKS1).unwrap();
    let gw = gateway(&protected(&up, &jwks));
    let old = token("key-1", RSA1, serde_json::json!({}));
    let new = token("key-2", RSA2, serde_json::json!({}));
    assert_eq!(send(bearer(&gw, "/api", &old)).await.0, StatusCode::OK);
    assert_eq!(send(bearer(&gw, "/api", &new)).await.0, StatusCode::UNAUTHORIZED);
    std::fs::write(&jwks, JWKS2).unwrap();
    assert!(
        eventually(10, || async { send(bearer(&gw, "/api", &new)).await.0 == StatusCode::OK }).await,
        "the new key was never picked up"
    );
    assert_eq!(send(bearer(&gw, "/api", &old)).await.0, StatusCode::UNAUTHORIZED, "the removed key is refused");
}

#[tokio::test]
async fn an_auth_policy_with_an_unset_secret_is_a_config_error() {
    let up = upstream("app").await;
    let yaml = format!(
        "auth:\n  jwt:\n    main:\n      algorithms: [HS256]\n      secret_env: NEXUS_TEST_UNSET_SECRET\n\
         upstreams:\n  app:\n    endpoints: [{{ url: \"{}\" }}]\n\
         routes:\n  - name: api\n    paths: [{{ path: / }}]\n    upstream: app\n    auth: main\n",
        up.url()
    );
    let stderr = refused_at_start(&yaml);
    assert!(stderr.contains("auth.jwt.main.secret_env"), "{stderr}");
}

/// A split sticky on a verified claim reads the claims below authentication (the gateway
/// leaves them out of the request only when nothing below reads them): each user stays on one
/// side, and users land on both.
#[tokio::test]
async fn a_split_sticky_on_a_claim_keeps_each_user_on_one_side() {
    let (v1, v2) = (upstream("v1").await, upstream("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, JWKS1).unwrap();
    let yaml = format!(
        "auth:\n  jwt:\n    main:\n      issuer: https://issuer.test\n      audiences: [nexus]\n      algorithms: [RS256]\n\
         \x20     jwks_file: {}\n\
         upstreams:\n  v1:\n    endpoints: [{{ url: \"{}\" }}]\n  v2:\n    endpoints: [{{ url: \"{}\" }}]\n\
         routes:\n  - name: web\n    paths: [{{ path: / }}]\n    auth: main\n    split:\n\
         \x20     - {{ upstream: v1, weight: 50 }}\n      - {{ upstream: v2, weight: 50 }}\n    sticky: claim:sub\n",
        jwks.display(),
        v1.url(),
        v2.url()
    );
    let gw = gateway(&yaml);
    let mut sides = std::collections::BTreeSet::new();
    for user in 0..24 {
        let good = token("key-1", RSA1, serde_json::json!({ "sub": format!("user-{user}") }));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let (status, _, text) = send(bearer(&gw, "/x", &good)).await;
            assert_eq!(status, StatusCode::OK, "{text}");
            seen.insert(text.split(' ').next().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "user-{user} moved between sides: {seen:?}");
        sides.extend(seen);
    }
    // 24 users at 50/50 all on one side: 2 in 2^24.
    assert_eq!(sides.len(), 2, "{sides:?}");
}
