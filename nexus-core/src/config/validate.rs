//! Semantic checks that serde cannot express. Every check pushes its error and
//! goes on, so the user sees the whole list at once.

use super::{Config, ConfigError, JwtConfig, ParseInfo, PathKind, RateLimitBackend, RouteConfig, UpstreamConfig};
use std::collections::{BTreeMap, HashSet};

const ALGORITHMS: &[&str] =
    &["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

pub(super) fn validate(c: &Config, info: &ParseInfo, errors: &mut Vec<ConfigError>) {
    let mut err = |path: String, msg: String| errors.push(ConfigError::new(path, msg));

    let limits = &c.server.limits;
    let hb = limits.max_header_bytes.bytes();
    if !(1024..=1024 * 1024).contains(&hb) {
        err("server.limits.max_header_bytes".into(), format!("{hb} bytes is out of range (1KiB to 1MiB)"));
    }
    if limits.max_request_body.bytes() == 0 {
        err("server.limits.max_request_body".into(), "must be greater than 0".into());
    }
    for (key, d) in [
        ("header_read_timeout", limits.header_read_timeout),
        ("request_timeout", limits.request_timeout),
        ("h2_idle_timeout", limits.h2_idle_timeout),
    ] {
        if d.is_zero() {
            err(format!("server.limits.{key}"), "must be greater than 0".into());
        }
    }
    if let Some(tls) = &c.server.tls {
        if tls.certificates.is_empty() {
            err("server.tls.certificates".into(), "at least one certificate is required".into());
        }
        for (i, cert) in tls.certificates.iter().enumerate() {
            for (key, file) in [("cert_file", &cert.cert_file), ("key_file", &cert.key_file)] {
                if file.is_empty() {
                    err(format!("server.tls.certificates[{i}].{key}"), "must not be empty".into());
                }
            }
        }
        if tls.alpn.is_empty() {
            err("server.tls.alpn".into(), "at least one protocol is required (h2, http/1.1)".into());
        }
        for (i, p) in tls.alpn.iter().enumerate() {
            if p != "h2" && p != "http/1.1" {
                err(format!("server.tls.alpn[{i}]"), format!("{p:?} is not h2 or http/1.1"));
            }
        }
        for (key, addr) in [("listen", c.server.listen), ("admin_listen", c.server.admin_listen)] {
            if addr.port() != 0 && addr == tls.listen {
                err("server.tls.listen".into(), format!("{addr} is also server.{key}"));
            }
        }
    }
    if let Some(t) = &c.tracing {
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            err("tracing.sample_ratio".into(), format!("{} is not between 0.0 and 1.0", t.sample_ratio));
        }
        if t.service_name.trim().is_empty() {
            err("tracing.service_name".into(), "must not be empty".into());
        }
        if let Some(Err(why)) = t.otlp_endpoint.as_deref().map(otlp_endpoint) {
            err("tracing.otlp_endpoint".into(), why);
        }
    }
    let prefix = &c.server.probe_prefix;
    if !prefix.is_empty() && (!prefix.starts_with('/') || prefix.ends_with('/')) {
        err(
            "server.probe_prefix".into(),
            format!("{prefix:?} must start with '/' and not end with '/' (e.g. \"/_nexus\")"),
        );
    }
    if c.admin.token_env.trim().is_empty() {
        err("admin.token_env".into(), "must name an environment variable".into());
    }

    for (name, u) in &c.upstreams {
        validate_upstream(&format!("upstreams.{name}"), u, &mut err);
    }
    for (name, j) in &c.auth.jwt {
        validate_jwt(&format!("auth.jwt.{name}"), j, &mut err);
    }
    for (name, rl) in &c.rate_limits {
        let p = format!("rate_limits.{name}");
        if rl.requests == 0 {
            err(format!("{p}.requests"), "must be at least 1".into());
        }
        if rl.per.is_zero() {
            err(format!("{p}.per"), "must be greater than 0".into());
        }
        if rl.burst == Some(0) {
            err(format!("{p}.burst"), "must be at least 1 (or absent: defaults to requests)".into());
        }
        if let Err(e) = check_key(&rl.key, &["client_ip"], &["header:", "claim:"]) {
            err(format!("{p}.key"), e);
        }
        if rl.backend == RateLimitBackend::Redis && rl.redis_url_env.as_deref().is_none_or(str::is_empty) {
            err(format!("{p}.redis_url_env"), "is required with backend: redis".into());
        }
    }

    let mut seen = HashSet::new();
    for (i, r) in c.routes.iter().enumerate() {
        let p = format!("routes[{}]", info.route_index.get(i).copied().unwrap_or(i));
        if r.name.trim().is_empty() {
            err(format!("{p}.name"), "must not be empty".into());
        } else if !seen.insert(r.name.as_str()) {
            err(format!("{p}.name"), format!("duplicate route name {:?}", r.name));
        }
        validate_route(&p, r, c, info, &mut err);
    }
}

/// `protocol` and `tls` of one upstream (the files are read by `nexus validate`, not here).
fn validate_upstream_tls(p: &str, u: &UpstreamConfig, err: &mut impl FnMut(String, String)) {
    use super::UpstreamProtocol;
    for (i, e) in u.endpoints.iter().enumerate() {
        let Ok(addr) = crate::upstream::parse_endpoint_url(&e.url) else { continue };
        match u.protocol {
            UpstreamProtocol::H2 if !addr.is_tls() => err(
                format!("{p}.endpoints[{i}].url"),
                "protocol h2 is HTTP/2 over TLS and needs https:// endpoints (h2c is HTTP/2 over plain TCP)".into(),
            ),
            UpstreamProtocol::H2c if addr.is_tls() => err(
                format!("{p}.endpoints[{i}].url"),
                "protocol h2c is HTTP/2 over plain TCP and needs http:// endpoints (h2 is HTTP/2 over TLS)".into(),
            ),
            _ => {}
        }
    }
    let Some(tls) = &u.tls else { return };
    let any_tls = u.endpoints.iter().any(|e| crate::upstream::parse_endpoint_url(&e.url).is_ok_and(|a| a.is_tls()));
    if !any_tls && !u.endpoints.is_empty() {
        err(format!("{p}.tls"), "no endpoint is https://, so these settings would be unused".into());
    }
    if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
        err(format!("{p}.tls"), "client_cert_file and client_key_file go together".into());
    }
    for (key, value) in [
        ("ca_file", &tls.ca_file),
        ("server_name", &tls.server_name),
        ("client_cert_file", &tls.client_cert_file),
        ("client_key_file", &tls.client_key_file),
    ] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            err(format!("{p}.tls.{key}"), "must not be empty".into());
        }
    }
    if let Some(name) = tls.server_name.as_deref().filter(|n| !n.trim().is_empty())
        && name.parse::<std::net::IpAddr>().is_err()
        && (name.contains(|c: char| c.is_whitespace() || c == '/' || c == ':') || name.starts_with('.'))
    {
        err(format!("{p}.tls.server_name"), format!("{name:?} is not a DNS name or IP address"));
    }
}

fn validate_upstream(p: &str, u: &UpstreamConfig, err: &mut impl FnMut(String, String)) {
    if u.endpoints.is_empty() {
        err(format!("{p}.endpoints"), "at least one endpoint is required".into());
    }
    let mut seen = HashSet::new();
    for (i, e) in u.endpoints.iter().enumerate() {
        if let Err(msg) = crate::upstream::parse_endpoint_url(&e.url) {
            err(format!("{p}.endpoints[{i}].url"), msg);
        } else if !seen.insert(e.url.trim_end_matches('/')) {
            err(format!("{p}.endpoints[{i}].url"), format!("duplicate endpoint {:?}", e.url));
        }
    }
    if !u.endpoints.is_empty() && u.endpoints.iter().all(|e| e.weight == 0) {
        err(format!("{p}.endpoints"), "every endpoint has weight 0; at least one must carry traffic".into());
    }
    validate_upstream_tls(p, u, err);
    if u.max_concurrent_requests == 0 {
        err(format!("{p}.max_concurrent_requests"), "must be at least 1".into());
    }
    if u.timeout.is_some_and(super::Duration::is_zero) {
        err(format!("{p}.timeout"), "must be greater than 0".into());
    }
    if u.connect_timeout.is_zero() {
        err(format!("{p}.connect_timeout"), "must be greater than 0".into());
    }
    if let Some(h) = &u.health_check {
        let h2 = matches!(u.protocol, super::UpstreamProtocol::H2 | super::UpstreamProtocol::H2c);
        if h.kind == super::HealthCheckKind::Grpc && !h2 {
            err(
                format!("{p}.health_check.type"),
                "grpc checks speak HTTP/2: the upstream needs protocol h2 or h2c".into(),
            );
        }
        if h.kind == super::HealthCheckKind::Http && h2 {
            err(
                format!("{p}.health_check.type"),
                "http checks speak HTTP/1.1, which an HTTP/2 upstream may not: use grpc or tcp".into(),
            );
        }
        if !h.path.starts_with('/') {
            err(format!("{p}.health_check.path"), format!("{:?} must start with '/'", h.path));
        }
        if !(100..=599).contains(&h.expected_status) {
            err(format!("{p}.health_check.expected_status"), format!("{} is not an HTTP status", h.expected_status));
        }
        if h.interval.is_zero() || h.timeout.is_zero() {
            err(format!("{p}.health_check"), "interval and timeout must be greater than 0".into());
        }
        if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
            err(format!("{p}.health_check"), "healthy_threshold and unhealthy_threshold must be at least 1".into());
        }
    }
    if let Some(cb) = &u.circuit_breaker {
        for (k, v) in [
            ("failure_threshold", cb.failure_threshold),
            ("success_threshold", cb.success_threshold),
            ("half_open_max_requests", cb.half_open_max_requests),
        ] {
            if v == 0 {
                err(format!("{p}.circuit_breaker.{k}"), "must be at least 1".into());
            }
        }
        if cb.open_timeout.is_zero() {
            err(format!("{p}.circuit_breaker.open_timeout"), "must be greater than 0".into());
        }
    }
    if let Some(o) = &u.outlier_detection {
        for (k, v) in
            [("consecutive_5xx", o.consecutive_5xx), ("consecutive_gateway_errors", o.consecutive_gateway_errors)]
        {
            if v == 0 {
                err(format!("{p}.outlier_detection.{k}"), "must be at least 1".into());
            }
        }
        if o.base_ejection_time.is_zero() {
            err(format!("{p}.outlier_detection.base_ejection_time"), "must be greater than 0".into());
        }
        if o.max_ejection_time < o.base_ejection_time {
            err(format!("{p}.outlier_detection.max_ejection_time"), "must not be less than base_ejection_time".into());
        }
        if o.max_ejection_percent > 100 {
            err(
                format!("{p}.outlier_detection.max_ejection_percent"),
                format!("{} is over 100", o.max_ejection_percent),
            );
        }
    }
    if let Some(r) = &u.retry {
        if !(r.backoff_factor.is_finite() && r.backoff_factor >= 1.0) {
            err(format!("{p}.retry.backoff_factor"), "must be a number of at least 1.0".into());
        }
        if r.max_delay < r.initial_delay {
            err(format!("{p}.retry.max_delay"), "must not be less than initial_delay".into());
        }
        if !(r.budget_ratio.is_finite() && (0.0..=1.0).contains(&r.budget_ratio)) {
            err(format!("{p}.retry.budget_ratio"), "must be between 0.0 and 1.0".into());
        }
        if r.max_retries > 10 {
            err(format!("{p}.retry.max_retries"), "at most 10 (each retry adds load to a failing upstream)".into());
        }
    }
}

fn validate_jwt(p: &str, j: &JwtConfig, err: &mut impl FnMut(String, String)) {
    if j.algorithms.is_empty() {
        err(format!("{p}.algorithms"), "at least one algorithm is required".into());
    }
    for (i, a) in j.algorithms.iter().enumerate() {
        if a.eq_ignore_ascii_case("none") {
            err(format!("{p}.algorithms[{i}]"), "\"none\" is never accepted".into());
        } else if !ALGORITHMS.contains(&a.as_str()) {
            err(format!("{p}.algorithms[{i}]"), format!("unknown algorithm {a:?} (known: {})", ALGORITHMS.join(", ")));
        }
    }
    let sources = [j.jwks_file.is_some(), j.jwks_url.is_some(), j.secret_env.is_some(), j.public_key_file.is_some()];
    const SOURCES: &str = "jwks_file, jwks_url, secret_env or public_key_file";
    match sources.iter().filter(|s| **s).count() {
        0 => err(p.to_string(), format!("one key source is required: {SOURCES}")),
        1 => {}
        _ => err(p.to_string(), format!("only one key source may be set: {SOURCES}")),
    }
    let hmac = j.algorithms.iter().any(|a| a.starts_with("HS"));
    if hmac && j.secret_env.is_none() {
        err(format!("{p}.algorithms"), "HS* algorithms need secret_env".into());
    }
    if j.secret_env.is_some() && j.algorithms.iter().any(|a| !a.starts_with("HS")) {
        err(format!("{p}.algorithms"), "secret_env only works with HS256, HS384 or HS512".into());
    }
    if let Some(u) = &j.jwks_url {
        match crate::upstream::AbsoluteUrl::parse(u) {
            Ok(url) => {
                if url.scheme != "https" && !(url.scheme == "http" && url.is_loopback()) {
                    err(format!("{p}.jwks_url"), "must be https (plain http only on loopback)".into());
                }
            }
            Err(e) => err(format!("{p}.jwks_url"), e),
        }
    }
    if let Some(h) = &j.token_header
        && http::HeaderName::from_bytes(h.as_bytes()).is_err()
    {
        err(format!("{p}.token_header"), format!("{h:?} is not a valid header name"));
    }
    for (claim, header) in &j.forward_claims {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            err(format!("{p}.forward_claims.{claim}"), format!("{header:?} is not a valid header name"));
        }
    }
}

fn validate_route(p: &str, r: &RouteConfig, c: &Config, info: &ParseInfo, err: &mut impl FnMut(String, String)) {
    // A name whose entry failed to parse was already reported; do not call it unknown too.
    let failed = |section: &str, name: &str| info.failed.contains(&format!("{section}.{name}"));
    let check_upstream = |path: String, name: &str, err: &mut dyn FnMut(String, String)| {
        if !c.upstreams.contains_key(name) && !failed("upstreams", name) {
            err(path, format!("unknown upstream {name:?} ({})", known(&c.upstreams, "upstreams", info)));
        }
    };

    if let Some(h) = &r.host
        && let Err(e) = crate::router::check_host_pattern(h)
    {
        err(format!("{p}.host"), e);
    }
    if r.paths.is_empty() {
        err(format!("{p}.paths"), "at least one path is required (e.g. { path: /, type: prefix })".into());
    }
    for (i, path) in r.paths.iter().enumerate() {
        let pp = format!("{p}.paths[{i}].path");
        match path.kind {
            PathKind::Regex => {
                if let Err(e) = regex::Regex::new(&path.path) {
                    err(pp, format!("invalid regex: {e}"));
                }
            }
            PathKind::Exact | PathKind::Prefix => {
                if !path.path.starts_with('/') {
                    err(pp, format!("{:?} must start with '/'", path.path));
                } else if crate::path::normalize(&path.path).ok().as_deref() != Some(path.path.as_str()) {
                    err(pp, format!("{:?} is not a normalised path (no '.', '..' or '//' segments)", path.path));
                }
            }
        }
    }
    if let Some(methods) = &r.methods {
        if methods.is_empty() {
            err(format!("{p}.methods"), "must list at least one method (or be absent for any)".into());
        }
        for (i, m) in methods.iter().enumerate() {
            if http::Method::from_bytes(m.as_bytes()).is_err() || m.chars().any(|c| c.is_ascii_lowercase()) {
                err(format!("{p}.methods[{i}]"), format!("{m:?} is not an HTTP method (write it in upper case)"));
            }
        }
    }
    for (name, value) in &r.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            err(format!("{p}.headers.{name}"), "is not a valid header name".into());
        } else if http::HeaderValue::from_str(value).is_err() {
            err(format!("{p}.headers.{name}"), format!("{value:?} is not a valid header value"));
        }
    }
    match (&r.upstream, &r.split) {
        (Some(_), Some(_)) => err(p.to_string(), "set either upstream or split, not both".into()),
        (None, None) => err(format!("{p}.upstream"), "is required (or split)".into()),
        (Some(u), None) => check_upstream(format!("{p}.upstream"), u, err),
        (None, Some(split)) => {
            if split.is_empty() {
                err(format!("{p}.split"), "must list at least one upstream".into());
            } else if split.iter().all(|s| s.weight == 0) {
                err(format!("{p}.split"), "weights sum to 0; at least one side must carry traffic".into());
            }
            let mut seen = HashSet::new();
            for (i, s) in split.iter().enumerate() {
                check_upstream(format!("{p}.split[{i}].upstream"), &s.upstream, err);
                if !seen.insert(s.upstream.as_str()) {
                    err(format!("{p}.split[{i}].upstream"), format!("{:?} is listed twice", s.upstream));
                }
            }
        }
    }
    if r.on_unavailable == super::OnUnavailable::Fallback && r.split.is_none() {
        err(format!("{p}.on_unavailable"), "fallback needs a split (another side to fall back to)".into());
    }
    if let Some(s) = &r.sticky
        && let Err(e) = check_key(s, &[], &["header:", "cookie:", "claim:"])
    {
        err(format!("{p}.sticky"), e);
    }
    if let Some(m) = &r.mirror {
        check_upstream(format!("{p}.mirror.upstream"), &m.upstream, err);
        if !(0.0..=100.0).contains(&m.percent) {
            err(format!("{p}.mirror.percent"), format!("{} is not between 0 and 100", m.percent));
        }
    }
    if r.timeout.is_some_and(super::Duration::is_zero) {
        err(format!("{p}.timeout"), "must be greater than 0".into());
    }
    if r.strip_prefix && r.paths.iter().any(|x| x.kind == PathKind::Regex) {
        err(format!("{p}.strip_prefix"), "cannot be used with regex paths".into());
    }
    if let Some(a) = &r.auth
        && !c.auth.jwt.contains_key(a)
        && !failed("auth.jwt", a)
    {
        err(format!("{p}.auth"), format!("unknown auth policy {a:?} ({})", known(&c.auth.jwt, "auth.jwt", info)));
    }
    if let Some(l) = &r.rate_limit
        && !c.rate_limits.contains_key(l)
        && !failed("rate_limits", l)
    {
        err(
            format!("{p}.rate_limit"),
            format!("unknown rate limit {l:?} ({})", known(&c.rate_limits, "rate_limits", info)),
        );
    }
}

/// `known: a, b` (or `none are defined`), the hint after an unknown name.
fn known<V>(m: &BTreeMap<String, V>, section: &str, info: &ParseInfo) -> String {
    let mut names: Vec<&str> = m.keys().map(String::as_str).collect();
    let pre = format!("{section}.");
    names.extend(info.failed.iter().filter_map(|f| f.strip_prefix(pre.as_str())));
    names.sort_unstable();
    if names.is_empty() { "none are defined".into() } else { format!("known: {}", names.join(", ")) }
}

/// Check a `kind:NAME` key such as `header:X-User-Id`.
fn check_key(key: &str, plain: &[&str], prefixed: &[&str]) -> Result<(), String> {
    if plain.contains(&key) {
        return Ok(());
    }
    for pre in prefixed {
        if let Some(name) = key.strip_prefix(pre) {
            if name.is_empty() {
                return Err(format!("{key:?} needs a name after {pre:?}"));
            }
            if *pre == "header:" && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("{name:?} is not a valid header name"));
            }
            return Ok(());
        }
    }
    let mut forms: Vec<String> = plain.iter().map(|s| (*s).to_string()).collect();
    forms.extend(prefixed.iter().map(|p| format!("{p}NAME")));
    Err(format!("invalid key {key:?} (expected {})", forms.join(" | ")))
}

/// An OTLP/HTTP base URL: `http://` or `https://`, a host, no query (spans go to
/// `<base>/v1/traces`).
///
/// ```
/// assert!(nexus_core::config::otlp_endpoint("http://otel-collector:4318").is_ok());
/// assert!(nexus_core::config::otlp_endpoint("otel-collector:4318").is_err());
/// ```
pub fn otlp_endpoint(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{url:?} must not have a query string"));
    }
    Ok(uri)
}
