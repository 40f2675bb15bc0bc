//! Readiness with registered checks: `/readyz` answers 503
//! `{"status":"not_ready","check":NAME,"error":...}` when the gate is closed
//! or a check fails. Each check has its own timeout, and results are cached
//! for a short interval so a probe storm cannot overload a dependency.
//!
//! ```
//! use std::time::Duration;
//! use nexus_health::check::{HealthCheck, Readiness};
//! use nexus_health::ReadinessGate;
//!
//! struct Database;
//! impl HealthCheck for Database {
//!     fn name(&self) -> &str { "database" }
//!     fn check(&self) -> nexus_health::check::CheckFuture<'_> {
//!         Box::pin(async { Err("connection refused".to_string()) })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let gate = ReadinessGate::new();
//! gate.set_ready();
//! let readiness = Readiness::new(gate).with_check(Database).cache_for(Duration::from_secs(1));
//! let res: http::Response<http_body_util::Full<bytes::Bytes>> = readiness.response().await;
//! assert_eq!(res.status(), 503);
//! # }
//! ```

use crate::ReadinessGate;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What a check returns: `Ok(())` or why it failed.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A dependency the service needs to be ready (a database, a cache, a file).
pub trait HealthCheck: Send + Sync + 'static {
    /// Name shown in the `/readyz` answer.
    fn name(&self) -> &str;
    /// Check once.
    fn check(&self) -> CheckFuture<'_>;
    /// Time the check may take before it counts as failed. Default 1 s.
    fn timeout(&self) -> Duration {
        Duration::from_secs(1)
    }
}

type Outcome = Result<(), (String, String)>;

/// The readiness answer: the gate, then every registered check in order.
#[derive(Clone)]
pub struct Readiness {
    gate: ReadinessGate,
    checks: Arc<[Arc<dyn HealthCheck>]>,
    ttl: Duration,
    cache: Arc<tokio::sync::Mutex<Option<(Instant, Outcome)>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.checks.iter().map(|c| c.name()).collect();
        f.debug_struct("Readiness").field("gate", &self.gate).field("checks", &names).field("ttl", &self.ttl).finish()
    }
}

impl Readiness {
    /// Readiness from the gate alone; results cached for 1 s.
    pub fn new(gate: ReadinessGate) -> Self {
        Self { gate, checks: Arc::from([]), ttl: Duration::from_secs(1), cache: Arc::default() }
    }

    /// Register a check.
    pub fn with_check(mut self, check: impl HealthCheck) -> Self {
        let mut v: Vec<Arc<dyn HealthCheck>> = self.checks.iter().cloned().collect();
        v.push(Arc::new(check));
        self.checks = v.into();
        self
    }

    /// How long a result is reused.
    pub fn cache_for(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Ready, or the first failing `(check, error)`. The gate is read every
    /// time (draining shows at once); checks run at most once per cache interval,
    /// one evaluation at a time however many probes arrive.
    pub async fn evaluate(&self) -> Result<(), (String, String)> {
        if let Some((check, error)) = self.gate.reason() {
            return Err((check.to_string(), error.to_string()));
        }
        if self.checks.is_empty() {
            return Ok(());
        }
        let mut cache = self.cache.lock().await;
        if let Some((at, outcome)) = cache.as_ref()
            && at.elapsed() < self.ttl
        {
            return outcome.clone();
        }
        let mut outcome = Ok(());
        for c in self.checks.iter() {
            let result = match tokio::time::timeout(c.timeout(), c.check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {:?}", c.timeout())),
            };
            if let Err(e) = result {
                outcome = Err((c.name().to_string(), e));
                break;
            }
        }
        *cache = Some((Instant::now(), outcome.clone()));
        outcome
    }

    /// The `/readyz` response.
    pub async fn response<B: From<Bytes>>(&self) -> Response<B> {
        let (status, body) = match self.evaluate().await {
            Ok(()) => (StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#)),
            Err((check, error)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from(serde_json::json!({ "status": "not_ready", "check": check, "error": error }).to_string()),
            ),
        };
        let mut res = Response::new(B::from(body));
        *res.status_mut() = status;
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    struct Flaky {
        calls: Arc<AtomicUsize>,
        ok: Arc<AtomicBool>,
        slow: bool,
    }

    impl HealthCheck for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn check(&self) -> CheckFuture<'_> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let ok = self.ok.load(Ordering::SeqCst);
            let slow = self.slow;
            Box::pin(async move {
                if slow {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                if ok { Ok(()) } else { Err("down".into()) }
            })
        }
        fn timeout(&self) -> Duration {
            Duration::from_millis(100)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn checks_are_cached_and_failures_named() {
        let gate = ReadinessGate::new();
        gate.set_ready();
        let (calls, ok) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let r = Readiness::new(gate.clone())
            .with_check(Flaky { calls: Arc::clone(&calls), ok: Arc::clone(&ok), slow: false })
            .cache_for(Duration::from_secs(1));
        for _ in 0..50 {
            assert_eq!(r.evaluate().await, Err(("flaky".into(), "down".into())));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a probe storm runs the check once per interval");
        ok.store(true, Ordering::SeqCst);
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(r.evaluate().await, Ok(()));
        gate.set_draining();
        assert_eq!(r.evaluate().await, Err(("shutdown".into(), "draining".into())), "the gate is read every time");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_check_times_out() {
        let gate = ReadinessGate::new();
        gate.set_ready();
        let r = Readiness::new(gate).with_check(Flaky {
            calls: Arc::default(),
            ok: Arc::new(AtomicBool::new(true)),
            slow: true,
        });
        let (check, error) = r.evaluate().await.unwrap_err();
        assert_eq!(check, "flaky");
        assert!(error.starts_with("timed out"), "{error}");
    }
}
