//! Active upstream health checks: HTTP (expected status) or TCP connect, with
//! interval, timeout, healthy/unhealthy thresholds and jitter. An endpoint is
//! healthy until its checks say otherwise (SPEC §8).
//!
//! The state lives in an [`EndpointHealth`] that the load balancer reads with
//! one atomic load; [`spawn_checks`] keeps it current from a background task.
//!
//! ```
//! use nexus_health::upstream::{EndpointHealth, Thresholds};
//! let h = EndpointHealth::new();
//! let t = Thresholds { healthy: 2, unhealthy: 3 };
//! for _ in 0..2 { h.record(false, "connection refused".into(), &t); }
//! assert!(h.is_healthy(), "still healthy below the unhealthy threshold");
//! h.record(false, "connection refused".into(), &t);
//! assert!(!h.is_healthy());
//! ```

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};

/// Consecutive results that flip an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Passes in a row that make an unhealthy endpoint healthy.
    pub healthy: u32,
    /// Failures in a row that make a healthy endpoint unhealthy.
    pub unhealthy: u32,
}

/// The last check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCheck {
    /// When it finished.
    pub at: SystemTime,
    /// Whether it passed.
    pub ok: bool,
    /// What it saw (`200 OK`, `connection refused`, `timed out after 1s`).
    pub message: String,
}

/// Live health of one endpoint, shared by the checker and the balancer.
#[derive(Debug)]
pub struct EndpointHealth {
    healthy: AtomicBool,
    passes: AtomicU32,
    failures: AtomicU32,
    last: Mutex<Option<LastCheck>>,
}

impl Default for EndpointHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl EndpointHealth {
    /// Healthy, never checked.
    pub fn new() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            passes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            last: Mutex::new(None),
        }
    }

    /// Whether the balancer may pick it.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Set the state directly (e.g. an operator's override).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// The last check, if any.
    pub fn last_check(&self) -> Option<LastCheck> {
        self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Record one check; returns `Some(new state)` when the endpoint flipped.
    pub fn record(&self, ok: bool, message: String, t: &Thresholds) -> Option<bool> {
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(LastCheck { at: SystemTime::now(), ok, message });
        let healthy = self.is_healthy();
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            let passes = self.passes.fetch_add(1, Ordering::Relaxed) + 1;
            if !healthy && passes >= t.healthy {
                self.healthy.store(true, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.passes.store(0, Ordering::Relaxed);
            let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if healthy && failures >= t.unhealthy {
                self.healthy.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }
}

/// How to check one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `GET path` over HTTP/1.1 (`Host` = the endpoint), passing on `expected_status`.
    Http {
        /// Request path.
        path: String,
        /// Status that passes.
        expected_status: u16,
    },
    /// A TCP connect.
    Tcp,
    /// The standard gRPC health check, `grpc.health.v1.Health/Check` for `service` over HTTP/2
    /// (prior knowledge, or whatever the connection negotiated), passing on `SERVING`.
    /// Needs the `serve` feature (hyper); without it the check fails, saying so.
    Grpc {
        /// The service asked about; empty: the server as a whole.
        service: String,
    },
}

/// One check's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    /// What to send.
    pub probe: Probe,
    /// Time between checks (each waits a random extra 0–10% so checks spread out).
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Flip thresholds.
    pub thresholds: Thresholds,
}

/// Run one check against `authority` (`host:port`) over plain TCP: `(passed, message)`.
pub async fn check_once(authority: &str, probe: &Probe, timeout: Duration) -> (bool, String) {
    check_once_over(authority, probe, timeout, tcp(authority)).await
}

/// Run one check over the connection `connect` opens (TLS to an `https://` endpoint, say):
/// the probe's request is written to it, `Host: authority`; opening it counts against
/// `timeout` too. An error from `connect` fails the check with its message.
pub async fn check_once_over<S, E>(
    authority: &str,
    probe: &Probe,
    timeout: Duration,
    connect: impl Future<Output = Result<S, E>>,
) -> (bool, String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: std::fmt::Display,
{
    match tokio::time::timeout(timeout, run(authority, probe, connect)).await {
        Ok(r) => r,
        Err(_) => (false, format!("timed out after {}", humantime_ms(timeout))),
    }
}

async fn tcp(authority: &str) -> std::io::Result<tokio::net::TcpStream> {
    tokio::net::TcpStream::connect(authority).await
}

fn humantime_ms(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

async fn run<S, E>(authority: &str, probe: &Probe, connect: impl Future<Output = Result<S, E>>) -> (bool, String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: std::fmt::Display,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = match connect.await {
        Ok(s) => s,
        Err(e) => return (false, format!("connect: {e}")),
    };
    let (path, expected_status) = match probe {
        Probe::Http { path, expected_status } => (path, expected_status),
        Probe::Tcp => return (true, "tcp connect ok".into()),
        Probe::Grpc { service } => return grpc_check(authority, service, stream).await,
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: nexus-health-check\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    );
    if let Err(e) = stream.write_all(req.as_bytes()).await.and(stream.flush().await) {
        return (false, format!("write: {e}"));
    }
    // The status line is all we need: "HTTP/1.1 200 OK".
    let mut buf = [0u8; 256];
    let mut n = 0;
    while !buf[..n].contains(&b'\n') && n < buf.len() {
        match stream.read(&mut buf[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return (false, format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let line = line.lines().next().unwrap_or("").trim().to_string();
    match line.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()) {
        Some(status) if status == *expected_status => (true, line),
        Some(status) => (false, format!("{line} (expected {expected_status}, got {status})")),
        None => (false, format!("not an HTTP response: {line:?}")),
    }
}

/// `grpc.health.v1.Health/Check` over `stream` (HTTP/2).
#[cfg(feature = "serve")]
async fn grpc_check<S>(authority: &str, service: &str, stream: S) -> (bool, String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) =
        match hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new()).handshake(io).await {
            Ok(pair) => pair,
            Err(e) => return (false, format!("HTTP/2 handshake: {e}")),
        };
    // HealthCheckRequest { string service = 1; }, in one gRPC message.
    let mut msg = Vec::with_capacity(5 + 2 + service.len());
    msg.push(0);
    let len = if service.is_empty() { 0 } else { 2 + service.len() };
    msg.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    if !service.is_empty() {
        msg.push(0x0a);
        msg.push(u8::try_from(service.len()).unwrap_or(u8::MAX));
        msg.extend_from_slice(service.as_bytes());
    }
    let req = http::Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "nexus-health-check")
        .body(http_body_util::Full::new(bytes::Bytes::from(msg)));
    let Ok(req) = req else { return (false, "invalid authority".into()) };
    let call = async move {
        let res = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        if res.status() != http::StatusCode::OK {
            return Err(format!("HTTP status {}", res.status()));
        }
        let mut status = res.headers().get("grpc-status").cloned();
        let mut message = res.headers().get("grpc-message").cloned();
        let collected = res.into_body().collect().await.map_err(|e| format!("body: {e}"))?;
        if let Some(t) = collected.trailers() {
            status = status.or_else(|| t.get("grpc-status").cloned());
            message = message.or_else(|| t.get("grpc-message").cloned());
        }
        let body = collected.to_bytes();
        match status.as_ref().map(http::HeaderValue::as_bytes) {
            Some(b"0") => {}
            Some(code) => {
                let text = message.as_ref().and_then(|m| m.to_str().ok()).unwrap_or("");
                return Err(format!("grpc-status {} {text}", String::from_utf8_lossy(code)).trim_end().to_string());
            }
            None => return Err("no grpc-status".into()),
        }
        // HealthCheckResponse { ServingStatus status = 1; }: SERVING = 1 (field 1 absent: UNKNOWN).
        let serving = match body.get(5..) {
            Some([0x08, s, ..]) => *s,
            _ => 0,
        };
        match serving {
            1 => Ok("SERVING".to_string()),
            2 => Err("NOT_SERVING".into()),
            3 => Err("SERVICE_UNKNOWN".into()),
            n => Err(format!("status {n} (UNKNOWN)")),
        }
    };
    tokio::select! {
        r = call => match r {
            Ok(m) => (true, m),
            Err(m) => (false, m),
        },
        r = conn => (false, format!("connection closed: {}", r.err().map_or_else(|| "by the server".to_string(), |e| e.to_string()))),
    }
}

/// Without hyper (the `serve` feature) there is no HTTP/2 client: the check fails, saying so.
#[cfg(not(feature = "serve"))]
async fn grpc_check<S>(_authority: &str, _service: &str, _stream: S) -> (bool, String) {
    (false, "gRPC health checks need nexus-health's `serve` feature".into())
}

/// A handle on running checks; dropping it stops them.
#[derive(Debug)]
pub struct Checks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Checks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Check every `(authority, health)` pair on its own task, forever, until the
/// returned [`Checks`] is dropped. `on_change(index, healthy)` is called when
/// an endpoint flips. Needs a tokio runtime.
pub fn spawn_checks<F>(
    targets: Vec<(String, std::sync::Arc<EndpointHealth>)>,
    config: CheckConfig,
    on_change: F,
) -> Checks
where
    F: Fn(usize, bool, &str) + Send + Sync + 'static,
{
    let authorities: Vec<String> = targets.iter().map(|(a, _)| a.clone()).collect();
    spawn_checks_over(targets, config, move |i| tcp_owned(authorities[i].clone()), on_change)
}

async fn tcp_owned(authority: String) -> std::io::Result<tokio::net::TcpStream> {
    tcp(&authority).await
}

/// [`spawn_checks`], opening each check's connection with `connect(index)` (TLS to an
/// `https://` endpoint, say) instead of plain TCP.
pub fn spawn_checks_over<F, C, Fut, S, E>(
    targets: Vec<(String, std::sync::Arc<EndpointHealth>)>,
    config: CheckConfig,
    connect: C,
    on_change: F,
) -> Checks
where
    F: Fn(usize, bool, &str) + Send + Sync + 'static,
    C: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<S, E>> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: std::fmt::Display,
{
    let on_change = std::sync::Arc::new(on_change);
    let connect = std::sync::Arc::new(connect);
    let tasks = targets
        .into_iter()
        .enumerate()
        .map(|(i, (authority, health))| {
            let config = config.clone();
            let on_change = std::sync::Arc::clone(&on_change);
            let connect = std::sync::Arc::clone(&connect);
            tokio::spawn(async move {
                loop {
                    let (ok, message) = check_once_over(&authority, &config.probe, config.timeout, connect(i)).await;
                    if let Some(now) = health.record(ok, message.clone(), &config.thresholds) {
                        on_change(i, now, &message);
                    }
                    tokio::time::sleep(config.interval + jitter(config.interval, i)).await;
                }
            })
        })
        .collect();
    Checks(tasks)
}

/// Up to 10% of the interval, different per endpoint and per round.
fn jitter(interval: Duration, salt: usize) -> Duration {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let spread = (interval.as_millis() / 10).max(1) as u64;
    Duration::from_millis((u64::from(nanos) ^ (salt as u64).wrapping_mul(0x9E37_79B9)) % spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_flip_only_on_consecutive_results() {
        let h = EndpointHealth::new();
        let t = Thresholds { healthy: 2, unhealthy: 2 };
        assert_eq!(h.record(false, "x".into(), &t), None);
        assert_eq!(h.record(true, "ok".into(), &t), None, "a pass resets the failure run");
        assert_eq!(h.record(false, "x".into(), &t), None);
        assert_eq!(h.record(false, "x".into(), &t), Some(false));
        assert!(!h.is_healthy());
        assert_eq!(h.record(true, "ok".into(), &t), None);
        assert_eq!(h.record(true, "ok".into(), &t), Some(true));
        assert_eq!(h.last_check().unwrap().message, "ok");
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_local_listener() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable", "200 OK"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let http = Probe::Http { path: "/health".into(), expected_status: 200 };
        let t = Duration::from_secs(2);
        assert_eq!(check_once(&addr, &http, t).await, (true, "HTTP/1.1 200 OK".into()));
        let (ok, msg) = check_once(&addr, &http, t).await;
        assert!(!ok && msg.contains("expected 200, got 503"), "{msg}");
        assert!(check_once(&addr, &Probe::Tcp, t).await.0);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let (ok, msg) = check_once(&closed, &Probe::Tcp, t).await;
        assert!(!ok && msg.starts_with("connect:"), "{msg}");
    }
}
