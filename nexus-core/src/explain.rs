//! Which route would serve a request, and why: the answer of `nexus explain`
//! and `GET /admin/explain`, computed by the same matcher the server uses.
//!
//! ```
//! use nexus_core::{config::Config, explain::explain, router::RouteTable};
//! let config = Config::from_json(serde_json::json!({
//!     "upstreams": { "u": { "endpoints": [{ "url": "http://127.0.0.1:9" }] } },
//!     "routes": [{ "name": "api", "paths": [{ "path": "/api" }], "upstream": "u", "strip_prefix": true }],
//! })).unwrap();
//! let table = RouteTable::from_config(&config).unwrap();
//! let answer = explain(&config, &table, &http::Method::GET, None, "/api/users", &http::HeaderMap::new());
//! assert_eq!(answer["route"], "api");
//! assert_eq!(answer["upstream_path"], "/users");
//! ```

use crate::config::{Config, PathKind};
use crate::router::{HostMatch, Match, RequestInfo, RouteTable};
use http::{HeaderMap, Method};
use serde_json::{Value, json};

/// Explain how `method host path` (with `headers`) would be routed. The path
/// may be raw: it is normalised first, as the server does.
pub fn explain(
    config: &Config,
    table: &RouteTable,
    method: &Method,
    host: Option<&str>,
    path: &str,
    headers: &HeaderMap,
) -> Value {
    let normalized = match crate::path::normalize(path) {
        Ok(p) => p,
        Err(e) => {
            return json!({ "matched": false, "status": 400, "code": "bad_request",
                           "reason": format!("invalid path: {e}"), "path": path });
        }
    };
    let info = RequestInfo::new(method, host, &normalized).with_headers(headers);
    match table.match_request(&info) {
        Match::NotFound => json!({
            "matched": false, "status": 404, "code": "route_not_found",
            "reason": "no route matches this host, path and headers",
            "method": method.as_str(), "host": host, "path": normalized,
        }),
        Match::MethodNotAllowed { allow } => json!({
            "matched": false, "status": 405, "code": "method_not_allowed",
            "reason": "routes match the path but not the method",
            "allow": allow.iter().map(Method::as_str).collect::<Vec<_>>(),
            "method": method.as_str(), "host": host, "path": normalized,
        }),
        Match::Found(m) => {
            let route = m.route().config();
            let p = m.matched_path();
            let kind = match p.kind {
                PathKind::Exact => "exact",
                PathKind::Prefix => "prefix",
                PathKind::Regex => "regex",
            };
            let host_rule = match m.host_match() {
                HostMatch::Exact => "exact host",
                HostMatch::Wildcard => "wildcard host",
                HostMatch::Any => "any host",
            };
            let timeout = route.timeout.unwrap_or(config.server.limits.request_timeout);
            let target = match (&route.upstream, &route.split) {
                (Some(u), _) => json!({ "upstream": u }),
                (None, Some(split)) => json!({ "split": split.iter()
                    .map(|s| json!({ "upstream": s.upstream, "weight": s.weight })).collect::<Vec<_>>() }),
                (None, None) => Value::Null,
            };
            let mut answer = json!({
                "matched": true,
                "route": route.name,
                "route_index": m.route().id(),
                "why": format!("{host_rule}, {kind} path {:?}, {} required header(s), {}",
                    p.path, route.headers.len(),
                    if route.methods.is_some() { "method list" } else { "any method" }),
                "host": route.host,
                "path": { "path": p.path, "type": kind },
                "methods": route.methods,
                "headers": route.headers,
                "normalized_path": normalized,
                "upstream_path": m.upstream_path(&normalized),
                "sticky": route.sticky,
                "mirror": route.mirror,
                "auth": route.auth,
                "rate_limit": route.rate_limit,
                "timeout": timeout.to_string(),
            });
            if let (Value::Object(a), Value::Object(t)) = (&mut answer, target) {
                a.extend(t);
            }
            if let Some(u) = route.upstream.as_ref().and_then(|u| config.upstreams.get(u)) {
                answer["upstream_timeout"] = json!(u.timeout.map(|t| t.to_string()));
            }
            answer
        }
    }
}
