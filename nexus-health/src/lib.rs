//! Health probes for the Nexus API gateway and any other tower/hyper service:
//! liveness and readiness answers with the JSON bodies of SPEC §5, and a
//! [`ReadinessGate`] the application flips (not ready during start-up and
//! while draining), and active upstream health checks ([`upstream`]).
//!
//! ```
//! use nexus_health::{ReadinessGate, probe};
//! let gate = ReadinessGate::new();
//! let res: http::Response<http_body_util::Full<bytes::Bytes>> = probe::readiness(&gate);
//! assert_eq!(res.status(), 503);
//! gate.set_ready();
//! assert_eq!(probe::readiness::<http_body_util::Full<bytes::Bytes>>(&gate).status(), 200);
//! ```

pub mod check;
pub mod layer;
pub mod probe;
#[cfg(feature = "serve")]
pub mod serve;
pub mod shutdown;
pub mod upstream;

pub use probe::ReadinessGate;
