//! A plain axum service made production-ready with Nexus's crates in a few dozen lines of its
//! own: a per-client rate limit on everything, JWT on `/me`, a circuit breaker in front of a
//! dependency that fails (`/inventory`), `/healthz` and `/readyz`, and SIGTERM → drain →
//! graceful stop. Every refusal is the gateway's JSON error with the same headers as the
//! `nexus` binary (429 with `Retry-After`, 401 with `WWW-Authenticate`, 503 from the breaker).
//!
//! ```sh
//! SERVICE_JWT_SECRET=an-hs256-secret-of-at-least-32-bytes!! \
//!   cargo run --manifest-path examples/Cargo.toml -p example-protected-service
//! curl -i http://127.0.0.1:3002/me           # 401
//! curl -i http://127.0.0.1:3002/inventory    # 503 three times, then the breaker's own 503
//! ```

use axum::http::StatusCode;
use axum::{Extension, Router, routing::get};
use nexus_health::{ReadinessGate, check::Readiness, layer::ProbesLayer, serve::GracefulServer, shutdown::Shutdown};
use nexus_middleware::jwt::{Algorithm, JwtAuth, JwtAuthLayer, JwtConfig, KeySource};
use nexus_middleware::rate_limit::{RateLimitConfig, RateLimitLayer, RateLimiter};
use nexus_middleware::{BreakerConfig, CircuitBreakerLayer, VerifiedClaims};
use std::time::Duration;

/// The service: `requests` per minute per client IP (the address `GracefulServer` gives each
/// request), JWT (HS256 with `secret`) on `/me`, a breaker on `/inventory`, probes in front.
fn app(gate: ReadinessGate, secret: &str, requests: u32) -> Router {
    let per_ip = RateLimitConfig { requests, per: Duration::from_secs(60), ..RateLimitConfig::default() };
    let limit = RateLimiter::local(per_ip).expect("a valid limit");
    let keys = KeySource::Secret(secret.as_bytes().to_vec());
    let auth = JwtAuth::new(JwtConfig { algorithms: vec![Algorithm::HS256], keys, ..JwtConfig::default() })
        .expect("a safe JWT policy (an HS256 secret of at least 32 bytes)");
    let open_after_3 = BreakerConfig { failure_threshold: 3, ..BreakerConfig::default() };
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/me", get(me).layer(JwtAuthLayer::new(auth)))
        .route("/inventory", get(inventory).layer(CircuitBreakerLayer::new(open_after_3)))
        .layer(RateLimitLayer::new(limit))
        .layer(ProbesLayer::new(Readiness::new(gate)))
}

async fn me(Extension(claims): Extension<VerifiedClaims>) -> String {
    format!("hello {}\n", claims.get_str("sub").unwrap_or_default())
}

/// A dependency that is down: 503 until the breaker opens and answers for it.
async fn inventory() -> (StatusCode, &'static str) {
    (StatusCode::SERVICE_UNAVAILABLE, "inventory is down\n")
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let secret = std::env::var("SERVICE_JWT_SECRET").expect("SERVICE_JWT_SECRET (at least 32 bytes)");
    let addr = std::env::var("SERVICE_ADDR").unwrap_or_else(|_| "127.0.0.1:3002".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let (gate, shutdown) = (ReadinessGate::new(), Shutdown::new());
    GracefulServer::new(gate.clone(), shutdown).serve(listener, app(gate, &secret, 100)).await
}

#[cfg(test)]
mod tests;
