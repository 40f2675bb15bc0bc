//! Building an upstream from its config: endpoints and their pools (TCP, or TLS for
//! `https://`), health checks, breaker, retries, outlier detection; and what carries over
//! a reload from the version it replaces.

use super::{Endpoint, Epoch, Shared, Upstream, auto};
use crate::balance::{Balancer, Rng};
use crate::connect::{Connector, Offer};
use crate::metrics::EndpointMetrics;
use crate::pool::EndpointPool;
use http_body::Body;
use nexus_core::BoxError;
use nexus_core::breaker::BreakerConfig;
use nexus_core::config::{ConfigError, ConfigErrors, LoadBalancing, UpstreamConfig, UpstreamProtocol};
use nexus_core::ewma::PeakEwma;
use nexus_core::outlier::{OutlierConfig, Outliers};
use nexus_core::retry::RetryPolicy;
use nexus_core::upstream::{EndpointAddr, parse_endpoint_url};
use nexus_health::upstream::{CheckConfig, Checks, EndpointHealth, Probe, Thresholds};
use nexus_middleware::circuit_breaker::SharedBreaker;
use nexus_middleware::retry::Retries;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

impl<B> Upstream<B>
where
    B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Build from config. URLs are assumed validated (a bad one is an error here too).
    /// The TLS files of `https://` endpoints (`tls.ca_file`, the client certificate) are read here.
    pub fn from_config(name: &str, config: &UpstreamConfig) -> Result<Self, String> {
        Self::with_rng(name, config, Rng::from_entropy())
    }

    /// Like [`from_config`](Self::from_config) with a chosen random source
    /// (for reproducible random and least-request balancing in tests).
    pub fn with_rng(name: &str, config: &UpstreamConfig, rng: Rng) -> Result<Self, String> {
        Self::build(name, config, rng, None).map_err(|e| e.to_string())
    }

    /// Build, keeping the health state of endpoints that `previous` (the same
    /// upstream in the config being replaced) already had: a reload must not
    /// send traffic back to an endpoint its checks took out.
    pub(crate) fn build(
        name: &str,
        config: &UpstreamConfig,
        rng: Rng,
        previous: Option<&Self>,
    ) -> Result<Self, ConfigErrors> {
        let tls = upstream_tls(name, config)?;
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        let mut outlier_states = Vec::with_capacity(config.endpoints.len());
        for (i, e) in config.endpoints.iter().enumerate() {
            let at = || format!("upstreams.{name}.endpoints[{i}].url");
            let addr = parse_endpoint_url(&e.url).map_err(|m| ConfigErrors(vec![ConfigError::new(at(), m)]))?;
            let connector =
                connector(&addr, tls.as_ref()).map_err(|m| ConfigErrors(vec![ConfigError::new(at(), m)]))?;
            // HTTP/2 endpoints: multiplexed connections (the HTTP/1.1 pool stays empty). `auto`
            // over TLS has both, and ALPN picks (`super::auto`).
            let learned = (config.protocol == UpstreamProtocol::Auto && connector.is_tls()).then(auto::Learned::new);
            let h2 = match config.protocol {
                UpstreamProtocol::H2 | UpstreamProtocol::H2c => Some(crate::h2::H2Pool::new(connector.clone())),
                _ if learned.is_some() => Some(crate::h2::H2Pool::new(connector.offering(Offer::H2))),
                _ => None,
            };
            let pool = EndpointPool::new(connector, config.max_concurrent_requests.min(4096));
            let healthy_gauge = metrics::gauge!(crate::metrics::UPSTREAM_ENDPOINT_HEALTHY,
                "upstream" => name.to_string(), "endpoint" => addr.authority().to_string());
            let health = previous
                .and_then(|p| p.endpoints().iter().find(|old| old.url == e.url))
                .filter(|_| config.health_check.is_some())
                .map_or_else(|| Arc::new(EndpointHealth::new()), |old| Arc::clone(&old.health));
            healthy_gauge.set(if health.is_healthy() { 1.0 } else { 0.0 });
            let same = previous.and_then(|p| p.endpoints().iter().position(|old| old.url == e.url));
            // Latency estimates and ejections of an endpoint that stays carry over a reload.
            let ewma =
                same.map_or_else(|| Arc::new(PeakEwma::new()), |i| Arc::clone(&previous.unwrap().endpoints()[i].ewma));
            outlier_states.push(
                same.and_then(|i| previous.and_then(|p| p.outliers.as_ref()).map(|o| Arc::clone(o.state(i))))
                    .unwrap_or_default(),
            );
            endpoints.push(Endpoint {
                url: e.url.clone(),
                metrics: EndpointMetrics::new(name, addr.authority(), config.outlier_detection.is_some()),
                ewma,
                addr,
                in_flight: AtomicUsize::new(0),
                health,
                healthy_gauge,
                pool,
                h2,
                learned,
            });
        }
        let weights: Vec<u32> = config.endpoints.iter().map(|e| e.weight).collect();
        let checks = config.health_check.as_ref().and_then(|hc| spawn_health_checks(name, hc, &endpoints));
        #[cfg(not(feature = "tls"))]
        let _: Option<()> = tls;
        let breaker = config.circuit_breaker.as_ref().map(|cb| {
            let settings = BreakerConfig::from(cb);
            // Same settings as the version being replaced: keep its state (an open
            // circuit stays open across a reload).
            match previous.and_then(|p| p.breaker.as_ref()).filter(|b| *b.config() == settings) {
                Some(b) => b.clone(),
                None => SharedBreaker::new(settings).with_metric(name),
            }
        });
        let retry = config
            .retry
            .as_ref()
            .map(|r| Retries::new(RetryPolicy::from(r), Rng::seeded(rng.next_u64())).with_metric(name));
        Ok(Self {
            shared: Arc::new(Shared {
                rejected: metrics::counter!(crate::metrics::UPSTREAM_REQUESTS_TOTAL, "upstream" => name.to_string(),
                    "endpoint" => "_none", "outcome" => "rejected"),
                name: name.to_string(),
                endpoints: endpoints.into_boxed_slice(),
                in_flight: AtomicUsize::new(0),
                max_concurrent: config.max_concurrent_requests,
            }),
            balancer: Balancer::new(config.load_balancing, &weights),
            rng,
            connect_timeout: config.connect_timeout.as_std(),
            _checks: checks,
            breaker,
            retry,
            timeout: config.timeout.map(nexus_core::config::Duration::as_std),
            outliers: config
                .outlier_detection
                .as_ref()
                .map(|o| Outliers::with_states(OutlierConfig::from(o), outlier_states)),
            peak_ewma: config.load_balancing == LoadBalancing::PeakEwma,
            weights: config.endpoints.iter().map(|e| e.weight).collect(),
            clock: previous.map_or_else(Epoch::start, |p| p.clock),
            #[cfg(feature = "tls")]
            tls,
        })
    }

    /// Re-read the TLS files of this upstream (`tls.ca_file`, the client certificate): new
    /// connections use them, open ones keep their session. On an error the running set
    /// stays; the error is returned with its field path (and counted in
    /// `nexus_tls_reloads_total{result="error"}`). Nothing to do without `https://` endpoints.
    pub fn reload_tls(&self) -> Result<(), ConfigErrors> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return tls.reload();
        }
        Ok(())
    }
}

/// The TLS settings of `config`'s `https://` endpoints, read from their files; `None` when
/// every endpoint is `http://`.
#[cfg(feature = "tls")]
fn upstream_tls(name: &str, config: &UpstreamConfig) -> Result<Option<Arc<crate::tls::UpstreamTls>>, ConfigErrors> {
    let any_tls = config.endpoints.iter().any(|e| parse_endpoint_url(&e.url).is_ok_and(|a| a.is_tls()));
    if !any_tls {
        return Ok(None);
    }
    let spec = config.tls.clone().unwrap_or_default();
    let h2 = config.protocol == nexus_core::config::UpstreamProtocol::H2;
    crate::tls::UpstreamTls::load_for(name, &spec, h2).map(|t| Some(Arc::new(t)))
}

/// Without the `tls` feature there is nothing to load (an `https://` endpoint is refused
/// by [`connector`]).
#[cfg(not(feature = "tls"))]
fn upstream_tls(_name: &str, _config: &UpstreamConfig) -> Result<Option<()>, ConfigErrors> {
    Ok(None)
}

/// How the pool of `addr` opens its connections.
#[cfg(feature = "tls")]
fn connector(addr: &EndpointAddr, tls: Option<&Arc<crate::tls::UpstreamTls>>) -> Result<Connector, String> {
    match tls.filter(|_| addr.is_tls()) {
        Some(tls) => Ok(Connector::tls(addr.authority().to_string(), tls.target(addr.host())?)),
        None => Ok(Connector::tcp(addr.authority().to_string())),
    }
}

/// How the pool of `addr` opens its connections (plain TCP: this build has no TLS).
#[cfg(not(feature = "tls"))]
fn connector(addr: &EndpointAddr, _tls: Option<&()>) -> Result<Connector, String> {
    if addr.is_tls() {
        return Err("https:// endpoints need nexus-proxy's `tls` feature, which this build lacks".into());
    }
    Ok(Connector::tcp(addr.authority().to_string()))
}

/// Start the active checks of an upstream, when a tokio runtime is running.
fn spawn_health_checks<B>(
    name: &str,
    hc: &nexus_core::config::HealthCheckConfig,
    endpoints: &[Endpoint<B>],
) -> Option<Checks> {
    if tokio::runtime::Handle::try_current().is_err() {
        tracing::warn!(upstream = name, "no tokio runtime: active health checks are not running");
        return None;
    }
    let probe = match hc.kind {
        nexus_core::config::HealthCheckKind::Http => {
            Probe::Http { path: hc.path.clone(), expected_status: hc.expected_status }
        }
        nexus_core::config::HealthCheckKind::Tcp => Probe::Tcp,
        nexus_core::config::HealthCheckKind::Grpc => Probe::Grpc { service: hc.service.clone() },
    };
    let config = CheckConfig {
        probe,
        interval: hc.interval.as_std(),
        timeout: hc.timeout.as_std(),
        thresholds: Thresholds { healthy: hc.healthy_threshold, unhealthy: hc.unhealthy_threshold },
    };
    let targets = endpoints.iter().map(|e| (e.authority().to_string(), Arc::clone(&e.health))).collect();
    let gauges: Vec<(String, metrics::Gauge)> =
        endpoints.iter().map(|e| (e.authority().to_string(), e.healthy_gauge.clone())).collect();
    let upstream = name.to_string();
    // Checks connect as requests do: TLS to an `https://` endpoint, verified the same way.
    let connectors: Vec<Connector> = endpoints.iter().map(|e| e.pool().connector().clone()).collect();
    let check_timeout = config.timeout;
    let connect = move |i: usize| {
        let connector = connectors[i].clone();
        async move { connector.connect(check_timeout).await }
    };
    Some(nexus_health::upstream::spawn_checks_over(targets, config, connect, move |i, healthy, message| {
        let (endpoint, gauge) = &gauges[i];
        gauge.set(if healthy { 1.0 } else { 0.0 });
        if healthy {
            tracing::info!(%upstream, %endpoint, %message, "endpoint is healthy again");
        } else {
            tracing::warn!(%upstream, %endpoint, %message, "endpoint is unhealthy; it leaves load balancing");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> UpstreamConfig {
        serde_json::from_value(serde_json::json!({ "endpoints": [{ "url": url }] })).unwrap()
    }

    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn https_endpoints_get_tls_settings_and_plain_ones_none() {
        let up =
            Upstream::<http_body_util::Empty<bytes::Bytes>>::from_config("u", &config("https://127.0.0.1:1")).unwrap();
        assert!(up.tls.is_some());
        assert!(up.reload_tls().is_ok(), "the webpki roots need no file");
        let plain =
            Upstream::<http_body_util::Empty<bytes::Bytes>>::from_config("u", &config("http://127.0.0.1:1")).unwrap();
        assert!(plain.tls.is_none());
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_the_tls_feature_an_https_endpoint_is_refused_with_its_path() {
        let err = Upstream::<http_body_util::Empty<bytes::Bytes>>::from_config("u", &config("https://127.0.0.1:1"))
            .unwrap_err();
        assert!(err.contains("upstreams.u.endpoints[0].url") && err.contains("`tls` feature"), "{err}");
    }
}
