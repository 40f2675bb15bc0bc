//! One route's request path, built once per config snapshot from the same
//! public Layers a library user composes. Outermost first:
//!
//! | layer | why it sits there |
//! | --- | --- |
//! | [`RouteMetricsLayer`] | counts every answer of the route, its own rejections included, and times all of it |
//! | [`RateLimitLayer`] (`client_ip` / `header:` keys) | the cheapest rejection that needs the route: before any signature is checked |
//! | [`JwtAuthLayer`] | nothing that fails authentication reaches the upstream; provides the claims (in the request's extensions only when a layer below, the access log or a claim-sticky split reads them) |
//! | [`RateLimitLayer`] (`claim:` keys) | keyed by a verified claim, so it runs after authentication |
//! | forward ([`RouteTarget`]) | split side, mirror, then the upstream: retries (the [`RetryLoop`](nexus_middleware::retry::RetryLoop) `RetryLayer` runs, over the upstream's own tries), and per try the breaker (the [`SharedBreaker`](nexus_middleware::circuit_breaker::SharedBreaker) `CircuitBreakerLayer` holds), balancer, send within the request's deadline |
//!
//! Above the route, [`Gateway::handle`](crate::Gateway::handle) checks the
//! header and body limits and matches the route; around the gateway, the
//! server (the `nexus` binary, or an embedder's axum app) owns request ids,
//! probes, panics and the shutdown sequence.
//!
//! Each layer is optional: a route without `auth` has no JWT layer at all, not
//! one that does nothing. The stack's type is static and the server awaits its
//! future in place. The one box on the binary's request path is the upstream's
//! forward, at the bottom (see [`RouteTarget::forward`](crate::RouteTarget::forward)):
//! every layer above moves a pointer, not the forward's state (an embedder's
//! [`GatewayService`](crate::GatewayService) boxes once more, for a nameable future).
//!
//! State that outlives a reload lives in the stack's `Policies`: a limit whose settings
//! did not change keeps its buckets, an auth policy its key set (and JWKS
//! refresher); every route that names a limit shares its one bucket set.

use crate::access_log;
use crate::body::RequestBody;
use crate::gateway::{GatewayResponse, RouteTarget};
use crate::metrics::RouteMetricsLayer;
use crate::upstream::ClientInfo;
use futures_util::FutureExt;
use http::{HeaderValue, Request};
use nexus_core::body::LimitedBody;
use nexus_core::config::{Config, ConfigError, Env};
use nexus_core::router::Route;
use nexus_middleware::from_config::{AuthSpec, LimitSpec};
use nexus_middleware::jwt::{JwtAuth, JwtAuthLayer};
use nexus_middleware::rate_limit::{RateLimitKey, RateLimitLayer, RateLimiter};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Waker};
use tower::util::Either;
use tower::{Layer, Service};

/// One route's Layers, built once per config snapshot (their state shared by
/// every request and every clone), and where the route forwards.
#[derive(Debug)]
pub(crate) struct RouteStack<B> {
    metrics: RouteMetricsLayer,
    /// `client_ip` / `header:` keyed limit: before authentication.
    before_auth: Option<RateLimitLayer>,
    auth: Option<JwtAuthLayer>,
    /// `claim:` keyed limit: needs the verified claims.
    after_auth: Option<RateLimitLayer>,
    pub(crate) target: RouteTarget<LimitedBody<B>>,
    /// The route's name, put on the answer for the access log and for sampled requests'
    /// server spans (`None` when neither is on: nothing is added).
    name_on_answer: Option<Arc<str>>,
    /// `logging.access_log`: every answer carries the name, and the verified `sub`.
    log_all: bool,
    /// `nexus_grpc_responses_total` of this route.
    grpc: Arc<crate::metrics::GrpcResponses>,
}

impl<B> RouteStack<B> {
    /// The Layers of `route`, with the named policies of this snapshot.
    pub(crate) fn build(
        route: &Route,
        target: RouteTarget<LimitedBody<B>>,
        policies: &Policies,
        access_log: bool,
        traced: bool,
    ) -> Self {
        let rc = route.config();
        let limit = rc
            .rate_limit
            .as_deref()
            .and_then(|name| policies.limits.get(name))
            .map(|(_, limiter)| RateLimitLayer::new(limiter.clone()).with_metric(route.name()));
        // A claim-keyed limit needs the verified claims: after authentication; any other key before.
        let (before_auth, after_auth) = match limit {
            Some(l) if matches!(l.limiter().config().key, RateLimitKey::Claim(_)) => (None, Some(l)),
            other => (other, None),
        };
        // The verified claims go into the request's extensions only for a reader below the JWT
        // layer: a claim-keyed limit, the access log's `user`, a split sticky on a claim. (The
        // extension map's first insert allocates; the forwarded claims go to headers anyway.)
        let claims_read = after_auth.is_some() || access_log || target.reads_claims();
        let auth = rc.auth.as_deref().and_then(|name| policies.auths.get(name)).map(|(_, auth)| {
            let layer = JwtAuthLayer::new(auth.clone()).with_metric(route.name());
            if claims_read { layer } else { layer.without_claims_extension() }
        });
        Self {
            metrics: RouteMetricsLayer::new(route.name()),
            before_auth,
            auth,
            after_auth,
            target,
            name_on_answer: (access_log || traced).then(|| Arc::from(route.name())),
            log_all: access_log,
            grpc: Arc::new(crate::metrics::GrpcResponses::new(route.name())),
        }
    }
}

impl<B: RequestBody> RouteStack<B> {
    /// Serve one request of `client` through the route's Layers, outermost first.
    ///
    /// The Layers wrap a forward that borrows this snapshot's target and the client, so
    /// the stack is applied per request (`Layer::layer`: a few reference-count increments,
    /// what cloning a built stack costs too) and its future is one static type the server
    /// awaits in place: no allocation for the stack (the forward below it is boxed once,
    /// so that the layers move a pointer instead of its state). Everything is decided
    /// before the first poll, so the request is held once (see `Upstream::forward_send`).
    ///
    /// `grpc`: the request is a gRPC one, and the route's own answers (its Layers' 401, 429,
    /// the forward's 502/503/504) are turned into trailers-only gRPC responses. `sampled`: its
    /// trace is sampled (the answer carries the route's name for the server span).
    /// `request_id`: the request's, for the forward's own answers.
    pub(crate) fn serve<'a>(
        &'a self,
        req: Request<LimitedBody<B>>,
        client: &'a ClientInfo,
        grpc: bool,
        sampled: bool,
        request_id: Option<HeaderValue>,
    ) -> impl Future<Output = GatewayResponse<B>> + Send + 'a {
        let target = &self.target;
        let logged = self.log_all;
        let mut request_id = request_id;
        // Innermost: split side, mirror, then the upstream (balancer, retries, breaker per try).
        let svc = tower::service_fn(move |req: Request<LimitedBody<B>>| {
            // The access log's `user`: the claims are on the request only below authentication.
            let user = if logged { access_log::user_of(&req) } else { None };
            target.forward_as(req, client, grpc, request_id.take()).map(move |mut res| {
                if let Some(user) = user {
                    res.extensions_mut().insert(access_log::User(user));
                }
                Ok::<_, Infallible>(res)
            })
        });
        // A claim-keyed limit: after authentication, which provides the claims.
        let svc = match &self.after_auth {
            Some(l) => Either::Left(l.layer_with_peer(svc, client.peer)),
            None => Either::Right(svc),
        };
        // Authentication: nothing that fails it reaches the upstream.
        let svc = match &self.auth {
            Some(l) => Either::Left(l.layer(svc)),
            None => Either::Right(svc),
        };
        // Any other limit first: the cheapest rejection that needs the route, before a signature check.
        let svc = match &self.before_auth {
            Some(l) => Either::Left(l.layer_with_peer(svc, client.peer)),
            None => Either::Right(svc),
        };
        // Outermost: every answer of the route is counted and timed, its own rejections too.
        // (Borrowed: the stack lives no longer than this request, so no reference count is
        // touched per request; shared by every worker, it would be a contended write.)
        let mut svc = self.metrics.layer_ref(svc);
        // Readiness is the forward's, which is always ready: an upstream over its
        // `max_concurrent_requests` answers 503 at once instead of waiting.
        let ready = svc.poll_ready(&mut Context::from_waker(Waker::noop()));
        debug_assert!(ready.is_ready(), "a route's stack is always ready");
        // Spans are exported for sampled requests only (`sampled`: from the edge's pass over
        // the fields, no lookup).
        let route = self.name_on_answer.as_ref().filter(|_| self.log_all || sampled);
        let counts = &self.grpc;
        svc.call(req).map(move |res: Result<_, Infallible>| {
            let mut res = match res {
                Ok(res) if grpc => count_grpc(nexus_core::grpc::trailers_only(res), counts),
                Ok(res) => res,
                Err(never) => match never {},
            };
            if let Some(route) = route {
                res.extensions_mut().insert(access_log::RouteName(Arc::clone(route)));
            }
            res
        })
    }
}

/// Count a gRPC answer's status: now when its head has one (trailers-only: the gateway's own
/// answers, an upstream's immediate error), else when its trailers come.
fn count_grpc<B>(mut res: GatewayResponse<B>, counts: &Arc<crate::metrics::GrpcResponses>) -> GatewayResponse<B> {
    if let Some(status) = res.headers().get(nexus_core::grpc::GRPC_STATUS) {
        counts.count(Some(status));
        return res;
    }
    match res.body_mut() {
        nexus_core::body::GatewayBody::Stream { body } => body.count_grpc_at_end(Arc::clone(counts)),
        nexus_core::body::GatewayBody::Full { .. } => counts.count(None),
    }
    res
}

/// The named rate limits and auth policies of one config version, each with
/// the spec it was built from (to tell whether a reload changed it).
#[derive(Debug, Default)]
pub(crate) struct Policies {
    limits: BTreeMap<String, (LimitSpec, RateLimiter)>,
    auths: BTreeMap<String, (AuthSpec, JwtAuth)>,
}

impl Policies {
    /// Build for `config`; a limit or policy whose spec equals the one in
    /// `previous` is kept as it is (buckets, key sets). Errors go to `errors`.
    pub(crate) fn build(
        config: &Config,
        env: &dyn Env,
        previous: Option<&Policies>,
        errors: &mut Vec<ConfigError>,
    ) -> Self {
        let trusted = &config.server.trusted_proxies;
        let limits = named(
            &config.rate_limits,
            previous.map(|p| &p.limits),
            errors,
            |name, file| LimitSpec::resolve(name, file, trusted, env),
            LimitSpec::build,
        );
        let auths = named(
            &config.auth.jwt,
            previous.map(|p| &p.auths),
            errors,
            |name, file| AuthSpec::resolve(name, file, env),
            AuthSpec::build,
        );
        // A route naming a policy that does not exist is caught by validation; say it here
        // too, so a config that skipped validation never runs a route without its policy.
        for (i, route) in config.routes.iter().enumerate() {
            if let Some(l) = route.rate_limit.as_deref().filter(|l| !config.rate_limits.contains_key(*l)) {
                errors.push(ConfigError::new(format!("routes[{i}].rate_limit"), format!("unknown rate limit {l:?}")));
            }
            if let Some(a) = route.auth.as_deref().filter(|a| !config.auth.jwt.contains_key(*a)) {
                errors.push(ConfigError::new(format!("routes[{i}].auth"), format!("unknown auth policy {a:?}")));
            }
        }
        Self { limits, auths }
    }
}

/// Build every named entry of one config section: resolve its spec, keep the
/// previous version's value when the spec is unchanged, build it otherwise.
fn named<F, S: PartialEq, T: Clone>(
    section: &BTreeMap<String, F>,
    previous: Option<&BTreeMap<String, (S, T)>>,
    errors: &mut Vec<ConfigError>,
    resolve: impl Fn(&str, &F) -> Result<S, ConfigError>,
    build: impl Fn(&S) -> Result<T, ConfigError>,
) -> BTreeMap<String, (S, T)> {
    let mut built = BTreeMap::new();
    for (name, file) in section {
        let entry = resolve(name, file).and_then(|spec| {
            match previous.and_then(|p| p.get(name)).filter(|(old, _)| *old == spec) {
                Some((_, kept)) => Ok((spec, kept.clone())),
                None => build(&spec).map(|value| (spec, value)),
            }
        });
        match entry {
            Ok(entry) => {
                built.insert(name.clone(), entry);
            }
            Err(e) => errors.push(e),
        }
    }
    built
}
