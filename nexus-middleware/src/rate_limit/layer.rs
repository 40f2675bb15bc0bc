//! The tower Layer and Service around a [`RateLimiter`].

use super::{Check, Decision, RateLimiter};
use bytes::Bytes;
use http::{Request, Response};
use nexus_core::claims::VerifiedClaims;
use nexus_core::client::peer_of;
use nexus_core::error::REQUEST_ID;
use pin_project_lite::pin_project;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// Adds a [`RateLimit`] to a service; every clone shares the limiter's buckets.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: RateLimiter,
    rejected: Option<metrics::Counter>,
}

impl RateLimitLayer {
    /// Limit with `limiter`. The client IP (for [`RateLimitKey::ClientIp`](super::RateLimitKey)
    /// and as the fallback of the other keys) comes from the request's extensions through
    /// [`peer_of`] (a `PeerAddr`, or axum's `ConnectInfo` with the `axum` feature); without
    /// one such a request is answered 500 ([`RateLimiter::unknown_client`](super::RateLimiter::unknown_client)),
    /// never counted in a bucket shared by all. See [`layer_with_peer`](Self::layer_with_peer)
    /// for a server that knows the peer.
    pub fn new(limiter: RateLimiter) -> Self {
        Self { limiter, rejected: None }
    }

    /// Count rejections in `nexus_rate_limited_total{route,limit}` under this route name.
    pub fn with_metric(mut self, route: &str) -> Self {
        self.rejected = Some(metrics::counter!(
            nexus_core::metric_names::RATE_LIMITED_TOTAL,
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
        RateLimit { inner, limiter: self.limiter.clone(), rejected: self.rejected.clone(), peer: Peer::Extensions }
    }
}

impl RateLimitLayer {
    /// Wrap `inner` for requests whose client is known to come from `peer` (a server that
    /// builds the service for each request or connection, as the Nexus gateway does, and
    /// so needs no extension to carry the address).
    /// `None`: the server knows it does not know the client (see
    /// [`RateLimiter::try_key_from`]).
    pub fn layer_with_peer<S>(&self, inner: S, peer: Option<IpAddr>) -> RateLimit<S> {
        RateLimit { inner, limiter: self.limiter.clone(), rejected: self.rejected.clone(), peer: Peer::Known(peer) }
    }
}

/// Where a [`RateLimit`] gets the peer address of a request.
#[derive(Debug, Clone, Copy)]
enum Peer {
    /// A [`PeerAddr`] in the request's extensions.
    Extensions,
    /// Given when the service was made.
    Known(Option<IpAddr>),
}

/// The rate-limiting service: 429 without calling `inner` when over the limit.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: RateLimiter,
    rejected: Option<metrics::Counter>,
    peer: Peer,
}

inner_service_accessors!(RateLimit);

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
        let peer = match self.peer {
            Peer::Extensions => peer_of(req.extensions()).map(|p| p.ip()),
            Peer::Known(ip) => ip,
        };
        let Some(key) = self.limiter.try_key_from(req.headers(), req.extensions().get::<VerifiedClaims>(), peer) else {
            // No client address to key on: refused, never one bucket for every client.
            return ResponseFuture { state: State::Rejected { res: Some(self.limiter.unknown_client(req.headers())) } };
        };
        let mut check = self.limiter.check(key);
        let state = match check.ready() {
            Some(d) => decided(&mut self.inner, req, d, self.rejected.as_ref()),
            None => {
                // A remote check: the service readied by poll_ready goes with the request.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                State::Checking { check, inner: Some(Box::new((inner, req))), rejected: self.rejected.clone() }
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
        // Boxed: only a remote (Redis) check waits here, and it keeps every request's future small.
        Checking { #[pin] check: Check, inner: Option<Box<(S, R)>>, rejected: Option<metrics::Counter> },
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
                    let (mut svc, req) = *inner.take().expect("polled after completion");
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
