//! Request metrics with the names and labels of SPEC §5, through the `metrics`
//! facade (a no-op until the application installs a recorder).
//!
//! Handles are registered once per label set and cached per route in a
//! copy-on-write list, so the hot path is a short scan and two atomic adds,
//! not a registry lookup with freshly allocated label strings.

use crate::body::{ResponseBody, upstream_of};
use arc_swap::ArcSwap;
use http::{Method, Request, Response};
use metrics::{Counter, Histogram, Label, SharedString};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Instant;

pub use nexus_core::metric_names::{
    HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_TOTAL, UPSTREAM_ENDPOINT_HEALTHY, UPSTREAM_REQUESTS_TOTAL,
};
/// The route label of requests no route matched.
pub const UNMATCHED: &str = "_unmatched";
/// Duration buckets in seconds (SPEC §8).
pub const DURATION_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Give every metric the gateway library records its Prometheus `# HELP` text (and the
/// histogram its unit), through the `metrics` facade: call it once after installing a recorder.
/// The `nexus` binary does; an embedder that serves `/metrics` from its own recorder calls it
/// to get the same descriptions. (The binary's own series, config reloads, config version and
/// build info, are described by the binary.)
///
/// ```
/// let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
///     .set_buckets_for_metric(
///         metrics_exporter_prometheus::Matcher::Full(nexus_proxy::metrics::HTTP_REQUEST_DURATION_SECONDS.into()),
///         &nexus_proxy::metrics::DURATION_BUCKETS,
///     )
///     .unwrap()
///     .build_recorder();
/// let handle = recorder.handle();
/// metrics::with_local_recorder(&recorder, || {
///     nexus_proxy::metrics::describe();
///     metrics::counter!(nexus_proxy::metrics::UPSTREAM_REQUESTS_TOTAL).increment(1);
/// });
/// assert!(handle.render().contains("# HELP nexus_upstream_requests_total Requests sent"));
/// ```
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use nexus_core::metric_names as m;
    describe_counter!(m::HTTP_REQUESTS_TOTAL, "Requests answered, by route, method, status and upstream.");
    describe_histogram!(
        m::HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time to response headers, by route, method and status."
    );
    describe_counter!(m::UPSTREAM_REQUESTS_TOTAL, "Requests sent to upstream endpoints, by outcome.");
    describe_gauge!(m::UPSTREAM_ENDPOINT_HEALTHY, "1 when the endpoint may receive traffic.");
    describe_gauge!(m::INFLIGHT_REQUESTS, "Requests being served.");
    describe_gauge!(m::UPSTREAM_ENDPOINT_EJECTED, "1 while outlier detection keeps the endpoint out of balancing.");
    describe_counter!(m::OUTLIER_EJECTIONS_TOTAL, "Ejections by outlier detection, by endpoint.");
    describe_counter!(m::UPSTREAM_RETRIES_TOTAL, "Retries sent to an upstream.");
    describe_gauge!(m::CIRCUIT_BREAKER_STATE, "Circuit breaker state: 0 closed, 1 half-open, 2 open.");
    describe_counter!(m::RATE_LIMITED_TOTAL, "Requests refused by a rate limit (429), by route and limit.");
    describe_counter!(
        m::RATE_LIMIT_UNKNOWN_CLIENT_TOTAL,
        "Requests a per-client limit refused for want of a client address."
    );
    describe_counter!(m::AUTH_FAILURES_TOTAL, "Requests refused by JWT authentication, by route and reason.");
    describe_counter!(m::MIRROR_REQUESTS_TOTAL, "Mirrored copies, by route, upstream and outcome.");
    describe_counter!(m::JWT_CACHE_REQUESTS_TOTAL, "Verified-token cache lookups, hit or miss.");
    describe_counter!(
        m::GRPC_RESPONSES_TOTAL,
        "gRPC answers by route and grpc-status, the upstream's or the gateway's own."
    );
    describe_gauge!(m::TLS_CERTIFICATE_EXPIRY, "A loaded certificate's notAfter, as Unix time.");
    describe_counter!(m::TLS_RELOADS_TOTAL, "TLS certificate reloads, by result.");
    describe_counter!(m::TLS_HANDSHAKE_FAILURES_TOTAL, "Failed TLS handshakes, by reason.");
    describe_counter!(m::ACCESS_LOG_DROPPED_TOTAL, "Access-log lines dropped because the writer fell behind.");
    describe_counter!(
        m::TRACE_SPANS_DROPPED_TOTAL,
        "Spans not exported: the export queue was full or the collector failed."
    );
}

#[derive(Clone)]
struct Entry {
    method: Method,
    status: u16,
    upstream: SharedString,
    requests: Counter,
    duration: Histogram,
}

/// The request metrics of one route.
pub struct RouteMetrics {
    route: SharedString,
    cache: ArcSwap<Vec<Entry>>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics").field("route", &self.route).finish_non_exhaustive()
    }
}

/// Methods outside the standard set share one label value, so a client cannot
/// grow the metric's cardinality at will.
fn method_label(m: &Method) -> Method {
    match *m {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::HEAD
        | Method::OPTIONS
        | Method::CONNECT
        | Method::TRACE => m.clone(),
        _ => Method::from_bytes(b"OTHER").unwrap_or(Method::GET),
    }
}

impl RouteMetrics {
    /// Metrics for the route named `route`.
    pub fn new(route: &str) -> Self {
        Self { route: SharedString::from(route.to_string()), cache: ArcSwap::from_pointee(Vec::new()) }
    }

    /// Count one request and its time to response headers.
    pub fn record(&self, method: &Method, status: u16, upstream: &str, elapsed: Duration) {
        let cache = self.cache.load();
        let hit = cache.iter().find(|e| e.status == status && e.method == *method && &*e.upstream == upstream);
        // Through the cached entry's handles (no clone: that would be two atomic ref-count pairs).
        let registered;
        let entry = match hit {
            Some(e) => e,
            None => {
                registered = self.register(method, status, upstream);
                &registered
            }
        };
        entry.requests.increment(1);
        entry.duration.record(elapsed.as_secs_f64());
    }

    #[cold]
    fn register(&self, method: &Method, status: u16, upstream: &str) -> Entry {
        let m = method_label(method);
        let status_s = SharedString::from(status.to_string());
        let method_s = SharedString::from(m.as_str().to_string());
        let up = SharedString::from(upstream.to_string());
        let requests = metrics::counter!(
            HTTP_REQUESTS_TOTAL,
            vec![
                Label::new("route", self.route.clone()),
                Label::new("method", method_s.clone()),
                Label::new("status", status_s.clone()),
                Label::new("upstream", up.clone()),
            ]
        );
        let duration = metrics::histogram!(
            HTTP_REQUEST_DURATION_SECONDS,
            vec![
                Label::new("route", self.route.clone()),
                Label::new("method", method_s),
                Label::new("status", status_s),
            ]
        );
        let entry = Entry { method: method.clone(), status, upstream: up, requests, duration };
        self.cache.rcu(|old| {
            let mut v = Vec::clone(old);
            if !v.iter().any(|e| e.status == status && e.method == *method && &*e.upstream == upstream) {
                v.push(entry.clone());
            }
            Arc::new(v)
        });
        entry
    }
}

/// `nexus_upstream_requests_total` counters of one endpoint, by outcome, and its
/// outlier-detection gauge and counter.
#[derive(Debug)]
pub(crate) struct EndpointMetrics {
    pub(crate) success: Counter,
    pub(crate) error: Counter,
    pub(crate) timeout: Counter,
    /// `nexus_upstream_endpoint_ejected` / `nexus_outlier_ejections_total`: registered only
    /// for upstreams with outlier detection (no series of zeros for the others).
    pub(crate) ejected: Option<(metrics::Gauge, Counter)>,
}

impl EndpointMetrics {
    pub(crate) fn new(upstream: &str, endpoint: &str, outliers: bool) -> Self {
        let c = |outcome: &'static str| {
            metrics::counter!(UPSTREAM_REQUESTS_TOTAL, "upstream" => upstream.to_string(),
                "endpoint" => endpoint.to_string(), "outcome" => outcome)
        };
        let labels = [("upstream", upstream.to_string()), ("endpoint", endpoint.to_string())];
        Self {
            success: c("success"),
            error: c("error"),
            timeout: c("timeout"),
            ejected: outliers.then(|| {
                (
                    metrics::gauge!(nexus_core::metric_names::UPSTREAM_ENDPOINT_EJECTED, &labels),
                    metrics::counter!(nexus_core::metric_names::OUTLIER_EJECTIONS_TOTAL, &labels),
                )
            }),
        }
    }
}

/// Counts every response of a route in `http_requests_total` and
/// `http_request_duration_seconds`, whoever made it (the upstream, or a layer
/// below that answered itself: 401, 429, 503, ...); the `upstream` label comes
/// from the response body ([`upstream_of`]). The outermost layer of a route's
/// stack, so its time covers every layer.
#[derive(Debug, Clone)]
pub struct RouteMetricsLayer {
    metrics: Arc<RouteMetrics>,
}

impl RouteMetricsLayer {
    /// Record under the route named `route`.
    pub fn new(route: &str) -> Self {
        Self { metrics: Arc::new(RouteMetrics::new(route)) }
    }

    /// [`Layer::layer`](tower::Layer::layer) for a service that lives no longer than this
    /// layer: it borrows the route's metrics instead of sharing them, so neither wrapping
    /// nor a request touches a reference count. For a stack applied per request, as the
    /// Nexus gateway does: with [`Layer::layer`](tower::Layer::layer), every request would
    /// increment and decrement a count that every worker thread shares, twice.
    ///
    /// ```
    /// use nexus_proxy::metrics::RouteMetricsLayer;
    /// use tower::ServiceExt;
    ///
    /// # tokio_test_block_on(async {
    /// let layer = RouteMetricsLayer::new("users");
    /// let inner = tower::service_fn(|_req: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(nexus_proxy::ResponseBody::<()>::empty()))
    /// });
    /// let res = layer.layer_ref(inner).oneshot(http::Request::new(())).await.unwrap();
    /// assert_eq!(res.status(), 200);
    /// # });
    /// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    /// # }
    /// ```
    pub fn layer_ref<S>(&self, inner: S) -> Recorded<S, &RouteMetrics> {
        Recorded { inner, metrics: &self.metrics }
    }
}

impl<S> tower::Layer<S> for RouteMetricsLayer {
    type Service = Recorded<S>;
    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded { inner, metrics: Arc::clone(&self.metrics) }
    }
}

/// The service of [`RouteMetricsLayer`]. `M` is how it holds the route's metrics: shared
/// (`Arc`, from [`Layer::layer`](tower::Layer::layer)) or borrowed (from
/// [`RouteMetricsLayer::layer_ref`]).
#[derive(Debug, Clone)]
pub struct Recorded<S, M = Arc<RouteMetrics>> {
    inner: S,
    metrics: M,
}

impl<S, M, ReqB, B> tower::Service<Request<ReqB>> for Recorded<S, M>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResponseBody<B>>>,
    M: std::ops::Deref<Target = RouteMetrics> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RecordedFuture<S::Future, M>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let method = req.method().clone();
        RecordedFuture { fut: self.inner.call(req), started: Instant::now(), method, metrics: self.metrics.clone() }
    }
}

pin_project! {
    /// Response future of [`Recorded`].
    #[derive(Debug)]
    pub struct RecordedFuture<F, M = Arc<RouteMetrics>> {
        #[pin]
        fut: F,
        started: Instant,
        method: Method,
        metrics: M,
    }
}

impl<F, M, B, E> Future for RecordedFuture<F, M>
where
    F: Future<Output = Result<Response<ResponseBody<B>>, E>>,
    M: std::ops::Deref<Target = RouteMetrics>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = ready!(this.fut.poll(cx));
        if let Ok(res) = &out {
            let upstream = upstream_of(res.body());
            this.metrics.record(this.method, res.status().as_u16(), upstream, this.started.elapsed());
        }
        Poll::Ready(out)
    }
}

/// `nexus_grpc_responses_total{route,grpc_status}` of one route: a counter per status code
/// (0 to 16, and `other` for anything else), registered at the route's first gRPC answer.
#[derive(Debug)]
pub(crate) struct GrpcResponses {
    route: String,
    counters: std::sync::OnceLock<Box<[metrics::Counter; 18]>>,
}

impl GrpcResponses {
    pub(crate) fn new(route: &str) -> Self {
        Self { route: route.to_owned(), counters: std::sync::OnceLock::new() }
    }

    /// Count one answer whose `grpc-status` is `status` (`None`: the stream ended without
    /// one, which a gRPC client reads as an error: counted as 13, INTERNAL).
    pub(crate) fn count(&self, status: Option<&http::HeaderValue>) {
        let counters = self.counters.get_or_init(|| {
            Box::new(std::array::from_fn(|i| {
                let label = if i < 17 { i.to_string() } else { "other".to_owned() };
                metrics::counter!(nexus_core::metric_names::GRPC_RESPONSES_TOTAL,
                    "route" => self.route.clone(), "grpc_status" => label)
            }))
        });
        let i = match status.map(http::HeaderValue::as_bytes) {
            None => 13,
            Some(v) => {
                std::str::from_utf8(v).ok().and_then(|s| s.parse::<usize>().ok()).filter(|n| *n < 17).unwrap_or(17)
            }
        };
        counters[i].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, ServiceExt};

    /// The route's answer, 201 (a status nothing else in the test makes).
    async fn created(_req: Request<()>) -> Result<Response<ResponseBody<()>>, std::convert::Infallible> {
        let mut res = Response::new(ResponseBody::<()>::empty());
        *res.status_mut() = http::StatusCode::CREATED;
        Ok(res)
    }

    #[test]
    fn every_series_the_library_records_has_a_help_line() {
        use nexus_core::metric_names as m;
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counters = [
            m::HTTP_REQUESTS_TOTAL,
            m::UPSTREAM_REQUESTS_TOTAL,
            m::OUTLIER_EJECTIONS_TOTAL,
            m::UPSTREAM_RETRIES_TOTAL,
            m::RATE_LIMITED_TOTAL,
            m::RATE_LIMIT_UNKNOWN_CLIENT_TOTAL,
            m::AUTH_FAILURES_TOTAL,
            m::MIRROR_REQUESTS_TOTAL,
            m::JWT_CACHE_REQUESTS_TOTAL,
            m::GRPC_RESPONSES_TOTAL,
            m::TLS_RELOADS_TOTAL,
            m::TLS_HANDSHAKE_FAILURES_TOTAL,
            m::ACCESS_LOG_DROPPED_TOTAL,
            m::TRACE_SPANS_DROPPED_TOTAL,
        ];
        let gauges = [
            m::UPSTREAM_ENDPOINT_HEALTHY,
            m::INFLIGHT_REQUESTS,
            m::UPSTREAM_ENDPOINT_EJECTED,
            m::CIRCUIT_BREAKER_STATE,
            m::TLS_CERTIFICATE_EXPIRY,
        ];
        metrics::with_local_recorder(&recorder, || {
            describe();
            for name in counters {
                metrics::counter!(name).increment(1);
            }
            for name in gauges {
                metrics::gauge!(name).set(1.0);
            }
            metrics::histogram!(m::HTTP_REQUEST_DURATION_SECONDS).record(0.001);
        });
        let text = handle.render();
        for name in counters.iter().chain(&gauges).chain(&[m::HTTP_REQUEST_DURATION_SECONDS]) {
            assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name} in:\n{text}");
        }
        // The duration histogram says its unit (`metrics`' `Unit::Seconds`).
        assert!(text.contains("# HELP http_request_duration_seconds Time to response headers"), "{text}");
    }

    #[test]
    fn borrowed_and_shared_services_count_into_the_same_series() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        metrics::with_local_recorder(&recorder, || {
            rt.block_on(async {
                let layer = RouteMetricsLayer::new("users");
                let shared = layer.layer(tower::service_fn(created));
                assert_eq!(shared.oneshot(Request::new(())).await.unwrap().status(), 201);
                let borrowed = layer.layer_ref(tower::service_fn(created));
                assert_eq!(borrowed.oneshot(Request::new(())).await.unwrap().status(), 201);
            });
        });
        let text = handle.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("http_requests_total{") && l.contains(r#"status="201""#))
            .unwrap_or_else(|| panic!("no http_requests_total for 201 in:\n{text}"));
        assert!(line.contains(r#"route="users""#) && line.contains(r#"method="GET""#), "{line}");
        assert!(line.ends_with(" 2"), "both requests in one series: {line}");
        let count = text
            .lines()
            .find(|l| l.starts_with("http_request_duration_seconds_count{") && l.contains(r#"status="201""#))
            .unwrap_or_else(|| panic!("no duration histogram in:\n{text}"));
        assert!(count.ends_with(" 2"), "{count}");
    }
}
