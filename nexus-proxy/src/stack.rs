//! One route's request path, built once per config snapshot from the same
//! public Layers a library user composes. Outermost first:
//!
//! | layer | why it sits there |
//! | --- | --- |
//! | [`RouteMetricsLayer`] | counts every answer of the route, its own rejections included, and times all of it |
//! | [`RateLimitLayer`] (`client_ip` / `header:` keys) | the cheapest rejection that needs the route: before any signature is checked |
//! | [`JwtAuthLayer`] | nothing that fails authentication reaches the upstream; provides the claims |
//! | [`RateLimitLayer`] (`claim:` keys) | keyed by a verified claim, so it runs after authentication |
//! | [`RouteForward`] | split side, mirror, then the upstream: balancer, retries, breaker, per try |
//!
//! Above the route, [`Gateway::handle`](crate::Gateway::handle) checks the
//! header and body limits and matches the route; around the gateway, the
//! server (the `nexus` binary, or an embedder's axum app) owns request ids,
//! probes, panics and the shutdown sequence.
//!
//! Each layer is optional (`option_layer`): a route without `auth` has no JWT
//! layer at all, not one that does nothing. The stack's type is static (no
//! boxing between layers); only [`RouteForward`]'s future is boxed.
//!
//! State that outlives a reload lives in [`Policies`]: a limit whose settings
//! did not change keeps its buckets, an auth policy its key set (and JWKS
//! refresher); every route that names a limit shares its one bucket set.

use crate::gateway::RouteForward;
use crate::metrics::{Recorded, RouteMetricsLayer};
use nexus_core::body::LimitedBody;
use nexus_core::client::PeerAddr;
use nexus_core::config::{Config, ConfigError, Env};
use nexus_core::router::Route;
use nexus_middleware::from_config::{AuthSpec, LimitSpec};
use nexus_middleware::jwt::{JwtAuth, JwtAuthLayer, JwtAuthService};
use nexus_middleware::rate_limit::{RateLimit, RateLimitKey, RateLimitLayer, RateLimiter};
use std::collections::BTreeMap;
use std::net::IpAddr;
use tower::ServiceBuilder;
use tower::util::Either;

type Forward<B> = RouteForward<LimitedBody<B>>;
type AfterAuth<B> = Either<RateLimit<Forward<B>>, Forward<B>>;
type Authed<B> = Either<JwtAuthService<AfterAuth<B>>, AfterAuth<B>>;
type BeforeAuth<B> = Either<RateLimit<Authed<B>>, Authed<B>>;

/// One route's service: the stack in the table above, for a client request
/// body `B` (limited to `max_request_body` by the gateway).
pub type RouteService<B> = Recorded<BeforeAuth<B>>;

/// Build one route's stack over `forward`.
pub(crate) fn route_service<B>(route: &Route, forward: Forward<B>, policies: &Policies) -> RouteService<B> {
    let rc = route.config();
    let limit = rc
        .rate_limit
        .as_deref()
        .and_then(|name| policies.limits.get(name))
        .map(|(_, limiter)| RateLimitLayer::new(limiter.clone()).with_metric(route.name()).with_peer(client_peer));
    // A claim-keyed limit needs the verified claims: after authentication; any other key before.
    let (before, after) = match limit {
        Some(l) if matches!(l.limiter().config().key, RateLimitKey::Claim(_)) => (None, Some(l)),
        other => (other, None),
    };
    let auth = rc
        .auth
        .as_deref()
        .and_then(|name| policies.auths.get(name))
        .map(|(_, auth)| JwtAuthLayer::new(auth.clone()).with_metric(route.name()));
    ServiceBuilder::new()
        .layer(RouteMetricsLayer::new(route.name()))
        .option_layer(before)
        .option_layer(auth)
        .option_layer(after)
        .service(forward)
}

/// The client's address for rate-limit keys: the server's [`ClientInfo`](crate::ClientInfo),
/// or an embedder's [`PeerAddr`].
fn client_peer(ext: &http::Extensions) -> Option<IpAddr> {
    ext.get::<crate::ClientInfo>().map(|c| c.peer).or_else(|| ext.get::<PeerAddr>().map(|p| p.0.ip()))
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
