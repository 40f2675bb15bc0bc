//! Zero-downtime shutdown for a plain axum service with Nexus's health pieces, in a few
//! lines: [`ProbesLayer`] answers `/healthz` and `/readyz`, and [`GracefulServer`] runs SPEC
//! §8's sequence on SIGTERM or SIGINT — `/readyz` turns 503 at once, requests are still
//! served for the drain delay (HTTP/1 answers carry `Connection: close`, HTTP/2 gets GOAWAY,
//! so keep-alive clients move to another instance), then the listener closes, in-flight
//! requests finish, and the process waits for WebSockets too (which axum's own graceful
//! shutdown forgets once they are upgraded) up to the grace period, then exits 0.
//!
//! Run with
//!
//! ```sh
//! cargo run --manifest-path examples/Cargo.toml -p example-graceful-axum
//! curl -i http://127.0.0.1:3001/readyz      # 200; after `kill -TERM <pid>`: 503 for the drain delay
//! ```
//!
//! `GRACEFUL_ADDR` (default `127.0.0.1:3001`), `GRACEFUL_DRAIN_MS` (5000) and
//! `GRACEFUL_GRACE_MS` (30000) change the address and the two delays.

use axum::Router;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use nexus_health::ReadinessGate;
use nexus_health::check::Readiness;
use nexus_health::layer::ProbesLayer;
use nexus_health::serve::GracefulServer;
use nexus_health::shutdown::Shutdown;
use std::time::Duration;

/// The app: a slow endpoint, a WebSocket echo whose connections shutdown waits for, and
/// the probes in front of everything.
fn app(gate: ReadinessGate, shutdown: Shutdown) -> Router {
    Router::new()
        .route("/work/{ms}", get(work))
        .route("/ws", get(ws))
        .with_state(shutdown)
        .layer(ProbesLayer::new(Readiness::new(gate)))
}

/// Answers after `ms` milliseconds (a request still in flight when the signal comes).
async fn work(Path(ms): Path<u64>) -> String {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("worked {ms} ms\n")
}

async fn ws(State(shutdown): State<Shutdown>, upgrade: WebSocketUpgrade) -> Response {
    // Counted from the upgrade until the socket closes.
    let tracked = shutdown.tracker().track();
    upgrade.on_upgrade(move |socket| async move {
        let _tracked = tracked;
        echo(socket).await;
    })
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        if socket.send(msg).await.is_err() {
            break;
        }
    }
}

fn env_ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("GRACEFUL_ADDR").unwrap_or_else(|_| "127.0.0.1:3001".into());
    let (gate, shutdown) = (ReadinessGate::new(), Shutdown::new());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    GracefulServer::new(gate.clone(), shutdown.clone())
        .drain_delay(env_ms("GRACEFUL_DRAIN_MS", 5_000))
        .grace_period(env_ms("GRACEFUL_GRACE_MS", 30_000))
        .serve(listener, app(gate, shutdown))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn readiness_follows_the_gate_and_routes_stay_reachable() {
        let gate = ReadinessGate::new();
        let shutdown = Shutdown::new();
        let get = |gate: &ReadinessGate, path: &str| {
            app(gate.clone(), shutdown.clone()).oneshot(Request::get(path).body(Body::empty()).unwrap())
        };
        assert_eq!(get(&gate, "/readyz").await.unwrap().status(), 503, "not ready before start-up is done");
        gate.set_ready();
        assert_eq!(get(&gate, "/readyz").await.unwrap().status(), 200);
        assert_eq!(get(&gate, "/healthz").await.unwrap().status(), 200);
        assert_eq!(get(&gate, "/work/1").await.unwrap().status(), 200);
        gate.set_draining();
        assert_eq!(get(&gate, "/readyz").await.unwrap().status(), 503);
    }
}
