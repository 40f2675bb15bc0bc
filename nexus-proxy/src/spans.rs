//! The gateway's traces (SPEC §9 `tracing:`): how requests are sampled, and where the spans
//! of sampled ones go. A server span per request is exported when its answer ends (with the
//! access-log line, from the same record: [`crate::access_log`]) and a client span per
//! upstream try when the try is answered or fails.
//!
//! ```
//! let config = nexus_core::config::Config::from_json(serde_json::json!({
//!     "tracing": { "sample_ratio": 0.5, "respect_parent_sampling": false }
//! })).unwrap();
//! let tracing = nexus_proxy::spans::Tracing::from_config(&config, &nexus_core::config::ProcessEnv, None).unwrap();
//! assert_eq!(tracing.sampling().ratio, 0.5);
//! assert!(!tracing.sampling().respect_parent);
//! ```

use nexus_core::config::{Config, ConfigError, Env};
use nexus_middleware::trace_context::{Sampling, Started};

/// The variable an OTLP endpoint comes from when the config names none.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Sampling and span export of one config.
#[derive(Debug, Clone, Default)]
pub struct Tracing {
    sampling: Sampling,
    #[cfg(feature = "otel")]
    export: Option<nexus_middleware::otel::SpanExport>,
}

/// A sampled request whose spans are exported: its trace and the export.
#[cfg(feature = "otel")]
#[derive(Debug, Clone)]
pub struct Trace {
    pub(crate) started: Started,
    pub(crate) export: nexus_middleware::otel::SpanExport,
}

/// A sampled request whose spans are exported (never, without the `otel` feature).
#[cfg(not(feature = "otel"))]
#[derive(Debug, Clone)]
pub enum Trace {}

impl Tracing {
    /// The `tracing:` block of `config` (absent: continue traces, sample none, export
    /// nothing), the endpoint from `OTEL_EXPORTER_OTLP_ENDPOINT` in `env` when the block
    /// names none. The export of `previous` is kept when endpoint and service name are the
    /// same (its queue and connection carry over a reload).
    pub fn from_config(config: &Config, env: &dyn Env, previous: Option<&Tracing>) -> Result<Self, ConfigError> {
        let from_env = env.var(OTEL_EXPORTER_OTLP_ENDPOINT).filter(|v| !v.trim().is_empty());
        let block = match (&config.tracing, &from_env) {
            (Some(t), _) => t.clone(),
            (None, Some(_)) => nexus_core::config::TracingConfig::default(),
            (None, None) => return Ok(Self::default()),
        };
        let sampling = Sampling::new(block.sample_ratio, block.respect_parent_sampling);
        let (endpoint, path) = match (&block.otlp_endpoint, from_env) {
            (Some(e), _) => (e.clone(), "tracing.otlp_endpoint"),
            (None, Some(e)) => (e, OTEL_EXPORTER_OTLP_ENDPOINT),
            #[allow(clippy::needless_update)] // (the `otel` feature adds a field)
            (None, None) => return Ok(Self { sampling, ..Self::default() }),
        };
        nexus_core::config::otlp_endpoint(&endpoint).map_err(|why| ConfigError::new(path, why))?;
        Self::with_export(sampling, &endpoint, &block.service_name, previous).map_err(|why| ConfigError::new(path, why))
    }

    #[cfg(feature = "otel")]
    fn with_export(
        sampling: Sampling,
        endpoint: &str,
        service_name: &str,
        previous: Option<&Tracing>,
    ) -> Result<Self, String> {
        let kept = previous
            .and_then(|p| p.export.as_ref())
            .filter(|e| e.endpoint() == endpoint && e.service_name() == service_name)
            .cloned();
        let export = match kept {
            Some(e) => e,
            None => nexus_middleware::otel::SpanExport::new(endpoint, service_name)?,
        };
        Ok(Self { sampling, export: Some(export) })
    }

    #[cfg(not(feature = "otel"))]
    fn with_export(_: Sampling, _: &str, _: &str, _: Option<&Tracing>) -> Result<Self, String> {
        Err("span export needs nexus-proxy's `otel` feature (this build has none)".into())
    }

    /// How requests are sampled.
    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }

    /// Whether spans are exported at all.
    pub fn exports(&self) -> bool {
        #[cfg(feature = "otel")]
        return self.export.is_some();
        #[cfg(not(feature = "otel"))]
        false
    }

    /// The request's [`Trace`] when it is sampled and spans are exported.
    pub fn trace(&self, started: &Started) -> Option<Trace> {
        #[cfg(feature = "otel")]
        return match &self.export {
            Some(export) if started.ours.sampled() => Some(Trace { started: *started, export: export.clone() }),
            _ => None,
        };
        #[cfg(not(feature = "otel"))]
        {
            let _ = started;
            None
        }
    }

    /// Make this config's export the one upstream tries' client spans go to
    /// (`nexus_middleware::otel::install`): on start, and when a reloaded config takes over.
    pub fn install(&self) {
        #[cfg(feature = "otel")]
        nexus_middleware::otel::install(self.export.clone());
    }
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use super::*;

    struct Vars(&'static [(&'static str, &'static str)]);
    impl Env for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_environment_names_the_collector_when_the_config_does_not() {
        let none = Config::default();
        let t = Tracing::from_config(&none, &Vars(&[]), None).unwrap();
        assert!(!t.exports() && t.sampling().ratio == 0.0, "no block, no variable: propagation only");
        let env = Vars(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://127.0.0.1:4318")]);
        let t = Tracing::from_config(&none, &env, None).unwrap();
        assert!(t.exports());
        assert_eq!(t.sampling().ratio, 0.01, "the block's defaults");
        // The config wins; the same endpoint keeps the same export over a reload.
        let c = Config {
            tracing: Some(nexus_core::config::TracingConfig {
                otlp_endpoint: Some("http://127.0.0.1:14318".into()),
                ..Default::default()
            }),
            ..Config::default()
        };
        let a = Tracing::from_config(&c, &env, None).unwrap();
        assert_eq!(a.export.as_ref().unwrap().endpoint(), "http://127.0.0.1:14318");
        let b = Tracing::from_config(&c, &env, Some(&a)).unwrap();
        assert!(a.export.as_ref().unwrap().same_as(b.export.as_ref().unwrap()), "kept over the reload");
        // A bad variable is an error naming it.
        let bad = Tracing::from_config(&none, &Vars(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "collector:4318")]), None);
        assert_eq!(bad.unwrap_err().path, OTEL_EXPORTER_OTLP_ENDPOINT);
    }
}

#[cfg(all(test, not(feature = "otel")))]
mod tests {
    use super::*;

    #[test]
    fn a_collector_without_the_otel_feature_is_an_error_naming_it() {
        let config =
            Config::from_json(serde_json::json!({ "tracing": { "otlp_endpoint": "http://127.0.0.1:4318" } })).unwrap();
        let err = Tracing::from_config(&config, &nexus_core::config::ProcessEnv, None).unwrap_err();
        assert_eq!(err.path, "tracing.otlp_endpoint");
        assert!(err.message.contains("`otel` feature"), "{}", err.message);
        // Sampling alone needs no feature.
        let config = Config::from_json(serde_json::json!({ "tracing": { "sample_ratio": 1.0 } })).unwrap();
        assert!(!Tracing::from_config(&config, &nexus_core::config::ProcessEnv, None).unwrap().exports());
    }
}
