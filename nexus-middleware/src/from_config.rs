//! From the config file's schema ([`nexus_core::config`]) to the plain-Rust
//! settings of the Layers: `rate_limits.<name>` → [`RateLimiter`], and
//! `auth.jwt.<name>` → [`JwtAuth`]. Secrets named by `*_env` keys are read
//! through an [`Env`], so tests pass a map.
//!
//! A spec is resolved first (environment read, errors with their field path)
//! and built second, so a caller that holds the previous version's spec can
//! keep the previous limiter or verifier when nothing changed: rate-limit
//! buckets and JWKS key sets outlive a reload that does not touch them.
//!
//! ```
//! use std::collections::HashMap;
//! use nexus_core::config::Config;
//! use nexus_middleware::from_config::LimitSpec;
//! let config = Config::from_json(serde_json::json!({
//!     "rate_limits": { "per-ip": { "requests": 10, "per": "1s" } },
//! })).unwrap();
//! let env: HashMap<String, String> = HashMap::new();
//! let spec = LimitSpec::resolve("per-ip", &config.rate_limits["per-ip"], &[], &env).unwrap();
//! let limiter = spec.build().unwrap();
//! assert_eq!(limiter.config().requests, 10);
//! ```

#[cfg(feature = "jwt")]
use crate::jwt::{JwksOptions, JwtAuth, JwtConfig, KeySource, TokenSource};
use crate::rate_limit::{RateLimitConfig, RateLimiter};
use ipnet::IpNet;
use nexus_core::config::{self as file, ConfigError, Env};

/// `rate_limits.<name>` with what it needs from outside the file (trusted
/// proxies, the Redis URL from the environment).
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSpec {
    name: String,
    file: file::RateLimitConfig,
    trusted: Vec<IpNet>,
    redis_url: Option<String>,
}

impl LimitSpec {
    /// Read what the limit needs from `env` (the Redis URL for `backend: redis`).
    pub fn resolve(
        name: &str,
        limit: &file::RateLimitConfig,
        trusted: &[IpNet],
        env: &dyn Env,
    ) -> Result<Self, ConfigError> {
        let redis_url = match limit.backend {
            file::RateLimitBackend::Local => None,
            file::RateLimitBackend::Redis => {
                let var = limit.redis_url_env.as_deref().unwrap_or("NEXUS_REDIS_URL");
                let url = env.var(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    ConfigError::new(
                        format!("rate_limits.{name}.redis_url_env"),
                        format!("environment variable {var} is not set (it must hold the Redis URL)"),
                    )
                })?;
                Some(url)
            }
        };
        Ok(Self { name: name.to_string(), file: limit.clone(), trusted: trusted.to_vec(), redis_url })
    }

    /// The limit's plain settings.
    pub fn config(&self) -> Result<RateLimitConfig, ConfigError> {
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        let key = self.file.key.parse().map_err(|e| ConfigError::new(self.path(".key"), e))?;
        Ok(RateLimitConfig {
            name: self.name.clone(),
            requests: clamp(self.file.requests),
            per: self.file.per.as_std(),
            burst: self.file.burst.map(clamp),
            key,
            trusted_proxies: self.trusted.clone(),
        })
    }

    /// A new limiter (empty buckets).
    pub fn build(&self) -> Result<RateLimiter, ConfigError> {
        let config = self.config()?;
        let limiter = match &self.redis_url {
            None => RateLimiter::local(config),
            #[cfg(feature = "redis")]
            Some(url) => RateLimiter::redis(
                config,
                url,
                crate::rate_limit::RedisOptions {
                    timeout: self.file.backend_timeout.as_std(),
                    on_backend_error: self.file.on_backend_error,
                    ..crate::rate_limit::RedisOptions::default()
                },
            ),
            #[cfg(not(feature = "redis"))]
            Some(_) => {
                return Err(ConfigError::new(
                    self.path(".backend"),
                    "backend: redis needs nexus-middleware's `redis` feature, which this build does not have",
                ));
            }
        };
        limiter.map_err(|e| ConfigError::new(self.path(""), e.to_string()))
    }

    fn path(&self, field: &str) -> String {
        format!("rate_limits.{}{field}", self.name)
    }
}

/// `auth.jwt.<name>` with its HMAC secret read from the environment (feature `jwt`).
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSpec {
    name: String,
    file: file::JwtConfig,
    secret: Option<String>,
}

#[cfg(feature = "jwt")]
impl AuthSpec {
    /// Read the secret `secret_env` names, when it names one.
    pub fn resolve(name: &str, jwt: &file::JwtConfig, env: &dyn Env) -> Result<Self, ConfigError> {
        let secret = match &jwt.secret_env {
            Some(var) => Some(env.var(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    format!("auth.jwt.{name}.secret_env"),
                    format!("environment variable {var} is not set (it must hold the HMAC secret)"),
                )
            })?),
            None => None,
        };
        Ok(Self { name: name.to_string(), file: jwt.clone(), secret })
    }

    /// The policy's plain settings (reads `public_key_file`).
    pub fn config(&self) -> Result<JwtConfig, ConfigError> {
        let j = &self.file;
        let algorithms = j
            .algorithms
            .iter()
            .map(|a| {
                a.parse().map_err(|_| ConfigError::new(self.path(".algorithms"), format!("unknown algorithm {a:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = if let Some(s) = &self.secret {
            KeySource::Secret(s.as_bytes().to_vec())
        } else if let Some(f) = &j.public_key_file {
            KeySource::PublicKeyPem(
                std::fs::read(f)
                    .map_err(|e| ConfigError::new(self.path(".public_key_file"), format!("cannot read {f}: {e}")))?,
            )
        } else if let Some(f) = &j.jwks_file {
            KeySource::JwksFile(f.into())
        } else if let Some(u) = &j.jwks_url {
            KeySource::JwksUrl(u.clone())
        } else {
            return Err(ConfigError::new(self.path(""), "no key source"));
        };
        let header = |h: &str| http::HeaderName::from_bytes(h.as_bytes()).ok();
        let mut token_sources = vec![TokenSource::Authorization];
        token_sources.extend(j.token_cookie.iter().map(|c| TokenSource::Cookie(c.clone())));
        token_sources.extend(j.token_header.as_deref().and_then(header).map(TokenSource::Header));
        Ok(JwtConfig {
            issuer: j.issuer.clone(),
            audiences: j.audiences.clone(),
            algorithms,
            keys,
            leeway: j.leeway.as_std(),
            forward_claims: j.forward_claims.iter().filter_map(|(c, h)| Some((c.clone(), header(h)?))).collect(),
            required_claims: j.required_claims.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            token_sources,
            strip_authorization: j.strip_authorization,
            jwks: JwksOptions { unknown_kid_cooldown: j.unknown_kid_cooldown.as_std(), ..JwksOptions::default() },
            cache_size: j.cache_size,
        })
    }

    /// A new verifier (loads its keys; a JWKS URL is fetched in the background).
    pub fn build(&self) -> Result<JwtAuth, ConfigError> {
        let config = self.config()?;
        let field = match &config.keys {
            KeySource::JwksFile(_) => ".jwks_file",
            KeySource::JwksUrl(_) => ".jwks_url",
            KeySource::PublicKeyPem(_) => ".public_key_file",
            KeySource::Secret(_) => ".secret_env",
            _ => "",
        };
        JwtAuth::new(config).map_err(|e| ConfigError::new(self.path(field), e.to_string()))
    }

    fn path(&self, field: &str) -> String {
        format!("auth.jwt.{}{field}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_core::config::Config;
    use std::collections::HashMap;

    fn config(v: serde_json::Value) -> Config {
        Config::from_json(v).unwrap()
    }

    #[test]
    fn a_redis_limit_without_its_url_names_the_env_key() {
        let c = config(serde_json::json!({
            "rate_limits": { "shared": { "requests": 5, "per": "1s", "backend": "redis", "redis_url_env": "RL_URL" } },
        }));
        let env: HashMap<String, String> = HashMap::new();
        let err = LimitSpec::resolve("shared", &c.rate_limits["shared"], &[], &env).unwrap_err();
        assert_eq!(err.path, "rate_limits.shared.redis_url_env");
        assert!(err.message.contains("RL_URL"), "{}", err.message);
        let env = HashMap::from([("RL_URL".to_string(), "redis://127.0.0.1:6379".to_string())]);
        let spec = LimitSpec::resolve("shared", &c.rate_limits["shared"], &[], &env).unwrap();
        assert_eq!(spec.config().unwrap().requests, 5);
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn a_redis_limit_without_the_feature_is_an_error_naming_it() {
        let c = config(serde_json::json!({
            "rate_limits": { "shared": { "requests": 5, "per": "1s", "backend": "redis", "redis_url_env": "RL_URL" } },
        }));
        let env = HashMap::from([("RL_URL".to_string(), "redis://127.0.0.1:6379".to_string())]);
        let err = LimitSpec::resolve("shared", &c.rate_limits["shared"], &[], &env).unwrap().build().unwrap_err();
        assert_eq!(err.path, "rate_limits.shared.backend");
        assert!(err.message.contains("`redis` feature"), "{}", err.message);
    }

    #[cfg(all(feature = "jwt", not(feature = "jwks-url")))]
    #[test]
    fn a_jwks_url_without_the_feature_is_an_error_naming_it() {
        let c = config(serde_json::json!({
            "auth": { "jwt": { "idp": { "jwks_url": "https://issuer.example.com/jwks" } } },
        }));
        let spec = AuthSpec::resolve("idp", &c.auth.jwt["idp"], &HashMap::new()).unwrap();
        let err = spec.build().unwrap_err();
        assert_eq!(err.path, "auth.jwt.idp.jwks_url");
        assert!(err.message.contains("`jwks-url` feature"), "{}", err.message);
    }

    #[cfg(feature = "jwt")]
    #[test]
    fn an_hmac_policy_reads_its_secret_and_changes_when_it_does() {
        let c = config(serde_json::json!({
            "auth": { "jwt": { "main": { "algorithms": ["HS256"], "secret_env": "S" } } },
        }));
        let j = &c.auth.jwt["main"];
        let env = |v: &str| HashMap::from([("S".to_string(), v.to_string())]);
        let a = AuthSpec::resolve("main", j, &env("one-secret-of-32-bytes-or-more!!")).unwrap();
        assert!(
            matches!(a.config().unwrap().keys, KeySource::Secret(ref s) if s == b"one-secret-of-32-bytes-or-more!!")
        );
        let b = AuthSpec::resolve("main", j, &env("another-secret-of-32-bytes-more!")).unwrap();
        assert_ne!(a, b, "a rotated secret is a different policy");
        let missing = AuthSpec::resolve("main", j, &HashMap::new()).unwrap_err();
        assert_eq!(missing.path, "auth.jwt.main.secret_env");
    }
}
