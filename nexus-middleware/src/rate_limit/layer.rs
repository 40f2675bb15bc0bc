//! The tower Layer and Service around a [`RateLimiter`].

use super::{Check, Decision, RateLimiter};
use bytes::Bytes;
use http::{Request, Response};
use nexus_core::claims::VerifiedClaims;
use nexus_core::client::PeerAddr;
use nexus_core::error::REQUEST_ID;
use pin_project_lite::pin_project;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// Where a service finds the TCP peer's address among a request's extensions.
pub type PeerFn = fn(&http::Extensions) -> Option<IpAddr>;

/// The default [`PeerFn`]: a [`PeerAddr`] in the extensions.
fn peer_addr(ext: &http::Extensions) -> Option<IpAddr> {
    ext.get::<PeerAddr>().map(|p| p.0.ip())
}

/// Adds a [`RateLimit`] to a service; every clone shares the limiter's buckets.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: RateLimiter,
    rejected: Option<metrics::Counter>,
    peer: PeerFn,
}

impl RateLimitLayer {
    /// Limit with `limiter`. The client IP (for [`RateLimitKey::ClientIp`](super::RateLimitKey)
    /// and as the fallback of the other keys) comes from a [`PeerAddr`] in the request's
    /// extensions; see [`with_peer`](Self::with_peer) for servers that keep it elsewhere.
    pub fn new(limiter: RateLimiter) -> Self {
        Self { limiter, rejected: None, peer: peer_addr }
    }

    /// Find the peer address with `peer` instead of looking for a [`PeerAddr`] (a server
    /// that already puts its own connection type into the extensions need not add a second
    /// one). A request whose peer is not found counts as the unspecified address.
    ///
    /// ```
    /// use std::net::IpAddr;
    /// use nexus_middleware::rate_limit::{RateLimitConfig, RateLimitLayer, RateLimiter};
    /// #[derive(Clone)]
    /// struct Conn { peer: IpAddr }
    /// let limiter = RateLimiter::local(RateLimitConfig::default()).unwrap();
    /// let layer = RateLimitLayer::new(limiter).with_peer(|ext| ext.get::<Conn>().map(|c| c.peer));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn with_peer(mut self, peer: PeerFn) -> Self {
        self.peer = peer;
        self
    }

    /// Count rejections in `nexus_rate_limited_total{route,limit}` under this route name.
    pub fn with_metric(mut self, route: &str) -> Self {
        self.rejected = Some(metrics::counter!(
            "nexus_rate_limited_total",
            "route" => route.to_string(),
            "limit" => self.limiter.config().name.clone()
        ));
        self
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { inner, limiter: self.limiter.clone(), rejected: self.rejected.clone(), peer: self.peer }
    }
}

/// The rate-limiting service: 429 without calling `inner` when over the limit.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: RateLimiter,
    rejected: Option<metrics::Counter>,
    peer: PeerFn,
}

impl<S> RateLimit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let peer = (self.peer)(req.extensions()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let key = self.limiter.key_from(req.headers(), req.extensions().get::<VerifiedClaims>(), peer);
        let mut check = self.limiter.check(key);
        let state = match check.ready() {
            Some(d) => decided(&mut self.inner, req, d, self.rejected.as_ref()),
            None => {
                // A remote check: the service readied by poll_ready goes with the request.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                State::Checking { check, inner: Some((inner, req)), rejected: self.rejected.clone() }
            }
        };
        ResponseFuture { state }
    }
}

fn decided<S, B, ResB>(
    inner: &mut S,
    req: Request<B>,
    d: Decision,
    rejected: Option<&metrics::Counter>,
) -> State<S, Request<B>>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: From<Bytes>,
{
    if d.allowed {
        State::Called { fut: inner.call(req), decision: Some(d) }
    } else {
        if let Some(c) = rejected {
            c.increment(1);
        }
        let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
        State::Rejected { res: Some(d.rejection(id)) }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<R>, R> {
        Checking { #[pin] check: Check, inner: Option<(S, R)>, rejected: Option<metrics::Counter> },
        Called { #[pin] fut: S::Future, decision: Option<Decision> },
        Rejected { res: Option<S::Response> },
    }
}

pin_project! {
    /// Response future of [`RateLimit`].
    pub struct ResponseFuture<S: Service<R>, R> {
        #[pin]
        state: State<S, R>,
    }
}

impl<S: Service<R>, R> std::fmt::Debug for ResponseFuture<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("rate_limit::ResponseFuture")
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, Request<B>>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: From<Bytes>,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking { check, inner, rejected } => {
                    let d = ready!(check.poll(cx));
                    let (mut svc, req) = inner.take().expect("polled after completion");
                    let rejected = rejected.take();
                    let next = decided(&mut svc, req, d, rejected.as_ref());
                    this.state.set(next);
                }
                StateProj::Called { fut, decision } => {
                    let mut res = ready!(fut.poll(cx))?;
                    if let Some(d) = decision.take() {
                        d.apply_headers(res.headers_mut());
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Rejected { res } => {
                    return Poll::Ready(Ok(res.take().expect("polled after completion")));
                }
            }
        }
    }
}
