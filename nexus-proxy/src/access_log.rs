//! The access log (`logging.access_log: true`): one JSON line per request on stdout, with
//! `timestamp` (when the request arrived, RFC 3339 UTC), `request_id`, `trace_id` (the W3C
//! trace the request belongs to: see `nexus_middleware::trace_context`), `client_ip`, `method`,
//! `host`, `path` (never the query string: it can carry secrets), `route`, `upstream`,
//! `endpoint`, `status`, `duration_ms` (until the last byte of the answer was handed to
//! the connection), `bytes_sent` (body bytes), `user` (the verified `sub` claim) and
//! `reason` (the gateway's error code when it answered itself: `rate_limited`,
//! `unauthorized`, `circuit_open`, ...). A field that does not apply is `null`.
//!
//! Lines are written off the request path: a request appends its finished line to a buffer
//! that one thread writes to stdout every 100 ms (sooner when 256 KiB are waiting). When
//! 8 MiB are waiting (stdout blocked) new lines are dropped and counted in
//! `nexus_access_log_dropped_total`; a request never waits for stdout.
//!
//! The `nexus` binary and [`GatewayService`](crate::GatewayService) log when the config
//! says so; [`AccessLogLayer`] adds the same lines to any service that answers with the
//! gateway's response type.
//!
//! ```
//! use nexus_proxy::access_log::Pending;
//! let req = http::Request::get("/orders/7?token=secret").header("host", "api.example.com").body(()).unwrap();
//! let pending = Pending::start(&req, &http::HeaderValue::from_static("203.0.113.9"));
//! let line = pending.line_for_test(200, 17);
//! assert_eq!(line["path"], "/orders/7", "no query string");
//! assert_eq!(line["host"], "api.example.com");
//! assert_eq!(line["bytes_sent"], 17);
//! ```

use crate::body::ResponseBody;
use http::{HeaderValue, Method, Request, Response, Uri, header};
use nexus_core::GatewayError;
use nexus_core::body::GatewayBody;
use nexus_core::claims::VerifiedClaims;
use nexus_core::error::REQUEST_ID;
use pin_project_lite::pin_project;
use std::fmt::Write as _;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Lines waiting for the writer; past this many bytes new lines are dropped (and counted).
const MAX_PENDING: usize = 8 << 20;
/// The writer is woken early once this much is waiting ...
const WAKE_AT: usize = 256 << 10;
/// ... and writes whatever is waiting at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The process's access log: lines appended to one buffer that a thread of its own writes
/// to stdout in large writes. A request appends under a lock held for a copy of its line
/// (no wake-up, no system call per line: measured, a channel send per line woke the
/// writer for every request and cost more than the request itself).
struct Writer {
    pending: Mutex<Vec<u8>>,
    ready: Condvar,
    dropped: metrics::Counter,
}

fn writer() -> &'static Writer {
    static WRITER: OnceLock<&'static Writer> = OnceLock::new();
    WRITER.get_or_init(|| {
        let w: &'static Writer = Box::leak(Box::new(Writer {
            pending: Mutex::new(Vec::with_capacity(WAKE_AT)),
            ready: Condvar::new(),
            dropped: metrics::counter!(nexus_core::metric_names::ACCESS_LOG_DROPPED_TOTAL),
        }));
        let spawned = std::thread::Builder::new().name("nexus-access-log".into()).spawn(move || {
            let mut out = Vec::with_capacity(WAKE_AT);
            loop {
                {
                    let mut pending = lock(&w.pending);
                    if pending.len() < WAKE_AT {
                        pending = w.ready.wait_timeout(pending, FLUSH_EVERY).map_or_else(|e| e.into_inner().0, |r| r.0);
                    }
                    std::mem::swap(&mut *pending, &mut out);
                }
                if !out.is_empty() {
                    let mut stdout = std::io::stdout().lock();
                    let _ = stdout.write_all(&out).and_then(|()| stdout.flush());
                    out.clear();
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access-log writer; access-log lines are dropped");
        }
        w
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Queue one line (with its newline) for the writer, or count it dropped.
fn append(line: &str) {
    let w = writer();
    let mut pending = lock(&w.pending);
    if pending.len() + line.len() > MAX_PENDING {
        drop(pending);
        w.dropped.increment(1);
        return;
    }
    pending.extend_from_slice(line.as_bytes());
    if pending.len() >= WAKE_AT {
        w.ready.notify_one();
    }
}

/// The route that answered (set on the response by the route's stack when logging is on).
#[derive(Debug, Clone)]
pub struct RouteName(pub Arc<str>);

/// The verified `sub` claim of the request (set on the response by the route's stack
/// when logging is on and the request was authenticated).
#[derive(Debug, Clone)]
pub struct User(pub String);

/// What is known of a request when it arrives; [`finish`](Self::finish) completes it
/// with the answer. Holds shared handles to the request's parts (no copies).
#[derive(Debug)]
pub struct Pending {
    timestamp: SystemTime,
    started: Instant,
    request_id: Option<HeaderValue>,
    traceparent: Option<HeaderValue>,
    client_ip: HeaderValue,
    method: Method,
    host: Option<HeaderValue>,
    uri: Uri,
    /// Write the access-log line (`logging.access_log`).
    log: bool,
    /// Export the request's server span (sampled, with an export).
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    trace: Option<crate::spans::Trace>,
}

/// A line waiting for the end of its body (bytes counted as they go out).
#[derive(Debug)]
pub(crate) struct Record {
    pending: Pending,
    status: u16,
    route: Option<Arc<str>>,
    user: Option<String>,
    reason: Option<&'static str>,
    request_id: Option<HeaderValue>,
    pub(crate) bytes: u64,
}

impl Pending {
    /// Note the request's arrival; `client_ip` as `X-Forwarded-For` would say it.
    pub fn start<B>(req: &Request<B>, client_ip: &HeaderValue) -> Self {
        Self::start_with(req, client_ip, true, None)
    }

    /// [`start`](Self::start) for an access-log line (`log`), a server span (`trace`: see
    /// [`Tracing::trace`](crate::spans::Tracing::trace)), or both.
    pub fn start_with<B>(
        req: &Request<B>,
        client_ip: &HeaderValue,
        log: bool,
        trace: Option<crate::spans::Trace>,
    ) -> Self {
        let headers = req.headers();
        Self {
            timestamp: SystemTime::now(),
            started: Instant::now(),
            request_id: headers.get(REQUEST_ID).cloned(),
            traceparent: headers.get("traceparent").cloned(),
            client_ip: client_ip.clone(),
            method: req.method().clone(),
            host: headers.get(header::HOST).cloned(),
            uri: req.uri().clone(),
            log,
            trace,
        }
    }

    /// Complete the line with `res`: written now when the answer's body is the gateway's
    /// own (its size known), or when the upstream's body has ended; otherwise it goes with
    /// the body and is written when the body ends (or is dropped: a client that went away).
    pub fn finish<B>(self, res: &mut Response<ResponseBody<B>>) {
        let ext = res.extensions();
        let mut record = Record {
            status: res.status().as_u16(),
            route: ext.get::<RouteName>().map(|r| Arc::clone(&r.0)),
            user: ext.get::<User>().map(|u| u.0.clone()),
            reason: ext.get::<GatewayError>().map(|e| e.code().as_str()),
            request_id: res.headers().get(REQUEST_ID).cloned(),
            bytes: 0,
            pending: self,
        };
        match res.body_mut() {
            GatewayBody::Full { data } => {
                record.bytes = data.as_ref().map_or(0, |d| d.len() as u64);
                record.write(None, None);
            }
            GatewayBody::Stream { body } => body.log_at_end(record),
        }
    }

    /// The line this request would get with `status` and `bytes` (for tests and examples).
    pub fn line_for_test(self, status: u16, bytes: u64) -> serde_json::Value {
        let record = Record { pending: self, status, route: None, user: None, reason: None, request_id: None, bytes };
        let mut line = String::new();
        record.format(&mut line, None, None);
        serde_json::from_str(&line).expect("an access-log line is JSON")
    }
}

impl Record {
    /// The JSON line (and its newline), appended to `out`.
    fn format(&self, out: &mut String, upstream: Option<&str>, endpoint: Option<&str>) {
        let p = &self.pending;
        fn text(v: &Option<HeaderValue>) -> Option<&str> {
            v.as_ref().and_then(|v| v.to_str().ok())
        }
        let host = text(&p.host).or_else(|| p.uri.authority().map(http::uri::Authority::as_str));
        let trace = p.traceparent.as_ref().and_then(trace_id);
        let _ = write!(out, "{{\"timestamp\":\"{}\"", humantime::format_rfc3339_millis(p.timestamp));
        field(out, "request_id", text(&self.request_id).or(text(&p.request_id)));
        field(out, "trace_id", trace);
        field(out, "client_ip", p.client_ip.to_str().ok());
        field(out, "method", Some(p.method.as_str()));
        field(out, "host", host);
        field(out, "path", Some(p.uri.path()));
        field(out, "route", self.route.as_deref());
        field(out, "upstream", upstream.filter(|u| !u.is_empty()));
        field(out, "endpoint", endpoint);
        let ms = p.started.elapsed().as_secs_f64() * 1000.0;
        let _ = write!(out, ",\"status\":{},\"duration_ms\":{ms:.3},\"bytes_sent\":{}", self.status, self.bytes);
        field(out, "user", self.user.as_deref());
        field(out, "reason", self.reason);
        out.push_str("}\n");
    }

    /// Hand the finished line to the writer (`upstream`, `endpoint`: who answered, when
    /// an upstream did).
    pub(crate) fn write(&self, upstream: Option<&str>, endpoint: Option<&str>) {
        #[cfg(feature = "otel")]
        if let Some(trace) = &self.pending.trace {
            self.export_span(trace, upstream);
        }
        if !self.pending.log {
            return;
        }
        thread_local!(static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) });
        LINE.with(|line| {
            // A reused buffer: no allocation per line once it has grown.
            let mut line = line.borrow_mut();
            line.clear();
            self.format(&mut line, upstream, endpoint);
            append(&line);
        });
    }
}

#[cfg(feature = "otel")]
impl Record {
    /// The request's server span, to its export.
    fn export_span(&self, trace: &crate::spans::Trace, upstream: Option<&str>) {
        let p = &self.pending;
        let request_id = self.request_id.as_ref().or(p.request_id.as_ref()).and_then(|v| v.to_str().ok());
        let span = nexus_middleware::otel::ServerSpan {
            method: p.method.as_str(),
            path: p.uri.path(),
            route: self.route.as_deref(),
            status: self.status,
            request_id,
            upstream: upstream.filter(|u| !u.is_empty()),
        };
        trace.export.record(span.finish(&trace.started, p.timestamp, SystemTime::now()));
    }
}

/// `,"key":"value"` (JSON-escaped) or `,"key":null`.
fn field(out: &mut String, key: &str, value: Option<&str>) {
    let _ = write!(out, ",\"{key}\":");
    match value {
        None => out.push_str("null"),
        Some(v) => {
            out.push('"');
            for c in v.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if u32::from(c) < 0x20 => {
                        let _ = write!(out, "\\u{:04x}", u32::from(c));
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
        }
    }
}

/// The trace id of a valid W3C `traceparent` (its 32 hex digits, borrowed).
fn trace_id(v: &HeaderValue) -> Option<&str> {
    nexus_middleware::trace_context::TraceParent::parse(v.as_bytes())?;
    v.to_str().ok().map(|s| &s[3..35])
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
pub(crate) fn client_ip(ext: &http::Extensions) -> HeaderValue {
    match ext.get::<crate::ClientInfo>() {
        Some(c) => c.ip.clone(),
        None => nexus_core::client::peer_of(ext)
            .and_then(|p| HeaderValue::from_str(&p.ip().to_string()).ok())
            .unwrap_or(HeaderValue::from_static("unknown")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_valid_traceparent_gives_a_trace_id() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let v = |s: String| HeaderValue::from_str(&s).unwrap();
        assert_eq!(trace_id(&v(format!("00-{id}-00f067aa0ba902b7-01"))), Some(id));
        assert_eq!(trace_id(&v(format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)))), None);
        assert_eq!(trace_id(&v("garbage".into())), None);
    }

    #[test]
    fn a_line_has_every_field_and_null_where_nothing_applies() {
        let req = Request::post("http://api.test/a/b?q=1").body(()).unwrap();
        let line = Pending::start(&req, &http::HeaderValue::from_static("10.0.0.1")).line_for_test(502, 0);
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
        // What a client sends is escaped: the line stays one JSON object.
        let odd = Request::get("/x").header("host", "a\"b\\c\tz").body(()).unwrap();
        let line = Pending::start(&odd, &http::HeaderValue::from_static("::1")).line_for_test(200, 1);
        assert_eq!(line["host"], "a\"b\\c\tz");
    }
}
