//! tower Layers for the Nexus API gateway, each usable on its own in any
//! tower, hyper or axum stack, without the config file.
//!
//! | module | what it does |
//! | --- | --- |
//! | [`request_id`] | keeps a client's valid `X-Request-Id` or makes one, on the request and the response |
//! | [`circuit_breaker`] | 503 with `Retry-After` at once while an upstream keeps failing |

pub mod circuit_breaker;
pub mod request_id;

pub use circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use request_id::{RequestId, RequestIdLayer};
