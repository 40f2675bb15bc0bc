//! The Nexus reverse proxy: a pooled upstream client (hyper 1 + hyper-util),
//! load balancing, weighted splits, header rewriting and upgrades.
//!
//! [`Gateway`] is the whole routing-and-forwarding step built from a config;
//! [`Upstream`] forwards to one upstream and can be used on its own, in any
//! tower or hyper stack:
//!
//! ```no_run
//! use nexus_core::config::UpstreamConfig;
//! use nexus_proxy::{ClientInfo, Upstream};
//! # async fn run() {
//! let config: UpstreamConfig = serde_json::from_value(serde_json::json!({
//!     "endpoints": [{ "url": "http://127.0.0.1:8081" }, { "url": "http://127.0.0.1:8082" }],
//!     "load_balancing": "least_request",
//! })).unwrap();
//! let upstream = Upstream::<http_body_util::Empty<bytes::Bytes>>::from_config("users", &config).unwrap();
//! let client = ClientInfo::new("127.0.0.1".parse().unwrap(), &[]);
//! let req = http::Request::get("/users/1").header("host", "api.example.com")
//!     .body(http_body_util::Empty::new()).unwrap();
//! let res = upstream.forward(req, &client, std::time::Duration::from_secs(5)).await;
//! # let _ = res;
//! # }
//! ```
//!
//! ## One dependency for the whole gateway
//!
//! The crates the gateway is built from are re-exported, so `nexus-proxy` alone in
//! `[dependencies]` is enough to mount the config-built gateway and to use any of its
//! Layers, probes or config types:
//!
//! ```
//! use nexus_proxy::config::Config;
//! use nexus_proxy::nexus_middleware::{RateLimitLayer, RateLimiter};
//! use nexus_proxy::nexus_middleware::rate_limit::RateLimitConfig;
//! let config = Config::from_json(serde_json::json!({ "routes": [] })).unwrap();
//! assert!(config.routes.is_empty());
//! let limit = RateLimitConfig { requests: 10, per: std::time::Duration::from_secs(1), ..Default::default() };
//! let limiter = RateLimiter::local(limit).unwrap();
//! let _layer = RateLimitLayer::new(limiter);
//! ```
//!
//! Features (all on by default): `redis` (shared rate limits), `jwks-url` (JWKS fetched
//! over HTTPS with rustls), `yaml` (`Config::from_yaml`); `axum` (off) also reads the client
//! address from axum's `ConnectInfo`. A config that needs a feature this build lacks is
//! refused when the gateway is built, with the field path and the feature's name.

pub use nexus_core;
pub use nexus_health;
pub use nexus_middleware;

/// The verified claims JWT authentication leaves on a request.
pub use nexus_core::claims::VerifiedClaims;
/// The client's address, as a server puts it on a request.
pub use nexus_core::client::PeerAddr;
/// The config model and its validation (`nexus_core::config`).
pub use nexus_core::config;

pub mod access_log;
pub mod balance;
pub mod body;
mod connect;
mod edge;
pub mod error;
pub mod files;
pub mod front;
pub mod gateway;
mod h2;
pub mod headers;
pub mod http1;
pub mod metrics;
mod pool;
mod replay;
pub mod service;
pub mod spans;
pub mod stack;
mod target;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
pub mod upstream;

pub use body::{RequestBody, ResponseBody, UpstreamBody, upstream_of};
pub use error::{ErrorKind, ProxyError};
pub use gateway::{Gateway, GatewayResponse, RouteTarget, StickyKey};
pub use service::{GatewayService, ProxyService};
pub use upstream::{ClientInfo, Endpoint, InFlight, Upstream};
