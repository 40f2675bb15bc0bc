//! `/healthz` and `/readyz`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

/// Whether the process should receive traffic. Cheap to clone and to read.
#[derive(Debug, Clone)]
pub struct ReadinessGate(Arc<AtomicU8>);

impl Default for ReadinessGate {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadinessGate {
    /// A gate that starts not ready (start-up not done).
    pub fn new() -> Self {
        Self(Arc::new(AtomicU8::new(STARTING)))
    }

    /// Start-up is done: ready.
    pub fn set_ready(&self) {
        // Never leave draining: once shutting down, stay not ready.
        let _ = self.0.compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Shutting down: not ready from now on.
    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    /// Whether ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire) == READY
    }

    /// Whether draining.
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire) == DRAINING
    }

    /// Why not ready, as `(check, error)`; `None` when ready.
    pub fn reason(&self) -> Option<(&'static str, &'static str)> {
        match self.0.load(Ordering::Acquire) {
            READY => None,
            DRAINING => Some(("shutdown", "draining")),
            _ => Some(("startup", "starting")),
        }
    }
}

fn json<B: From<Bytes>>(status: StatusCode, body: Bytes) -> Response<B> {
    let mut res = Response::new(B::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `200 {"status":"alive"}` while the process runs.
pub fn liveness<B: From<Bytes>>() -> Response<B> {
    json(StatusCode::OK, Bytes::from_static(br#"{"status":"alive"}"#))
}

/// `200 {"status":"ready"}`, or `503 {"status":"not_ready","check":NAME,"error":...}`.
pub fn readiness<B: From<Bytes>>(gate: &ReadinessGate) -> Response<B> {
    match gate.reason() {
        None => json(StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#)),
        Some((check, error)) => {
            let body = serde_json::json!({ "status": "not_ready", "check": check, "error": error });
            json(StatusCode::SERVICE_UNAVAILABLE, Bytes::from(body.to_string()))
        }
    }
}

/// Which probe, if any, a path asks for under `prefix` (`""` or e.g. `/_nexus`).
///
/// ```
/// use nexus_health::probe::{Probe, probe_for};
/// assert_eq!(probe_for("/_nexus/readyz", "/_nexus"), Some(Probe::Readiness));
/// assert_eq!(probe_for("/healthz", ""), Some(Probe::Liveness));
/// assert_eq!(probe_for("/healthz", "/_nexus"), None);
/// ```
pub fn probe_for(path: &str, prefix: &str) -> Option<Probe> {
    match path.strip_prefix(prefix)? {
        "/healthz" => Some(Probe::Liveness),
        "/readyz" => Some(Probe::Readiness),
        _ => None,
    }
}

/// A probe kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/healthz`.
    Liveness,
    /// `/readyz`.
    Readiness,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    async fn body(res: Response<Full<Bytes>>) -> serde_json::Value {
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    #[tokio::test]
    async fn readiness_follows_the_gate_and_never_leaves_draining() {
        let gate = ReadinessGate::new();
        let res = readiness(&gate);
        assert_eq!(res.status(), 503);
        assert_eq!(body(res).await["check"], "startup");
        gate.set_ready();
        assert_eq!(body(readiness(&gate)).await, serde_json::json!({"status": "ready"}));
        gate.set_draining();
        gate.set_ready();
        let res = readiness(&gate);
        assert_eq!(res.status(), 503);
        assert_eq!(body(res).await["status"], "not_ready");
        assert_eq!(body(liveness()).await, serde_json::json!({"status": "alive"}));
    }
}
