//! Per-route policies that sit between route match and forward: the route's
//! rate limit and its JWT auth. Built with each config snapshot; a limit whose
//! settings did not change keeps its buckets across a reload, and an auth
//! policy whose settings did not change keeps its keys (and JWKS refresher).

use nexus_core::config::{Config, ConfigError, ConfigErrors, Env, RateLimitBackend, RateLimitConfig as FileLimit};
use nexus_core::router::RouteTable;
use nexus_middleware::jwt::{Failures, JwtAuth, JwtConfig, KeySource, TokenSource};
use nexus_middleware::rate_limit::{RateLimitConfig, RateLimitKey, RateLimiter, RedisOptions};
use std::collections::BTreeMap;

/// One named limit and the file settings it was built from.
#[derive(Debug, Clone)]
pub(crate) struct NamedLimit {
    from: FileLimit,
    trusted: Vec<ipnet::IpNet>,
    redis_url: Option<String>,
    pub(crate) limiter: RateLimiter,
}

/// A route's rate limit with its rejection counter.
#[derive(Debug)]
pub(crate) struct RouteLimit {
    pub(crate) limiter: RateLimiter,
    /// `nexus_rate_limited_total{route,limit}`, registered once.
    pub(crate) rejected: metrics::Counter,
    /// Keyed by a claim: it runs after authentication, which provides the claims.
    pub(crate) after_auth: bool,
}

/// A route's authentication with its failure counters.
#[derive(Debug)]
pub(crate) struct RouteAuth {
    pub(crate) auth: JwtAuth,
    /// `nexus_auth_failures_total{route,reason}`, registered once.
    pub(crate) failures: Failures,
}

/// What runs between route match and forward, per route id.
#[derive(Debug, Default)]
pub(crate) struct RoutePolicy {
    pub(crate) rate_limit: Option<RouteLimit>,
    pub(crate) auth: Option<RouteAuth>,
}

/// One named auth policy and the settings it was built from.
#[derive(Debug, Clone)]
struct NamedAuth {
    from: nexus_core::config::JwtConfig,
    secret: Option<String>,
    auth: JwtAuth,
}

/// All routes' policies for one config version.
#[derive(Debug, Default)]
pub(crate) struct Policies {
    pub(crate) routes: Box<[RoutePolicy]>,
    limits: BTreeMap<String, NamedLimit>,
    auths: BTreeMap<String, NamedAuth>,
}

impl Policies {
    /// Build for `config` (route ids are its route table's); limits unchanged since
    /// `previous` keep their state.
    pub(crate) fn build(
        config: &Config,
        table: &RouteTable,
        env: &dyn Env,
        previous: Option<&Policies>,
    ) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut limits = BTreeMap::new();
        for (name, rl) in &config.rate_limits {
            let path = format!("rate_limits.{name}");
            let redis_url = match rl.backend {
                RateLimitBackend::Local => None,
                RateLimitBackend::Redis => {
                    let var = rl.redis_url_env.as_deref().unwrap_or("NEXUS_REDIS_URL");
                    match env.var(var).filter(|v| !v.is_empty()) {
                        Some(url) => Some(url),
                        None => {
                            errors.push(ConfigError::new(
                                format!("{path}.redis_url_env"),
                                format!("environment variable {var} is not set (it must hold the Redis URL)"),
                            ));
                            continue;
                        }
                    }
                }
            };
            let trusted = config.server.trusted_proxies.clone();
            let kept = previous
                .and_then(|p| p.limits.get(name))
                .filter(|old| old.from == *rl && old.trusted == trusted && old.redis_url == redis_url);
            if let Some(old) = kept {
                limits.insert(name.clone(), old.clone());
                continue;
            }
            match build_limiter(name, rl, &trusted, redis_url.as_deref()) {
                Ok(limiter) => {
                    limits.insert(name.clone(), NamedLimit { from: rl.clone(), trusted, redis_url, limiter });
                }
                Err(e) => errors.push(ConfigError::new(path, e)),
            }
        }
        let mut auths = BTreeMap::new();
        for (name, j) in &config.auth.jwt {
            let path = format!("auth.jwt.{name}");
            let secret = match &j.secret_env {
                Some(var) => match env.var(var).filter(|v| !v.is_empty()) {
                    Some(v) => Some(v),
                    None => {
                        errors.push(ConfigError::new(
                            format!("{path}.secret_env"),
                            format!("environment variable {var} is not set (it must hold the HMAC secret)"),
                        ));
                        continue;
                    }
                },
                None => None,
            };
            let kept = previous.and_then(|p| p.auths.get(name)).filter(|old| old.from == *j && old.secret == secret);
            if let Some(old) = kept {
                auths.insert(name.clone(), old.clone());
                continue;
            }
            match build_auth(j, secret.as_deref()) {
                Ok(auth) => {
                    auths.insert(name.clone(), NamedAuth { from: j.clone(), secret, auth });
                }
                Err((field, e)) => errors.push(ConfigError::new(format!("{path}{field}"), e)),
            }
        }
        let mut routes: Vec<RoutePolicy> = Vec::new();
        routes.resize_with(table.len(), RoutePolicy::default);
        for route in table.routes() {
            let route_name = route.name();
            let rate_limit = route.config().rate_limit.as_deref().and_then(|l| {
                let named = limits.get(l)?;
                Some(RouteLimit {
                    after_auth: matches!(named.limiter.config().key, RateLimitKey::Claim(_)),
                    limiter: named.limiter.clone(),
                    rejected: metrics::counter!(
                        "nexus_rate_limited_total",
                        "route" => route_name.to_string(),
                        "limit" => l.to_string()
                    ),
                })
            });
            let auth = route.config().auth.as_deref().and_then(|a| {
                Some(RouteAuth { auth: auths.get(a)?.auth.clone(), failures: Failures::new(route_name) })
            });
            routes[route.id()] = RoutePolicy { rate_limit, auth };
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Self { routes: routes.into_boxed_slice(), limits, auths })
    }
}

fn build_limiter(
    name: &str,
    rl: &FileLimit,
    trusted: &[ipnet::IpNet],
    redis_url: Option<&str>,
) -> Result<RateLimiter, String> {
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let config = RateLimitConfig {
        name: name.to_string(),
        requests: clamp(rl.requests),
        per: rl.per.as_std(),
        burst: rl.burst.map(clamp),
        key: rl.key.parse()?,
        trusted_proxies: trusted.to_vec(),
    };
    let limiter = match redis_url {
        None => RateLimiter::local(config),
        Some(url) => RateLimiter::redis(
            config,
            url,
            RedisOptions {
                timeout: rl.backend_timeout.as_std(),
                on_backend_error: rl.on_backend_error,
                ..RedisOptions::default()
            },
        ),
    };
    limiter.map_err(|e| e.to_string())
}

/// An auth policy from its file settings; errors name the field (after `auth.jwt.<name>`).
fn build_auth(j: &nexus_core::config::JwtConfig, secret: Option<&str>) -> Result<JwtAuth, (&'static str, String)> {
    let algorithms = j
        .algorithms
        .iter()
        .map(|a| a.parse().map_err(|_| (".algorithms", format!("unknown algorithm {a:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let keys = if let Some(s) = secret {
        KeySource::Secret(s.as_bytes().to_vec())
    } else if let Some(f) = &j.public_key_file {
        KeySource::PublicKeyPem(std::fs::read(f).map_err(|e| (".public_key_file", format!("cannot read {f}: {e}")))?)
    } else if let Some(f) = &j.jwks_file {
        KeySource::JwksFile(f.into())
    } else if let Some(u) = &j.jwks_url {
        KeySource::JwksUrl(u.clone())
    } else {
        return Err(("", "no key source".into()));
    };
    let header = |h: &str| http::HeaderName::from_bytes(h.as_bytes()).ok();
    let mut token_sources = vec![TokenSource::Authorization];
    token_sources.extend(j.token_cookie.iter().map(|c| TokenSource::Cookie(c.clone())));
    token_sources.extend(j.token_header.as_deref().and_then(header).map(TokenSource::Header));
    let field = match &keys {
        KeySource::JwksFile(_) => ".jwks_file",
        KeySource::JwksUrl(_) => ".jwks_url",
        KeySource::PublicKeyPem(_) => ".public_key_file",
        _ => "",
    };
    JwtAuth::new(JwtConfig {
        issuer: j.issuer.clone(),
        audiences: j.audiences.clone(),
        algorithms,
        keys,
        leeway: j.leeway.as_std(),
        forward_claims: j.forward_claims.iter().filter_map(|(c, h)| Some((c.clone(), header(h)?))).collect(),
        required_claims: j.required_claims.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        token_sources,
        strip_authorization: j.strip_authorization,
        ..JwtConfig::default()
    })
    .map_err(|e| (field, e))
}
