//! Readiness: every Layer passes its inner service's `poll_ready` through. A
//! `Pending` inner service keeps the layered one `Pending` (no request is
//! accepted that the inner service has no room for), and the layered service
//! becomes ready when the inner one does (tower's `tests/limit` style, with
//! `tower-test` mocks).

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use nexus_core::breaker::BreakerConfig;
use nexus_core::retry::RetryPolicy;
use nexus_middleware::jwt::{Algorithm, JwtAuth, JwtConfig, KeySource};
use nexus_middleware::rate_limit::{RateLimitConfig, RateLimiter};
use nexus_middleware::{
    CircuitBreakerLayer, GatewayTimeoutLayer, JwtAuthLayer, RateLimitLayer, RequestIdLayer, RetryLayer,
};
use std::time::Duration;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Layer, Service};
use tower_test::mock::{self, Mock};

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

/// The layered service stays `Pending` while the mock allows nothing, is ready once it
/// allows one request, and that request reaches the inner service.
async fn passes_readiness_through<L>(layer: L)
where
    L: Layer<Mock<Req, Res>>,
    L::Service: Service<Req, Response = Res>,
    <L::Service as Service<Req>>::Error: std::fmt::Debug,
{
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    assert_pending!(svc.poll_ready(), "still pending when polled again");
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let mut req = Request::get("/").body(Full::new(Bytes::new())).unwrap();
    // The peer a server gives (per-client rate limits refuse a request without one).
    req.extensions_mut().insert(nexus_core::client::PeerAddr(([192, 0, 2, 1], 40000).into()));
    let mut res = tokio_test::task::spawn(svc.call(req));
    // Polled once, the request reaches the inner service (some layers call it lazily).
    assert_pending!(res.poll());
    let (req, send) = handle.next_request().await.expect("the request reached the inner service");
    assert_eq!(req.uri(), "/");
    send.send_response(Response::new(Full::new(Bytes::from_static(b"ok"))));
    assert_eq!(res.await.unwrap().status(), 200);
}

#[tokio::test]
async fn rate_limit() {
    let limiter = RateLimiter::local(RateLimitConfig::default()).unwrap();
    passes_readiness_through(RateLimitLayer::new(limiter)).await;
}

#[tokio::test]
async fn jwt_auth() {
    // No token: the layer answers 401 itself, but readiness is still the inner service's.
    let auth = JwtAuth::new(JwtConfig {
        algorithms: vec![Algorithm::HS256],
        keys: KeySource::Secret(b"a readiness test secret of 32 bytes".to_vec()),
        ..JwtConfig::default()
    })
    .unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(JwtAuthLayer::new(auth));
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let res = svc.call(Request::get("/").body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn timeout() {
    passes_readiness_through(GatewayTimeoutLayer::new(Duration::from_secs(5))).await;
}

#[tokio::test]
async fn retry() {
    passes_readiness_through(RetryLayer::new(RetryPolicy::default())).await;
}

#[tokio::test]
async fn circuit_breaker() {
    passes_readiness_through(CircuitBreakerLayer::new(BreakerConfig::default())).await;
}

#[tokio::test]
async fn request_id() {
    passes_readiness_through(RequestIdLayer::new()).await;
}

#[tokio::test]
async fn grpc_errors() {
    passes_readiness_through(nexus_middleware::grpc::GrpcErrorLayer::new()).await;
}
