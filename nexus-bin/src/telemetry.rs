//! The Prometheus recorder behind `/metrics`, and the process-level metrics of SPEC §5.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use nexus_core::metric_names::{
    BUILD_INFO, CONFIG_VERSION_INFO as VERSION_INFO, HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_TOTAL,
    UPSTREAM_ENDPOINT_HEALTHY, UPSTREAM_REQUESTS_TOTAL,
};
pub(crate) use nexus_core::metric_names::{CONFIG_RELOADS_TOTAL as RELOADS, INFLIGHT_REQUESTS as INFLIGHT};
use nexus_proxy::metrics::DURATION_BUCKETS;
use std::sync::OnceLock;
use std::time::Duration;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the recorder (once per process; before anything registers a metric).
pub(crate) fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let built = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.to_string()), &DURATION_BUCKETS)
                .and_then(PrometheusBuilder::install_recorder);
            match built {
                Ok(handle) => {
                    describe();
                    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
                    metrics::gauge!(INFLIGHT).set(0.0);
                    for result in ["ok", "error"] {
                        metrics::counter!(RELOADS, "result" => result).absolute(0);
                    }
                    // Upkeep folds every histogram sample recorded since the last run (~125k at
                    // 25k requests/s): milliseconds of work, so it runs on a thread of its own
                    // rather than stalling the connections of the worker it would land on.
                    let upkeep = handle.clone();
                    let spawned =
                        std::thread::Builder::new().name("nexus-metrics".into()).spawn(move || upkeep_loop(&upkeep));
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms fold at scrape time");
                    }
                    Some(handle)
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot install the metrics recorder; /metrics will be empty");
                    None
                }
            }
        })
        .clone()
}

/// Fold histogram samples every 5 s, forever (on the `nexus-metrics` thread).
#[allow(clippy::disallowed_methods, reason = "runs on a thread of its own, never on a runtime worker")]
fn upkeep_loop(handle: &PrometheusHandle) {
    loop {
        std::thread::sleep(Duration::from_secs(5));
        handle.run_upkeep();
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS_TOTAL, "Requests answered, by route, method, status and upstream.");
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time to response headers, by route, method and status."
    );
    describe_counter!(UPSTREAM_REQUESTS_TOTAL, "Requests sent to upstream endpoints, by outcome.");
    describe_gauge!(UPSTREAM_ENDPOINT_HEALTHY, "1 when the endpoint may receive traffic.");
    describe_counter!(RELOADS, "Config reloads, by result.");
    describe_gauge!(VERSION_INFO, "1 for the running config version.");
    describe_gauge!(INFLIGHT, "Requests being served.");
    describe_gauge!(BUILD_INFO, "Build information.");
    use nexus_core::metric_names as m;
    describe_gauge!(m::UPSTREAM_ENDPOINT_EJECTED, "1 while outlier detection keeps the endpoint out of balancing.");
    describe_counter!(m::OUTLIER_EJECTIONS_TOTAL, "Ejections by outlier detection, by endpoint.");
    describe_counter!(m::UPSTREAM_RETRIES_TOTAL, "Retries sent to an upstream.");
    describe_gauge!(m::CIRCUIT_BREAKER_STATE, "Circuit breaker state: 0 closed, 1 half-open, 2 open.");
    describe_counter!(m::RATE_LIMITED_TOTAL, "Requests refused by a rate limit (429), by route and limit.");
    describe_counter!(
        m::RATE_LIMIT_UNKNOWN_CLIENT_TOTAL,
        "Requests a per-client limit refused for want of a client address."
    );
    describe_counter!(m::AUTH_FAILURES_TOTAL, "Requests refused by JWT authentication, by route and reason.");
    describe_counter!(m::MIRROR_REQUESTS_TOTAL, "Mirrored copies, by route, upstream and outcome.");
    describe_counter!(m::JWT_CACHE_REQUESTS_TOTAL, "Verified-token cache lookups, hit or miss.");
    describe_gauge!(m::TLS_CERTIFICATE_EXPIRY, "A loaded certificate's notAfter, as Unix time.");
    describe_counter!(m::TLS_RELOADS_TOTAL, "TLS certificate reloads, by result.");
    describe_counter!(m::TLS_HANDSHAKE_FAILURES_TOTAL, "Failed TLS handshakes, by reason.");
    describe_counter!(m::ACCESS_LOG_DROPPED_TOTAL, "Access-log lines dropped because the writer fell behind.");
    describe_counter!(
        m::TRACE_SPANS_DROPPED_TOTAL,
        "Spans not exported: the export queue was full or the collector failed."
    );
}

/// Mark `version` as the running config (and `previous`, if any, as not).
pub(crate) fn config_version(version: &str, previous: Option<&str>) {
    if let Some(p) = previous.filter(|p| *p != version) {
        metrics::gauge!(VERSION_INFO, "version" => p.to_string()).set(0.0);
    }
    metrics::gauge!(VERSION_INFO, "version" => version.to_string()).set(1.0);
}
