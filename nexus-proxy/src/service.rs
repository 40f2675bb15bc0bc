//! tower `Service`s over [`Upstream`] and [`Gateway`], for use in any tower,
//! hyper or axum stack. The client address comes from a
//! [`PeerAddr`](nexus_core::client::PeerAddr) in the request extensions (put
//! it there in your accept loop; without it the client counts as 127.0.0.1).
//!
//! ```no_run
//! use std::sync::Arc;
//! use tower::ServiceExt;
//! use nexus_core::config::UpstreamConfig;
//! use nexus_proxy::{ProxyService, Upstream};
//! # async fn run() {
//! let config: UpstreamConfig = serde_json::from_value(serde_json::json!({
//!     "endpoints": [{ "url": "http://127.0.0.1:8081" }],
//! })).unwrap();
//! let upstream = Arc::new(Upstream::from_config("api", &config).unwrap());
//! let svc = ProxyService::new(upstream, std::time::Duration::from_secs(5));
//! let req = http::Request::get("/users").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
//! let res = svc.oneshot(req).await.unwrap(); // 502 JSON if nothing listens there
//! # let _ = res;
//! # }
//! ```

use crate::body::ResponseBody;
use crate::gateway::Gateway;
use crate::upstream::{ClientInfo, Upstream};
use http::{Request, Response};
use http_body::Body;
use ipnet::IpNet;
use nexus_core::BoxError;
use nexus_core::body::GatewayBody;
use nexus_core::client::PeerAddr;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn client_of<B>(req: &Request<B>, trusted: &[IpNet]) -> ClientInfo {
    let ip = req.extensions().get::<PeerAddr>().map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |p| p.0.ip());
    ClientInfo::new(ip, trusted)
}

/// Forwards every request to one upstream. Errors are answered with the JSON
/// body (502, 503, 504, 413), so the service never fails.
#[derive(Debug)]
pub struct ProxyService<B> {
    upstream: Arc<Upstream<B>>,
    timeout: Duration,
    trusted: Arc<[IpNet]>,
}

impl<B> Clone for ProxyService<B> {
    fn clone(&self) -> Self {
        Self { upstream: Arc::clone(&self.upstream), timeout: self.timeout, trusted: Arc::clone(&self.trusted) }
    }
}

impl<B> ProxyService<B> {
    /// Forward to `upstream`, waiting at most `timeout` for response headers.
    pub fn new(upstream: Arc<Upstream<B>>, timeout: Duration) -> Self {
        Self { upstream, timeout, trusted: Arc::from([]) }
    }

    /// Peers in these networks are proxies whose `X-Forwarded-Proto/-Host` are kept.
    pub fn with_trusted_proxies(mut self, trusted: impl Into<Arc<[IpNet]>>) -> Self {
        self.trusted = trusted.into();
        self
    }
}

impl<B> tower::Service<Request<B>> for ProxyService<B>
where
    B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let client = client_of(&req, &this.trusted);
            let id = req.headers().get(nexus_core::error::REQUEST_ID).cloned();
            Ok(match this.upstream.forward(req, &client, this.timeout).await {
                Ok(res) => res.map(GatewayBody::stream),
                Err(e) => e.to_gateway_error().into_response(id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")),
            })
        })
    }
}

/// Routes and forwards with a whole [`Gateway`] (404, 405 and upstream errors as JSON).
#[derive(Debug)]
pub struct GatewayService<B> {
    gateway: Arc<Gateway<B>>,
    trusted: Arc<[IpNet]>,
}

impl<B> Clone for GatewayService<B> {
    fn clone(&self) -> Self {
        Self { gateway: Arc::clone(&self.gateway), trusted: Arc::clone(&self.trusted) }
    }
}

impl<B> GatewayService<B> {
    /// Serve with this gateway; `trusted` as in `server.trusted_proxies`.
    pub fn new(gateway: Arc<Gateway<B>>, trusted: impl Into<Arc<[IpNet]>>) -> Self {
        Self { gateway, trusted: trusted.into() }
    }
}

impl<B> tower::Service<Request<B>> for GatewayService<B>
where
    B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let client = client_of(&req, &this.trusted);
            Ok(this.gateway.handle(req, &client).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use tower::ServiceExt;

    fn gateway(routes: serde_json::Value) -> Arc<Gateway<Empty<bytes::Bytes>>> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = nexus_core::config::Config::from_json(serde_json::json!({
            "upstreams": { "dead": { "endpoints": [{ "url": format!("http://127.0.0.1:{port}") }] } },
            "routes": routes,
        }))
        .unwrap();
        Arc::new(Gateway::from_config(&config).unwrap())
    }

    async fn json(res: Response<ResponseBody<Empty<bytes::Bytes>>>) -> serde_json::Value {
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    #[tokio::test]
    async fn gateway_service_answers_404_405_and_502_as_json() {
        let svc = GatewayService::new(
            gateway(
                serde_json::json!([{ "name": "r", "paths": [{ "path": "/api" }], "methods": ["GET"], "upstream": "dead" }]),
            ),
            Vec::new(),
        );
        let req = |m: &str, p: &str| {
            Request::builder().method(m).uri(p).header("x-request-id", "t-1").body(Empty::new()).unwrap()
        };
        let res = svc.clone().oneshot(req("GET", "/nope")).await.unwrap();
        assert_eq!(res.status(), 404);
        assert_eq!(json(res).await["error"]["request_id"], "t-1");
        let res = svc.clone().oneshot(req("POST", "/api/x")).await.unwrap();
        assert_eq!(res.status(), 405);
        assert_eq!(res.headers()["allow"], "GET, HEAD");
        let res = svc.oneshot(req("GET", "/api/x")).await.unwrap();
        assert_eq!(res.status(), 502);
        assert_eq!(json(res).await["error"]["code"], "bad_gateway");
    }
}
