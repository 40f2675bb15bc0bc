//! gRPC clients cannot read the gateway's JSON errors: [`GrpcErrorLayer`] turns every answer
//! the Layers of this crate make themselves (401/403 from [`jwt`](crate::jwt), 429 from
//! [`rate_limit`](crate::rate_limit), 503 from [`circuit_breaker`](crate::circuit_breaker),
//! 504 from [`timeout`](crate::timeout), and any [`nexus_core::GatewayError`] response of your
//! own) into a trailers-only gRPC response when the request is a gRPC one (`content-type:
//! application/grpc*`): HTTP 200, `grpc-status` mapped as SPEC §9 says (401 → 16, 429 → 8,
//! 503 → 14, 504 → 4, ...), `grpc-message`, no body. The inner service's own answers, a tonic
//! service's statuses included, pass untouched; non-gRPC requests are not looked at. This is
//! what the `nexus` binary does for its routes.
//!
//! Put it outside the Layers whose answers it maps:
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use nexus_middleware::{grpc::GrpcErrorLayer, timeout::GatewayTimeoutLayer};
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(GrpcErrorLayer::new())
//!     .layer(GatewayTimeoutLayer::new(Duration::from_secs(1)))
//!     .service_fn(|_req: http::Request<()>| async {
//!         tokio::time::sleep(Duration::from_secs(5)).await;
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
//!     });
//! let call = http::Request::post("/pkg.Svc/Call").header("content-type", "application/grpc").body(()).unwrap();
//! let res = svc.clone().oneshot(call).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.headers()["grpc-status"], "4"); // DEADLINE_EXCEEDED
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 504, "not a gRPC request: the JSON answer");
//! # }
//! ```

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Adds [`GrpcErrors`] to a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcErrorLayer {
    _private: (),
}

impl GrpcErrorLayer {
    /// The Layer (it has no settings: the mapping is SPEC §9's).
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

impl<S> Layer<S> for GrpcErrorLayer {
    type Service = GrpcErrors<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcErrors { inner }
    }
}

/// The service [`GrpcErrorLayer`] makes: the gateway's own answers to gRPC requests as
/// trailers-only gRPC responses.
#[derive(Debug, Clone)]
pub struct GrpcErrors<S> {
    inner: S,
}

inner_service_accessors!(GrpcErrors);

impl<S, B, ResB> Service<Request<B>> for GrpcErrors<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let grpc = nexus_core::grpc::is_grpc(req.headers());
        ResponseFuture { inner: self.inner.call(req), grpc }
    }
}

pin_project! {
    /// The response of [`GrpcErrors`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        grpc: bool,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: From<Bytes>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(if *this.grpc { nexus_core::grpc::trailers_only(res) } else { res }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use nexus_core::{ErrorCode, GatewayError};
    use tower::ServiceExt;

    fn grpc_call() -> Request<()> {
        Request::post("/pkg.Svc/Call").header("content-type", "application/grpc+proto").body(()).unwrap()
    }

    #[tokio::test]
    async fn the_gateways_answers_become_grpc_statuses_and_the_services_own_pass() {
        let svc = GrpcErrorLayer::new().layer(tower::service_fn(|req: Request<()>| async move {
            let res: Response<Full<Bytes>> = if req.uri().path().ends_with("Limited") {
                GatewayError::new(ErrorCode::RateLimited).into_response("req-7")
            } else {
                // The service's own gRPC answer (a tonic status): untouched.
                Response::builder().header("grpc-status", "5").body(Full::new(Bytes::new())).unwrap()
            };
            Ok::<_, std::convert::Infallible>(res)
        }));
        let mut limited = grpc_call();
        *limited.uri_mut() = "/pkg.Svc/Limited".parse().unwrap();
        let res = svc.clone().oneshot(limited).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/grpc");
        assert_eq!(res.headers()["grpc-status"], "8", "429 is RESOURCE_EXHAUSTED");
        assert_eq!(res.headers()["x-request-id"], "req-7");
        let res = svc.clone().oneshot(grpc_call()).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], "5", "NOT_FOUND from the service itself");

        // The same rejection to a JSON client stays a 429 with its JSON body.
        let mut json = Request::new(());
        *json.uri_mut() = "/pkg.Svc/Limited".parse().unwrap();
        let res = svc.oneshot(json).await.unwrap();
        assert_eq!(res.status(), 429);
        assert!(!res.headers().contains_key("grpc-status"));
    }
}
