//! The config file schema of SPEC §3. Every struct rejects unknown keys; every
//! default is written next to its field.

use super::{ByteSize, Duration};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, de};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners, limits and shutdown timings.
    pub server: ServerConfig,
    /// Log level and format.
    pub logging: LoggingConfig,
    /// W3C trace sampling and OTLP span export; absent: traces are continued and
    /// propagated, new ones are not sampled, nothing is exported.
    pub tracing: Option<TracingConfig>,
    /// The admin API.
    pub admin: AdminConfig,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Authentication policies.
    pub auth: AuthConfig,
    /// Rate limits by name.
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    /// Routes, in the order they are listed (the last tie-breaker).
    pub routes: Vec<RouteConfig>,
}

/// `server:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Main listener. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Admin listener. Default `127.0.0.1:9090` (loopback only).
    pub admin_listen: SocketAddr,
    /// Set `SO_REUSEPORT` on both listeners, so a new process can bind before the old one leaves. Default false.
    pub reuse_port: bool,
    /// CIDRs (or single addresses) whose `X-Forwarded-For` is believed. Default none.
    #[serde(deserialize_with = "de_cidrs")]
    pub trusted_proxies: Vec<IpNet>,
    /// Prefix of the probe paths on the main listener (`<prefix>/healthz`, `<prefix>/readyz`). Default empty.
    pub probe_prefix: String,
    /// Request limits.
    pub limits: LimitsConfig,
    /// Shutdown timings.
    pub shutdown: ShutdownConfig,
    /// A TLS listener beside the plaintext one; absent = plaintext only.
    pub tls: Option<TlsConfig>,
}

/// `server.tls:`: TLS termination.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The TLS listener (needs a restart to change).
    pub listen: SocketAddr,
    /// Certificates, chosen by SNI against their DNS names (wildcards too); the first
    /// answers when nothing matches or no SNI is sent.
    pub certificates: Vec<CertificateConfig>,
    /// The oldest TLS version accepted: `"1.2"` or `"1.3"`. Default `"1.2"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in order of preference: `h2`, `http/1.1`. Default both.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// Mutual TLS; absent = no client certificate asked for.
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
}

fn default_true() -> bool {
    true
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}

/// One certificate of `server.tls.certificates`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key (PKCS#8, RSA or EC).
    pub key_file: String,
}

/// `min_version:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// `server.tls.client_auth:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM CA certificates that client certificates must chain to.
    pub ca_file: String,
    /// `false`: ask for a certificate, accept a client without one. Default true.
    #[serde(default = "default_true")]
    pub required: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            reuse_port: false,
            trusted_proxies: Vec::new(),
            probe_prefix: String::new(),
            limits: LimitsConfig::default(),
            shutdown: ShutdownConfig::default(),
            tls: None,
        }
    }
}

fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| de::Error::custom(format!("invalid CIDR {s:?}; write e.g. \"10.0.0.0/8\"")))
        })
        .collect()
}

/// `server.limits:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body; larger is 413. Default `10MiB`.
    pub max_request_body: ByteSize,
    /// Largest sum of header names and values; larger is 431. Default `64KiB`; 1 KiB to 1 MiB.
    pub max_header_bytes: ByteSize,
    /// Time allowed to read a request's headers (slowloris guard). Default `10s`.
    pub header_read_timeout: Duration,
    /// Time allowed for a whole request unless the route sets its own; then 504. Default `30s`.
    pub request_timeout: Duration,
    /// An HTTP/2 connection with no open stream for this long gets GOAWAY and is closed.
    /// Default `60s`.
    pub h2_idle_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_body: ByteSize::mib(10),
            max_header_bytes: ByteSize::kib(64),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            h2_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// `server.shutdown:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long `/readyz` is 503 while listeners still serve. Default `5s`.
    pub drain_delay: Duration,
    /// Then how long in-flight requests may take before exit. Default `30s`.
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_delay: Duration::from_secs(5), grace_period: Duration::from_secs(30) }
    }
}

/// `logging:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// A `tracing` filter: `info`, `debug`, `nexus=debug,hyper=warn`. Default `info`.
    pub level: String,
    /// `json` or `text`. Default `json`.
    pub format: LogFormat,
    /// One JSON line per request on stdout (see `nexus_proxy::access_log`). Default `false`.
    pub access_log: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Json, access_log: false }
    }
}

/// `tracing:`: sampling of W3C traces and their export as OpenTelemetry spans.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Base URL of an OTLP/HTTP (protobuf) collector, `http://otel-collector:4318`; spans go
    /// to `<base>/v1/traces`. Absent: `OTEL_EXPORTER_OTLP_ENDPOINT` when set, else no export.
    pub otlp_endpoint: Option<String>,
    /// The resource's `service.name`. Default `nexus`.
    pub service_name: String,
    /// Share of requests without a sampled parent that are sampled (0.0 to 1.0). Default 0.01.
    pub sample_ratio: f64,
    /// Follow a valid incoming `traceparent`'s sampled flag. `false` at an internet edge:
    /// `sample_ratio` decides for every request (the trace id is still continued). Default true.
    pub respect_parent_sampling: bool,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self { otlp_endpoint: None, service_name: "nexus".into(), sample_ratio: 0.01, respect_parent_sampling: true }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            _ => Err(format!("invalid log format {s:?} (expected json or text)")),
        }
    }
}

/// `admin:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Environment variable holding the bearer token for mutating admin calls. Default `NEXUS_ADMIN_TOKEN`.
    pub token_env: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { token_env: "NEXUS_ADMIN_TOKEN".into() }
    }
}

/// `upstreams.<name>:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The endpoints (at least one).
    pub endpoints: Vec<EndpointConfig>,
    /// How requests are spread over endpoints. Default `round_robin`.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// In-flight cap for the whole upstream; over it the gateway answers 503 at once. Default 1024 (Envoy's).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: usize,
    /// Time allowed for the upstream's response headers. Default: the route's or the server's request timeout.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Time allowed to open a TCP connection. Default `5s`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Active health checks; absent = none.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Circuit breaker; absent = none.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Retries; absent = none.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Passive outlier detection: endpoints that keep failing are ejected for a while; absent = none.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetectionConfig>,
    /// The protocol spoken to the endpoints. Default `auto`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to `https://` endpoints: the CA, the name to verify, a client certificate.
    /// Absent: the webpki roots and the URL's host, no client certificate.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
}

/// `upstreams.<name>.protocol:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// `https://` endpoints: HTTP/2 when the endpoint picks `h2` in ALPN (learned from the first
    /// connection, which offers `h2` and `http/1.1`), HTTP/1.1 otherwise; `http://`: HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 over TLS (`https://` endpoints, ALPN `h2`): multiplexed connections.
    H2,
    /// HTTP/2 over plain TCP with prior knowledge (`http://` endpoints): gRPC servers, mostly.
    H2c,
}

/// `upstreams.<name>.tls:`: how the gateway verifies `https://` endpoints and proves itself to them.
/// There is no setting that turns verification off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM CA certificates the endpoints' chains must lead to; absent = the webpki roots
    /// (Mozilla's set, built in).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// The name sent as SNI and verified against the endpoint's certificate; absent = the
    /// URL's host (an IP address is verified as one).
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM client certificate chain, for upstreams that require mutual TLS (with `client_key_file`).
    #[serde(default)]
    pub client_cert_file: Option<String>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<String>,
}

/// `outlier_detection:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionConfig {
    /// 5xx answers in a row that eject an endpoint. Default 5.
    #[serde(default = "default_five")]
    pub consecutive_5xx: u32,
    /// Gateway errors in a row (connect errors, timeouts, 502/503/504) that eject an endpoint. Default 3.
    #[serde(default = "default_three")]
    pub consecutive_gateway_errors: u32,
    /// The n-th ejection in a row lasts n × this. Default `30s`.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: Duration,
    /// The longest ejection. Default `300s`.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: Duration,
    /// Never more than this share (percent) of the endpoints ejected at once. Default 50.
    #[serde(default = "default_fifty")]
    pub max_ejection_percent: u32,
}

fn default_fifty() -> u32 {
    50
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}

fn default_max_concurrent() -> usize {
    1024
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// One endpoint of an upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `http://host:port` (a path is not allowed).
    pub url: String,
    /// Relative weight for `round_robin` and `random`. Default 1; 0 parks the endpoint.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// `load_balancing:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two random choices, the one with fewer requests in flight.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Power of two random choices, the one with the lower peak-EWMA latency × (in flight + 1):
    /// load-aware, and an endpoint that fails fast counts as slow (see `nexus_core::ewma`).
    PeakEwma,
}

/// `health_check:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `http`, `tcp` or `grpc`.
    #[serde(rename = "type", default)]
    pub kind: HealthCheckKind,
    /// Path for `http` checks. Default `/health`.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Status an `http` check expects. Default 200.
    #[serde(default = "default_expected_status")]
    pub expected_status: u16,
    /// The service a `grpc` check asks about. Default empty: the server as a whole.
    #[serde(default)]
    pub service: String,
    /// Time between checks. Default `5s`.
    #[serde(default = "default_hc_interval")]
    pub interval: Duration,
    /// Time one check may take. Default `1s`.
    #[serde(default = "default_hc_timeout")]
    pub timeout: Duration,
    /// Consecutive passes that make an endpoint healthy. Default 2.
    #[serde(default = "default_two")]
    pub healthy_threshold: u32,
    /// Consecutive failures that make an endpoint unhealthy. Default 3.
    #[serde(default = "default_three")]
    pub unhealthy_threshold: u32,
}

fn default_health_path() -> String {
    "/health".into()
}
fn default_expected_status() -> u16 {
    200
}
fn default_hc_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_hc_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_two() -> u32 {
    2
}
fn default_three() -> u32 {
    3
}

/// `health_check.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// An HTTP GET that expects a status.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
    /// The standard gRPC health check (`grpc.health.v1.Health/Check` over HTTP/2), passing on
    /// `SERVING`. Needs `protocol: h2` or `h2c`.
    Grpc,
}

/// `circuit_breaker:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures (5xx, connect error, timeout) that open it. Default 5.
    #[serde(default = "default_five")]
    pub failure_threshold: u32,
    /// Successful requests in half-open that close it. Default 2.
    #[serde(default = "default_two")]
    pub success_threshold: u32,
    /// How long it stays open before half-open. Default `10s`.
    #[serde(default = "default_open_timeout")]
    pub open_timeout: Duration,
    /// Requests let through at once while half-open. Default 1.
    #[serde(default = "default_one")]
    pub half_open_max_requests: u32,
}

fn default_five() -> u32 {
    5
}
fn default_one() -> u32 {
    1
}
fn default_open_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `retry:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first try (idempotent methods only). Default 2.
    #[serde(default = "default_two")]
    pub max_retries: u32,
    /// First backoff. Default `50ms`.
    #[serde(default = "default_initial_delay")]
    pub initial_delay: Duration,
    /// Largest backoff. Default `1s`.
    #[serde(default = "default_max_delay")]
    pub max_delay: Duration,
    /// Backoff multiplier. Default 2.0.
    #[serde(default = "default_backoff")]
    pub backoff_factor: f64,
    /// What is retried. Default `[connect_error, 502, 503, 504]`.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Retry budget: retries allowed per original request, on average. Default 0.2.
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: f64,
    /// Retry budget: retries always allowed per second. Default 10.
    #[serde(default = "default_budget_min")]
    pub budget_min_per_second: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: default_two(),
            initial_delay: default_initial_delay(),
            max_delay: default_max_delay(),
            backoff_factor: default_backoff(),
            retry_on: default_retry_on(),
            budget_ratio: default_budget_ratio(),
            budget_min_per_second: default_budget_min(),
        }
    }
}

fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_min() -> u32 {
    10
}

fn default_initial_delay() -> Duration {
    Duration::from_millis(50)
}
fn default_max_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff() -> f64 {
    2.0
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectError, RetryOn::Status(502), RetryOn::Status(503), RetryOn::Status(504)]
}

/// One `retry_on` condition: `connect_error`, `timeout`, `reset`, or a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RetryOn {
    /// The TCP connection could not be opened.
    ConnectError,
    /// The upstream did not answer in time.
    Timeout,
    /// The connection was reset before a response.
    Reset,
    /// The upstream answered with this status.
    Status(u16),
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connect_error, timeout, reset or a status code such as 503")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOn, E> {
                match u16::try_from(v) {
                    Ok(s @ 100..=599) => Ok(RetryOn::Status(s)),
                    _ => Err(E::custom(format!("{v} is not an HTTP status code"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RetryOn, E> {
                self.visit_u64(u64::try_from(v).map_err(|_| E::custom("negative status"))?)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOn, E> {
                match v {
                    "connect_error" => Ok(RetryOn::ConnectError),
                    "timeout" => Ok(RetryOn::Timeout),
                    "reset" => Ok(RetryOn::Reset),
                    other => match other.parse::<u64>() {
                        Ok(n) => self.visit_u64(n),
                        Err(_) => Err(E::custom(format!(
                            "unknown retry condition {other:?} (expected connect_error, timeout, reset or a status code)"
                        ))),
                    },
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `auth:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// JWT policies by name.
    pub jwt: BTreeMap<String, JwtConfig>,
}

/// `auth.jwt.<name>:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one). Empty = `aud` not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Allowed algorithms. Default `[RS256]`; `none` is never accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// A JWKS file on disk.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// A JWKS URL (https except on loopback), cached and refreshed.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Environment variable holding the HMAC secret (HS* only).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// A PEM public key file.
    #[serde(default)]
    pub public_key_file: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`. Default `30s`.
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
    /// Claims copied into upstream request headers: claim -> header.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Claims that must be present with this value (403 otherwise).
    #[serde(default)]
    pub required_claims: BTreeMap<String, String>,
    /// Also look for the token in this cookie (after `Authorization`).
    #[serde(default)]
    pub token_cookie: Option<String>,
    /// Also look for the token in this header (after `Authorization`).
    #[serde(default)]
    pub token_header: Option<String>,
    /// Remove `Authorization` before forwarding. Default false.
    #[serde(default)]
    pub strip_authorization: bool,
    /// Verified tokens kept, so a token seen before is not verified again (expiry and
    /// required claims are still checked on every use). 0 turns the cache off. Default 10000.
    #[serde(default = "default_jwt_cache_size")]
    pub cache_size: usize,
    /// At most one JWKS fetch per this long caused by tokens naming an unknown `kid`
    /// (start-up and periodic fetches do not count). Default `5s`.
    #[serde(default = "default_unknown_kid_cooldown")]
    pub unknown_kid_cooldown: Duration,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// `rate_limits.<name>:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per `per`.
    pub requests: u64,
    /// The window, e.g. `1m`.
    pub per: Duration,
    /// Bucket size. Default `requests`.
    #[serde(default)]
    pub burst: Option<u64>,
    /// `client_ip`, `header:NAME` or `claim:NAME`. Default `client_ip`.
    #[serde(default = "default_rl_key")]
    pub key: String,
    /// `local` or `redis`. Default `local`.
    #[serde(default)]
    pub backend: RateLimitBackend,
    /// Environment variable holding the Redis URL (backend `redis`).
    #[serde(default)]
    pub redis_url_env: Option<String>,
    /// What to do when the backend cannot answer: `allow` or `deny`. Default `allow`.
    #[serde(default)]
    pub on_backend_error: OnBackendError,
    /// Longest wait for the backend's answer (backend `redis`). Default `100ms`.
    #[serde(default = "default_backend_timeout")]
    pub backend_timeout: Duration,
}

fn default_backend_timeout() -> Duration {
    Duration::from_millis(100)
}

fn default_jwt_cache_size() -> usize {
    10_000
}

fn default_unknown_kid_cooldown() -> Duration {
    Duration::from_secs(5)
}

fn default_rl_key() -> String {
    "client_ip".into()
}

/// Where rate-limit buckets live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitBackend {
    /// In this process.
    #[default]
    Local,
    /// In Redis, shared by every replica.
    Redis,
}

/// Behaviour when a shared rate-limit backend fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBackendError {
    /// Let the request through (and log).
    #[default]
    Allow,
    /// Reject the request with 429 (and log).
    Deny,
}

/// One entry of `routes:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name; the `route` metric label.
    pub name: String,
    /// Exact host, or `*.example.com`; absent = any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Paths this route serves (at least one).
    #[serde(default)]
    pub paths: Vec<PathConfig>,
    /// Methods; absent = any.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Headers that must all be present with these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The one upstream (or use `split`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// A weighted split across upstreams (canary, blue-green).
    #[serde(default)]
    pub split: Option<Vec<SplitConfig>>,
    /// `header:NAME`, `cookie:NAME` or `claim:NAME`: the same key lands on the same side of a split.
    #[serde(default)]
    pub sticky: Option<String>,
    /// A split side whose endpoints are all out (health checks, outlier detection): `fail`
    /// answers 503, `fallback` gives its share to the other sides. Default `fail`.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// Shadow traffic; responses discarded.
    #[serde(default)]
    pub mirror: Option<MirrorConfig>,
    /// Remove the matched prefix before forwarding. Default false.
    #[serde(default)]
    pub strip_prefix: bool,
    /// This route's request timeout (overrides the server's).
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Name under `auth.jwt`.
    #[serde(default)]
    pub auth: Option<String>,
    /// Name under `rate_limits`.
    #[serde(default)]
    pub rate_limit: Option<String>,
}

/// One path matcher of a route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathConfig {
    /// The path, prefix or regex (a regex must match the whole path).
    pub path: String,
    /// `exact`, `prefix` or `regex`. Default `prefix`.
    #[serde(rename = "type", default)]
    pub kind: PathKind,
}

/// How a path is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// The whole path, trailing slash significant.
    Exact,
    /// A prefix on segment boundaries.
    #[default]
    Prefix,
    /// A regular expression over the whole normalised path.
    Regex,
}

/// `on_unavailable:` of a route with a `split`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// The side's share is answered 503 (`no_healthy_upstream`), so the canary's metrics show it.
    #[default]
    Fail,
    /// The side's share goes to the other sides, by their weights.
    Fallback,
}

/// One side of a weighted split.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Upstream name.
    pub upstream: String,
    /// Relative weight; 0 parks the side.
    pub weight: u32,
}

/// `mirror:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// Upstream that receives the copies.
    pub upstream: String,
    /// Percentage of requests copied, 0 to 100. Default 100.
    #[serde(default = "default_percent")]
    pub percent: f64,
}

fn default_percent() -> f64 {
    100.0
}
