//! tower `Service`s over [`Upstream`] and [`Gateway`], for use in any tower,
//! hyper or axum stack. The client address comes from the request extensions
//! ([`peer_of`]: a `PeerAddr` your accept loop puts there, or
//! axum's `ConnectInfo<SocketAddr>` with the `axum` feature). Without one the client is
//! unknown: `X-Forwarded-For: unknown`, and per-client rate limits answer 500.
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

use crate::body::{RequestBody, ResponseBody};
use crate::gateway::{Gateway, GatewayResponse};
use crate::upstream::{ClientInfo, Upstream};
use http::{Request, Response};
use ipnet::IpNet;
use nexus_core::body::GatewayBody;
use nexus_core::client::peer_of;
use nexus_core::config::{Config, ConfigError, ConfigErrors};
use nexus_core::error::REQUEST_ID;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn client_of<B>(req: &Request<B>, trusted: &[IpNet]) -> ClientInfo {
    match peer_of(req.extensions()) {
        Some(peer) => ClientInfo::new(peer.ip(), trusted),
        None => ClientInfo::unknown(),
    }
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
    B: RequestBody,
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
                Ok(res) => crate::target::own_version(res).map(GatewayBody::stream),
                Err(e) => e.to_gateway_error().into_response(id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")),
            })
        })
    }
}

/// The whole gateway as one tower `Service`: what the `nexus` binary serves,
/// for an axum app (`Router::fallback_service`) or any hyper server. It
/// enforces everything the config says — routes, splits, auth, rate limits,
/// breakers, retries, timeouts, body and header limits, metrics — and keeps a
/// client's valid `X-Request-Id` or makes one, on the request and the answer, and sends one
/// W3C `traceparent` upstream (`nexus_middleware::trace_context`).
/// Listeners, probes and the shutdown sequence stay with the server around it.
///
/// The client address comes from a [`ClientInfo`] or a
/// [`PeerAddr`](nexus_core::client::PeerAddr) in the request's extensions. A per-client rate
/// limit needs one of them: without, its route answers 500 rather than put every client in one
/// bucket.
///
/// ```
/// use nexus_proxy::GatewayService;
/// use tower::ServiceExt;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let config = nexus_core::config::Config::from_json(serde_json::json!({
///     "auth": { "jwt": { "main": { "jwks_url": "https://issuer.example.com/jwks.json" } } },
///     "upstreams": { "api": { "endpoints": [{ "url": "http://127.0.0.1:9" }] } },
///     "routes": [{ "name": "api", "paths": [{ "path": "/" }], "upstream": "api", "auth": "main" }],
/// })).unwrap();
/// let svc = GatewayService::<http_body_util::Empty<bytes::Bytes>>::from_config(&config).unwrap();
/// let res = svc.oneshot(http::Request::new(http_body_util::Empty::new())).await.unwrap();
/// assert_eq!(res.status(), 401, "auth: main holds without a token");
/// assert!(res.headers().contains_key("x-request-id"));
/// # }
/// ```
#[derive(Debug)]
pub struct GatewayService<B> {
    gateway: Arc<Gateway<B>>,
}

impl<B> Clone for GatewayService<B> {
    fn clone(&self) -> Self {
        Self { gateway: Arc::clone(&self.gateway) }
    }
}

impl<B> GatewayService<B>
where
    B: RequestBody,
{
    /// Serve with this gateway. Its span export (`tracing:`) becomes the process's
    /// ([`Tracing::install`](crate::spans::Tracing::install)): upstream tries' client spans go there.
    pub fn new(gateway: Arc<Gateway<B>>) -> Self {
        gateway.tracing().install();
        Self { gateway }
    }

    /// Build the gateway from a validated config (`*_env` keys read from the
    /// process environment) and serve it.
    ///
    /// The Service is what runs per request; what belongs to the server around it (where
    /// it listens, how long a head may take to arrive, probes on the main port, the
    /// shutdown sequence, logging, the admin listener) is the embedding app's. A config that
    /// sets one of those keys to anything but its default is refused here, every such key
    /// with its field path, rather than silently ignored ([`server_only_keys`]).
    pub fn from_config(config: &Config) -> Result<Self, ConfigErrors> {
        let unhonoured = server_only_keys(config);
        let built = Gateway::from_config(config);
        match (built, unhonoured.is_empty()) {
            (Ok(gateway), true) => Ok(Self::new(Arc::new(gateway))),
            (Ok(_), false) => Err(ConfigErrors(unhonoured)),
            (Err(mut e), _) => {
                e.0.extend(unhonoured);
                Err(e)
            }
        }
    }

    /// The gateway served.
    pub fn gateway(&self) -> &Arc<Gateway<B>> {
        &self.gateway
    }
}

/// The keys of `config` that only a server honours (the `nexus` binary does) and that are
/// set to something other than their default: one error per key, with its field path. An
/// embedder of [`GatewayService`] gets these as build errors.
///
/// ```
/// let mut config = nexus_core::config::Config::default();
/// assert!(nexus_proxy::service::server_only_keys(&config).is_empty());
/// config.server.listen = "0.0.0.0:9999".parse().unwrap();
/// config.server.shutdown.drain_delay = nexus_core::config::Duration(std::time::Duration::from_secs(1));
/// let paths: Vec<String> = nexus_proxy::service::server_only_keys(&config).into_iter().map(|e| e.path).collect();
/// assert_eq!(paths, ["server.listen", "server.shutdown.drain_delay"]);
/// ```
pub fn server_only_keys(config: &Config) -> Vec<ConfigError> {
    let defaults = Config::default();
    let (server, d) = (&config.server, &defaults.server);
    let why = "the embedding app's server decides this, not the gateway Service; leave the key out \
               (the `nexus` binary honours it)";
    let set = [
        ("server.listen", server.listen != d.listen),
        ("server.admin_listen", server.admin_listen != d.admin_listen),
        ("server.reuse_port", server.reuse_port != d.reuse_port),
        ("server.probe_prefix", server.probe_prefix != d.probe_prefix),
        ("server.limits.header_read_timeout", server.limits.header_read_timeout != d.limits.header_read_timeout),
        ("server.limits.h2_idle_timeout", server.limits.h2_idle_timeout != d.limits.h2_idle_timeout),
        ("server.shutdown.drain_delay", server.shutdown.drain_delay != d.shutdown.drain_delay),
        ("server.shutdown.grace_period", server.shutdown.grace_period != d.shutdown.grace_period),
        ("logging.level", config.logging.level != defaults.logging.level),
        ("logging.format", config.logging.format != defaults.logging.format),
        ("admin", config.admin != defaults.admin),
    ];
    set.into_iter().filter(|(_, differs)| *differs).map(|(path, _)| ConfigError::new(path, why)).collect()
}

impl<B> tower::Service<Request<B>> for GatewayService<B>
where
    B: RequestBody,
{
    type Response = GatewayResponse<B>;
    type Error = Infallible;
    /// Boxed: the gateway's own future is awaited in place by the `nexus` binary, but a
    /// `Service` must name its future (a second box on an embedder's request, beside the
    /// forward's: see [`RouteTarget::forward`](crate::RouteTarget::forward)).
    type Future = BoxFuture<Result<GatewayResponse<B>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = nexus_middleware::request_id::ensure(req.headers_mut());
        let gateway = Arc::clone(&self.gateway);
        let tracing = gateway.tracing();
        let started = nexus_middleware::trace_context::ensure_with(req.headers_mut(), tracing.sampling());
        let trace = tracing.trace(&started);
        let log = (gateway.access_log() || trace.is_some()).then(|| {
            let ip = crate::access_log::client_ip(req.extensions());
            crate::access_log::Pending::start_with(&req, &ip, gateway.access_log(), trace)
        });
        Box::pin(async move {
            let mut res = gateway.handle(req).await;
            res.headers_mut().insert(REQUEST_ID, id);
            if let Some(log) = log {
                log.finish(&mut res);
            }
            Ok(res)
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

    async fn json(res: GatewayResponse<Empty<bytes::Bytes>>) -> serde_json::Value {
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    #[tokio::test]
    async fn gateway_service_answers_404_405_and_502_as_json() {
        let svc = GatewayService::new(gateway(
            serde_json::json!([{ "name": "r", "paths": [{ "path": "/api" }], "methods": ["GET"], "upstream": "dead" }]),
        ));
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
        let body = json(res).await;
        assert_eq!(body["error"]["code"], "bad_gateway");
        assert_eq!(body["error"]["request_id"], "t-1", "the forward's own answer names the client's id");
    }

    fn config(extra: serde_json::Value) -> nexus_core::config::Config {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut doc = serde_json::json!({
            "upstreams": { "dead": { "endpoints": [{ "url": format!("http://127.0.0.1:{port}") }] } },
        });
        doc.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        nexus_core::config::Config::from_json(doc).unwrap()
    }

    fn from(ip: [u8; 4], path: &str) -> Request<Empty<bytes::Bytes>> {
        let mut req = Request::get(path).body(Empty::new()).unwrap();
        req.extensions_mut().insert(nexus_core::client::PeerAddr(std::net::SocketAddr::from((ip, 40000))));
        req
    }

    #[test]
    fn server_keys_are_refused_by_the_embedded_service_with_every_other_error() {
        let ok =
            config(serde_json::json!({ "routes": [{ "name": "r", "paths": [{ "path": "/" }], "upstream": "dead" }] }));
        assert!(GatewayService::<Empty<bytes::Bytes>>::from_config(&ok).is_ok(), "defaults are fine");
        let server = serde_json::json!({
            "server": { "listen": "0.0.0.0:9000", "probe_prefix": "/_probe", "limits": { "header_read_timeout": "3s" } },
            "logging": { "level": "debug" },
            // A second, unrelated error (the secret is not in the environment): reported in the same round.
            "auth": { "jwt": { "main": { "algorithms": ["HS256"], "secret_env": "NEXUS_TEST_NEVER_SET_SECRET" } } },
            "routes": [{ "name": "r", "paths": [{ "path": "/" }], "upstream": "dead", "auth": "main" }],
        });
        let Err(errors) = GatewayService::<Empty<bytes::Bytes>>::from_config(&config(server)) else {
            panic!("server keys are not silently ignored")
        };
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        for key in ["server.listen", "server.probe_prefix", "server.limits.header_read_timeout", "logging.level"] {
            assert!(paths.contains(&key), "{key} in {paths:?}");
        }
        assert!(paths.iter().any(|p| p.contains("secret_env")), "{paths:?}");
        // The binary's entry point honours them.
        let c = config(serde_json::json!({ "server": { "listen": "0.0.0.0:9000" } }));
        assert!(Gateway::<Empty<bytes::Bytes>>::from_config(&c).is_ok());
    }

    #[tokio::test]
    async fn a_config_built_service_enforces_auth_and_per_peer_limits() {
        let limits = serde_json::json!({
            "rate_limits": { "two": { "requests": 2, "per": "1m" } },
            "auth": { "jwt": { "main": { "algorithms": ["HS256"], "secret_env": "NEXUS_TEST_UNSET_SECRET" } } },
            "routes": [
                { "name": "limited", "paths": [{ "path": "/l" }], "upstream": "dead", "rate_limit": "two" },
                { "name": "private", "paths": [{ "path": "/p" }], "upstream": "dead", "auth": "main" },
            ],
        });
        let env = std::collections::HashMap::from([(
            "NEXUS_TEST_UNSET_SECRET".to_string(),
            "a secret of thirty-two bytes or more".to_string(),
        )]);
        let c = config(limits);
        let gw = Gateway::with_env(&c, crate::balance::Rng::seeded(1), &env).unwrap();
        let svc = GatewayService::new(Arc::new(gw));
        let res = svc.clone().oneshot(from([192, 0, 2, 1], "/p")).await.unwrap();
        assert_eq!(res.status(), 401, "auth is not ignored");
        for ip in [[192, 0, 2, 1], [192, 0, 2, 2]] {
            for _ in 0..2 {
                let res = svc.clone().oneshot(from(ip, "/l")).await.unwrap();
                assert_eq!(res.status(), 502, "under the limit: forwarded (nothing listens)");
            }
            let res = svc.clone().oneshot(from(ip, "/l")).await.unwrap();
            assert_eq!(res.status(), 429, "{ip:?} has a bucket of its own");
        }
        // The secret comes from the environment: without it, building fails with the field path.
        let errors = Gateway::<Empty<bytes::Bytes>>::with_env(
            &c,
            crate::balance::Rng::seeded(1),
            &std::collections::HashMap::new(),
        )
        .unwrap_err();
        assert_eq!(errors.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["auth.jwt.main.secret_env"]);
    }

    #[tokio::test]
    async fn a_reload_keeps_the_buckets_of_an_unchanged_limit_and_resets_a_changed_one() {
        let doc = |requests: u64| {
            serde_json::json!({
                "rate_limits": { "one": { "requests": requests, "per": "1m" } },
                "routes": [{ "name": "r", "paths": [{ "path": "/" }], "upstream": "dead", "rate_limit": "one" }],
            })
        };
        let first = Gateway::from_config(&config(doc(1))).unwrap();
        let svc = GatewayService::new(Arc::new(first));
        assert_eq!(svc.clone().oneshot(from([192, 0, 2, 1], "/")).await.unwrap().status(), 502);
        assert_eq!(svc.clone().oneshot(from([192, 0, 2, 1], "/")).await.unwrap().status(), 429);
        let same = GatewayService::new(Arc::new(svc.gateway().reload(&config(doc(1))).unwrap()));
        assert_eq!(same.oneshot(from([192, 0, 2, 1], "/")).await.unwrap().status(), 429, "the bucket carried over");
        let changed = GatewayService::new(Arc::new(svc.gateway().reload(&config(doc(5))).unwrap()));
        assert_eq!(changed.oneshot(from([192, 0, 2, 1], "/")).await.unwrap().status(), 502, "a new limit, new buckets");
    }

    /// An upstream that reads one request (head, then the body its `Content-Length` says),
    /// answers 200 and hands over the bytes it read.
    async fn one_request_upstream() -> (u16, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.parse::<usize>().unwrap());
                    if got.len() >= end + 4 + length {
                        break;
                    }
                }
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early: {text}");
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            String::from_utf8(got).unwrap()
        });
        (port, task)
    }

    #[tokio::test]
    async fn an_embedders_whole_body_goes_upstream_with_its_length_and_a_false_length_is_400() {
        use http_body_util::Full;
        let (port, upstream) = one_request_upstream().await;
        let config = nexus_core::config::Config::from_json(serde_json::json!({
            "upstreams": { "up": { "endpoints": [{ "url": format!("http://127.0.0.1:{port}") }] } },
            "routes": [{ "name": "r", "paths": [{ "path": "/" }], "upstream": "up" }],
        }))
        .unwrap();
        let svc = GatewayService::<Full<bytes::Bytes>>::from_config(&config).unwrap();
        let with_peer = |mut req: Request<Full<bytes::Bytes>>| {
            req.extensions_mut().insert(nexus_core::client::PeerAddr(std::net::SocketAddr::from(([192, 0, 2, 1], 1))));
            req
        };
        // No Content-Length field: the body's is written.
        let req = with_peer(Request::post("/submit").body(Full::from("hello world")).unwrap());
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let seen = upstream.await.unwrap();
        assert!(seen.starts_with("POST /submit HTTP/1.1\r\n"), "{seen}");
        assert!(seen.ends_with("\r\ncontent-length: 11\r\n\r\nhello world"), "{seen}");
        // A Content-Length the body does not keep: refused, nothing sent.
        let req = with_peer(Request::post("/submit").header("content-length", "5").body(Full::from("abc")).unwrap());
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 400);
        assert_eq!(json_of(res).await["error"]["code"], "bad_request");
    }

    async fn json_of<B: http_body::Body<Error: std::fmt::Debug>>(res: Response<B>) -> serde_json::Value {
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }
}
