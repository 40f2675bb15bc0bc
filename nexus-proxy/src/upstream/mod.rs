//! One upstream: its endpoints, their balancer, and per-endpoint pools of
//! keep-alive HTTP/1.1 connections (the crate's `pool` module).

mod auto;
mod build;
mod retry;
mod send;
#[cfg(feature = "otel")]
mod spans;

use nexus_middleware::retry::Retries;
pub(crate) use retry::rebuild;
use send::{Outgoing, to_origin_form};

use crate::balance::{Balancer, Rng};
use crate::body::UpstreamBody;
use crate::error::{ErrorKind, ProxyError};
use crate::headers::HeadScan;
use crate::metrics::EndpointMetrics;
use crate::pool::EndpointPool;
use crate::replay::SendBody;
use futures_util::FutureExt;
use futures_util::future::Either;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use nexus_core::BoxError;
use nexus_core::breaker::State;
use nexus_core::ewma::PeakEwma;
use nexus_core::outlier::{Answer, Outliers};
use nexus_core::retry::is_idempotent;
use nexus_core::upstream::EndpointAddr;
use nexus_health::shutdown::Tracker;
use nexus_health::upstream::{Checks, EndpointHealth};
use nexus_middleware::circuit_breaker::SharedBreaker;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// One endpoint of an upstream, with its live state and idle connections.
#[derive(Debug)]
pub struct Endpoint<B> {
    url: String,
    addr: EndpointAddr,
    in_flight: AtomicUsize,
    health: Arc<EndpointHealth>,
    healthy_gauge: metrics::Gauge,
    metrics: EndpointMetrics,
    /// Peak-EWMA latency (fed only under `load_balancing: peak_ewma`).
    ewma: Arc<PeakEwma>,
    pool: EndpointPool<SendBody<B>>,
    /// `protocol: h2 | h2c`: every request goes over these multiplexed connections; and
    /// `protocol: auto` on `https://`: they do once the endpoint picked `h2` in ALPN.
    h2: Option<crate::h2::H2Pool<SendBody<B>>>,
    /// `protocol: auto` on `https://`: what the endpoint was found to speak.
    learned: Option<auto::Learned>,
}

impl<B> Endpoint<B> {
    /// The URL from the config.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `host:port` (the `endpoint` metric label).
    pub fn authority(&self) -> &str {
        self.addr.authority()
    }

    /// Requests in flight to this endpoint.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether balancing may pick it (endpoints are healthy until a check says otherwise).
    pub fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }

    /// The endpoint's health state (with the last active check, if any).
    pub fn health(&self) -> &EndpointHealth {
        &self.health
    }

    /// Mark healthy or not (for active health checks).
    pub fn set_healthy(&self, healthy: bool) {
        self.health.set_healthy(healthy);
        self.healthy_gauge.set(if healthy { 1.0 } else { 0.0 });
    }

    pub(crate) fn pool(&self) -> &EndpointPool<SendBody<B>> {
        &self.pool
    }
}

impl<B> Endpoint<B>
where
    B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Idle keep-alive connections to this endpoint.
    pub fn idle_connections(&self) -> usize {
        self.pool.idle()
    }
}

#[derive(Debug)]
struct Shared<B> {
    name: String,
    /// `nexus_upstream_requests_total{outcome="rejected"}`: no endpoint was tried.
    rejected: metrics::Counter,
    endpoints: Box<[Endpoint<B>]>,
    in_flight: AtomicUsize,
    max_concurrent: usize,
}

/// A request's slot in the upstream's and the endpoint's in-flight counts; freed on
/// release (when the response's body ends, its connection back in the pool, or is aborted) or
/// on drop. It also names the upstream (the metric label of
/// a response body), so a body keeps it after the slot is freed.
#[derive(Debug)]
pub struct InFlight<B> {
    shared: Arc<Shared<B>>,
    endpoint: usize,
    /// The counts were given back (or never taken: [`InFlight::detached`]).
    released: bool,
}

impl<B> InFlight<B> {
    pub(crate) fn endpoint(&self) -> &Endpoint<B> {
        &self.shared.endpoints[self.endpoint]
    }

    /// The upstream's name.
    pub(crate) fn upstream(&self) -> &str {
        &self.shared.name
    }

    /// The endpoint's `host:port`; `None` for a tag that names only the upstream.
    pub(crate) fn endpoint_name(&self) -> Option<&str> {
        self.shared.endpoints.get(self.endpoint).map(Endpoint::authority)
    }

    /// Whether the slot is still held.
    pub(crate) fn is_held(&self) -> bool {
        !self.released
    }

    /// Give the slot back (once; later calls do nothing).
    pub(crate) fn release(&mut self) {
        if !self.released {
            self.released = true;
            self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.shared.endpoints[self.endpoint].in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<B> Drop for InFlight<B> {
    fn drop(&mut self) {
        self.release();
    }
}

/// What the proxy needs to know of the client for `X-Forwarded-*`.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client IP as a header value (computed once per connection).
    pub ip: HeaderValue,
    /// Whether the peer is a trusted proxy (its `X-Forwarded-Proto/-Host` are kept).
    pub trusted: bool,
    /// Where upgraded (WebSocket) connections are counted, so shutdown waits for them.
    pub tracker: Option<Tracker>,
    /// The TCP peer's address (the client IP of rate-limit keys); `None` when the server
    /// did not say (see [`ClientInfo::unknown`]).
    pub peer: Option<std::net::IpAddr>,
    /// The request arrived over TLS: `X-Forwarded-Proto: https` upstream.
    pub https: bool,
}

impl ClientInfo {
    /// Client info for a peer, given the trusted proxy networks.
    pub fn new(peer: std::net::IpAddr, trusted: &[ipnet::IpNet]) -> Self {
        let ip = match peer {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, std::net::IpAddr::V4),
            v4 => v4,
        };
        Self {
            ip: HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown")),
            trusted: nexus_core::client::is_trusted(peer, trusted),
            tracker: None,
            peer: Some(peer),
            https: false,
        }
    }

    /// A client whose address the server did not give: `X-Forwarded-For: unknown`
    /// (RFC 7239's word for it), and per-client rate limits answer 500 rather than share
    /// one bucket among every such request.
    pub fn unknown() -> Self {
        Self { ip: HeaderValue::from_static("unknown"), trusted: false, tracker: None, peer: None, https: false }
    }

    /// Mark the connection as TLS (`X-Forwarded-Proto: https` upstream).
    pub fn with_https(mut self, https: bool) -> Self {
        self.https = https;
        self
    }

    /// `X-Forwarded-Proto`'s value: `"https"` over TLS, else `"http"`.
    pub fn proto(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    /// Count upgraded connections in `tracker` (a graceful shutdown waits for them).
    pub fn with_tracker(mut self, tracker: Tracker) -> Self {
        self.tracker = Some(tracker);
        self
    }
}

/// An upstream: endpoints, balancer and pooled client, for request bodies of type `B`.
#[derive(Debug)]
pub struct Upstream<B> {
    shared: Arc<Shared<B>>,
    balancer: Balancer,
    rng: Rng,
    connect_timeout: Duration,
    timeout: Option<Duration>,
    /// Active health checks; dropping the upstream (an old config version) stops them.
    _checks: Option<Checks>,
    /// One per upstream, shared by every route that names it (the same type as
    /// `CircuitBreakerLayer`'s).
    breaker: Option<SharedBreaker>,
    /// The `retry` block: decided by the same `Retries` as `RetryLayer`.
    retry: Option<Retries>,
    /// Passive outlier detection; `None` without an `outlier_detection` block.
    outliers: Option<Outliers>,
    /// `load_balancing: peak_ewma`: answers feed the endpoints' latency estimates.
    peak_ewma: bool,
    /// The clock of ejections and latency estimates.
    clock: Epoch,
    /// The endpoints' weights (0: parked).
    weights: Box<[u32]>,
    /// TLS to the `https://` endpoints (shared by their connectors; re-read by `reload_tls`).
    #[cfg(feature = "tls")]
    tls: Option<Arc<crate::tls::UpstreamTls>>,
}

impl<B> Upstream<B>
where
    B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A name tag for a body about this upstream that holds no in-flight slot (an
    /// upgraded response, the gateway's own answer after a failed forward).
    pub(crate) fn detached(&self) -> InFlight<B> {
        InFlight { shared: Arc::clone(&self.shared), endpoint: usize::MAX, released: true }
    }

    /// The endpoints and their live state.
    pub fn endpoints(&self) -> &[Endpoint<B>] {
        &self.shared.endpoints
    }

    /// The circuit breaker's state; `None` without a `circuit_breaker` block.
    pub fn circuit_state(&self) -> Option<State> {
        self.breaker.as_ref().map(SharedBreaker::state)
    }

    /// Requests in flight to this upstream.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    fn reserve(&self, avoid: u64) -> Result<InFlight<B>, ProxyError> {
        let shared = &self.shared;
        if shared.in_flight.fetch_add(1, Ordering::Relaxed) >= shared.max_concurrent {
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err(ProxyError::new(ErrorKind::Overloaded, None));
        }
        let eps = &shared.endpoints;
        // The clock is read only when an endpoint may be ejected or latencies are compared.
        let maybe_out = self.outliers.as_ref().filter(|o| o.maybe_ejected());
        let now = if self.peak_ewma || maybe_out.is_some() { self.clock.now() } else { Duration::ZERO };
        let ejected = maybe_out.filter(|o| o.any_ejected(now));
        let healthy = |i: usize| eps[i].is_healthy() && !ejected.is_some_and(|o| o.is_ejected(i, now));
        let load = |i: usize| {
            let in_flight = eps[i].in_flight() as u64;
            if self.peak_ewma {
                // Peak-EWMA latency (ns) × (in flight + 1).
                (eps[i].ewma.cost_ns(now) as u64).saturating_mul(in_flight + 1)
            } else {
                in_flight
            }
        };
        // A retry avoids the endpoints already tried, while another healthy one exists.
        let fresh =
            (avoid != 0).then(|| self.balancer.pick(&self.rng, |i| healthy(i) && !tried(avoid, i), load)).flatten();
        let Some(i) = fresh.or_else(|| self.balancer.pick(&self.rng, healthy, load)) else {
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err(ProxyError::new(ErrorKind::NoHealthyEndpoint, None));
        };
        eps[i].in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(InFlight { shared: Arc::clone(shared), endpoint: i, released: false })
    }

    /// Whether the endpoints speak HTTP/2, which gRPC needs: `protocol: h2 | h2c`, or `auto`
    /// on `https://` unless the endpoint was found to pick HTTP/1.1 in ALPN (not known yet
    /// counts as yes: the request learns it).
    pub fn speaks_h2(&self) -> bool {
        self.shared
            .endpoints
            .first()
            .is_some_and(|e| e.h2.is_some() && e.learned.as_ref().is_none_or(|l| l.now() != auto::Spoken::Http1))
    }

    /// Forward a request to one endpoint and return its response, streamed.
    ///
    /// The request's path and query are sent as they are (the caller normalises
    /// and strips them); `Host` is kept as the client sent it; hop-by-hop
    /// headers are removed both ways; `X-Forwarded-*` are set from `client`.
    /// `timeout` bounds the wait for the response headers (the upstream's own
    /// `timeout`, when shorter, wins). Upgrades (WebSocket) are spliced.
    pub async fn forward(
        &self,
        req: Request<B>,
        client: &ClientInfo,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody<B>>, ProxyError> {
        self.forward_send(req.map(SendBody::Stream), client, timeout).await
    }

    /// [`forward`](Self::forward) for a body that may already have been read ahead
    /// (the gateway does so to mirror a request).
    ///
    /// Not an `async fn`: the choice is made before the first poll and the chosen
    /// future is returned as it is, so the request is not held twice (an `async fn`
    /// keeps its arguments besides its callee's future), which keeps the request's
    /// future small where every layer above moves it.
    ///
    /// Each way is boxed: this state (the try, its connection exchange, the answer) is the
    /// largest part of a request's future, and every future above it is moved whole (as it
    /// is wrapped, and into its caller's state) before it is first polled. One allocation
    /// costs less than moving the state through every layer (callgrind, bare proxy: about
    /// 600 fewer instructions per request). Boxed apart, a request without retries gets a
    /// box under 1 KiB, which the allocator serves from its fast path; the retries' state
    /// is larger.
    pub(crate) fn forward_send<'a>(
        &'a self,
        req: Request<SendBody<B>>,
        client: &'a ClientInfo,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response<UpstreamBody<B>>, ProxyError>> + 'a {
        let scan = HeadScan::of(req.headers());
        match &self.retry {
            Some(retry) if is_idempotent(req.method()) && !scan.upgrade => {
                Either::Left(Box::pin(self.forward_with_retries(req, scan, client, timeout, retry)))
            }
            _ => Either::Right(Box::pin(
                self.attempt(Outgoing::Owned(req, scan), client, deadline_after(timeout), 0, (0, scan.sampled))
                    .map(|(result, _)| result),
            )),
        }
    }

    /// One try: breaker, in-flight slot, endpoint (avoiding the `avoid` bitmask of
    /// endpoint indices when another is healthy), send, outcome metrics. Also
    /// returns the endpoint tried. The breaker and the slot are taken before the
    /// first poll (see [`forward_send`](Self::forward_send) on why this is no `async fn`).
    fn attempt<'a>(
        &'a self,
        req: Outgoing<'a, B>,
        client: &'a ClientInfo,
        deadline: tokio::time::Instant,
        avoid: u64,
        #[cfg_attr(not(feature = "otel"), allow(unused_variables))] (retries, sampled): (u32, bool),
    ) -> impl Future<Output = (Result<Response<UpstreamBody<B>>, ProxyError>, Option<usize>)> + 'a {
        // The breaker first: while open, nothing is reserved or sent.
        let permit = match &self.breaker {
            Some(b) => match b.acquire() {
                Ok(p) => Some(p),
                Err(retry_after) => {
                    self.shared.rejected.increment(1);
                    return Either::Left(std::future::ready((Err(ProxyError::circuit_open(retry_after)), None)));
                }
            },
            None => None,
        };
        let guard = match self.reserve(avoid) {
            Ok(g) => g,
            Err(e) => {
                // (The permit guard gives the breaker slot back.)
                self.shared.rejected.increment(1);
                return Either::Left(std::future::ready((Err(e), None)));
            }
        };
        let index = guard.endpoint;
        let sent_at = self.peak_ewma.then(|| self.clock.now());
        // A sampled request's try gets a client span (and a traceparent naming it); boxed, so
        // that the try's future grows by a pointer, not by the span.
        #[cfg(feature = "otel")]
        let mut req = req;
        #[cfg(feature = "otel")]
        let span = if sampled && nexus_middleware::otel::exporting() { spans::client_span(&mut req) } else { None };
        // What follows the answer is synchronous: a `map`, not an `async` block, which would
        // hold the send future twice (once captured, once awaited) and double the try's size.
        Either::Right(self.send(guard, req, client, deadline).map(move |result| {
            #[cfg(feature = "otel")]
            if let Some(span) = span {
                span.finish(self.shared.endpoints[index].authority(), retries, &result);
            }
            let m = &self.shared.endpoints[index].metrics;
            // Failures for the breaker: 5xx from the upstream, connect errors, timeouts
            // (not the client's own body errors).
            let answer = match &result {
                Ok(res) if res.status().is_server_error() => {
                    m.error.increment(1);
                    Answer::of_status(res.status().as_u16())
                }
                Ok(_) => {
                    m.success.increment(1);
                    Answer::Success
                }
                Err(e) if e.is_timeout() => {
                    m.timeout.increment(1);
                    Answer::GatewayError
                }
                Err(e) => {
                    m.error.increment(1);
                    if e.is_client() { Answer::Neutral } else { Answer::GatewayError }
                }
            };
            let failed = matches!(answer, Answer::ServerError | Answer::GatewayError);
            let mut counts_for_breaker = true;
            if self.outliers.is_some() || sent_at.is_some() {
                counts_for_breaker = self.observe(index, answer, sent_at);
            }
            match permit {
                // Failures of an ejected endpoint are not the upstream's: the permit goes
                // back uncounted (one bad endpoint never opens the whole upstream's breaker).
                Some(p) if counts_for_breaker || !failed => p.record(!failed),
                _ => {}
            }
            (result, Some(index))
        }))
    }

    /// Feed endpoint `index`'s answer to outlier detection (first, so that the breaker
    /// does not count the failure that ejects it) and to its latency estimate. Whether the
    /// answer counts for the upstream's breaker: not when the endpoint is ejected.
    fn observe(&self, index: usize, answer: Answer, sent_at: Option<Duration>) -> bool {
        let now = self.clock.now();
        if let Some(sent) = sent_at {
            let failed = matches!(answer, Answer::ServerError | Answer::GatewayError);
            self.shared.endpoints[index].ewma.observe(now.saturating_sub(sent), failed, now);
        }
        let Some(outliers) = &self.outliers else { return true };
        if let Some(until) = outliers.record(index, answer, now) {
            let e = &self.shared.endpoints[index];
            let Some((gauge, ejections)) = &e.metrics.ejected else { return false };
            gauge.set(1.0);
            ejections.increment(1);
            let length = until.saturating_sub(now);
            tracing::warn!(upstream = %self.shared.name, endpoint = %e.authority(), ?length,
                "outlier detection: endpoint ejected");
            // The gauge goes back to 0 when the ejection ends (unless a new one began).
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (gauge, state, clock) = (gauge.clone(), Arc::clone(outliers.state(index)), self.clock);
                rt.spawn(async move {
                    tokio::time::sleep(length).await;
                    if !state.is_ejected(clock.now()) {
                        gauge.set(0.0);
                    }
                });
            }
        }
        !outliers.is_ejected(index, now)
    }
}

impl<B> Upstream<B> {
    /// Whether balancing may pick some endpoint now: one with weight above 0 that active
    /// checks call healthy and outlier detection has not ejected.
    pub fn has_endpoint_in_rotation(&self) -> bool {
        let now = self.outliers.as_ref().map(|_| self.clock.now()).unwrap_or_default();
        self.shared.endpoints.iter().enumerate().any(|(i, e)| {
            self.weights[i] > 0 && e.is_healthy() && !self.outliers.as_ref().is_some_and(|o| o.is_ejected(i, now))
        })
    }

    /// When endpoint `i`'s ejection ends (time since this upstream's clock started);
    /// `None` when it is in rotation or there is no outlier detection.
    pub fn ejected_for(&self, i: usize) -> Option<Duration> {
        let now = self.clock.now();
        self.outliers.as_ref()?.state(i).ejected_until(now).map(|until| until.saturating_sub(now))
    }
}

/// `timeout` from now; an absurdly large one (a config's "1000000y") is a far deadline, not a
/// panic on overflow.
fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    deadline_from(tokio::time::Instant::now(), timeout)
}

/// `timeout` from `now` (see [`deadline_after`]).
fn deadline_from(now: tokio::time::Instant, timeout: Duration) -> tokio::time::Instant {
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// Time since a start point, as the breaker and retry budget take it (from
/// `tokio::time`, so tests can pause it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Epoch(tokio::time::Instant);

impl Epoch {
    pub(super) fn start() -> Self {
        Self(tokio::time::Instant::now())
    }

    pub(super) fn now(self) -> Duration {
        self.at(tokio::time::Instant::now())
    }

    pub(super) fn at(self, instant: tokio::time::Instant) -> Duration {
        instant.saturating_duration_since(self.0)
    }
}

fn tried(avoid: u64, i: usize) -> bool {
    i < 64 && avoid & (1 << i) != 0
}
