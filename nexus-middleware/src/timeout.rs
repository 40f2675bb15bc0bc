//! A whole-request timeout as a tower Layer: when the inner service has not
//! answered within the duration, the client gets 504 `gateway_timeout` with
//! the JSON body (and the inner future is dropped, cancelling its work). Like
//! tower-http's `TimeoutLayer`, it answers rather than erroring, so the inner
//! error type is kept.
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use nexus_middleware::timeout::GatewayTimeoutLayer;
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let svc = ServiceBuilder::new().layer(GatewayTimeoutLayer::new(Duration::from_secs(2))).service_fn(|_req: http::Request<()>| async {
//!     tokio::time::sleep(Duration::from_secs(5)).await;
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
//! });
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 504);
//! # }
//! ```

use bytes::Bytes;
use http::{Request, Response};
use nexus_core::error::REQUEST_ID;
use nexus_core::{ErrorCode, GatewayError};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tower::{Layer, Service};

/// This Layer's first name, which it shared with tower's and tower-http's.
#[deprecated(note = "renamed GatewayTimeoutLayer: tower and tower-http have a TimeoutLayer too")]
pub type TimeoutLayer = GatewayTimeoutLayer;

/// This service's first name.
#[deprecated(note = "renamed GatewayTimeout")]
pub type Timeout<S> = GatewayTimeout<S>;

/// Adds a [`GatewayTimeout`] to a service.
#[derive(Debug, Clone, Copy)]
pub struct GatewayTimeoutLayer {
    timeout: Duration,
}

impl GatewayTimeoutLayer {
    /// Answer 504 after `timeout`.
    pub const fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for GatewayTimeoutLayer {
    type Service = GatewayTimeout<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GatewayTimeout { inner, timeout: self.timeout }
    }
}

/// The timeout service.
#[derive(Debug, Clone)]
pub struct GatewayTimeout<S> {
    inner: S,
    timeout: Duration,
}

inner_service_accessors!(GatewayTimeout);

impl<S, B, ResB> Service<Request<B>> for GatewayTimeout<S>
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
        let id = req.headers().get(REQUEST_ID).cloned();
        ResponseFuture { fut: self.inner.call(req), sleep: tokio::time::sleep(self.timeout), id }
    }
}

pin_project! {
    /// Response future of [`GatewayTimeout`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
        #[pin]
        sleep: Sleep,
        id: Option<http::HeaderValue>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: From<Bytes>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.fut.poll(cx) {
            return Poll::Ready(r);
        }
        if this.sleep.poll(cx).is_ready() {
            let id = this.id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
            return Poll::Ready(Ok(GatewayError::new(ErrorCode::GatewayTimeout).into_response(id)));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt};

    fn slow(ms: u64) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> {
        ServiceBuilder::new().layer(GatewayTimeoutLayer::new(Duration::from_millis(100))).service_fn(
            move |_req| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("done"))))
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn fast_answers_pass_and_slow_ones_are_504_with_the_request_id() {
        assert_eq!(slow(50).oneshot(Request::new(())).await.unwrap().status(), 200);
        let mut req = Request::new(());
        req.headers_mut().insert(REQUEST_ID, "t-1".parse().unwrap());
        let res = slow(500).oneshot(req).await.unwrap();
        assert_eq!(res.status(), 504);
        let body: serde_json::Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["error"]["code"], "gateway_timeout");
        assert_eq!(body["error"]["request_id"], "t-1");
    }
}
