//! JWKS fetched from a real local HTTP server: rotation, the issuer going down,
//! and a flood of unknown key ids.

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use nexus_middleware::jwt::{JwksOptions, JwtAuth, JwtConfig, KeySource, Reason};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const RSA1: &[u8] = include_bytes!("fixtures/jwt/rsa1.pem");
const RSA2: &[u8] = include_bytes!("fixtures/jwt/rsa2.pem");
const JWKS1: &str = include_str!("fixtures/jwt/jwks-1.json");
const JWKS2: &str = include_str!("fixtures/jwt/jwks-2.json");
const JWKS12: &str = include_str!("fixtures/jwt/jwks-1-2.json");

/// The issuer's JWKS endpoint: serves `doc`, counts fetches, can be "down" (500).
#[derive(Clone)]
struct Issuer {
    doc: Arc<Mutex<&'static str>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    url: String,
}

async fn issuer(doc: &'static str, delay: Duration) -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
    let issuer = Issuer {
        doc: Arc::new(Mutex::new(doc)),
        fetches: Arc::new(AtomicUsize::new(0)),
        down: Arc::new(AtomicBool::new(false)),
        url,
    };
    let served = issuer.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let s = served.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        s.fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        let res = if s.down.load(Ordering::SeqCst) {
                            Response::builder().status(500).body(Full::new(Bytes::from("down"))).unwrap()
                        } else {
                            let doc = *s.doc.lock().unwrap();
                            Response::builder()
                                .header("cache-control", "public, max-age=1")
                                .body(Full::new(Bytes::from(doc)))
                                .unwrap()
                        };
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    issuer
}

fn auth(url: &str, cooldown: Duration) -> JwtAuth {
    JwtAuth::new(JwtConfig {
        algorithms: vec![Algorithm::RS256],
        keys: KeySource::JwksUrl(url.into()),
        jwks: JwksOptions {
            min_refresh: Duration::from_millis(200),
            unknown_kid_cooldown: cooldown,
            fetch_timeout: Duration::from_secs(2),
            ..JwksOptions::default()
        },
        ..JwtConfig::default()
    })
    .unwrap()
}

fn token(kid: &str, key: &[u8]) -> HeaderMap {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    let t = encode(&h, &serde_json::json!({"sub": "u", "exp": exp}), &EncodingKey::from_rsa_pem(key).unwrap()).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("authorization", format!("Bearer {t}").parse().unwrap());
    headers
}

#[tokio::test]
async fn rotation_adds_the_new_key_and_retires_the_old_one() {
    let iss = issuer(JWKS1, Duration::ZERO).await;
    let auth = auth(&iss.url, Duration::from_millis(100));
    assert!(auth.authenticate(&token("key-1", RSA1)).await.is_ok());
    // The issuer publishes key-2 beside key-1: a token with the new kid is accepted at once
    // (the unknown kid triggers a refetch).
    *iss.doc.lock().unwrap() = JWKS12;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(auth.authenticate(&token("key-2", RSA2)).await.is_ok());
    assert!(auth.authenticate(&token("key-1", RSA1)).await.is_ok());
    // key-1 is removed: after the next background refresh (max-age=1 s) its tokens fail.
    *iss.doc.lock().unwrap() = JWKS2;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match auth.authenticate(&token("key-1", RSA1)).await {
            Err(Reason::UnknownKey) => break,
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "key-1 was never retired"),
            Err(other) => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(auth.authenticate(&token("key-2", RSA2)).await.is_ok());
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_issuer_is_down() {
    let iss = issuer(JWKS1, Duration::ZERO).await;
    let auth = auth(&iss.url, Duration::from_millis(100));
    assert!(auth.authenticate(&token("key-1", RSA1)).await.is_ok());
    iss.down.store(true, Ordering::SeqCst);
    let before = iss.fetches.load(Ordering::SeqCst);
    // Several refresh periods pass with every fetch failing.
    for _ in 0..15 {
        assert!(auth.authenticate(&token("key-1", RSA1)).await.is_ok());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(iss.fetches.load(Ordering::SeqCst) > before, "it kept trying");
    // An unknown kid while down is refused, not hung.
    assert_eq!(auth.authenticate(&token("key-2", RSA2)).await.unwrap_err(), Reason::UnknownKey);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_does_not_flood_the_issuer() {
    // A slow issuer, so the flood arrives while the first refetch is in flight.
    let iss = issuer(JWKS1, Duration::from_millis(200)).await;
    let auth = auth(&iss.url, Duration::from_millis(100));
    assert!(auth.authenticate(&token("key-1", RSA1)).await.is_ok());
    // Past the start-up fetches and the refetch interval: the flood may cause one refetch,
    // and every request must share it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = iss.fetches.load(Ordering::SeqCst);
    let headers = token("nope", RSA1);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (a, h) = (auth.clone(), headers.clone());
        tasks.push(tokio::spawn(async move { a.authenticate(&h).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err(), Reason::UnknownKey);
    }
    let fetched = iss.fetches.load(Ordering::SeqCst) - before;
    // One shared refetch (plus, at most, the background refresh that max-age=1 s schedules).
    assert!((1..=2).contains(&fetched), "{fetched} fetches for 200 requests with unknown kids");
}

#[tokio::test]
async fn a_key_published_right_after_start_up_is_accepted_at_once() {
    // The default cooldown (5 s): the start-up fetch must not start it.
    let iss = issuer(JWKS1, Duration::ZERO).await;
    let auth = auth(&iss.url, Duration::from_secs(5));
    assert!(auth.authenticate(&token("key-1", RSA1)).await.is_ok(), "the start-up fetch");
    // The start-up fetch is over (and requests that came before it waited for it).
    tokio::time::sleep(Duration::from_millis(100)).await;
    *iss.doc.lock().unwrap() = JWKS12;
    assert!(auth.authenticate(&token("key-2", RSA2)).await.is_ok(), "no blind window after start-up");
}

#[tokio::test]
async fn distinct_unknown_kids_cost_one_fetch_per_cooldown() {
    let iss = issuer(JWKS1, Duration::from_millis(50)).await;
    let auth = auth(&iss.url, Duration::from_secs(5));
    assert!(auth.authenticate(&token("key-1", RSA1)).await.is_ok());
    let before = iss.fetches.load(Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (a, h) = (auth.clone(), token(&format!("random-{i}"), RSA1));
        tasks.push(tokio::spawn(async move { a.authenticate(&h).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err(), Reason::UnknownKey);
    }
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    let fetched = iss.fetches.load(Ordering::SeqCst) - before;
    // One unknown-kid fetch (plus, at most, the background refresh that max-age=1 s schedules).
    assert!((1..=2).contains(&fetched), "{fetched} fetches for 200 distinct unknown kids");
}
