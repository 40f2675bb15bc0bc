//! The tower Layer and Service around a [`JwtAuth`].

use super::{Forwarded, JwtAuth, Reason};
use bytes::Bytes;
use http::{Request, Response};
use nexus_core::claims::VerifiedClaims;
use nexus_core::error::REQUEST_ID;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// Adds [`JwtAuthService`] to a service; clones share the keys.
#[derive(Debug, Clone)]
pub struct JwtAuthLayer {
    auth: JwtAuth,
    failures: Option<Failures>,
    /// Put the verified claims in the request's extensions (the default).
    claims: bool,
}

/// `nexus_auth_failures_total{route,reason}`, one handle per reason; clones share them (a
/// clone is one reference-count increment: the gateway applies its layer per request).
#[derive(Debug, Clone)]
pub struct Failures(std::sync::Arc<[metrics::Counter]>);

impl Failures {
    /// Register the counters for `route`.
    pub fn new(route: &str) -> Self {
        Self(
            Reason::ALL
                .iter()
                .map(|r| metrics::counter!(nexus_core::metric_names::AUTH_FAILURES_TOTAL, "route" => route.to_string(), "reason" => r.as_str()))
                .collect(),
        )
    }

    /// Count one failure.
    pub fn count(&self, reason: Reason) {
        self.0[reason.index()].increment(1);
    }
}

impl JwtAuthLayer {
    /// Authenticate with `auth`.
    pub fn new(auth: JwtAuth) -> Self {
        Self { auth, failures: None, claims: true }
    }

    /// Count failures in `nexus_auth_failures_total{route,reason}` under this route name.
    pub fn with_metric(mut self, route: &str) -> Self {
        self.failures = Some(Failures::new(route));
        self
    }

    /// Leave the verified claims out of the request's extensions, for a stack in which
    /// nothing below this layer reads them (the claims in `forward_claims` still go to their
    /// headers). A request's extension map is allocated by its first insert: this saves that
    /// allocation, and its drop, on every authenticated request.
    ///
    /// ```
    /// use jsonwebtoken::Algorithm;
    /// use nexus_middleware::jwt::{JwtAuth, JwtConfig, KeySource};
    /// use nexus_middleware::JwtAuthLayer;
    ///
    /// let auth = JwtAuth::new(JwtConfig {
    ///     algorithms: vec![Algorithm::HS256],
    ///     keys: KeySource::Secret(b"a secret of 32 bytes or more....".to_vec()),
    ///     forward_claims: vec![("sub".into(), http::HeaderName::from_static("x-user-id"))],
    ///     ..JwtConfig::default()
    /// })
    /// .unwrap();
    /// // In front of a proxy: the user's id goes upstream in a header; nothing reads the claims.
    /// let layer = JwtAuthLayer::new(auth).without_claims_extension();
    /// # let _ = layer;
    /// ```
    pub fn without_claims_extension(mut self) -> Self {
        self.claims = false;
        self
    }
}

impl<S> Layer<S> for JwtAuthLayer {
    type Service = JwtAuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        JwtAuthService { inner, auth: self.auth.clone(), failures: self.failures.clone(), claims: self.claims }
    }
}

/// The authenticating service.
#[derive(Debug, Clone)]
pub struct JwtAuthService<S> {
    inner: S,
    auth: JwtAuth,
    failures: Option<Failures>,
    claims: bool,
}

inner_service_accessors!(JwtAuthService);

type Refetch = Pin<Box<dyn Future<Output = bool> + Send>>;

impl<S, B, ResB> Service<Request<B>> for JwtAuthService<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let state = match self.auth.verify_forwarding(req.headers()) {
            Err(Reason::UnknownKey) => {
                // Rare: a kid we do not have. Refetch (shared, rate-limited), then verify again.
                let store = std::sync::Arc::clone(self.auth.store());
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                State::Refetching {
                    fut: Box::pin(async move { store.refetch().await }),
                    inner: Some(Box::new(Waiting {
                        svc: inner,
                        req,
                        auth: self.auth.clone(),
                        failures: self.failures.clone(),
                        claims: self.claims,
                    })),
                }
            }
            outcome => decide(&mut self.inner, &self.auth, self.failures.as_ref(), self.claims, req, outcome),
        };
        ResponseFuture { state }
    }
}

fn decide<S, B, ResB>(
    inner: &mut S,
    auth: &JwtAuth,
    failures: Option<&Failures>,
    claims_extension: bool,
    mut req: Request<B>,
    outcome: Result<(VerifiedClaims, Option<Forwarded>), Reason>,
) -> State<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: From<Bytes>,
{
    match outcome {
        Ok((claims, forwarded)) => {
            auth.scrub(req.headers_mut());
            auth.forward_from(&claims, forwarded.as_ref(), req.headers_mut());
            if claims_extension {
                req.extensions_mut().insert(claims);
            }
            State::Called { fut: inner.call(req) }
        }
        Err(reason) => {
            if let Some(f) = failures {
                f.count(reason);
            }
            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            State::Rejected { res: Some(reason.rejection(id)) }
        }
    }
}

/// A request waiting for the key set's refetch, with what deciding it then takes.
struct Waiting<S, B> {
    svc: S,
    req: Request<B>,
    auth: JwtAuth,
    failures: Option<Failures>,
    claims: bool,
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<B>>, B> {
        // Boxed: only an unknown key waits here, and it keeps every request's future small
        // (the policy and its counters are held only by a request that waits).
        Refetching { fut: Refetch, inner: Option<Box<Waiting<S, B>>> },
        Called { #[pin] fut: S::Future },
        Rejected { res: Option<S::Response> },
    }
}

pin_project! {
    /// Response future of [`JwtAuthService`].
    pub struct ResponseFuture<S: Service<Request<B>>, B> {
        #[pin]
        state: State<S, B>,
    }
}

impl<S: Service<Request<B>>, B> std::fmt::Debug for ResponseFuture<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("jwt::ResponseFuture")
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: From<Bytes>,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Refetching { fut, inner } => {
                    ready!(fut.as_mut().poll(cx));
                    let Waiting { mut svc, req, auth, failures, claims } =
                        *inner.take().expect("polled after completion");
                    let outcome = auth.verify_forwarding(req.headers());
                    let next = decide(&mut svc, &auth, failures.as_ref(), claims, req, outcome);
                    this.state.set(next);
                }
                StateProj::Called { fut } => return fut.poll(cx),
                StateProj::Rejected { res } => return Poll::Ready(Ok(res.take().expect("polled after completion"))),
            }
        }
    }
}
