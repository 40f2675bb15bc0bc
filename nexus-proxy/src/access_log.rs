//! The access log (`logging.access_log: true`): one JSON line per request on stdout, with
//! `timestamp` (when the request arrived, RFC 3339 UTC), `request_id`, `trace_id` (the
//! incoming W3C `traceparent`'s, when it carries a valid one), `client_ip`, `method`,
//! `host`, `path` (never the query string: it can carry secrets), `route`, `upstream`,
//! `endpoint`, `status`, `duration_ms` (until the last byte of the answer was handed to
//! the connection), `bytes_sent` (body bytes), `user` (the verified `sub` claim) and
//! `reason` (the gateway's error code when it answered itself: `rate_limited`,
//! `unauthorized`, `circuit_open`, ...). A field that does not apply is `null`.
//!
//! Lines are written off the request path: a request hands its finished line to a bounded
//! queue that one thread drains to stdout. When the queue is full the line is dropped and
//! counted in `nexus_access_log_dropped_total`; a request never waits for the log.
//!
//! The `nexus` binary and [`GatewayService`](crate::GatewayService) log when the config
//! says so; [`AccessLogLayer`] adds the same lines to any service that answers with the
//! gateway's response type.
//!
//! ```
//! use nexus_proxy::access_log::Pending;
//! let req = http::Request::get("/orders/7?token=secret").header("host", "api.example.com").body(()).unwrap();
//! let pending = Pending::start(&req, "203.0.113.9");
//! let line = pending.line_for_test(200, 17);
//! assert_eq!(line["path"], "/orders/7", "no query string");
//! assert_eq!(line["host"], "api.example.com");
//! assert_eq!(line["bytes_sent"], 17);
//! ```

use crate::body::ResponseBody;
use http::{Method, Request, Response, header};
use nexus_core::GatewayError;
use nexus_core::body::GatewayBody;
use nexus_core::claims::VerifiedClaims;
use nexus_core::error::REQUEST_ID;
use pin_project_lite::pin_project;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::task::{Context, Poll, ready};
use std::time::SystemTime;
use tokio::time::Instant;

/// Lines waiting for the writer thread; more are dropped (and counted).
const QUEUE: usize = 8192;

/// The process's access-log writer: a bounded queue and the thread that drains it.
struct Writer {
    tx: SyncSender<String>,
    dropped: metrics::Counter,
}

fn writer() -> &'static Writer {
    static WRITER: OnceLock<Writer> = OnceLock::new();
    WRITER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        let spawned = std::thread::Builder::new().name("nexus-access-log".into()).spawn(move || {
            let stdout = std::io::stdout();
            while let Ok(line) = rx.recv() {
                let mut out = stdout.lock();
                let _ = writeln!(out, "{line}");
                // Whatever else is queued goes out in the same write burst.
                while let Ok(line) = rx.try_recv() {
                    let _ = writeln!(out, "{line}");
                }
                let _ = out.flush();
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access-log writer; access-log lines are dropped");
        }
        Writer { tx, dropped: metrics::counter!(nexus_core::metric_names::ACCESS_LOG_DROPPED_TOTAL) }
    })
}

fn write(line: String) {
    let w = writer();
    match w.tx.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => w.dropped.increment(1),
    }
}

/// The route that answered (set on the response by the route's stack when logging is on).
#[derive(Debug, Clone)]
pub struct RouteName(pub std::sync::Arc<str>);

/// The verified `sub` claim of the request (set on the response by the route's stack
/// when logging is on and the request was authenticated).
#[derive(Debug, Clone)]
pub struct User(pub String);

/// What is known of a request when it arrives; [`finish`](Self::finish) completes it
/// with the answer.
#[derive(Debug)]
pub struct Pending {
    timestamp: SystemTime,
    started: Instant,
    request_id: Option<String>,
    trace_id: Option<String>,
    client_ip: String,
    method: Method,
    host: Option<String>,
    path: String,
}

/// A line waiting for the end of its body (bytes counted as they go out).
#[derive(Debug)]
pub(crate) struct Record {
    pending: Pending,
    status: u16,
    route: Option<std::sync::Arc<str>>,
    upstream: Option<String>,
    endpoint: Option<String>,
    user: Option<String>,
    reason: Option<&'static str>,
    request_id: Option<String>,
    pub(crate) bytes: u64,
}

impl Pending {
    /// Note the request's arrival; `client_ip` as `X-Forwarded-For` would say it.
    pub fn start<B>(req: &Request<B>, client_ip: &str) -> Self {
        let headers = req.headers();
        let text = |name| headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok()).map(str::to_string);
        Self {
            timestamp: SystemTime::now(),
            started: Instant::now(),
            request_id: text(REQUEST_ID),
            trace_id: headers.get("traceparent").and_then(|v| trace_id(v.as_bytes())).map(str::to_string),
            client_ip: client_ip.to_string(),
            method: req.method().clone(),
            host: text(header::HOST).or_else(|| req.uri().authority().map(|a| a.as_str().to_string())),
            path: req.uri().path().to_string(),
        }
    }

    /// Complete the line with `res`: written now when the answer's body is the gateway's
    /// own (its size known), or when the upstream's body has ended; otherwise it goes with
    /// the body and is written when the body ends (or is dropped: a client that went away).
    pub fn finish<B>(self, res: &mut Response<ResponseBody<B>>) {
        let ext = res.extensions();
        let mut record = Record {
            status: res.status().as_u16(),
            route: ext.get::<RouteName>().map(|r| std::sync::Arc::clone(&r.0)),
            user: ext.get::<User>().map(|u| u.0.clone()),
            reason: ext.get::<GatewayError>().map(|e| e.code().as_str()),
            request_id: res.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_string),
            upstream: None,
            endpoint: None,
            bytes: 0,
            pending: self,
        };
        match res.body_mut() {
            GatewayBody::Full { data } => {
                record.bytes = data.as_ref().map_or(0, |d| d.len() as u64);
                record.write();
            }
            GatewayBody::Stream { body } => {
                record.upstream = Some(body.upstream().to_string());
                record.endpoint = body.endpoint().map(str::to_string);
                body.log_at_end(Box::new(record));
            }
        }
    }

    /// The line this request would get with `status` and `bytes` (for tests and examples).
    pub fn line_for_test(self, status: u16, bytes: u64) -> serde_json::Value {
        let record = Record {
            pending: self,
            status,
            route: None,
            upstream: None,
            endpoint: None,
            user: None,
            reason: None,
            request_id: None,
            bytes,
        };
        serde_json::from_str(&record.line()).expect("an access-log line is JSON")
    }
}

impl Record {
    fn line(&self) -> String {
        let p = &self.pending;
        let duration = p.started.elapsed();
        serde_json::json!({
            "timestamp": humantime::format_rfc3339_millis(p.timestamp).to_string(),
            "request_id": self.request_id.as_deref().or(p.request_id.as_deref()),
            "trace_id": p.trace_id,
            "client_ip": p.client_ip,
            "method": p.method.as_str(),
            "host": p.host,
            "path": p.path,
            "route": self.route.as_deref(),
            "upstream": self.upstream.as_deref().filter(|u| !u.is_empty()),
            "endpoint": self.endpoint,
            "status": self.status,
            "duration_ms": (duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            "bytes_sent": self.bytes,
            "user": self.user,
            "reason": self.reason,
        })
        .to_string()
    }

    /// Hand the finished line to the writer.
    pub(crate) fn write(&self) {
        write(self.line());
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is valid
/// (lower-case hex, not all zeros).
fn trace_id(v: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(v).ok()?;
    let mut parts = s.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    valid.then_some(trace)
}

/// The verified `sub` of a request, for [`User`].
pub(crate) fn user_of<B>(req: &Request<B>) -> Option<String> {
    req.extensions().get::<VerifiedClaims>().and_then(|c| c.get_str("sub")).map(std::borrow::Cow::into_owned)
}

/// Adds an access-log line per request to a service that answers with the gateway's
/// response type (the client IP from a [`ClientInfo`](crate::ClientInfo) or
/// [`PeerAddr`](nexus_core::client::PeerAddr) in the request's extensions).
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLogLayer;

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLogged<S>;
    fn layer(&self, inner: S) -> AccessLogged<S> {
        AccessLogged { inner }
    }
}

/// The service of [`AccessLogLayer`].
#[derive(Debug, Clone)]
pub struct AccessLogged<S> {
    inner: S,
}

impl<S, ReqB, B> tower::Service<Request<ReqB>> for AccessLogged<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResponseBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = AccessLoggedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let pending = Pending::start(&req, &client_ip(req.extensions()));
        AccessLoggedFuture { fut: self.inner.call(req), pending: Some(pending) }
    }
}

/// The client IP an embedded gateway sees: its `ClientInfo`, else the peer address.
pub(crate) fn client_ip(ext: &http::Extensions) -> String {
    match ext.get::<crate::ClientInfo>() {
        Some(c) => c.ip.to_str().unwrap_or("unknown").to_string(),
        None => nexus_core::client::peer_of(ext).map_or_else(|| "unknown".to_string(), |p| p.ip().to_string()),
    }
}

pin_project! {
    /// Response future of [`AccessLogged`].
    #[derive(Debug)]
    pub struct AccessLoggedFuture<F> {
        #[pin]
        fut: F,
        pending: Option<Pending>,
    }
}

impl<F, B, E> Future for AccessLoggedFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody<B>>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut out = ready!(this.fut.poll(cx));
        if let (Ok(res), Some(pending)) = (&mut out, this.pending.take()) {
            pending.finish(res);
        }
        Poll::Ready(out)
    }
}

/// A line riding on an upstream body: written when the body ends, fails or is dropped.
#[derive(Debug, Default)]
pub(crate) struct AtEnd(Option<Box<Record>>);

impl AtEnd {
    pub(crate) fn set(&mut self, record: Box<Record>) {
        self.0 = Some(record);
    }

    /// Count `n` body bytes handed to the client.
    pub(crate) fn sent(&mut self, n: usize) {
        if let Some(r) = &mut self.0 {
            r.bytes += n as u64;
        }
    }

    /// The body is over: write the line (once).
    pub(crate) fn write(&mut self) {
        if let Some(r) = self.0.take() {
            r.write();
        }
    }
}

impl Drop for AtEnd {
    fn drop(&mut self) {
        self.write();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_valid_traceparent_gives_a_trace_id() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(format!("00-{id}-00f067aa0ba902b7-01").as_bytes()), Some(id));
        // A later version may add fields after the flags.
        assert_eq!(trace_id(format!("01-{id}-00f067aa0ba902b7-00-extra").as_bytes()), Some(id));
        for bad in [
            format!("00-{id}-00f067aa0ba902b7-01-extra"),
            format!("ff-{id}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{id}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()),
            format!("00-{id}-00f067aa0ba902b7"),
            "garbage".to_string(),
        ] {
            assert_eq!(trace_id(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn a_line_has_every_field_and_null_where_nothing_applies() {
        let req = Request::post("http://api.test/a/b?q=1").body(()).unwrap();
        let line = Pending::start(&req, "10.0.0.1").line_for_test(502, 0);
        for key in [
            "timestamp",
            "request_id",
            "trace_id",
            "client_ip",
            "method",
            "host",
            "path",
            "route",
            "upstream",
            "endpoint",
            "status",
            "duration_ms",
            "bytes_sent",
            "user",
            "reason",
        ] {
            assert!(line.get(key).is_some(), "{key}: {line}");
        }
        assert_eq!((line["host"].as_str(), line["path"].as_str()), (Some("api.test"), Some("/a/b")));
        assert_eq!(line["method"], "POST");
        assert!(line["route"].is_null() && line["user"].is_null());
    }
}
