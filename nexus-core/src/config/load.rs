//! Layered settings: environment > command-line flags > config file > defaults
//! (SPEC §2). The environment is read through [`Env`], so tests pass a map.

use super::{Config, ConfigError, ConfigErrors, LogFormat};
use std::collections::HashMap;
use std::net::SocketAddr;

/// Where environment variables come from.
///
/// ```
/// use std::collections::HashMap;
/// use nexus_core::config::Env;
/// let env: HashMap<String, String> = [("NEXUS_LISTEN".to_string(), "127.0.0.1:0".to_string())].into();
/// assert_eq!(env.var("NEXUS_LISTEN").as_deref(), Some("127.0.0.1:0"));
/// ```
pub trait Env {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Settings that flags and the environment may override.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen` / `NEXUS_LISTEN`.
    pub listen: Option<String>,
    /// `--admin-listen` / `NEXUS_ADMIN_LISTEN`.
    pub admin_listen: Option<String>,
    /// `--log-level` / `NEXUS_LOG_LEVEL`.
    pub log_level: Option<String>,
    /// `--log-format` / `NEXUS_LOG_FORMAT`.
    pub log_format: Option<String>,
}

impl Overrides {
    /// The overrides the environment sets (`NEXUS_LISTEN`, `NEXUS_ADMIN_LISTEN`,
    /// `NEXUS_LOG_LEVEL`, `NEXUS_LOG_FORMAT`); empty values count as unset.
    pub fn from_env(env: &dyn Env) -> Self {
        let get = |k: &str| env.var(k).filter(|v| !v.trim().is_empty());
        Self {
            listen: get("NEXUS_LISTEN"),
            admin_listen: get("NEXUS_ADMIN_LISTEN"),
            log_level: get("NEXUS_LOG_LEVEL"),
            log_format: get("NEXUS_LOG_FORMAT"),
        }
    }

    /// `self` where set, else `lower`: `env.over(flags)`.
    pub fn over(self, lower: Overrides) -> Overrides {
        Overrides {
            listen: self.listen.or(lower.listen),
            admin_listen: self.admin_listen.or(lower.admin_listen),
            log_level: self.log_level.or(lower.log_level),
            log_format: self.log_format.or(lower.log_format),
        }
    }

    /// Write these settings over a config; bad values are errors named by their source key.
    ///
    /// ```
    /// use nexus_core::config::{Config, Overrides};
    /// let mut config = Config::default();
    /// Overrides { listen: Some("127.0.0.1:18085".into()), ..Default::default() }
    ///     .apply(&mut config)
    ///     .unwrap();
    /// assert_eq!(config.server.listen.port(), 18085);
    /// ```
    pub fn apply(&self, config: &mut Config) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let addr = |v: &str, key: &str, errors: &mut Vec<ConfigError>| match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors
                    .push(ConfigError::new(key, format!("invalid socket address {v:?}; write e.g. \"0.0.0.0:8080\"")));
                None
            }
        };
        if let Some(v) = &self.listen
            && let Some(a) = addr(v, "server.listen", &mut errors)
        {
            config.server.listen = a;
        }
        if let Some(v) = &self.admin_listen
            && let Some(a) = addr(v, "server.admin_listen", &mut errors)
        {
            config.server.admin_listen = a;
        }
        if let Some(v) = &self.log_level {
            config.logging.level.clone_from(v);
        }
        if let Some(v) = &self.log_format {
            match v.parse::<LogFormat>() {
                Ok(f) => config.logging.format = f,
                Err(e) => errors.push(ConfigError::new("logging.format", e)),
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(ConfigErrors(errors)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_beats_flags_beats_file() {
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:1000".parse().unwrap();
        config.logging.level = "warn".into();
        let env: HashMap<String, String> = [("NEXUS_LISTEN".into(), "127.0.0.1:3000".into())].into();
        let flags =
            Overrides { listen: Some("127.0.0.1:2000".into()), log_level: Some("debug".into()), ..Default::default() };
        Overrides::from_env(&env).over(flags).apply(&mut config).unwrap();
        assert_eq!(config.server.listen.port(), 3000, "env wins over the flag");
        assert_eq!(config.logging.level, "debug", "flag wins over the file");
    }

    #[test]
    fn bad_override_is_reported_with_its_key() {
        let mut config = Config::default();
        let err = Overrides { listen: Some("nope".into()), log_format: Some("xml".into()), ..Default::default() }
            .apply(&mut config)
            .unwrap_err();
        assert!(err.has_path("server.listen"));
        assert!(err.has_path("logging.format"));
    }
}
