//! tower Layers for the Nexus API gateway, each usable on its own in any
//! tower, hyper or axum stack, without the config file.
//!
//! | module | what it does |
//! | --- | --- |
//! | [`request_id`] | keeps a client's valid `X-Request-Id` or makes one, on the request and the response |
//! | [`trace_context`] | one W3C `traceparent` for the gateway's span: the client's trace continued, or a new one |
//! | [`circuit_breaker`] | 503 with `Retry-After` at once while an upstream keeps failing |
//! | [`timeout`] | 504 `gateway_timeout` when the inner service takes too long |
//! | [`retry`] | idempotent requests sent again on `retry_on` answers, with backoff, jitter and a budget |
//! | [`jwt`] | JWT bearer authentication (HMAC, RSA, EC, EdDSA keys; JWKS file or URL with rotation), 401/403 |
//! | [`grpc`] | the Layers' own answers to gRPC requests as trailers-only gRPC statuses (401 → 16, 429 → 8, ...) |
//! | [`from_config`] | the config file's `rate_limits` and `auth.jwt` entries as the Layers' settings |
//! | [`rate_limit`] | 429 with `Retry-After` and `RateLimit-*` per client IP, header or claim; local or Redis |

/// `get_ref`, `get_mut` and `into_inner` for a middleware service that wraps its inner
/// service in a field `inner` (tower's convention), with the type's parameters after `S`.
macro_rules! inner_service_accessors {
    ($ty:ident $(, $param:ident)*) => {
        impl<S $(, $param)*> $ty<S $(, $param)*> {
            /// The inner service.
            pub fn get_ref(&self) -> &S {
                &self.inner
            }

            /// The inner service, mutably.
            pub fn get_mut(&mut self) -> &mut S {
                &mut self.inner
            }

            /// Unwrap.
            pub fn into_inner(self) -> S {
                self.inner
            }
        }
    };
}

pub mod circuit_breaker;
pub mod from_config;
pub mod grpc;
mod hex;
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub mod jwt;
#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub mod otel;
pub mod rate_limit;
pub mod request_id;
pub mod retry;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod timeout;
pub mod trace_context;

pub use circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use grpc::{GrpcErrorLayer, GrpcErrors};
#[cfg(feature = "jwt")]
pub use jwt::{JwtAuth, JwtAuthLayer};
pub use rate_limit::{RateLimit, RateLimitLayer, RateLimiter};
pub use request_id::{RequestId, RequestIdLayer};
pub use retry::{Retry, RetryLayer};
pub use timeout::{GatewayTimeout, GatewayTimeoutLayer};

// The `nexus-core` types the Layers take or leave on a request, so that using a Layer needs
// no second crate: the breaker's and retry's settings, the verified claims, the peer address.
/// The circuit breaker's settings (from `nexus-core`).
pub use nexus_core::breaker::BreakerConfig;
/// What JWT authentication leaves on a request (from `nexus-core`).
pub use nexus_core::claims::VerifiedClaims;
/// The client's address, as a server puts it on a request (from `nexus-core`).
pub use nexus_core::client::PeerAddr;
/// The retry policy and budget (from `nexus-core`).
pub use nexus_core::retry::{RetryBudget, RetryPolicy};
