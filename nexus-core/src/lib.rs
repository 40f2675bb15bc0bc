//! The core of the Nexus API gateway: the config file schema and its validation,
//! the compiled route table and matcher, the upstream model, and the JSON error
//! body every Nexus crate answers with.
//!
//! `nexus-core` knows no hyper, axum or tokio runtime; it is plain data and
//! algorithms, so every other crate (and a user's own service) can share it.
//!
//! ```
//! use nexus_core::config::Config;
//! use nexus_core::router::{RouteTable, RequestInfo};
//! use http::Method;
//!
//! let config = Config::from_json(serde_json::json!({
//!     "upstreams": { "users": { "endpoints": [{ "url": "http://127.0.0.1:8081" }] } },
//!     "routes": [{ "name": "user-api", "host": "api.example.com",
//!                  "paths": [{ "path": "/api/v1/users", "type": "prefix" }],
//!                  "upstream": "users" }]
//! })).expect("valid config");
//! let table = RouteTable::from_config(&config).expect("compiles");
//! let hit = table
//!     .match_request(&RequestInfo::new(&Method::GET, Some("api.example.com"), "/api/v1/users/123"))
//!     .route()
//!     .expect("matched");
//! assert_eq!(hit.name(), "user-api");
//! ```

pub mod body;
pub mod breaker;
pub mod claims;
pub mod client;
pub mod config;
pub mod cookie;
pub mod error;
pub mod ewma;
pub mod explain;
pub mod grpc;
pub mod metric_names;
pub mod outlier;
pub mod path;
pub mod retry;
pub mod rng;
pub mod router;
pub mod upstream;

/// The one boxed error type of Nexus, as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub use error::{ErrorCode, GatewayError};
