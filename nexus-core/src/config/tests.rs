use super::*;
use serde_json::json;

fn errors(v: serde_json::Value) -> ConfigErrors {
    Config::from_json(v).expect_err("config should be invalid")
}

#[test]
fn empty_document_gives_defaults() {
    let c = Config::from_json(serde_json::Value::Null).unwrap();
    assert_eq!(c.server.listen.port(), 8080);
    assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.server.limits.max_request_body.bytes(), 10 << 20);
    assert_eq!(c.admin.token_env, "NEXUS_ADMIN_TOKEN");
    assert_eq!(c.summary(), "0 routes, 0 upstreams");
}

#[test]
fn every_error_is_reported_with_its_field_path() {
    let e = errors(json!({
        "server": { "limits": { "request_timeout": "soon" } },
        "upstreams": {
            "user-v1": { "endpoints": [{ "url": "http://10.0.0.1:8080" }], "timeout": "5 parsecs" },
            "user-v2": { "endpoints": [{ "url": "not a url" }] },
        },
        "routes": [
            { "name": "a", "paths": [{ "path": "/" }], "upstreamz": "user-v1" },
            { "name": "b", "paths": [{ "path": "/b" }], "upstream": "user-v3" },
            { "name": "b", "paths": [{ "path": "([", "type": "regex" }], "split": [{ "upstream": "user-v1", "weight": 0 }] },
        ],
        "bogus": 1,
    }));
    for path in [
        "server.limits.request_timeout",
        "upstreams.user-v1.timeout",
        "upstreams.user-v2.endpoints[0].url",
        "routes[0].upstreamz",
        "routes[1].upstream",
        "routes[2].name",
        "routes[2].paths[0].path",
        "routes[2].split",
        "bogus",
    ] {
        assert!(e.has_path(path), "missing error at {path}; got:\n{e}");
    }
    let text = e.to_string();
    assert!(text.contains("routes[1].upstream: unknown upstream \"user-v3\" (known: user-v1, user-v2)"), "{text}");
    assert!(
        !text.contains("unknown upstream \"user-v1\""),
        "an entry that failed to parse is not also unknown:\n{text}"
    );
}

#[test]
fn references_are_checked() {
    let e = errors(json!({
        "upstreams": { "u": { "endpoints": [{ "url": "http://127.0.0.1:1" }] } },
        "routes": [{ "name": "r", "paths": [{ "path": "/" }], "upstream": "u",
                     "auth": "main", "rate_limit": "per-ip", "mirror": { "upstream": "shadow" } }],
    }));
    assert!(e.has_path("routes[0].auth"), "{e}");
    assert!(e.has_path("routes[0].rate_limit"), "{e}");
    assert!(e.has_path("routes[0].mirror.upstream"), "{e}");
}

#[test]
fn cidrs_weights_and_limits_are_checked() {
    let e = errors(json!({
        "server": { "limits": { "max_header_bytes": "2MiB" } },
        "upstreams": { "u": { "endpoints": [{ "url": "http://127.0.0.1:1", "weight": 0 }] } },
        "rate_limits": { "l": { "requests": 0, "per": "1m", "key": "cookie:x" } },
    }));
    assert!(e.has_path("server.limits.max_header_bytes"), "{e}");
    assert!(e.has_path("upstreams.u.endpoints"), "{e}");
    assert!(e.has_path("rate_limits.l.requests"), "{e}");
    assert!(e.has_path("rate_limits.l.key"), "{e}");
    let e = errors(json!({ "server": { "trusted_proxies": ["10.0.0.0/33"] } }));
    assert!(e.has_path("server.trusted_proxies"), "{e}");
}

#[test]
fn trusted_proxies_accept_cidrs_and_addresses() {
    let c = Config::from_json(json!({ "server": { "trusted_proxies": ["10.0.0.0/8", "127.0.0.1", "::1"] } })).unwrap();
    assert_eq!(c.server.trusted_proxies.len(), 3);
}

#[test]
fn jwt_policies_are_checked() {
    let e = errors(json!({ "auth": { "jwt": {
        "a": { "algorithms": ["none"], "jwks_file": "/x" },
        "b": { "algorithms": ["HS256"], "jwks_file": "/x" },
        "c": { "algorithms": ["RS256"], "jwks_url": "http://issuer.example.com/jwks" },
        "d": { "algorithms": ["RS256"] },
    }}}));
    assert!(e.has_path("auth.jwt.a.algorithms[0]"), "{e}");
    assert!(e.has_path("auth.jwt.b.algorithms"), "{e}");
    assert!(e.has_path("auth.jwt.c.jwks_url"), "{e}");
    assert!(e.has_path("auth.jwt.d"), "{e}");
    let ok = Config::from_json(json!({ "auth": { "jwt": {
        "local": { "algorithms": ["RS256"], "jwks_url": "http://127.0.0.1:8000/jwks" } } } }));
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn retry_on_mixes_names_and_codes() {
    let c = Config::from_json(json!({ "upstreams": { "u": {
        "endpoints": [{ "url": "http://127.0.0.1:1" }],
        "retry": { "retry_on": ["connect_error", 502, "503"] } } } }))
    .unwrap();
    let r = c.upstreams["u"].retry.as_ref().unwrap();
    assert_eq!(r.retry_on, vec![RetryOn::ConnectError, RetryOn::Status(502), RetryOn::Status(503)]);
    let e = errors(json!({ "upstreams": { "u": {
        "endpoints": [{ "url": "http://127.0.0.1:1" }], "retry": { "retry_on": [99] } } } }));
    assert!(e.has_path("upstreams.u.retry.retry_on[0]"), "{e}");
}

#[test]
fn summary_uses_correct_plurals() {
    let c = Config::from_json(json!({
        "upstreams": { "a": { "endpoints": [{ "url": "http://127.0.0.1:1" }] },
                       "b": { "endpoints": [{ "url": "http://127.0.0.1:2" }] } },
        "routes": [{ "name": "r", "paths": [{ "path": "/" }], "upstream": "a" }],
    }))
    .unwrap();
    assert_eq!(c.summary(), "1 route, 2 upstreams");
}

#[test]
fn errors_in_one_entry_do_not_hide_each_other_or_the_checks_after_them() {
    let e = errors(json!({
        "server": { "bogus": 1, "limits": { "request_timeout": "5 seconds" } },
        "upstreams": {
            "a": { "endpoints": [{ "url": "http://127.0.0.1:1" }], "max_concurrent_requests": "many" },
            "b": [],
        },
        "routes": [
            { "name": "one", "paths": [{ "path": "/b" }], "upstream": "nope", "timeout": "3 parsecs", "colour": "red" },
        ],
    }));
    let got: Vec<(String, String)> = e.0.iter().map(|e| (e.path.clone(), e.message.clone())).collect();
    let find = |path: &str| got.iter().find(|(p, _)| p == path).map(|(_, m)| m.as_str());
    // An unknown key and a bad value in the same section, both reported.
    assert!(find("server.bogus").is_some_and(|m| m.starts_with("unknown key")), "{got:?}");
    assert!(find("server.limits.request_timeout").is_some_and(|m| m.contains("5 seconds")), "{got:?}");
    // In the config's words, not serde's.
    assert_eq!(find("upstreams.a.max_concurrent_requests"), Some("expected a whole number, found the string \"many\""));
    assert_eq!(find("upstreams.b"), Some("expected a mapping, found a list"));
    // A route with two bad keys still has its reference checked.
    assert!(find("routes[0].timeout").is_some() && find("routes[0].colour").is_some(), "{got:?}");
    assert!(find("routes[0].upstream").is_some_and(|m| m.contains("unknown upstream \"nope\"")), "{got:?}");
    assert_eq!(got.len(), 7, "one error each, nothing twice: {got:?}");
}

#[test]
fn http2_protocols_match_their_schemes_and_their_health_checks() {
    let up = |url: &str, protocol: &str, check: &str| json!({ "endpoints": [{ "url": url }], "protocol": protocol, "health_check": { "type": check } });
    let e = errors(json!({ "upstreams": {
        "h2-plain": up("http://127.0.0.1:1", "h2", "grpc"),
        "h2c-tls": up("https://127.0.0.1:1", "h2c", "tcp"),
        "grpc-check-h1": up("http://127.0.0.1:1", "http1", "grpc"),
        "http-check-h2c": up("http://127.0.0.1:1", "h2c", "http"),
    }}));
    for path in [
        "upstreams.h2-plain.endpoints[0].url",
        "upstreams.h2c-tls.endpoints[0].url",
        "upstreams.grpc-check-h1.health_check.type",
        "upstreams.http-check-h2c.health_check.type",
    ] {
        assert!(e.has_path(path), "{path}: {e}");
    }
    assert_eq!(e.0.len(), 4, "{e}");
    let ok = json!({ "upstreams": {
        "h2": up("https://127.0.0.1:1", "h2", "grpc"),
        "h2c": { "endpoints": [{ "url": "http://127.0.0.1:1" }], "protocol": "h2c",
                 "health_check": { "type": "grpc", "service": "orders.v1.Orders" } },
    }});
    let config = Config::from_json(ok).unwrap();
    assert_eq!(config.upstreams["h2c"].health_check.as_ref().unwrap().service, "orders.v1.Orders");
}

#[test]
fn tracing_is_checked_with_its_paths() {
    let e =
        errors(json!({ "tracing": { "sample_ratio": 1.5, "service_name": " ", "otlp_endpoint": "collector:4318" } }));
    for path in ["tracing.sample_ratio", "tracing.service_name", "tracing.otlp_endpoint"] {
        assert!(e.has_path(path), "{path}: {e}");
    }
    let c = Config::from_json(json!({ "tracing": null })).unwrap();
    assert_eq!(c.tracing, Some(TracingConfig::default()), "an empty block is the block's defaults");
    assert_eq!(Config::from_json(json!({})).unwrap().tracing, None);
}
