//! tower Layers for the Nexus API gateway, each usable on its own in any
//! tower, hyper or axum stack, without the config file.
//!
//! | module | what it does |
//! | --- | --- |
//! | [`request_id`] | keeps a client's valid `X-Request-Id` or makes one, on the request and the response |

pub mod request_id;

pub use request_id::{RequestId, RequestIdLayer};
