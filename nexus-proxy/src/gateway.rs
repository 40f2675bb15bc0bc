//! The gateway service: normalise the path, match a route, pick the side of a
//! split, forward to that upstream, and answer errors with the JSON body.
//!
//! One [`Gateway`] is an immutable snapshot of a config; a reload builds a new
//! one and swaps it, and requests in flight finish on the one they started with.

use crate::balance::Rng;
use crate::body::{RequestBody, ResponseBody};
use crate::edge::Edge;
use crate::metrics::{RouteMetrics, UNMATCHED};
use crate::stack::{Policies, RouteStack};
use crate::upstream::{ClientInfo, Upstream};
use futures_util::future::Either;
use http::{HeaderValue, Method, Request, Response, header};
use ipnet::IpNet;
use nexus_core::body::LimitedBody;
use nexus_core::client::peer_of;
use nexus_core::config::{Config, ConfigErrors};
use nexus_core::config::{Env, ProcessEnv};
use nexus_core::router::{Match, RequestInfo, RouteMatch, RouteTable};
use nexus_core::{ErrorCode, GatewayError, grpc};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What the gateway answers a request whose body is `B` with.
pub type GatewayResponse<B> = Response<ResponseBody<LimitedBody<B>>>;

pub use crate::target::{RouteTarget, StickyKey};

/// The gateway built from a config: a compiled route table and, per route, a
/// stack of the middleware Layers in front of its [`RouteTarget`] (see
/// [`crate::stack`]). One `Gateway` is an immutable snapshot of one config
/// version; [`reload`](Gateway::reload) builds the next one, carrying over the
/// state that must outlive a reload. `B` is the client's request body.
#[derive(Debug)]
pub struct Gateway<B> {
    table: RouteTable,
    routes: Box<[RouteStack<B>]>,
    policies: Policies,
    upstreams: BTreeMap<String, Arc<Upstream<LimitedBody<B>>>>,
    unmatched: RouteMetrics,
    /// SPEC §10's rules, before anything else.
    edge: Edge,
    /// `server.trusted_proxies`.
    trusted: Arc<[IpNet]>,
    max_body: u64,
    max_header_bytes: usize,
    /// `logging.access_log`.
    access_log: bool,
    /// `tracing:`: sampling and span export.
    tracing: crate::spans::Tracing,
}

impl<B> Gateway<B>
where
    B: RequestBody,
{
    /// Build from a validated config; secrets named by `*_env` keys come from the
    /// process environment.
    pub fn from_config(config: &Config) -> Result<Self, ConfigErrors> {
        Self::build(config, Rng::from_entropy(), &ProcessEnv, None)
    }

    /// Build with a chosen random source, so splits are reproducible in tests.
    pub fn with_rng(config: &Config, rng: Rng) -> Result<Self, ConfigErrors> {
        Self::build(config, rng, &ProcessEnv, None)
    }

    /// Build reading `*_env` keys (JWT secrets, the Redis URL) from `env`.
    pub fn with_env(config: &Config, rng: Rng, env: &dyn Env) -> Result<Self, ConfigErrors> {
        Self::build(config, rng, env, None)
    }

    /// Build the gateway for a new config version, carrying over what must
    /// survive a reload when its settings did not change: endpoint health,
    /// breaker state, rate-limit buckets, JWT key sets.
    pub fn reload(&self, config: &Config) -> Result<Self, ConfigErrors> {
        self.reload_with_env(config, &ProcessEnv)
    }

    /// [`reload`](Self::reload), reading `*_env` keys from `env`.
    pub fn reload_with_env(&self, config: &Config, env: &dyn Env) -> Result<Self, ConfigErrors> {
        Self::build(config, Rng::from_entropy(), env, Some(self))
    }

    fn build(config: &Config, rng: Rng, env: &dyn Env, previous: Option<&Self>) -> Result<Self, ConfigErrors> {
        let table = RouteTable::from_config(config)?;
        let mut errors = Vec::new();
        let mut upstreams = BTreeMap::new();
        for (name, u) in &config.upstreams {
            let before = previous.and_then(|p| p.upstreams.get(name)).map(|u| &**u);
            match Upstream::build(name, u, Rng::seeded(rng.next_u64()), before) {
                Ok(up) => {
                    upstreams.insert(name.clone(), Arc::new(up));
                }
                Err(e) => errors.extend(e.0),
            }
        }
        let policies = Policies::build(config, env, previous.map(|p| &p.policies), &mut errors);
        let tracing = crate::spans::Tracing::from_config(config, env, previous.map(|p| &p.tracing))
            .map_err(|e| errors.push(e))
            .unwrap_or_default();
        let trusted: Arc<[IpNet]> = config.server.trusted_proxies.clone().into();
        let default_timeout = config.server.limits.request_timeout.as_std();
        let mut targets = Vec::with_capacity(table.len());
        for (i, route) in table.routes().iter().enumerate() {
            let target =
                RouteTarget::build(i, route, &upstreams, default_timeout, Rng::seeded(rng.next_u64()), &mut errors);
            targets.push(target);
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let routes = table
            .routes()
            .iter()
            .zip(targets)
            .map(|(route, target)| {
                // The route's name goes on the answer for the access log and the server span.
                RouteStack::build(route, target, &policies, config.logging.access_log, tracing.exports())
            })
            .collect();
        let limits = &config.server.limits;
        Ok(Self {
            table,
            routes,
            policies,
            upstreams,
            unmatched: RouteMetrics::new(UNMATCHED),
            edge: Edge::from_config(config),
            trusted,
            max_body: limits.max_request_body.bytes(),
            max_header_bytes: usize::try_from(limits.max_header_bytes.bytes()).unwrap_or(usize::MAX),
            access_log: config.logging.access_log,
            tracing,
        })
    }

    /// Whether this config writes an access-log line per request (`logging.access_log`;
    /// the server around the gateway starts and finishes each line, see [`crate::access_log`]).
    pub fn access_log(&self) -> bool {
        self.access_log
    }

    /// How this config samples traces and where their spans go (`tracing:`).
    pub fn tracing(&self) -> &crate::spans::Tracing {
        &self.tracing
    }

    /// The route table.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// Upstreams by name.
    pub fn upstreams(&self) -> &BTreeMap<String, Arc<Upstream<LimitedBody<B>>>> {
        &self.upstreams
    }

    /// Per route (by [`Route::id`](nexus_core::router::Route::id)), where it forwards.
    pub fn target(&self, route_id: usize) -> &RouteTarget<LimitedBody<B>> {
        &self.routes[route_id].target
    }

    /// Serve one request: the edge rules of SPEC §10 (one valid authority, which the
    /// target's wins; gateway-owned headers removed; 400, 405, 501), header and body
    /// limits (431, 413), path normalisation
    /// and route match (400, 404, 405), then the route's stack (rate limit, JWT,
    /// forward). Never fails: every answer the gateway makes is the JSON of
    /// SPEC §4 with the request's `X-Request-Id`. The client is the
    /// [`ClientInfo`] in the request's extensions, or else one made from its peer address
    /// ([`peer_of`]: a `PeerAddr`, or axum's `ConnectInfo` with the `axum` feature; with
    /// `server.trusted_proxies`), or else [`ClientInfo::unknown`] (a route with a per-client
    /// rate limit then answers 500, never one bucket for all).
    pub async fn handle(&self, req: Request<B>) -> GatewayResponse<B> {
        let ext = req.extensions();
        let client = ext.get::<ClientInfo>().cloned().unwrap_or_else(|| match peer_of(ext) {
            Some(peer) => ClientInfo::new(peer.ip(), &self.trusted),
            None => ClientInfo::unknown(),
        });
        self.serve(req, &client).await
    }

    /// [`handle`](Self::handle) for a server that knows the client (its connection's
    /// [`ClientInfo`]): nothing is looked up or allocated for it per request. Limits
    /// and route are decided before the first poll.
    pub fn serve<'a>(
        &'a self,
        req: Request<B>,
        client: &'a ClientInfo,
    ) -> impl Future<Output = GatewayResponse<B>> + Send + 'a {
        let mut req = req;
        let (refused, grpc, sampled, request_id) = match self.edge.admit(&mut req) {
            Ok(admitted) => {
                (self.check_limits(&req, admitted.header_bytes), admitted.grpc, admitted.sampled, admitted.request_id)
            }
            Err(res) => (Some(res), grpc::is_grpc(req.headers()), false, None),
        };
        // A gRPC client reads the gateway's own answers as trailers-only gRPC responses.
        let for_client = move |res| if grpc { grpc::trailers_only(res) } else { res };
        if let Some(res) = refused {
            self.unmatched.record(req.method(), res.status().as_u16(), "", Duration::ZERO);
            return Either::Left(std::future::ready(for_client(res)));
        }
        match route_in(&self.table, &mut req) {
            Ok(id) => {
                // Body limit wraps the stream: a chunked body over the limit fails mid-way (413).
                let req = req.map(|b| LimitedBody::new(b, self.max_body));
                Either::Right(self.routes[id].serve(req, client, grpc, sampled, request_id))
            }
            Err(res) => {
                self.unmatched.record(req.method(), res.status().as_u16(), "", Duration::ZERO);
                Either::Left(std::future::ready(for_client(res)))
            }
        }
    }

    /// Count a request the server answered before the gateway saw it (a framing
    /// error), as `_unmatched`.
    pub fn record_unmatched(&self, method: &Method, status: u16, elapsed: Duration) {
        self.unmatched.record(method, status, "", elapsed);
    }

    /// The header-size and declared-body-size rejections, before any routing work. `size`:
    /// the fields' names and values in bytes, as the edge's pass counted them.
    fn check_limits(&self, req: &Request<B>, size: usize) -> Option<GatewayResponse<B>> {
        let headers = req.headers();
        // The parser's buffer is larger than the limit; the exact limit is checked here.
        if size > self.max_header_bytes {
            return Some(GatewayError::new(ErrorCode::HeadersTooLarge).into_response_for(headers));
        }
        // A declared Content-Length is the body's size hint (no header lookup).
        if req.body().size_hint().lower() > self.max_body {
            let mut res: GatewayResponse<B> = GatewayError::new(ErrorCode::PayloadTooLarge).into_response_for(headers);
            // The unread body would be parsed as the next request: close instead.
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Some(res);
        }
        None
    }
}

/// Normalise and match. On success, the route's id (the request's path is now what
/// the upstream must see); otherwise the 400/404/405 answer.
#[allow(clippy::result_large_err)]
fn route_in<B, R: From<bytes::Bytes>>(table: &RouteTable, req: &mut Request<B>) -> Result<usize, Response<R>> {
    let uri_path = req.uri().path();
    let path = match nexus_core::path::normalize(uri_path) {
        Ok(p) => p,
        Err(e) => {
            let mut res: Response<R> = GatewayError::new(ErrorCode::BadRequest)
                .with_message(format!("invalid path: {e}"))
                .into_response_for(req.headers());
            // SPEC §4: a malformed request closes the connection.
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(res);
        }
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(http::uri::Authority::as_str));
    let info = RequestInfo::new(req.method(), host, &path).with_headers(req.headers());
    let found: RouteMatch<'_> = match table.match_request(&info) {
        Match::Found(m) => m,
        Match::NotFound => {
            return Err(GatewayError::new(ErrorCode::RouteNotFound).into_response_for(req.headers()));
        }
        Match::MethodNotAllowed { allow } => {
            let mut res: Response<R> = GatewayError::new(ErrorCode::MethodNotAllowed).into_response_for(req.headers());
            let allow = allow.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
            if let Ok(v) = HeaderValue::from_str(&allow) {
                res.headers_mut().insert(header::ALLOW, v);
            }
            return Err(res);
        }
    };
    let id = found.route().id();
    let upstream_path = found.upstream_path(&path);
    if upstream_path != uri_path {
        let pq = match req.uri().query() {
            Some(q) => format!("{upstream_path}?{q}"),
            None => upstream_path.into_owned(),
        };
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.path_and_query = pq.parse().ok();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    Ok(id)
}
