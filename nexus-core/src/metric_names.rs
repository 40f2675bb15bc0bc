//! The metric names of the contract (SPEC §5, §9), defined once: canary
//! analysis and alert rules query them, so every crate that records one uses
//! these constants. Labels are listed beside each name.
//!
//! ```
//! assert_eq!(nexus_core::metric_names::RATE_LIMITED_TOTAL, "nexus_rate_limited_total");
//! ```

/// `http_requests_total{route,method,status,upstream}` counter.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// `http_request_duration_seconds{route,method,status}` histogram.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
/// `nexus_upstream_requests_total{upstream,endpoint,outcome}` counter.
pub const UPSTREAM_REQUESTS_TOTAL: &str = "nexus_upstream_requests_total";
/// `nexus_upstream_endpoint_healthy{upstream,endpoint}` gauge.
pub const UPSTREAM_ENDPOINT_HEALTHY: &str = "nexus_upstream_endpoint_healthy";
/// `nexus_upstream_endpoint_ejected{upstream,endpoint}` gauge: 1 while outlier detection has
/// the endpoint out of rotation.
pub const UPSTREAM_ENDPOINT_EJECTED: &str = "nexus_upstream_endpoint_ejected";
/// `nexus_outlier_ejections_total{upstream,endpoint}` counter.
pub const OUTLIER_EJECTIONS_TOTAL: &str = "nexus_outlier_ejections_total";
/// `nexus_upstream_retries_total{upstream}` counter.
pub const UPSTREAM_RETRIES_TOTAL: &str = "nexus_upstream_retries_total";
/// `nexus_circuit_breaker_state{upstream}` gauge: 0 closed, 1 half-open, 2 open.
pub const CIRCUIT_BREAKER_STATE: &str = "nexus_circuit_breaker_state";
/// `nexus_rate_limited_total{route,limit}` counter.
pub const RATE_LIMITED_TOTAL: &str = "nexus_rate_limited_total";
/// `nexus_rate_limit_unknown_client_total{limit}` counter: requests a per-client limit
/// refused (500) because the server gave no client address.
pub const RATE_LIMIT_UNKNOWN_CLIENT_TOTAL: &str = "nexus_rate_limit_unknown_client_total";
/// `nexus_auth_failures_total{route,reason}` counter.
pub const AUTH_FAILURES_TOTAL: &str = "nexus_auth_failures_total";
/// `nexus_mirror_requests_total{route,upstream,outcome}` counter.
pub const MIRROR_REQUESTS_TOTAL: &str = "nexus_mirror_requests_total";
/// `nexus_inflight_requests` gauge.
pub const INFLIGHT_REQUESTS: &str = "nexus_inflight_requests";
/// `nexus_config_reloads_total{result}` counter.
pub const CONFIG_RELOADS_TOTAL: &str = "nexus_config_reloads_total";
/// `nexus_config_version_info{version}` gauge.
pub const CONFIG_VERSION_INFO: &str = "nexus_config_version_info";
/// `nexus_build_info{version}` gauge.
pub const BUILD_INFO: &str = "nexus_build_info";
/// `nexus_tls_certificate_expiry_timestamp_seconds{name}` gauge: a loaded certificate's notAfter.
pub const TLS_CERTIFICATE_EXPIRY: &str = "nexus_tls_certificate_expiry_timestamp_seconds";
/// `nexus_tls_reloads_total{result}` counter: TLS certificate reloads, `ok` or `error`.
pub const TLS_RELOADS_TOTAL: &str = "nexus_tls_reloads_total";
/// `nexus_tls_handshake_failures_total{reason}` counter.
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "nexus_tls_handshake_failures_total";
/// `nexus_access_log_dropped_total` counter: access-log lines dropped because the writer fell behind.
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "nexus_access_log_dropped_total";
/// `nexus_grpc_responses_total{route,grpc_status}` counter: gRPC answers by status, the upstream's or the gateway's own.
pub const GRPC_RESPONSES_TOTAL: &str = "nexus_grpc_responses_total";
/// `nexus_trace_spans_dropped_total` counter: spans not exported (the queue was full or the collector failed).
pub const TRACE_SPANS_DROPPED_TOTAL: &str = "nexus_trace_spans_dropped_total";
/// `nexus_jwt_cache_requests_total{result}` counter: verified-token cache lookups, `hit` or `miss`.
pub const JWT_CACHE_REQUESTS_TOTAL: &str = "nexus_jwt_cache_requests_total";
