//! The seam between authentication and what reads its result (rate-limit keys
//! `claim:NAME`, sticky `claim:NAME`, claim forwarding): an authenticator puts
//! [`VerifiedClaims`] into the request extensions.
//!
//! ```
//! use nexus_core::claims::VerifiedClaims;
//! let mut req = http::Request::new(());
//! let claims = serde_json::json!({"sub": "alice", "tier": 3});
//! req.extensions_mut().insert(VerifiedClaims::new(claims.as_object().unwrap().clone()));
//! let c = req.extensions().get::<VerifiedClaims>().unwrap();
//! assert_eq!(c.get_str("sub").as_deref(), Some("alice"));
//! assert_eq!(c.get_str("tier").as_deref(), Some("3"));
//! ```

use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::Arc;

/// The claims of a token that passed verification, shared cheaply.
#[derive(Debug, Clone, Default)]
pub struct VerifiedClaims(Arc<Map<String, Value>>);

impl VerifiedClaims {
    /// Wrap verified claims.
    pub fn new(claims: Map<String, Value>) -> Self {
        Self(Arc::new(claims))
    }

    /// A claim as JSON.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// A claim as text: strings as they are, numbers and booleans printed; arrays
    /// and objects as JSON.
    pub fn get_str(&self, name: &str) -> Option<Cow<'_, str>> {
        match self.0.get(name)? {
            Value::String(s) => Some(Cow::Borrowed(s)),
            Value::Null => None,
            other => Some(Cow::Owned(other.to_string())),
        }
    }

    /// All claims.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}
