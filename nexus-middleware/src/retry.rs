//! Retries as a tower Layer: idempotent requests (GET, HEAD, OPTIONS, TRACE,
//! PUT, DELETE) whose body is known to fit in 64 KiB are read ahead and sent
//! again when the answer is one that `retry_on` names (a status such as 503;
//! an error of the inner service counts as `connect_error` or `reset`), after
//! an exponential backoff with jitter, or after the upstream's `Retry-After`
//! when it is not longer than `max_delay` (a longer one is passed on as the
//! answer). A retry budget shared by every clone of the layer keeps retries to
//! a fraction of the traffic, so an outage is not multiplied.
//!
//! Requests that are not idempotent, or whose body is larger or of unknown
//! size, pass through once. Choosing a different endpoint for the retry is the
//! inner service's business (`nexus_proxy::Upstream` does it for its own
//! `retry` setting).
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use nexus_core::retry::RetryPolicy;
//! use nexus_middleware::retry::RetryLayer;
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let seen = Arc::clone(&calls);
//! let policy = RetryPolicy { initial_delay: Duration::from_millis(1), ..RetryPolicy::default() };
//! let svc = ServiceBuilder::new().layer(RetryLayer::new(policy)).service_fn(move |_req: http::Request<http_body_util::Full<bytes::Bytes>>| {
//!     // 503 the first time, 200 after.
//!     let status = if seen.fetch_add(1, Ordering::SeqCst) == 0 { 503 } else { 200 };
//!     async move {
//!         let mut res = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
//!         *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
//!         Ok::<_, std::convert::Infallible>(res)
//!     }
//! });
//! let res = svc.oneshot(http::Request::new(http_body_util::Full::new(bytes::Bytes::new()))).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # }
//! ```

use bytes::Bytes;
use http::{Extensions, HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use http_body_util::combinators::Collect;
use nexus_core::retry::{MAX_REPLAY_BODY, Outcome, RetryBudget, RetryPolicy, is_idempotent};
use nexus_core::rng::Rng;
use nexus_core::{ErrorCode, GatewayError};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// A retry policy in force: the policy, the retry budget every request shares, the
/// jitter source and the retry counter. Each retry is decided here, by [`next`](Self::next):
/// [`RetryLayer`] holds one (shared by its clones), and so does `nexus_proxy::Upstream` for
/// its own `retry` block, whose loop adds what only an upstream knows (an endpoint not tried
/// yet, a head borrowed by every try).
///
/// ```
/// use std::time::Duration;
/// use nexus_core::retry::{Failure, Outcome, RetryPolicy};
/// use nexus_core::rng::Rng;
/// use nexus_middleware::retry::Retries;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let retries = Retries::new(RetryPolicy::default(), Rng::seeded(7)); // connect_error, 2 retries
/// let start = retries.begin();
/// let refused = Outcome::Failed(Some(Failure::Connect));
/// assert!(retries.next(0, refused, None).is_some());
/// assert!(retries.next(2, refused, None).is_none(), "max_retries reached");
/// // A wait that would end past the request's deadline is not started.
/// assert!(retries.next(0, refused, Some(start + Duration::from_millis(1))).is_none());
/// # }
/// ```
#[derive(Debug)]
pub struct Retries {
    policy: RetryPolicy,
    budget: RetryBudget,
    rng: Rng,
    epoch: Instant,
    retries: Option<metrics::Counter>,
}

impl Retries {
    /// `policy` with a budget of its own (its `budget_*` fields) and `rng` for jitter.
    pub fn new(policy: RetryPolicy, rng: Rng) -> Self {
        let budget = RetryBudget::new(policy.budget_ratio, policy.budget_min_per_second);
        Self { policy, budget, rng, epoch: Instant::now(), retries: None }
    }

    /// Count retries in `nexus_upstream_retries_total{upstream}` under this name.
    pub fn with_metric(mut self, upstream: &str) -> Self {
        self.retries = Some(metrics::counter!(
            nexus_core::metric_names::UPSTREAM_RETRIES_TOTAL,
            "upstream" => upstream.to_string()
        ));
        self
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// A request that may be retried starts: it adds to the budget. Returns the time it
    /// started (the one clock read a deadline can be counted from).
    pub fn begin(&self) -> Instant {
        let now = Instant::now();
        self.budget.deposit(now.saturating_duration_since(self.epoch));
        now
    }

    /// After `retries` retries (0: the first try) a try ended with `outcome`: how long to
    /// wait before the next try, or `None` when `outcome` is the answer: the policy does not
    /// retry it, the retries are used up, the wait would end at or past `deadline`, or the
    /// budget is spent. A `Some` is a retry: it is withdrawn from the budget and counted.
    pub fn next(&self, retries: u32, outcome: Outcome<'_>, deadline: Option<Instant>) -> Option<Duration> {
        // Jitter is drawn only for a retried outcome.
        let wait = self.policy.wait_before_retry(retries, outcome, || self.rng.unit())?;
        let now = Instant::now();
        if deadline.is_some_and(|d| now.checked_add(wait).is_none_or(|end| end >= d)) {
            return None;
        }
        if !self.budget.withdraw(now.saturating_duration_since(self.epoch)) {
            return None;
        }
        if let Some(c) = &self.retries {
            c.increment(1);
        }
        Some(wait)
    }
}

/// Adds [`Retry`] to a service.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Arc<Retries>,
}

impl RetryLayer {
    /// Retry by `policy` (its budget fields set the shared budget).
    pub fn new(policy: RetryPolicy) -> Self {
        Self::with_rng(policy, Rng::from_entropy())
    }

    /// With a chosen jitter source (reproducible backoffs in tests).
    pub fn with_rng(policy: RetryPolicy, rng: Rng) -> Self {
        Self { shared: Arc::new(Retries::new(policy, rng)) }
    }

    /// Count retries in `nexus_upstream_retries_total{upstream}` under this name.
    pub fn with_metric(self, upstream: &str) -> Self {
        let s = &self.shared;
        let retries = Retries::new(s.policy.clone(), Rng::seeded(s.rng.next_u64())).with_metric(upstream);
        Self { shared: Arc::new(retries) }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry { inner, shared: Arc::clone(&self.shared) }
    }
}

/// The retrying service.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Retries>,
}

inner_service_accessors!(Retry);

/// What a retry sends again.
#[derive(Debug)]
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
}

impl Template {
    fn request<B: From<Bytes>>(&self) -> Request<B> {
        let mut req = Request::new(B::from(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        req
    }
}

impl<S, B, ResB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    B: Body<Data = Bytes> + From<Bytes>,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let replayable = is_idempotent(req.method())
            && (req.body().is_end_stream()
                || req.body().size_hint().upper().is_some_and(|n| n <= MAX_REPLAY_BODY as u64));
        if !replayable {
            return ResponseFuture { state: State::Once { fut: self.inner.call(req) } };
        }
        // The service poll_ready readied goes with this request; the layer keeps a clone.
        let clone = self.inner.clone();
        let svc = std::mem::replace(&mut self.inner, clone);
        self.shared.begin();
        let (parts, body) = req.into_parts();
        let template = Template {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            extensions: parts.extensions,
            body: Bytes::new(),
        };
        let replays =
            Replays { svc, template, readied: true, outcome: answered::<ResB, S::Error>, copy: Template::request };
        ResponseFuture {
            state: State::Reading { collect: body.collect(), then: Some((replays, Arc::clone(&self.shared))) },
        }
    }
}

/// One request's tries, which a [`RetryLoop`] starts one after another: how a try starts
/// and what its output says to the retry policy. [`Retry`] calls its inner service with a
/// fresh copy of the request; `nexus_proxy::Upstream` sends its own tries (a head every try
/// borrows, an endpoint not tried yet).
///
/// ```
/// use std::future::{Ready, ready};
/// use nexus_core::retry::{Failure, Outcome, RetryPolicy};
/// use nexus_core::rng::Rng;
/// use nexus_middleware::retry::{Retries, RetryLoop, Tries};
///
/// /// Refused twice, then answered.
/// struct Flaky;
///
/// impl Tries for Flaky {
///     type Output = Result<u16, Failure>;
///     type Future = Ready<Self::Output>;
///     fn start(&mut self, retries: u32) -> Self::Future {
///         ready(if retries < 2 { Err(Failure::Connect) } else { Ok(200) })
///     }
///     fn outcome<'o>(&mut self, output: &'o Self::Output) -> Option<Outcome<'o>> {
///         output.as_ref().err().map(|f| Outcome::Failed(Some(*f)))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let retries = Retries::new(RetryPolicy::default(), Rng::seeded(7)); // connect_error, 2 retries
/// retries.begin();
/// assert_eq!(RetryLoop::new(Flaky, &retries, None).await, Ok(200));
/// # }
/// ```
pub trait Tries {
    /// What a try ends with; the last try's is the answer.
    type Output;
    /// A try in flight.
    type Future: Future<Output = Self::Output>;

    /// Wait until the next try may start (a tower service's readiness); `Err` ends the
    /// loop with that output. Always ready unless overridden.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Output>> {
        Poll::Ready(Ok(()))
    }

    /// Start the try that follows `retries` retries (0: the first try).
    fn start(&mut self, retries: u32) -> Self::Future;

    /// What a try's `output` is to the retry policy; `None`: it is the answer, whatever the
    /// policy says (the gateway's own refusals, say).
    fn outcome<'o>(&mut self, output: &'o Self::Output) -> Option<Outcome<'o>>;
}

pin_project! {
    /// The retry loop: start a try, ask [`Retries::next`] about its outcome (policy,
    /// deadline, budget), wait as long as it says and start the next, until it says the
    /// output is the answer. [`Retry`] runs one per request it may retry, and so does
    /// `nexus_proxy::Upstream` for its `retry` block: the one copy of the loop.
    ///
    /// `R` is the [`Retries`] in force, shared ([`Arc`]) or borrowed. The caller calls
    /// [`Retries::begin`] when the request starts (the budget's deposit); `deadline`, when
    /// given, is one no wait may end at or past.
    #[must_use = "futures do nothing unless polled"]
    pub struct RetryLoop<T: Tries, R> {
        #[pin]
        step: Step<T::Future>,
        tries: T,
        retries: R,
        count: u32,
        deadline: Option<Instant>,
    }
}

impl<T: Tries, R: std::borrow::Borrow<Retries>> RetryLoop<T, R> {
    /// The loop over `tries`, decided by `retries`; not started until polled.
    pub fn new(tries: T, retries: R, deadline: Option<Instant>) -> Self {
        Self { step: Step::Next, tries, retries, count: 0, deadline }
    }
}

impl<T: Tries, R> std::fmt::Debug for RetryLoop<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLoop").field("retries", &self.count).field("deadline", &self.deadline).finish()
    }
}

pin_project! {
    #[project = StepProj]
    enum Step<F> {
        Next,
        Trying { #[pin] fut: F },
        Waiting { #[pin] sleep: Sleep },
    }
}

impl<T: Tries, R: std::borrow::Borrow<Retries>> Future for RetryLoop<T, R> {
    type Output = T::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T::Output> {
        let mut this = self.project();
        loop {
            match this.step.as_mut().project() {
                StepProj::Next => {
                    if let Err(output) = ready!(this.tries.poll_ready(cx)) {
                        return Poll::Ready(output);
                    }
                    let fut = this.tries.start(*this.count);
                    this.step.set(Step::Trying { fut });
                }
                StepProj::Trying { fut } => {
                    let output = ready!(fut.poll(cx));
                    let retries = (*this.retries).borrow();
                    let wait = this.tries.outcome(&output).and_then(|o| retries.next(*this.count, o, *this.deadline));
                    let Some(wait) = wait else { return Poll::Ready(output) };
                    drop(output);
                    *this.count += 1;
                    this.step.set(Step::Waiting { sleep: tokio::time::sleep(wait) });
                }
                StepProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    this.step.set(Step::Next);
                }
            }
        }
    }
}

/// What a tower service's result is to the retry policy.
type Classify<Res, E> = for<'o> fn(&'o Result<Res, E>) -> Option<Outcome<'o>>;

/// A tower service's tries: each calls it with a fresh copy of the request.
struct Replays<S: Service<Request<B>>, B> {
    svc: S,
    template: Template,
    /// The service is ready for the next call (true for the first: the caller readied it).
    readied: bool,
    /// A response's status and headers, or an error of the inner service (which says
    /// nothing of its kind).
    outcome: Classify<S::Response, S::Error>,
    /// A fresh copy of the request ([`Template::request`]).
    copy: fn(&Template) -> Request<B>,
}

impl<S: Service<Request<B>>, B> Tries for Replays<S, B> {
    type Output = Result<S::Response, S::Error>;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Output>> {
        if !self.readied {
            ready!(self.svc.poll_ready(cx)).map_err(Err)?;
        }
        Poll::Ready(Ok(()))
    }

    fn start(&mut self, _retries: u32) -> S::Future {
        self.readied = false;
        self.svc.call((self.copy)(&self.template))
    }

    fn outcome<'o>(&mut self, output: &'o Self::Output) -> Option<Outcome<'o>> {
        (self.outcome)(output)
    }
}

/// A tower service's outcome: its response, or an error of unknown kind.
fn answered<ResB, E>(result: &Result<Response<ResB>, E>) -> Option<Outcome<'_>> {
    Some(match result {
        Ok(res) => Outcome::Answered(res.status().as_u16(), res.headers()),
        Err(_) => Outcome::Failed(None),
    })
}

pin_project! {
    #[project = StateProj]
    enum State<F, B: Body, P, L> {
        Once { #[pin] fut: F },
        Reading { #[pin] collect: Collect<B>, then: Option<P> },
        Retrying { #[pin] tries: L },
    }
}

pin_project! {
    /// Response future of [`Retry`].
    pub struct ResponseFuture<S: Service<Request<B>>, B: Body> {
        #[pin]
        state: State<S::Future, B, (Replays<S, B>, Arc<Retries>), RetryLoop<Replays<S, B>, Arc<Retries>>>,
    }
}

impl<S: Service<Request<B>>, B: Body> std::fmt::Debug for ResponseFuture<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("retry::ResponseFuture")
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    B: Body<Data = Bytes> + From<Bytes>,
    ResB: From<Bytes>,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Once { fut } => return fut.poll(cx),
                StateProj::Reading { collect, then } => {
                    let read = ready!(collect.poll(cx));
                    let (mut replays, shared) = then.take().expect("polled after completion");
                    match read {
                        Ok(collected) => replays.template.body = collected.to_bytes(),
                        Err(_) => {
                            let res = GatewayError::new(ErrorCode::BadRequest)
                                .with_message("the request body could not be read")
                                .into_response_for(&replays.template.headers);
                            return Poll::Ready(Ok(res));
                        }
                    }
                    this.state.set(State::Retrying { tries: RetryLoop::new(replays, shared, None) });
                }
                StateProj::Retrying { tries } => return tries.poll(cx),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use nexus_core::config::RetryOn;
    use std::convert::Infallible;
    use std::sync::Mutex;
    use tower::{ServiceBuilder, ServiceExt};

    type Log = Arc<Mutex<Vec<(Method, Bytes)>>>;

    /// A service answering the given statuses in turn (the last one repeats), recording what it got.
    fn scripted(
        statuses: &'static [(u16, Option<&'static str>)],
        layer: RetryLayer,
    ) -> (impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone, Log) {
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&log);
        let svc = ServiceBuilder::new().layer(layer).service_fn(move |req: Request<Full<Bytes>>| {
            let seen = Arc::clone(&seen);
            async move {
                let method = req.method().clone();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let n = {
                    let mut log = seen.lock().unwrap();
                    log.push((method, body));
                    log.len() - 1
                };
                let (status, retry_after) = statuses[n.min(statuses.len() - 1)];
                let mut res = Response::new(Full::new(Bytes::new()));
                *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
                if let Some(ra) = retry_after {
                    res.headers_mut().insert(http::header::RETRY_AFTER, ra.parse().unwrap());
                }
                Ok::<_, Infallible>(res)
            }
        });
        (svc, log)
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 2,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        }
    }

    fn put(body: &'static str) -> Request<Full<Bytes>> {
        Request::put("/x").body(Full::new(Bytes::from(body))).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_replay_the_body_with_backoff_until_max_retries() {
        let (svc, log) = scripted(&[(503, None)], RetryLayer::with_rng(policy(), Rng::seeded(1)));
        let started = Instant::now();
        let res = svc.oneshot(put("payload")).await.unwrap();
        assert_eq!(res.status(), 503, "the last answer once retries are spent");
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 3);
        assert!(log.iter().all(|(m, b)| m == Method::PUT && b == "payload"));
        // Backoffs: 50..100 ms, then 100..200 ms.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(150) && waited <= Duration::from_millis(300), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn posts_and_unlisted_statuses_are_not_retried() {
        let (svc, log) = scripted(&[(503, None)], RetryLayer::new(policy()));
        let post = Request::post("/x").body(Full::new(Bytes::from("once"))).unwrap();
        assert_eq!(svc.clone().oneshot(post).await.unwrap().status(), 503);
        assert_eq!(log.lock().unwrap().len(), 1);
        let (svc, log) = scripted(&[(500, None), (200, None)], RetryLayer::new(policy()));
        assert_eq!(svc.oneshot(put("x")).await.unwrap().status(), 500, "500 is not in retry_on");
        assert_eq!(log.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_or_passed_on() {
        let (svc, log) = scripted(&[(503, Some("1")), (200, None)], RetryLayer::new(policy()));
        let started = Instant::now();
        assert_eq!(svc.oneshot(put("x")).await.unwrap().status(), 200);
        assert!(started.elapsed() >= Duration::from_secs(1), "waited the asked second");
        assert_eq!(log.lock().unwrap().len(), 2);
        let (svc, log) = scripted(&[(503, Some("30")), (200, None)], RetryLayer::new(policy()));
        let res = svc.oneshot(put("x")).await.unwrap();
        assert_eq!(res.status(), 503, "longer than max_delay: the answer stands");
        assert_eq!(res.headers()["retry-after"], "30");
        assert_eq!(log.lock().unwrap().len(), 1);
    }

    /// A body that does not say how large it is (like a chunked upload).
    struct Unsized(Option<Bytes>);

    impl From<Bytes> for Unsized {
        fn from(b: Bytes) -> Self {
            Self(Some(b))
        }
    }

    impl Body for Unsized {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    /// A body of known size whose data is not there at the first poll (a slow upload).
    struct Late(Option<Bytes>, bool);

    impl From<Bytes> for Late {
        fn from(b: Bytes) -> Self {
            Self(Some(b), true)
        }
    }

    impl Body for Late {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            if !self.1 {
                self.1 = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
        }
        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_read_over_several_polls_is_replayed_whole() {
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&log);
        let svc = ServiceBuilder::new().layer(RetryLayer::new(policy())).service_fn(move |req: Request<Late>| {
            let seen = Arc::clone(&seen);
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let n = {
                    let mut log = seen.lock().unwrap();
                    log.push((Method::PUT, body));
                    log.len()
                };
                let mut res = Response::new(Full::new(Bytes::new()));
                *res.status_mut() = http::StatusCode::from_u16(if n == 1 { 503 } else { 200 }).unwrap();
                Ok::<_, Infallible>(res)
            }
        });
        let req = Request::put("/x").body(Late(Some(Bytes::from("slow")), false)).unwrap();
        assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2, "retried once");
        assert!(log.iter().all(|(_, b)| b == "slow"), "{log:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_of_unknown_size_pass_through_once() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let svc = ServiceBuilder::new().layer(RetryLayer::new(policy())).service_fn(move |_req: Request<Unsized>| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                let mut res = Response::new(Full::new(Bytes::new()));
                *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                Ok::<_, Infallible>(res)
            }
        });
        let req = Request::put("/x").body(Unsized(Some(Bytes::from("streamed")))).unwrap();
        assert_eq!(svc.oneshot(req).await.unwrap().status(), 503);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "not kept, so not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_stops_retry_storms() {
        let p = RetryPolicy { budget_ratio: 0.0, budget_min_per_second: 1, ..policy() };
        let (svc, log) = scripted(&[(503, None)], RetryLayer::new(p));
        for _ in 0..5 {
            assert_eq!(svc.clone().oneshot(put("x")).await.unwrap().status(), 503);
        }
        // Five requests and the one retry the floor allows (each retry waits < 1 s of paused time,
        // so the floor refills by less than one more).
        let n = log.lock().unwrap().len();
        assert!((6..=7).contains(&n), "{n}");
    }

    #[tokio::test(start_paused = true)]
    async fn connect_errors_are_retried_only_when_listed() {
        let p = RetryPolicy { retry_on: vec![RetryOn::Status(503)], ..policy() };
        let retries = Retries::new(p, Rng::seeded(1));
        retries.begin();
        let err: Result<Response<()>, &str> = Err("refused");
        let outcome = answered(&err).expect("an error of the inner service is an outcome");
        assert_eq!(retries.next(0, outcome, None), None);
        let listed = Retries::new(policy(), Rng::seeded(1));
        listed.begin();
        assert!(listed.next(0, outcome, None).is_some(), "connect_error is listed (the default)");
    }
}
