use super::*;
use bytes::Bytes;
use http_body_util::Full;
use nexus_core::client::PeerAddr;
use std::convert::Infallible;
use tower::{Service, ServiceBuilder, ServiceExt};

fn limiter(requests: u32, per: Duration, key: &str) -> RateLimiter {
    RateLimiter::local(RateLimitConfig {
        name: "test".into(),
        requests,
        per,
        key: key.parse().unwrap(),
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        ..Default::default()
    })
    .unwrap()
}

fn from(ip: &str) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(PeerAddr(format!("{ip}:40000").parse().unwrap()));
    req
}

fn svc(
    l: &RateLimiter,
) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone {
    ServiceBuilder::new()
        .layer(RateLimitLayer::new(l.clone()))
        .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) })
}

/// Port of the seed's `TestRateLimiter_ReturnsHTTP429`.
#[tokio::test(start_paused = true)]
async fn rate_limiter_returns_http_429() {
    let l = limiter(5, Duration::from_secs(60), "client_ip");
    let s = svc(&l);
    for i in 0..5 {
        let res = s.clone().oneshot(from("192.168.1.1")).await.unwrap();
        assert_eq!(res.status(), 200, "request {i}");
        assert_eq!(res.headers()["ratelimit-limit"], "5");
        assert_eq!(res.headers()["ratelimit-remaining"], (4 - i).to_string().as_str());
        assert_eq!(res.headers()["ratelimit-policy"], "5;w=60;burst=5");
    }
    let res = s.clone().oneshot(from("192.168.1.1")).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["retry-after"], "12");
    assert_eq!(res.headers()["ratelimit-remaining"], "0");
    assert_eq!(res.headers()["ratelimit-reset"], "60");
    // Another client has its own bucket.
    assert_eq!(s.oneshot(from("192.168.1.2")).await.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn the_bucket_refills_with_time() {
    let l = limiter(2, Duration::from_secs(10), "client_ip");
    let s = svc(&l);
    for _ in 0..2 {
        assert_eq!(s.clone().oneshot(from("192.0.2.1")).await.unwrap().status(), 200);
    }
    let res = s.clone().oneshot(from("192.0.2.1")).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "5");
    tokio::time::advance(Duration::from_millis(4_900)).await;
    assert_eq!(s.clone().oneshot(from("192.0.2.1")).await.unwrap().status(), 429);
    tokio::time::advance(Duration::from_millis(200)).await;
    let res = s.clone().oneshot(from("192.0.2.1")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["ratelimit-remaining"], "0");
    assert_eq!(res.headers()["ratelimit-reset"], "10");
}

#[tokio::test(start_paused = true)]
async fn burst_allows_more_at_once_than_the_steady_rate() {
    let l = RateLimiter::local(RateLimitConfig {
        requests: 1,
        per: Duration::from_secs(1),
        burst: Some(3),
        ..Default::default()
    })
    .unwrap();
    let s = svc(&l);
    for _ in 0..3 {
        assert_eq!(s.clone().oneshot(from("192.0.2.9")).await.unwrap().status(), 200);
    }
    let res = s.clone().oneshot(from("192.0.2.9")).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["ratelimit-policy"], "1;w=1;burst=3");
}

#[tokio::test(start_paused = true)]
async fn header_keys_fall_back_to_the_client_ip() {
    let l = limiter(1, Duration::from_secs(60), "header:x-api-key");
    let s = svc(&l);
    let keyed = |k: &str| {
        let mut r = from("192.0.2.1");
        r.headers_mut().insert("x-api-key", k.parse().unwrap());
        r
    };
    assert_eq!(s.clone().oneshot(keyed("a")).await.unwrap().status(), 200);
    assert_eq!(s.clone().oneshot(keyed("a")).await.unwrap().status(), 429);
    assert_eq!(s.clone().oneshot(keyed("b")).await.unwrap().status(), 200, "another key, same IP");
    assert_eq!(s.clone().oneshot(from("192.0.2.1")).await.unwrap().status(), 200, "no key: the IP's bucket");
    assert_eq!(s.oneshot(from("192.0.2.1")).await.unwrap().status(), 429);
}

#[tokio::test(start_paused = true)]
async fn claim_keys_read_the_verified_claims() {
    let l = limiter(1, Duration::from_secs(60), "claim:sub");
    let s = svc(&l);
    let with_sub = |sub: &str| {
        let mut r = from("192.0.2.1");
        let claims = serde_json::json!({ "sub": sub });
        r.extensions_mut().insert(VerifiedClaims::new(claims.as_object().unwrap().clone()));
        r
    };
    assert_eq!(s.clone().oneshot(with_sub("alice")).await.unwrap().status(), 200);
    assert_eq!(s.clone().oneshot(with_sub("alice")).await.unwrap().status(), 429);
    assert_eq!(s.oneshot(with_sub("bob")).await.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let l = limiter(1, Duration::from_secs(60), "client_ip");
    let s = svc(&l);
    let via = |peer: &str, xff: &str| {
        let mut r = from(peer);
        r.headers_mut().insert("x-forwarded-for", xff.parse().unwrap());
        r
    };
    // Through the trusted proxy, two clients have two buckets.
    assert_eq!(s.clone().oneshot(via("10.0.0.1", "203.0.113.1")).await.unwrap().status(), 200);
    assert_eq!(s.clone().oneshot(via("10.0.0.1", "203.0.113.2")).await.unwrap().status(), 200);
    assert_eq!(s.clone().oneshot(via("10.0.0.1", "203.0.113.1")).await.unwrap().status(), 429);
    // An untrusted peer cannot pick its bucket by sending X-Forwarded-For.
    assert_eq!(s.clone().oneshot(via("198.51.100.7", "203.0.113.50")).await.unwrap().status(), 200);
    assert_eq!(s.oneshot(via("198.51.100.7", "203.0.113.51")).await.unwrap().status(), 429);
}

#[tokio::test(start_paused = true)]
async fn clones_of_the_layer_share_one_limit() {
    let l = limiter(1, Duration::from_secs(60), "client_ip");
    let a = svc(&l);
    let b = svc(&l);
    assert_eq!(a.oneshot(from("192.0.2.1")).await.unwrap().status(), 200);
    assert_eq!(b.oneshot(from("192.0.2.1")).await.unwrap().status(), 429);
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_swept() {
    let l = limiter(10, Duration::from_secs(1), "client_ip");
    for i in 0..1000u32 {
        let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000u32 + i));
        assert!(l.check(KeyValue::Ip(ip)).ready().unwrap().allowed);
    }
    assert_eq!(l.len(), 1000);
    // Still refilling: nothing to drop.
    l.sweep();
    assert_eq!(l.len(), 1000);
    tokio::time::advance(Duration::from_secs(2)).await;
    l.sweep();
    assert_eq!(l.len(), 0);
}

#[test]
fn keys_parse() {
    assert_eq!("client_ip".parse(), Ok(RateLimitKey::ClientIp));
    assert_eq!("header:X-Key".parse(), Ok(RateLimitKey::Header(HeaderName::from_static("x-key"))));
    assert_eq!("claim:sub".parse(), Ok(RateLimitKey::Claim("sub".into())));
    assert!("ip".parse::<RateLimitKey>().is_err());
    assert!("claim:".parse::<RateLimitKey>().is_err());
}

#[test]
fn zero_requests_is_refused() {
    let e = RateLimiter::local(RateLimitConfig { requests: 0, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("greater than zero"), "{e}");
}

#[test]
fn header_numbers_match_their_decimal_form() {
    for n in (0..1200).chain([4_294_967_295, u64::MAX]) {
        assert_eq!(number(n).to_str().unwrap(), n.to_string());
    }
}

#[tokio::test(start_paused = true)]
async fn large_limits_and_changed_decisions_write_their_own_numbers() {
    let l = limiter(250_000, Duration::from_secs(1), "client_ip");
    let res = svc(&l).oneshot(from("192.168.1.1")).await.unwrap();
    assert_eq!(res.headers()["ratelimit-limit"], "250000");
    assert_eq!(res.headers()["ratelimit-remaining"], "249999");
    // A caller that changes a decision's numbers gets those numbers on the wire.
    let mut decision = l.check(KeyValue::Ip("192.168.1.1".parse().unwrap())).await;
    decision.limit = 7;
    let mut headers = HeaderMap::new();
    decision.apply_headers(&mut headers);
    assert_eq!(headers["ratelimit-limit"], "7");
    assert_eq!(headers["ratelimit-policy"], "250000;w=1;burst=250000");
}

/// Without the client's address a per-client key is refused (500), never one bucket for
/// every such request; a header key whose header is there needs no address.
#[tokio::test(start_paused = true)]
async fn a_request_without_a_client_address_is_refused_not_pooled() {
    let l = limiter(100, Duration::from_secs(60), "client_ip");
    let s = svc(&l);
    for _ in 0..3 {
        let res = s.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), 500);
        assert_eq!(res.headers()["content-type"], "application/json");
    }
    assert_eq!(s.clone().oneshot(from("192.0.2.1")).await.unwrap().status(), 200, "with a peer: counted");
    let by_header = limiter(100, Duration::from_secs(60), "header:x-api-key");
    let s = svc(&by_header);
    let mut req = Request::new(());
    req.headers_mut().insert("x-api-key", "k1".parse().unwrap());
    assert_eq!(s.clone().oneshot(req).await.unwrap().status(), 200, "keyed by the header");
    assert_eq!(s.oneshot(Request::new(())).await.unwrap().status(), 500, "no header, no address");
}
