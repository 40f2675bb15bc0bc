//! Per-route policies that sit between route match and forward: the route's
//! rate limit (and, later, its auth). Built with each config snapshot; a
//! limit whose settings did not change keeps its buckets across a reload.

use nexus_core::config::{Config, ConfigError, ConfigErrors, Env, RateLimitBackend, RateLimitConfig as FileLimit};
use nexus_core::router::RouteTable;
use nexus_middleware::rate_limit::{RateLimitConfig, RateLimiter, RedisOptions};
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
}

/// What runs between route match and forward, per route id.
#[derive(Debug, Default)]
pub(crate) struct RoutePolicy {
    pub(crate) rate_limit: Option<RouteLimit>,
}

/// All routes' policies for one config version.
#[derive(Debug, Default)]
pub(crate) struct Policies {
    pub(crate) routes: Box<[RoutePolicy]>,
    limits: BTreeMap<String, NamedLimit>,
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
        let mut routes: Vec<RoutePolicy> = Vec::new();
        routes.resize_with(table.len(), RoutePolicy::default);
        for route in table.routes() {
            let route_name = route.name();
            let rate_limit = route.config().rate_limit.as_deref().and_then(|l| {
                let named = limits.get(l)?;
                Some(RouteLimit {
                    limiter: named.limiter.clone(),
                    rejected: metrics::counter!(
                        "nexus_rate_limited_total",
                        "route" => route_name.to_string(),
                        "limit" => l.to_string()
                    ),
                })
            });
            routes[route.id()] = RoutePolicy { rate_limit };
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Self { routes: routes.into_boxed_slice(), limits })
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
