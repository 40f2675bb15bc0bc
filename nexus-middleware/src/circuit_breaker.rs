//! A circuit breaker as a tower Layer: after `failure_threshold` consecutive
//! failures it answers 503 `upstream_unavailable` with `Retry-After` at once,
//! without calling the inner service, until `open_timeout` has passed; then it
//! lets probe requests through (one at a time by default) and closes after
//! `success_threshold` successes. The request need not be `Clone`, so it fits
//! any axum `Router`. What counts as a failure is a [`Classify`] (default:
//! 5xx responses and errors from the inner service).
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use nexus_middleware::CircuitBreakerLayer;
//! use nexus_core::breaker::BreakerConfig;
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = CircuitBreakerLayer::new(BreakerConfig { failure_threshold: 1, ..Default::default() });
//! let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(|_req: http::Request<()>| async {
//!     let mut res = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
//!     *res.status_mut() = http::StatusCode::BAD_GATEWAY;
//!     Ok::<_, std::convert::Infallible>(res)
//! });
//! assert_eq!(svc.clone().oneshot(http::Request::new(())).await.unwrap().status(), 502);
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 503);
//! assert!(res.headers().contains_key("retry-after"));
//! # }
//! ```

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use nexus_core::breaker::{Breaker, BreakerConfig, Permit, State};
use nexus_core::error::REQUEST_ID;
use nexus_core::{ErrorCode, GatewayError};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::{Layer, Service};

/// Decides whether an outcome counts as a failure.
pub trait Classify<ResB, E>: Clone {
    /// True for a failure.
    fn is_failure(&self, outcome: &Result<Response<ResB>, E>) -> bool;
}

/// 5xx responses and errors are failures.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrors;

impl<ResB, E> Classify<ResB, E> for ServerErrors {
    fn is_failure(&self, outcome: &Result<Response<ResB>, E>) -> bool {
        outcome.as_ref().map_or(true, |r| r.status().is_server_error())
    }
}

impl<ResB, E, F> Classify<ResB, E> for F
where
    F: Fn(&Result<Response<ResB>, E>) -> bool + Clone,
{
    fn is_failure(&self, outcome: &Result<Response<ResB>, E>) -> bool {
        self(outcome)
    }
}

/// A shared breaker and its clock epoch; clones share state.
#[derive(Debug, Clone)]
pub struct SharedBreaker {
    breaker: Arc<Breaker>,
    epoch: Instant,
    gauge: Option<metrics::Gauge>,
}

impl SharedBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self { breaker: Arc::new(Breaker::new(config)), epoch: Instant::now(), gauge: None }
    }

    /// Export the state as `nexus_circuit_breaker_state{upstream}` (0 closed, 1 half-open, 2 open).
    pub fn with_metric(mut self, upstream: &str) -> Self {
        let g = metrics::gauge!(nexus_core::metric_names::CIRCUIT_BREAKER_STATE, "upstream" => upstream.to_string());
        g.set(0.0);
        self.gauge = Some(g);
        self
    }

    fn now(&self) -> std::time::Duration {
        Instant::now().saturating_duration_since(self.epoch)
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.breaker.state(self.now())
    }

    /// The settings it was built with (a reload keeps a breaker whose settings are unchanged).
    pub fn config(&self) -> &BreakerConfig {
        self.breaker.config()
    }

    /// May a request go now? The permit records the outcome, or gives the slot back when it
    /// is dropped unrecorded (a cancelled request); `Err(seconds)` for `Retry-After`.
    ///
    /// ```
    /// use nexus_core::breaker::BreakerConfig;
    /// use nexus_middleware::circuit_breaker::SharedBreaker;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let breaker = SharedBreaker::new(BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() });
    /// breaker.acquire().unwrap().record(false);
    /// assert!(breaker.acquire().is_err(), "open after one failure");
    /// # }
    /// ```
    pub fn acquire(&self) -> Result<BreakerPermit<&Self>, u64> {
        self.try_acquire().map(|permit| BreakerPermit { breaker: self, permit: Some(permit) })
    }

    /// May a request go now? `Err(seconds)` for `Retry-After`. The permit must be given to
    /// [`record`](Self::record) or [`release`](Self::release); [`acquire`](Self::acquire)
    /// does that by itself.
    pub fn try_acquire(&self) -> Result<Permit, u64> {
        // The clock is read, and the state gauge written, only off the closed state's path.
        let r = self.breaker.try_acquire_with(|| self.now()).map_err(|r| r.retry_after_secs);
        if r.as_ref().map_or(true, Permit::is_probe) {
            self.publish();
        }
        r
    }

    /// Record an outcome.
    pub fn record(&self, permit: Permit, success: bool) {
        if self.breaker.record_with(permit, success, || self.now()) {
            self.publish();
        }
    }

    /// Give a permit back unused (cancelled request).
    pub fn release(&self, permit: Permit) {
        self.breaker.release(permit);
    }

    fn publish(&self) {
        if let Some(g) = &self.gauge {
            g.set(self.state().gauge());
        }
    }

    /// The 503 answer while open.
    pub fn rejection<B: From<Bytes>>(retry_after: u64, request_id: &str) -> Response<B> {
        let mut res: Response<B> = GatewayError::new(ErrorCode::UpstreamUnavailable)
            .with_message("circuit breaker is open")
            .into_response(request_id);
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        res
    }
}

/// Adds a [`CircuitBreaker`] to a service.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = ServerErrors> {
    breaker: SharedBreaker,
    classify: C,
}

impl CircuitBreakerLayer {
    /// A layer whose services (however many clones) share one breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self { breaker: SharedBreaker::new(config), classify: ServerErrors }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Use this failure classifier.
    pub fn with_classifier<C2>(self, classify: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer { breaker: self.breaker, classify }
    }

    /// Export the state as a metric labelled with this upstream name.
    pub fn with_metric(mut self, upstream: &str) -> Self {
        self.breaker = self.breaker.with_metric(upstream);
        self
    }

    /// The shared breaker (to show its state).
    pub fn breaker(&self) -> &SharedBreaker {
        &self.breaker
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker { inner, breaker: self.breaker.clone(), classify: self.classify.clone() }
    }
}

/// The circuit-breaker service.
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S, C = ServerErrors> {
    inner: S,
    breaker: SharedBreaker,
    classify: C,
}

inner_service_accessors!(CircuitBreaker, C);

impl<S, C, B, ResB> Service<Request<B>> for CircuitBreaker<S, C>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    C: Classify<ResB, S::Error>,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.breaker.try_acquire() {
            Ok(permit) => ResponseFuture {
                state: Inner::Called { fut: self.inner.call(req) },
                guard: Some(BreakerPermit { breaker: self.breaker.clone(), permit: Some(permit) }),
                classify: self.classify.clone(),
            },
            Err(retry_after) => {
                let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                ResponseFuture {
                    state: Inner::Rejected { res: Some(SharedBreaker::rejection(retry_after, id)) },
                    guard: None,
                    classify: self.classify.clone(),
                }
            }
        }
    }
}

/// A request's place in a breaker ([`SharedBreaker::acquire`]): [`record`](Self::record) its
/// outcome, or drop it unrecorded to give the place back. `S` is the breaker, borrowed or
/// owned (a clone).
#[derive(Debug)]
pub struct BreakerPermit<S: std::borrow::Borrow<SharedBreaker>> {
    breaker: S,
    permit: Option<Permit>,
}

impl<S: std::borrow::Borrow<SharedBreaker>> BreakerPermit<S> {
    /// Record the outcome (a success while closed reads no clock and writes no gauge).
    pub fn record(mut self, success: bool) {
        if let Some(p) = self.permit.take() {
            self.breaker.borrow().record(p, success);
        }
    }
}

impl<S: std::borrow::Borrow<SharedBreaker>> Drop for BreakerPermit<S> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.breaker.borrow().release(p);
        }
    }
}

pin_project! {
    #[project = InnerProj]
    #[derive(Debug)]
    enum Inner<F, R> {
        Called { #[pin] fut: F },
        Rejected { res: Option<R> },
    }
}

pin_project! {
    /// Response future of [`CircuitBreaker`].
    #[derive(Debug)]
    pub struct ResponseFuture<F, C, ResB> {
        #[pin]
        state: Inner<F, Response<ResB>>,
        guard: Option<BreakerPermit<SharedBreaker>>,
        classify: C,
    }
}

impl<F, C, ResB, E> Future for ResponseFuture<F, C, ResB>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    C: Classify<ResB, E>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            InnerProj::Rejected { res } => Poll::Ready(Ok(res.take().expect("polled after completion"))),
            InnerProj::Called { fut } => {
                let out = std::task::ready!(fut.poll(cx));
                if let Some(g) = this.guard.take() {
                    g.record(!this.classify.is_failure(&out));
                }
                Poll::Ready(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use http_body_util::Full;
    use std::sync::atomic::{AtomicU16, Ordering};
    use std::time::Duration;
    use tower::{ServiceBuilder, ServiceExt};

    fn svc(
        layer: &CircuitBreakerLayer,
        status: Arc<AtomicU16>,
    ) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = std::convert::Infallible, Future: Send> + Clone
    {
        ServiceBuilder::new().layer(layer.clone()).service_fn(move |_req: Request<()>| {
            let s = status.load(Ordering::SeqCst);
            async move {
                let mut res = Response::new(Full::new(Bytes::new()));
                *res.status_mut() = StatusCode::from_u16(s).unwrap();
                Ok(res)
            }
        })
    }

    async fn status_of(
        s: &(impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = std::convert::Infallible> + Clone),
    ) -> (u16, Option<String>) {
        let res = s.clone().oneshot(Request::new(())).await.unwrap();
        (res.status().as_u16(), res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string()))
    }

    /// Port of the seed's `TestCircuitBreaker_OpensAfterFailures`, plus half-open both ways.
    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_then_half_open_closes_or_reopens() {
        let layer = CircuitBreakerLayer::new(BreakerConfig {
            failure_threshold: 3,
            success_threshold: 2,
            open_timeout: Duration::from_secs(10),
            half_open_max_requests: 1,
        });
        let upstream = Arc::new(AtomicU16::new(200));
        let s = svc(&layer, Arc::clone(&upstream));
        assert_eq!(status_of(&s).await.0, 200, "allowed at first");
        upstream.store(500, Ordering::SeqCst);
        for _ in 0..3 {
            assert_eq!(status_of(&s).await.0, 500);
        }
        assert_eq!(status_of(&s).await, (503, Some("10".into())), "open: rejected without calling the upstream");
        assert_eq!(layer.breaker().state(), State::Open);

        // Half-open, one failure: open again.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(status_of(&s).await.0, 500);
        assert_eq!(layer.breaker().state(), State::Open);

        // Half-open, two successes: closed.
        tokio::time::advance(Duration::from_secs(10)).await;
        upstream.store(200, Ordering::SeqCst);
        assert_eq!(status_of(&s).await.0, 200);
        assert_eq!(layer.breaker().state(), State::HalfOpen);
        assert_eq!(status_of(&s).await.0, 200);
        assert_eq!(layer.breaker().state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_custom_classifier_decides_what_fails() {
        let layer = CircuitBreakerLayer::new(BreakerConfig { failure_threshold: 1, ..Default::default() })
            .with_classifier(|r: &Result<Response<Full<Bytes>>, std::convert::Infallible>| {
                r.as_ref().is_ok_and(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
            });
        let s = ServiceBuilder::new().layer(layer.clone()).service_fn(|_req: Request<()>| async {
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            Ok::<_, std::convert::Infallible>(res)
        });
        assert_eq!(s.clone().oneshot(Request::new(())).await.unwrap().status(), 429);
        assert_eq!(s.oneshot(Request::new(())).await.unwrap().status(), 503);
    }
}
