//! Reading one cookie from request headers (sticky keys, JWT from a cookie).
//!
//! ```
//! let mut h = http::HeaderMap::new();
//! h.insert("cookie", "theme=dark; session=abc".parse().unwrap());
//! assert_eq!(nexus_core::cookie::get(&h, "session"), Some("abc"));
//! assert_eq!(nexus_core::cookie::get(&h, "missing"), None);
//! ```

use http::{HeaderMap, header};

/// The value of cookie `name`, from any `Cookie` header.
pub fn get<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}
