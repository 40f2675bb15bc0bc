//! SPEC §8's shutdown phases and the probes as tower Layers, for any tower/hyper/axum
//! service:
//!
//! - [`ShutdownLayer`]: while [`Phase::Draining`], every HTTP/1 response carries
//!   `Connection: close` (persistent clients reconnect elsewhere); once
//!   [`Phase::Stopping`], a request on a connection that is still open gets 503
//!   `shutting_down` with `Connection: close`. Requests in flight are counted in the
//!   [`Tracker`](crate::shutdown::Tracker) until their response head is ready.
//! - [`ProbesLayer`]: `/healthz` (liveness) and `/readyz` (the [`Readiness`] gate and its
//!   checks) answered before the service, so no route can shadow them.
//!
//! ```
//! use nexus_health::check::Readiness;
//! use nexus_health::layer::{ProbesLayer, ShutdownLayer};
//! use nexus_health::shutdown::Shutdown;
//! use nexus_health::ReadinessGate;
//! use tower::{ServiceBuilder, ServiceExt};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let (gate, shutdown) = (ReadinessGate::new(), Shutdown::new());
//! let app = tower::service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("hi"))))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(ProbesLayer::new(Readiness::new(gate.clone())))
//!     .layer(ShutdownLayer::new(shutdown.clone()))
//!     .service(app);
//! gate.set_ready();
//! shutdown.drain();
//! let res = svc.clone().oneshot(http::Request::get("/readyz").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), 200, "the gate, not the phase, decides readiness");
//! let res = svc.oneshot(http::Request::get("/").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.headers()["connection"], "close", "draining: persistent clients go elsewhere");
//! # }
//! ```

use crate::check::Readiness;
use crate::probe;
use crate::shutdown::{Phase, Shutdown, TrackGuard};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version, header};
use nexus_core::{ErrorCode, GatewayError};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// Adds [`ShutdownService`] to a service (see the module docs).
#[derive(Debug, Clone)]
pub struct ShutdownLayer {
    shutdown: Shutdown,
}

impl ShutdownLayer {
    /// Follow `shutdown`'s phases.
    pub fn new(shutdown: Shutdown) -> Self {
        Self { shutdown }
    }
}

impl<S> Layer<S> for ShutdownLayer {
    type Service = ShutdownService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ShutdownService { inner, shutdown: self.shutdown.clone() }
    }
}

/// The service of [`ShutdownLayer`].
#[derive(Debug, Clone)]
pub struct ShutdownService<S> {
    inner: S,
    shutdown: Shutdown,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ShutdownService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ShutdownFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let close = req.version() < Version::HTTP_2;
        match self.shutdown.phase() {
            Phase::Stopping => {
                let mut res: Response<ResB> =
                    GatewayError::new(ErrorCode::ShuttingDown).into_response_for(req.headers());
                res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                ShutdownFuture { inner: Kind::Refused { res: Some(res) } }
            }
            phase => ShutdownFuture {
                inner: Kind::Serving {
                    fut: self.inner.call(req),
                    _in_flight: self.shutdown.tracker().track(),
                    shutdown: self.shutdown.clone(),
                    close: close && phase == Phase::Draining,
                    http1: close,
                },
            },
        }
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Serving { #[pin] fut: F, _in_flight: TrackGuard, shutdown: Shutdown, close: bool, http1: bool },
        Refused { res: Option<Response<B>> },
    }
}

pin_project! {
    /// Response future of [`ShutdownService`].
    pub struct ShutdownFuture<F, B> {
        #[pin]
        inner: Kind<F, B>,
    }
}

impl<F, B> std::fmt::Debug for ShutdownFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShutdownFuture")
    }
}

impl<F, B, E> Future for ShutdownFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            KindProj::Refused { res } => Poll::Ready(Ok(res.take().expect("polled after completion"))),
            KindProj::Serving { fut, shutdown, close, http1, .. } => {
                let mut res = ready!(fut.poll(cx))?;
                // Draining began while the request was served: it still closes.
                if *close || (*http1 && shutdown.phase() != Phase::Running) {
                    res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Poll::Ready(Ok(res))
            }
        }
    }
}

/// Adds [`ProbesService`] to a service (see the module docs).
#[derive(Debug, Clone)]
pub struct ProbesLayer {
    readiness: Readiness,
}

impl ProbesLayer {
    /// `/healthz` and `/readyz` from `readiness` (its gate and registered checks).
    pub fn new(readiness: Readiness) -> Self {
        Self { readiness }
    }
}

impl<S> Layer<S> for ProbesLayer {
    type Service = ProbesService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ProbesService { inner, readiness: self.readiness.clone() }
    }
}

/// The service of [`ProbesLayer`].
#[derive(Debug, Clone)]
pub struct ProbesService<S> {
    inner: S,
    readiness: Readiness,
}

/// A readiness answer being computed (its checks may wait).
type ReadinessAnswer<B> = Pin<Box<dyn Future<Output = Response<B>> + Send>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for ProbesService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: From<Bytes> + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ProbesFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match probe::probe_for(req.uri().path(), "") {
            Some(probe::Probe::Liveness) => ProbesFuture { inner: Probed::Ready { res: Some(probe::liveness()) } },
            Some(probe::Probe::Readiness) => {
                let readiness = self.readiness.clone();
                ProbesFuture { inner: Probed::Checking { fut: Box::pin(async move { readiness.response().await }) } }
            }
            None => ProbesFuture { inner: Probed::Inner { fut: self.inner.call(req) } },
        }
    }
}

pin_project! {
    #[project = ProbedProj]
    enum Probed<F, B> {
        Inner { #[pin] fut: F },
        Ready { res: Option<Response<B>> },
        Checking { fut: ReadinessAnswer<B> },
    }
}

pin_project! {
    /// Response future of [`ProbesService`].
    pub struct ProbesFuture<F, B> {
        #[pin]
        inner: Probed<F, B>,
    }
}

impl<F, B> std::fmt::Debug for ProbesFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbesFuture")
    }
}

impl<F, B, E> Future for ProbesFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            ProbedProj::Inner { fut } => fut.poll(cx),
            ProbedProj::Ready { res } => Poll::Ready(Ok(res.take().expect("polled after completion"))),
            ProbedProj::Checking { fut } => fut.as_mut().poll(cx).map(Ok),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt};

    type Res = Response<Full<Bytes>>;

    fn app() -> impl Service<Request<()>, Response = Res, Error = Infallible, Future: Send> + Clone {
        tower::service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(req.uri().path().to_string()))))
        })
    }

    async fn get(svc: impl Service<Request<()>, Response = Res, Error = Infallible>, path: &str, v: Version) -> Res {
        let mut req = Request::get(path).body(()).unwrap();
        *req.version_mut() = v;
        svc.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn each_phase_answers_as_spec_8_says() {
        let shutdown = Shutdown::new();
        let svc = ShutdownLayer::new(shutdown.clone()).layer(app());
        let running = get(svc.clone(), "/a", Version::HTTP_11).await;
        assert_eq!((running.status(), running.headers().get("connection")), (http::StatusCode::OK, None));
        shutdown.drain();
        let draining = get(svc.clone(), "/a", Version::HTTP_11).await;
        assert_eq!(draining.status(), 200);
        assert_eq!(draining.headers()["connection"], "close");
        // HTTP/2 has no `Connection`: its server sends GOAWAY instead.
        assert!(get(svc.clone(), "/a", Version::HTTP_2).await.headers().get("connection").is_none());
        shutdown.stop();
        let stopping = get(svc, "/a", Version::HTTP_11).await;
        assert_eq!(stopping.status(), 503);
        assert_eq!(stopping.headers()["connection"], "close");
        let body = http_body_util::BodyExt::collect(stopping.into_body()).await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("\"code\":\"shutting_down\""));
    }

    #[tokio::test]
    async fn a_request_in_flight_is_counted_until_its_answer() {
        let shutdown = Shutdown::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
        let slow = tower::service_fn(move |_req: Request<()>| {
            let rx = std::sync::Arc::clone(&rx);
            async move {
                let rx = rx.lock().await.take().unwrap();
                let _ = rx.await;
                Ok::<_, Infallible>(Res::new(Full::new(Bytes::new())))
            }
        });
        let svc = ShutdownLayer::new(shutdown.clone()).layer(slow);
        let call = tokio::spawn(svc.oneshot(Request::new(())));
        tokio::task::yield_now().await;
        assert_eq!(shutdown.tracker().active(), 1);
        tx.send(()).unwrap();
        call.await.unwrap().unwrap();
        assert!(shutdown.tracker().wait_idle(std::time::Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn probes_answer_before_the_service_and_the_rest_passes() {
        let gate = crate::ReadinessGate::new();
        let svc = ServiceBuilder::new().layer(ProbesLayer::new(Readiness::new(gate.clone()))).service(app());
        assert_eq!(get(svc.clone(), "/healthz", Version::HTTP_11).await.status(), 200);
        assert_eq!(get(svc.clone(), "/readyz", Version::HTTP_11).await.status(), 503, "not ready yet");
        gate.set_ready();
        assert_eq!(get(svc.clone(), "/readyz", Version::HTTP_11).await.status(), 200);
        let other = get(svc, "/healthz/not", Version::HTTP_11).await;
        let body = http_body_util::BodyExt::collect(other.into_body()).await.unwrap().to_bytes();
        assert_eq!(body, "/healthz/not");
    }
}
