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

pub mod balance;
pub mod body;
mod edge;
pub mod error;
pub mod gateway;
pub mod headers;
pub mod http1;
pub mod metrics;
mod pool;
mod replay;
pub mod service;
pub mod stack;
pub mod upstream;

pub use body::{RequestBody, ResponseBody, UpstreamBody, upstream_of};
pub use error::{ErrorKind, ProxyError};
pub use gateway::{Gateway, GatewayResponse, RouteTarget, StickyKey};
pub use service::{GatewayService, ProxyService};
pub use upstream::{ClientInfo, Endpoint, InFlight, Upstream};
