//! OpenTelemetry spans over OTLP/HTTP (feature `otel`; SPEC §9 "Tracing and access log").
//!
//! [`SpanExport`] takes finished spans and sends them in batches to a collector's
//! `<base>/v1/traces` (protobuf, encoded by `opentelemetry-otlp`), from a thread of its own:
//! a request only appends its span to a bounded queue. A full queue (a collector that is
//! down or slow) drops new spans and a failed export drops its batch; both are counted in
//! `nexus_trace_spans_dropped_total`. Export never blocks, delays or fails a request.
//!
//! [`OtelLayer`] gives any tower service (an axum app, for one) the gateway's W3C trace
//! context and a server span per sampled request. The `nexus` gateway builds the same spans
//! itself, with the route and the upstream, plus a client span per upstream try
//! ([`installed`] is the export those go to).
//!
//! ```no_run
//! # async fn run() -> Result<(), String> {
//! use nexus_middleware::otel::{OtelLayer, SpanExport};
//! use nexus_middleware::trace_context::Sampling;
//! let export = SpanExport::new("http://127.0.0.1:4318", "orders")?;
//! let layer = OtelLayer::new(Sampling::new(0.01, true), Some(export));
//! let svc = tower::ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(()))
//! });
//! # drop(svc); Ok(()) }
//! ```

use crate::trace_context::{Sampling, Started, TraceParent, ensure_with};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use pin_project_lite::pin_project;
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

/// Spans waiting for export; past this many new ones are dropped (and counted).
const MAX_QUEUED: usize = 8192;
/// A batch is sent once this many spans wait ...
const BATCH: usize = 512;
/// ... or this long after the last one, whichever comes first.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// An export that takes longer fails (its spans are dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where finished spans go: a bounded queue that a thread of its own exports to an OTLP/HTTP
/// collector in batches. Cheap to clone (one shared queue); the thread sends what is left
/// and ends when the last clone is dropped.
#[derive(Clone)]
pub struct SpanExport {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for SpanExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanExport")
            .field("endpoint", &self.handle.endpoint)
            .field("service_name", &self.handle.service_name)
            .finish_non_exhaustive()
    }
}

/// Dropped with the last [`SpanExport`]: tells the thread to send what is left and end.
struct Handle {
    queue: Arc<Queue>,
    endpoint: String,
    service_name: String,
}

impl Drop for Handle {
    fn drop(&mut self) {
        lock(&self.queue.state).closed = true;
        self.queue.ready.notify_one();
    }
}

struct Queue {
    state: Mutex<State>,
    ready: Condvar,
    dropped: metrics::Counter,
}

#[derive(Default)]
struct State {
    spans: Vec<SpanData>,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SpanExport {
    /// Export to the OTLP/HTTP collector at `base` (`http://otel-collector:4318`: spans are
    /// posted to `<base>/v1/traces`), as the resource `service.name = service_name`.
    ///
    /// Errors: an invalid URL, or a thread that cannot be started. A collector that cannot
    /// be reached is not an error here: its spans are dropped and counted.
    pub fn new(base: &str, service_name: &str) -> Result<Self, String> {
        let url = format!("{}/v1/traces", base.trim_end_matches('/'));
        let uri: http::Uri = url.parse().map_err(|e| format!("invalid OTLP endpoint {base:?}: {e}"))?;
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
        let client = OtlpClient { client: Client::builder(TokioExecutor::new()).build(https) };
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(uri.to_string())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the OTLP exporter for {base:?}: {e}"))?;
        exporter.set_resource(
            &opentelemetry_sdk::Resource::builder_empty().with_service_name(service_name.to_owned()).build(),
        );
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            dropped: metrics::counter!(nexus_core::metric_names::TRACE_SPANS_DROPPED_TOTAL),
        });
        let worker = Arc::clone(&queue);
        std::thread::Builder::new()
            .name("nexus-otlp-export".into())
            .spawn(move || export_loop(&worker, &exporter))
            .map_err(|e| format!("cannot start the span export thread: {e}"))?;
        Ok(Self {
            handle: Arc::new(Handle { queue, endpoint: base.to_owned(), service_name: service_name.to_owned() }),
        })
    }

    /// Whether `other` is a clone of this export (the same queue and thread).
    pub fn same_as(&self, other: &SpanExport) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }

    /// The collector's base URL, as given.
    pub fn endpoint(&self) -> &str {
        &self.handle.endpoint
    }

    /// The resource's `service.name`.
    pub fn service_name(&self) -> &str {
        &self.handle.service_name
    }

    /// Queue a finished span (or count it dropped when the queue is full). Never blocks
    /// on the collector: the lock is held for a push.
    pub fn record(&self, span: SpanData) {
        let q = &self.handle.queue;
        let mut state = lock(&q.state);
        if state.spans.len() >= MAX_QUEUED {
            drop(state);
            q.dropped.increment(1);
            return;
        }
        state.spans.push(span);
        if state.spans.len() == BATCH {
            q.ready.notify_one();
        }
    }
}

/// The export thread: a batch every second (or at [`BATCH`] spans), on a runtime of its own
/// so that a slow collector holds no worker of the gateway's.
fn export_loop(queue: &Queue, exporter: &opentelemetry_otlp::SpanExporter) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the span export runtime; spans are dropped");
            return;
        }
    };
    loop {
        let (batch, closed) = {
            let mut state = lock(&queue.state);
            if state.spans.len() < BATCH && !state.closed {
                state = queue.ready.wait_timeout(state, EXPORT_EVERY).map_or_else(|e| e.into_inner().0, |r| r.0);
            }
            (std::mem::take(&mut state.spans), state.closed)
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            if let Err(e) = rt.block_on(exporter.export(batch)) {
                queue.dropped.increment(n);
                tracing::warn!(error = %e, spans = n, "span export failed; the batch is dropped");
            }
        }
        if closed {
            return;
        }
    }
}

/// The HTTP client `opentelemetry-otlp` posts with: hyper's, with rustls and the webpki
/// roots for an `https://` collector, and a cap on the answer's size.
#[derive(Debug)]
struct OtlpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        let work = async {
            let res = self.client.request(request.map(Full::new)).await?;
            let (parts, body) = res.into_parts();
            let body = Limited::new(body, 1 << 20).collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(Response::from_parts(parts, body))
        };
        tokio::time::timeout(EXPORT_TIMEOUT, work).await.map_err(|_| "the collector did not answer in time")?
    }
}

/// The export the gateway's client spans go to (see [`install`]).
static INSTALLED: ArcSwapOption<SpanExport> = ArcSwapOption::const_empty();
/// Whether one is installed: one relaxed load on the request path when tracing is off.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Make `export` the process's span export (`None`: none), for the spans the gateway makes
/// where no config is at hand (an upstream try's client span). The `nexus` binary installs
/// its config's export on start and on every reload.
pub fn install(export: Option<SpanExport>) {
    EXPORTING.store(export.is_some(), Ordering::Relaxed);
    INSTALLED.store(export.map(Arc::new));
}

/// Whether a span export is installed (one relaxed load).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The installed span export, if any.
pub fn installed() -> Option<Arc<SpanExport>> {
    if EXPORTING.load(Ordering::Relaxed) { INSTALLED.load_full() } else { None }
}

/// The instrumentation scope of every span Nexus makes.
fn scope() -> InstrumentationScope {
    static SCOPE: OnceLock<InstrumentationScope> = OnceLock::new();
    SCOPE.get_or_init(|| InstrumentationScope::builder("nexus").with_version(env!("CARGO_PKG_VERSION")).build()).clone()
}

/// A finished span of `trace`.
#[allow(clippy::too_many_arguments)]
fn span(
    trace: [u8; 16],
    id: [u8; 8],
    parent: Option<[u8; 8]>,
    remote_parent: bool,
    kind: SpanKind,
    name: String,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    error: bool,
) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(trace),
            SpanId::from_bytes(id),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: parent.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: remote_parent,
        span_kind: kind,
        name: Cow::Owned(name),
        start_time: start,
        end_time: end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if error { Status::error("") } else { Status::Unset },
        instrumentation_scope: scope(),
    }
}

/// What a server span says of its request (OpenTelemetry HTTP semantic conventions).
#[derive(Debug, Clone, Default)]
pub struct ServerSpan<'a> {
    /// `http.request.method`.
    pub method: &'a str,
    /// `url.path` (never the query string).
    pub path: &'a str,
    /// `http.route`: the gateway route's name.
    pub route: Option<&'a str>,
    /// `http.response.status_code`.
    pub status: u16,
    /// `nexus.request_id`.
    pub request_id: Option<&'a str>,
    /// `nexus.upstream`: the upstream that answered.
    pub upstream: Option<&'a str>,
}

impl ServerSpan<'_> {
    /// The finished span of the request `started` (its id: the `traceparent` parent id the
    /// gateway sent upstream), from `start` to `end`. A 5xx is an error (a 4xx is not, for a
    /// server span).
    pub fn finish(&self, started: &Started, start: SystemTime, end: SystemTime) -> SpanData {
        let mut attributes = Vec::with_capacity(6);
        attributes.push(KeyValue::new("http.request.method", self.method.to_owned()));
        attributes.push(KeyValue::new("url.path", self.path.to_owned()));
        attributes.push(KeyValue::new("http.response.status_code", i64::from(self.status)));
        if let Some(route) = self.route {
            attributes.push(KeyValue::new("http.route", route.to_owned()));
        }
        if let Some(id) = self.request_id {
            attributes.push(KeyValue::new("nexus.request_id", id.to_owned()));
        }
        if let Some(upstream) = self.upstream {
            attributes.push(KeyValue::new("nexus.upstream", upstream.to_owned()));
        }
        let name = match self.route {
            Some(route) => format!("{} {route}", self.method),
            None => self.method.to_owned(),
        };
        let ours = &started.ours;
        span(
            ours.trace_id,
            ours.parent_id,
            started.parent_id,
            started.parent_id.is_some(),
            SpanKind::Server,
            name,
            start,
            end,
            attributes,
            self.status >= 500,
        )
    }
}

/// An upstream try's client span, started when the try is sent.
#[derive(Debug, Clone, Copy)]
pub struct ClientSpan {
    trace: TraceParent,
    id: [u8; 8],
    start: SystemTime,
}

impl ClientSpan {
    /// A client span under the server span `server` (the request's `traceparent` as the
    /// gateway sent it upstream), starting now.
    pub fn start(server: &TraceParent) -> Self {
        Self { trace: *server, id: crate::trace_context::new_span_id(), start: SystemTime::now() }
    }

    /// The `traceparent` this try carries: the same trace, this span as the parent.
    pub fn traceparent(&self) -> TraceParent {
        TraceParent { parent_id: self.id, ..self.trace }
    }

    /// The finished span: `server.address`, `server.port`, `nexus.attempt` (1 for the first
    /// try), and `http.response.status_code` or `error.type` (`Some(reason)` for a try that
    /// got no answer).
    pub fn finish(&self, method: &str, authority: &str, attempt: u32, outcome: Result<u16, &str>) -> SpanData {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, p.parse::<i64>().ok()),
            _ => (authority, None),
        };
        let mut attributes = Vec::with_capacity(5);
        attributes.push(KeyValue::new("http.request.method", method.to_owned()));
        attributes.push(KeyValue::new("server.address", host.trim_start_matches('[').trim_end_matches(']').to_owned()));
        if let Some(port) = port {
            attributes.push(KeyValue::new("server.port", port));
        }
        attributes.push(KeyValue::new("nexus.attempt", i64::from(attempt)));
        let error = match outcome {
            Ok(status) => {
                attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
                status >= 400
            }
            Err(reason) => {
                attributes.push(KeyValue::new("error.type", reason.to_owned()));
                true
            }
        };
        span(
            self.trace.trace_id,
            self.id,
            Some(self.trace.parent_id),
            false,
            SpanKind::Client,
            method.to_owned(),
            self.start,
            SystemTime::now(),
            attributes,
            error,
        )
    }
}

/// W3C trace context and a server span per sampled request, for any service: the request
/// gets one `traceparent` (continued or new, sampled per [`Sampling`]); a sampled request's
/// span (method, path, status) is exported when its response head is ready.
#[derive(Debug, Clone)]
pub struct OtelLayer {
    sampling: Sampling,
    export: Option<SpanExport>,
}

impl OtelLayer {
    /// Sample per `sampling`; export sampled spans to `export` (`None`: propagation only).
    pub fn new(sampling: Sampling, export: Option<SpanExport>) -> Self {
        Self { sampling, export }
    }
}

impl<S> tower::Layer<S> for OtelLayer {
    type Service = Otel<S>;
    fn layer(&self, inner: S) -> Otel<S> {
        Otel { inner, sampling: self.sampling, export: self.export.clone() }
    }
}

/// The service of [`OtelLayer`].
#[derive(Debug, Clone)]
pub struct Otel<S> {
    inner: S,
    sampling: Sampling,
    export: Option<SpanExport>,
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for Otel<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = OtelFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let started = ensure_with(req.headers_mut(), &self.sampling);
        let pending = match &self.export {
            Some(export) if started.ours.sampled() => Some(Box::new(PendingSpan {
                export: export.clone(),
                started,
                start: SystemTime::now(),
                method: req.method().clone(),
                path: req.uri().path().to_owned(),
                request_id: req
                    .headers()
                    .get(nexus_core::error::REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            })),
            _ => None,
        };
        OtelFuture { fut: self.inner.call(req), pending }
    }
}

/// A sampled request's span, waiting for its response.
#[derive(Debug)]
struct PendingSpan {
    export: SpanExport,
    started: Started,
    start: SystemTime,
    method: http::Method,
    path: String,
    request_id: Option<String>,
}

pin_project! {
    /// Response future of [`Otel`].
    #[derive(Debug)]
    pub struct OtelFuture<F> {
        #[pin]
        fut: F,
        pending: Option<Box<PendingSpan>>,
    }
}

impl<F, ResB, E> Future for OtelFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = ready!(this.fut.poll(cx));
        if let Some(p) = this.pending.take() {
            let status = out.as_ref().map_or(500, |res| res.status().as_u16());
            let span = ServerSpan {
                method: p.method.as_str(),
                path: &p.path,
                status,
                request_id: p.request_id.as_deref(),
                ..ServerSpan::default()
            };
            p.export.record(span.finish(&p.started, p.start, SystemTime::now()));
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, ServiceExt};

    #[tokio::test]
    async fn the_layer_gives_every_request_one_traceparent_and_waits_for_its_service() {
        let svc =
            OtelLayer::new(Sampling::new(1.0, false), None).layer(tower::service_fn(|req: Request<()>| async move {
                let v = req.headers().get_all(crate::trace_context::TRACEPARENT).iter().collect::<Vec<_>>();
                assert_eq!(v.len(), 1);
                let tp = TraceParent::parse(v[0].as_bytes()).expect("a valid traceparent");
                Ok::<_, std::convert::Infallible>(Response::new(tp.sampled()))
            }));
        let req = Request::get("/").header("traceparent", "junk").header("traceparent", "more").body(()).unwrap();
        assert!(svc.clone().oneshot(req).await.unwrap().into_body(), "sample_ratio 1.0 samples it");

        // Readiness is the inner service's.
        let (mut svc, mut handle) =
            tower_test::mock::spawn_layer::<Request<()>, Response<()>, _>(OtelLayer::new(Sampling::default(), None));
        handle.allow(0);
        assert!(svc.poll_ready().is_pending());
        assert!(svc.poll_ready().is_pending(), "still pending when polled again");
        handle.allow(1);
        assert!(svc.poll_ready().is_ready());
    }

    #[test]
    fn spans_carry_the_trace_their_parents_and_the_semantic_attributes() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let started = ensure_with(&mut headers, &Sampling::default());
        let now = SystemTime::now();
        let server = ServerSpan { method: "GET", path: "/a", route: Some("orders"), status: 503, ..Default::default() }
            .finish(&started, now, now);
        assert_eq!(server.span_context.trace_id(), TraceId::from_bytes(started.ours.trace_id));
        assert_eq!(server.span_context.span_id(), SpanId::from_bytes(started.ours.parent_id), "the id sent upstream");
        assert_eq!(server.parent_span_id, SpanId::from_bytes([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]));
        assert_eq!((server.name.as_ref(), server.span_kind.clone()), ("GET orders", SpanKind::Server));
        assert!(matches!(server.status, Status::Error { .. }), "a 5xx is an error");
        let client = ClientSpan::start(&started.ours);
        assert_eq!(client.traceparent().trace_id, started.ours.trace_id);
        let span = client.finish("GET", "[::1]:8080", 2, Err("connect"));
        assert_eq!(span.parent_span_id, server.span_context.span_id());
        assert_eq!(span.span_context.span_id(), SpanId::from_bytes(client.traceparent().parent_id));
        let attr = |k: &str| span.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| kv.value.to_string());
        assert_eq!(attr("server.address").as_deref(), Some("::1"));
        assert_eq!(attr("server.port").as_deref(), Some("8080"));
        assert_eq!(attr("nexus.attempt").as_deref(), Some("2"));
        assert_eq!(attr("error.type").as_deref(), Some("connect"));
    }
}
