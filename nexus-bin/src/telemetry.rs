//! The Prometheus recorder behind `/metrics`, and the process-level metrics of SPEC §5.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use nexus_core::metric_names::{BUILD_INFO, CONFIG_VERSION_INFO as VERSION_INFO, HTTP_REQUEST_DURATION_SECONDS};
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

/// HELP texts: the library's series, then the binary's own.
fn describe() {
    use metrics::{describe_counter, describe_gauge};
    nexus_proxy::metrics::describe();
    describe_counter!(RELOADS, "Config reloads, by result.");
    describe_gauge!(VERSION_INFO, "1 for the running config version.");
    describe_gauge!(BUILD_INFO, "Build information.");
}

/// Mark `version` as the running config (and `previous`, if any, as not).
pub(crate) fn config_version(version: &str, previous: Option<&str>) {
    if let Some(p) = previous.filter(|p| *p != version) {
        metrics::gauge!(VERSION_INFO, "version" => p.to_string()).set(0.0);
    }
    metrics::gauge!(VERSION_INFO, "version" => version.to_string()).set(1.0);
}
