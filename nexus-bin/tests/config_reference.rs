//! `docs/configuration.md` is checked against the schema: its YAML block parses with the real
//! schema (no invented key, none written twice), names every key the schema has, and shows
//! the real defaults where it says they are defaults.

use nexus_core::config::{
    AdminConfig, CircuitBreakerConfig, Config, HealthCheckConfig, JwtConfig, LoggingConfig, PathKind, RateLimitConfig,
    RetryConfig, RouteConfig, ServerConfig, UpstreamConfig, yaml_document,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;

fn reference() -> Value {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).unwrap();
    let start = page.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = start + page[start..].find("```").expect("the block's end");
    yaml_document(&page.as_bytes()[start..end]).expect("the block is YAML")
}

/// Every key path of `v` (`routes[].paths[].type`).
fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.insert(path.clone());
                paths(v, &path, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| paths(item, &format!("{prefix}[]"), out)),
        _ => {}
    }
}

#[test]
fn the_reference_names_every_key_of_the_schema_and_no_other() {
    let doc = reference();
    let parsed: Config = serde_json::from_value(doc.clone()).expect("every key of the reference is in the schema");
    let (mut documented, mut schema) = (BTreeSet::new(), BTreeSet::new());
    paths(&doc, "", &mut documented);
    paths(&serde_json::to_value(&parsed).unwrap(), "", &mut schema);
    let missing: Vec<_> = schema.difference(&documented).collect();
    assert!(missing.is_empty(), "keys the schema has and docs/configuration.md does not show: {missing:?}");
}

/// `value` read as a `T`.
fn read<T: serde::de::DeserializeOwned>(value: &Value) -> T {
    serde_json::from_value(value.clone()).unwrap()
}

#[test]
fn the_reference_shows_the_real_defaults() {
    let doc = reference();
    let defaults = Config::default();
    // `server.tls` is shown although it is off by default; its own defaults are checked below.
    let mut server = doc["server"].clone();
    let tls = server.as_object_mut().unwrap().remove("tls").expect("the reference shows server.tls");
    assert_eq!(read::<ServerConfig>(&server), defaults.server, "server");
    // `tracing` is shown with a collector although it is absent by default; the rest of
    // the block shows the defaults it has when present.
    let mut tracing = doc["tracing"].clone();
    assert!(tracing.as_object_mut().unwrap().remove("otlp_endpoint").is_some());
    assert_eq!(read::<nexus_core::config::TracingConfig>(&tracing), nexus_core::config::TracingConfig::default());
    assert_eq!(defaults.tracing, None);
    let shown_tls: nexus_core::config::TlsConfig = read(&tls);
    let minimal_tls: nexus_core::config::TlsConfig = read(&json!({
        "listen": "0.0.0.0:8443", "certificates": [], "client_auth": { "ca_file": "x" } }));
    assert_eq!(
        (shown_tls.min_version, &shown_tls.alpn, shown_tls.client_auth.map(|c| c.required)),
        (minimal_tls.min_version, &minimal_tls.alpn, minimal_tls.client_auth.map(|c| c.required)),
        "server.tls"
    );
    assert_eq!(read::<LoggingConfig>(&doc["logging"]), defaults.logging, "logging");
    assert_eq!(read::<AdminConfig>(&doc["admin"]), defaults.admin, "admin");
    let upstream = &doc["upstreams"]["users"];
    assert_eq!(read::<HealthCheckConfig>(&upstream["health_check"]), read::<HealthCheckConfig>(&json!({})));
    assert_eq!(read::<CircuitBreakerConfig>(&upstream["circuit_breaker"]), read::<CircuitBreakerConfig>(&json!({})));
    assert_eq!(read::<RetryConfig>(&upstream["retry"]), RetryConfig::default());
    assert_eq!(
        read::<nexus_core::config::OutlierDetectionConfig>(&upstream["outlier_detection"]),
        read::<nexus_core::config::OutlierDetectionConfig>(&json!({}))
    );
    // The keys with defaults in an upstream, a route, a policy and a limit.
    let minimal: UpstreamConfig = read(&json!({ "endpoints": [{ "url": "http://a:1" }] }));
    let shown: UpstreamConfig = read(upstream);
    assert_eq!(
        (shown.load_balancing, shown.max_concurrent_requests, shown.connect_timeout, shown.endpoints[0].weight),
        (minimal.load_balancing, minimal.max_concurrent_requests, minimal.connect_timeout, minimal.endpoints[0].weight)
    );
    let jwt: JwtConfig = read(&doc["auth"]["jwt"]["main"]);
    let minimal_jwt: JwtConfig = read(&json!({}));
    assert_eq!(
        (&jwt.algorithms, jwt.leeway, jwt.strip_authorization),
        (&minimal_jwt.algorithms, minimal_jwt.leeway, minimal_jwt.strip_authorization)
    );
    let limit: RateLimitConfig = read(&doc["rate_limits"]["per-ip"]);
    let minimal_limit: RateLimitConfig = read(&json!({ "requests": 100, "per": "1m" }));
    assert_eq!(
        (&limit.key, limit.backend, limit.on_backend_error, limit.backend_timeout),
        (&minimal_limit.key, minimal_limit.backend, minimal_limit.on_backend_error, minimal_limit.backend_timeout)
    );
    let route: RouteConfig = read(&doc["routes"][0]);
    assert_eq!(
        (route.strip_prefix, route.paths[0].kind, route.mirror.map(|m| m.percent)),
        (false, PathKind::Prefix, Some(100.0))
    );
}
