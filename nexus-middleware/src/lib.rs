//! tower Layers for the Nexus API gateway, each usable on its own in any
//! tower, hyper or axum stack, without the config file.
//!
//! | module | what it does |
//! | --- | --- |
//! | [`request_id`] | keeps a client's valid `X-Request-Id` or makes one, on the request and the response |
//! | [`circuit_breaker`] | 503 with `Retry-After` at once while an upstream keeps failing |
//! | [`rate_limit`] | 429 with `Retry-After` and `RateLimit-*` per client IP, header or claim; local or Redis |

pub mod circuit_breaker;
pub mod rate_limit;
pub mod request_id;
#[cfg(feature = "test-util")]
pub mod test_util;

pub use circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use rate_limit::{RateLimit, RateLimitLayer, RateLimiter};
pub use request_id::{RequestId, RequestIdLayer};
