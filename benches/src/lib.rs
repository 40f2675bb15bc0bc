//! Shared fixtures for the Nexus benches.

use nexus_core::config::Config;

/// A config with `n` routes spread over 50 hosts, each a prefix `/api/svc<i>/v1`,
/// plus a wildcard and a catch-all, all to one upstream.
pub fn route_config(n: usize) -> Config {
    let mut routes: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "name": format!("r{i}"),
                "host": format!("svc{}.example.com", i % 50),
                "paths": [{ "path": format!("/api/svc{i}/v1"), "type": "prefix" }],
                "methods": ["GET", "POST"],
                "upstream": "u",
            })
        })
        .collect();
    routes.push(serde_json::json!({ "name": "wild", "host": "*.example.com", "paths": [{ "path": "/health", "type": "exact" }], "upstream": "u" }));
    routes.push(serde_json::json!({ "name": "fallback", "paths": [{ "path": "/static" }], "upstream": "u" }));
    Config::from_json(serde_json::json!({
        "upstreams": { "u": { "endpoints": [{ "url": "http://127.0.0.1:9" }] } },
        "routes": routes,
    }))
    .expect("bench config is valid")
}
