//! Zero-downtime shutdown for a plain axum service with Nexus's health pieces:
//! `/readyz` turns 503 on SIGTERM, the server keeps serving for a drain delay
//! (so the load balancer stops sending), then stops accepting and waits for
//! in-flight requests *and* WebSockets (which axum's own graceful shutdown
//! forgets once they are upgraded) up to a grace period.
//!
//! Run with
//!
//! ```sh
//! cargo run --manifest-path examples/Cargo.toml -p example-graceful-axum
//! curl -i http://127.0.0.1:3001/readyz      # 200; after `kill -TERM <pid>`: 503 for the drain delay
//! ```

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use nexus_health::check::Readiness;
use nexus_health::shutdown::Shutdown;
use nexus_health::{ReadinessGate, probe};
use std::time::Duration;

#[derive(Clone)]
struct AppState {
    readiness: Readiness,
    shutdown: Shutdown,
}

/// The app: probes, and a WebSocket echo whose connections shutdown waits for.
fn app(gate: ReadinessGate, shutdown: Shutdown) -> Router {
    Router::new()
        .route("/healthz", get(|| async { probe::liveness::<Body>() }))
        .route("/readyz", get(|State(s): State<AppState>| async move { s.readiness.response::<Body>().await }))
        .route("/ws", get(ws))
        .with_state(AppState { readiness: Readiness::new(gate), shutdown })
}

async fn ws(State(s): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    // Counted from the upgrade until the socket closes.
    let tracked = s.shutdown.tracker().track();
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

#[tokio::main]
async fn main() {
    let (drain_delay, grace) = (Duration::from_secs(5), Duration::from_secs(30));
    let gate = ReadinessGate::new();
    let shutdown = Shutdown::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await.expect("bind 127.0.0.1:3001");
    gate.set_ready();
    println!("listening on http://127.0.0.1:3001");
    let signal_gate = gate.clone();
    let coordinator = shutdown.clone();
    let stop_accepting = async move {
        let _ = tokio::signal::ctrl_c().await;
        signal_gate.set_draining();
        coordinator.drain();
        tokio::time::sleep(drain_delay).await;
        coordinator.stop();
    };
    axum::serve(listener, app(gate, shutdown.clone())).with_graceful_shutdown(stop_accepting).await.expect("server");
    // HTTP requests are done; upgraded sockets may still be open.
    if !shutdown.tracker().wait_idle(grace).await {
        eprintln!("grace period over with {} WebSockets open", shutdown.tracker().active());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn readiness_follows_the_drain() {
        let gate = ReadinessGate::new();
        let shutdown = Shutdown::new();
        let get = |gate: &ReadinessGate| {
            app(gate.clone(), shutdown.clone()).oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        };
        assert_eq!(get(&gate).await.unwrap().status(), 503, "not ready before start-up is done");
        gate.set_ready();
        assert_eq!(get(&gate).await.unwrap().status(), 200);
        gate.set_draining();
        assert_eq!(get(&gate).await.unwrap().status(), 503);
        let tracked = shutdown.tracker().track();
        assert!(!shutdown.tracker().wait_idle(Duration::from_millis(10)).await, "a tracked socket holds shutdown");
        drop(tracked);
        assert!(shutdown.tracker().wait_idle(Duration::from_millis(10)).await);
    }
}
