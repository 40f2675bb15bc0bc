//! Nexus pieces inside a plain axum app, without the `nexus` binary or a config
//! file: request ids on every response, the probes, and `/api/*` forwarded to
//! an upstream with Nexus's pooled, balanced proxy behind a per-client rate
//! limit (100 requests a minute per IP), a 10 s timeout, retries of idempotent
//! requests (on 502/503/504) and a circuit breaker; `/me` needs a JWT (HS256,
//! secret from `EXAMPLE_JWT_SECRET`) and answers with its `sub`.
//!
//! Run with
//!
//! ```sh
//! cargo run --manifest-path examples/Cargo.toml -p example-axum-gateway -- 127.0.0.1:8081
//! curl -i http://127.0.0.1:3000/healthz
//! curl -i http://127.0.0.1:3000/api/anything   # forwarded to 127.0.0.1:8081
//! ```

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use nexus_core::breaker::BreakerConfig;
use nexus_core::claims::VerifiedClaims;
use nexus_core::config::UpstreamConfig;
use nexus_core::retry::RetryPolicy;
use nexus_health::{ReadinessGate, probe};
use nexus_middleware::jwt::{Algorithm, JwtAuth, JwtAuthLayer, JwtConfig, KeySource};
use nexus_middleware::rate_limit::{RateLimitConfig, RateLimitLayer, RateLimiter};
use nexus_middleware::{CircuitBreakerLayer, GatewayTimeoutLayer, RequestIdLayer, RetryLayer};
use nexus_proxy::{ClientInfo, Upstream};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;

#[derive(Clone)]
struct AppState {
    upstream: Arc<Upstream<Body>>,
    gate: ReadinessGate,
}

/// The app: probes, a forwarded `/api`, request ids everywhere.
fn app(upstream_addr: &str, gate: ReadinessGate) -> Router {
    let limit =
        RateLimiter::local(RateLimitConfig { requests: 100, per: Duration::from_secs(60), ..Default::default() })
            .expect("valid limit");
    app_with_limit(upstream_addr, gate, limit)
}

/// The app with a chosen rate limit on `/api`.
fn app_with_limit(upstream_addr: &str, gate: ReadinessGate, limit: RateLimiter) -> Router {
    let config: UpstreamConfig = serde_json::from_value(serde_json::json!({
        "endpoints": [{ "url": format!("http://{upstream_addr}") }],
        "load_balancing": "least_request",
        "max_concurrent_requests": 512,
    }))
    .expect("valid upstream config");
    let upstream = Arc::new(Upstream::from_config("api", &config).expect("valid upstream"));
    Router::new()
        .route("/healthz", get(|| async { probe::liveness::<Body>() }))
        .route("/readyz", get(|State(s): State<AppState>| async move { probe::readiness::<Body>(&s.gate) }))
        // Outermost first: the rate limit rejects (429) before anything else is asked; the timeout
        // bounds the whole request, retries included (504); every retry is a try the breaker counts,
        // and after 5 failures in a row the breaker answers 503 by itself for 10 s, with a
        // Retry-After longer than the retry's max_delay (1 s), so the open circuit is not retried.
        .route(
            "/api/{*rest}",
            any(forward).layer(
                // The limit keys on the client IP: with `nexus-middleware`'s `axum` feature it
                // reads axum's `ConnectInfo` (see `main`'s `into_make_service_with_connect_info`).
                ServiceBuilder::new()
                    .layer(RateLimitLayer::new(limit).with_metric("api"))
                    .layer(GatewayTimeoutLayer::new(Duration::from_secs(10)))
                    .layer(RetryLayer::new(RetryPolicy::default()).with_metric("api"))
                    .layer(CircuitBreakerLayer::new(BreakerConfig::default())),
            ),
        )
        // Only a verified token reaches the handler, with its claims in the extensions.
        .route("/me", get(me).layer(JwtAuthLayer::new(jwt_auth())))
        .with_state(AppState { upstream, gate })
        .layer(RequestIdLayer::new())
}

/// HS256 tokens signed with the secret in `EXAMPLE_JWT_SECRET` (a demo default otherwise).
fn jwt_auth() -> JwtAuth {
    let secret = std::env::var("EXAMPLE_JWT_SECRET").unwrap_or_else(|_| DEMO_SECRET.into());
    JwtAuth::new(JwtConfig {
        algorithms: vec![Algorithm::HS256],
        keys: KeySource::Secret(secret.into_bytes()),
        ..JwtConfig::default()
    })
    .expect("valid JWT policy")
}

const DEMO_SECRET: &str = "demo secret: set EXAMPLE_JWT_SECRET";

async fn me(Extension(claims): Extension<VerifiedClaims>) -> String {
    format!("hello {}", claims.get_str("sub").unwrap_or_default())
}

async fn forward(State(s): State<AppState>, req: Request) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map_or([127, 0, 0, 1].into(), |c| c.0.ip());
    let client = ClientInfo::new(peer, &[]);
    let headers = req.headers().clone();
    match s.upstream.forward(req, &client, Duration::from_secs(10)).await {
        Ok(res) => res.map(Body::new).into_response(),
        Err(e) => e.to_gateway_error().into_response_for::<Body>(&headers),
    }
}

#[tokio::main]
async fn main() {
    let upstream = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8081".into());
    let gate = ReadinessGate::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.expect("bind 127.0.0.1:3000");
    gate.set_ready();
    println!("listening on http://127.0.0.1:3000, /api/* -> {upstream}");
    axum::serve(listener, app(&upstream, gate).into_make_service_with_connect_info::<SocketAddr>())
        .await
        .expect("server");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn probes_answer_with_request_ids() {
        let gate = ReadinessGate::new();
        let res = app("127.0.0.1:9", gate.clone())
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
        gate.set_ready();
        let res = app("127.0.0.1:9", gate).oneshot(Request::get("/readyz").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers().contains_key("x-request-id"));
        assert_eq!(&res.into_body().collect().await.unwrap().to_bytes()[..], br#"{"status":"ready"}"#);
    }

    #[tokio::test]
    async fn unreachable_upstream_is_a_json_502() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let res = app(&format!("127.0.0.1:{port}"), ReadinessGate::new())
            .oneshot({
                let mut req = Request::get("/api/x").header("x-request-id", "ex-1").body(Body::empty()).unwrap();
                // What `into_make_service_with_connect_info` gives each request.
                req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 40000))));
                req
            })
            .await
            .unwrap();
        assert_eq!(res.status(), 502);
        let body: serde_json::Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["error"]["code"], "bad_gateway");
        assert_eq!(body["error"]["request_id"], "ex-1");
    }

    #[tokio::test]
    async fn api_is_rate_limited_per_client_ip() {
        let limit =
            RateLimiter::local(RateLimitConfig { requests: 2, per: Duration::from_secs(60), ..Default::default() })
                .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let app = app_with_limit(&format!("127.0.0.1:{port}"), ReadinessGate::new(), limit);
        let from = |ip: [u8; 4]| {
            let mut req = Request::get("/api/x").body(Body::empty()).unwrap();
            req.extensions_mut().insert(ConnectInfo(SocketAddr::from((ip, 40000))));
            req
        };
        for _ in 0..2 {
            let res = app.clone().oneshot(from([192, 0, 2, 1])).await.unwrap();
            // Past the limit: the (closed) upstream's 502, retried, until the breaker opens (503).
            assert!(matches!(res.status().as_u16(), 502 | 503), "{}", res.status());
            assert!(res.headers().contains_key("ratelimit-remaining"));
        }
        let res = app.clone().oneshot(from([192, 0, 2, 1])).await.unwrap();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()["retry-after"], "30");
        assert_ne!(app.oneshot(from([192, 0, 2, 2])).await.unwrap().status(), 429, "another client");
    }

    #[tokio::test]
    async fn me_needs_a_valid_token() {
        let app = app("127.0.0.1:9", ReadinessGate::new());
        let res = app.clone().oneshot(Request::get("/me").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), 401);
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 60;
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(DEMO_SECRET.as_bytes()),
        )
        .unwrap();
        let req = Request::get("/me").header("authorization", format!("Bearer {token}")).body(Body::empty()).unwrap();
        let res = app.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(&res.into_body().collect().await.unwrap().to_bytes()[..], b"hello alice");
    }
}
