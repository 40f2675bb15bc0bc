use super::*;
use crate::config::Config;
use serde_json::json;

fn table(routes: serde_json::Value) -> RouteTable {
    let config = Config::from_json(json!({
        "upstreams": { "u": { "endpoints": [{ "url": "http://127.0.0.1:9" }] } },
        "routes": routes,
    }))
    .unwrap();
    RouteTable::from_config(&config).unwrap()
}

fn route_named(t: &RouteTable, method: Method, host: Option<&str>, path: &str) -> Option<String> {
    t.match_request(&RequestInfo::new(&method, host, path)).route().map(|r| r.name().to_string())
}

fn get(t: &RouteTable, host: Option<&str>, path: &str) -> Option<String> {
    route_named(t, Method::GET, host, path)
}

/// Port of the seed's `TestRouter_MatchExactPath`.
#[test]
fn router_match_exact_path_with_host() {
    let t = table(json!([{
        "name": "user-api", "host": "api.example.com",
        "paths": [{ "path": "/api/v1/users", "type": "prefix" }], "upstream": "u"
    }]));
    assert_eq!(get(&t, Some("api.example.com"), "/api/v1/users/123").as_deref(), Some("user-api"));
    assert_eq!(get(&t, Some("api.example.com"), "/api/v1/users").as_deref(), Some("user-api"));
    assert_eq!(get(&t, Some("API.Example.com:8080"), "/api/v1/users").as_deref(), Some("user-api"));
    assert_eq!(get(&t, Some("api.example.com"), "/api/v1/usersX"), None);
    assert_eq!(get(&t, Some("other.example.com"), "/api/v1/users"), None);
    assert_eq!(get(&t, None, "/api/v1/users"), None);
}

#[test]
fn exact_beats_longer_prefix_beats_shorter_prefix_beats_regex() {
    let t = table(json!([
        { "name": "regex", "paths": [{ "path": "/api/.*", "type": "regex" }], "upstream": "u" },
        { "name": "short", "paths": [{ "path": "/api" }], "upstream": "u" },
        { "name": "long", "paths": [{ "path": "/api/v1/" }], "upstream": "u" },
        { "name": "exact", "paths": [{ "path": "/api/v1/users", "type": "exact" }], "upstream": "u" },
    ]));
    assert_eq!(get(&t, None, "/api/v1/users").as_deref(), Some("exact"));
    assert_eq!(get(&t, None, "/api/v1/users/1").as_deref(), Some("long"));
    assert_eq!(get(&t, None, "/api/v1").as_deref(), Some("long"), "prefix /api/v1/ and /api/v1 are the same");
    assert_eq!(get(&t, None, "/api/v2").as_deref(), Some("short"));
    assert_eq!(get(&t, None, "/apix/y"), None);
}

#[test]
fn regex_routes_match_whole_path_in_listed_order() {
    let t = table(json!([
        { "name": "first", "paths": [{ "path": "/items/[0-9]+", "type": "regex" }], "upstream": "u" },
        { "name": "second", "paths": [{ "path": "/items/.*", "type": "regex" }], "upstream": "u" },
    ]));
    assert_eq!(get(&t, None, "/items/42").as_deref(), Some("first"));
    assert_eq!(get(&t, None, "/items/abc").as_deref(), Some("second"));
    assert_eq!(get(&t, None, "/x/items/42"), None, "regex is anchored");
}

#[test]
fn exact_trailing_slash_is_significant() {
    let t = table(json!([{ "name": "e", "paths": [{ "path": "/a/", "type": "exact" }], "upstream": "u" }]));
    assert_eq!(get(&t, None, "/a/").as_deref(), Some("e"));
    assert_eq!(get(&t, None, "/a"), None);
}

#[test]
fn host_precedence_exact_then_longest_wildcard_then_none() {
    let t = table(json!([
        { "name": "any", "paths": [{ "path": "/" }], "upstream": "u" },
        { "name": "wild", "host": "*.example.com", "paths": [{ "path": "/" }], "upstream": "u" },
        { "name": "wild-b", "host": "*.b.example.com", "paths": [{ "path": "/" }], "upstream": "u" },
        { "name": "exact", "host": "a.example.com", "paths": [{ "path": "/" }], "upstream": "u" },
    ]));
    assert_eq!(get(&t, Some("a.example.com"), "/").as_deref(), Some("exact"));
    assert_eq!(get(&t, Some("c.example.com"), "/").as_deref(), Some("wild"));
    assert_eq!(get(&t, Some("a.b.example.com"), "/").as_deref(), Some("wild-b"));
    assert_eq!(get(&t, Some("x.a.b.example.com"), "/").as_deref(), Some("wild-b"));
    assert_eq!(get(&t, Some("example.com"), "/").as_deref(), Some("any"), "wildcard never matches the apex");
    assert_eq!(get(&t, None, "/").as_deref(), Some("any"));
}

#[test]
fn host_beats_path_specificity() {
    let t = table(json!([
        { "name": "no-host-exact", "paths": [{ "path": "/x", "type": "exact" }], "upstream": "u" },
        { "name": "host-prefix", "host": "h.test", "paths": [{ "path": "/" }], "upstream": "u" },
    ]));
    assert_eq!(get(&t, Some("h.test"), "/x").as_deref(), Some("host-prefix"));
}

#[test]
fn more_headers_then_method_list_then_listing_order() {
    let t = table(json!([
        { "name": "plain", "paths": [{ "path": "/" }], "upstream": "u" },
        { "name": "plain2", "paths": [{ "path": "/" }], "upstream": "u" },
        { "name": "get-only", "paths": [{ "path": "/" }], "methods": ["GET"], "upstream": "u" },
        { "name": "canary", "paths": [{ "path": "/" }], "headers": { "x-canary": "true" }, "upstream": "u" },
    ]));
    let mut h = HeaderMap::new();
    h.insert("x-canary", HeaderValue::from_static("true"));
    let m = Method::GET;
    let hit = |req: RequestInfo<'_>| t.match_request(&req).route().map(|r| r.name().to_string());
    assert_eq!(hit(RequestInfo::new(&m, None, "/a").with_headers(&h)).as_deref(), Some("canary"));
    assert_eq!(hit(RequestInfo::new(&m, None, "/a")).as_deref(), Some("get-only"));
    assert_eq!(route_named(&t, Method::POST, None, "/a").as_deref(), Some("plain"));
    h.insert("x-canary", HeaderValue::from_static("false"));
    assert_eq!(hit(RequestInfo::new(&m, None, "/a").with_headers(&h)).as_deref(), Some("get-only"));
}

#[test]
fn method_mismatch_is_405_with_allow_unless_another_route_matches() {
    let t = table(json!([
        { "name": "users", "paths": [{ "path": "/users" }], "methods": ["GET", "POST"], "upstream": "u" },
    ]));
    match t.match_request(&RequestInfo::new(&Method::DELETE, None, "/users/1")) {
        Match::MethodNotAllowed { allow } => {
            assert!(allow.contains(&Method::GET) && allow.contains(&Method::POST) && allow.contains(&Method::HEAD));
        }
        other => panic!("expected 405, got {other:?}"),
    }
    assert_eq!(route_named(&t, Method::HEAD, None, "/users").as_deref(), Some("users"), "GET implies HEAD");
    assert!(matches!(t.match_request(&RequestInfo::new(&Method::DELETE, None, "/other")), Match::NotFound));
}

#[test]
fn strip_prefix_keeps_a_leading_slash() {
    let t = table(json!([
        { "name": "s", "paths": [{ "path": "/api/" }], "strip_prefix": true, "upstream": "u" },
    ]));
    let m = Method::GET;
    for (path, want) in [("/api/users", "/users"), ("/api", "/"), ("/api/", "/")] {
        let req = RequestInfo::new(&m, None, path);
        let Match::Found(hit) = t.match_request(&req) else { panic!("{path} did not match") };
        assert_eq!(hit.upstream_path(path), want, "{path}");
    }
}

#[test]
fn ten_thousand_routes_match_the_right_one() {
    let routes: Vec<_> = (0..10_000)
        .map(|i| {
            json!({ "name": format!("r{i}"), "host": format!("h{}.test", i % 10),
                          "paths": [{ "path": format!("/svc{i}/v1") }], "upstream": "u" })
        })
        .collect();
    let t = table(serde_json::Value::Array(routes));
    assert_eq!(get(&t, Some("h7.test"), "/svc9997/v1/items/3").as_deref(), Some("r9997"));
    assert_eq!(get(&t, Some("h6.test"), "/svc9997/v1/items/3"), None);
}

#[test]
fn host_normalisation() {
    assert_eq!(normalize_host("Example.COM:443"), "example.com");
    assert_eq!(normalize_host("[::1]:8080"), "[::1]");
    assert_eq!(normalize_host("example.com."), "example.com");
    assert_eq!(normalize_host("Example.com.:8080"), "example.com");
    assert_eq!(normalize_host("127.0.0.1:18085"), "127.0.0.1");
    assert_eq!(normalize_host("[::1]"), "[::1]");
    assert_eq!(normalize_host("API"), "api");
    assert_eq!(normalize_host(""), "");
    assert!(matches!(normalize_host("api.example.com:443"), Cow::Borrowed("api.example.com")));
    assert!(check_host_pattern("*.example.com").is_ok());
    assert!(check_host_pattern("a.*.com").is_err());
    assert!(check_host_pattern("example.com:80").is_err());
}

/// The byte-wise `normalize_host` gives what the rule says in words, for every combination of
/// a bracketed or plain host, a trailing dot, a port, and upper case.
#[test]
fn host_normalisation_agrees_with_the_rule_in_words() {
    fn by_the_words(raw: &str) -> String {
        let host = if raw.starts_with('[') {
            raw.find(']').map_or(raw, |i| &raw[..=i])
        } else {
            raw.rsplit_once(':').map_or(raw, |(h, _)| h)
        };
        host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
    }
    for name in ["", ".", "a", "A.b", "[::1]", "[::1", "[FE80::1]", "x:y", "b\u{e9}b\u{e9}.fr", "h..", ":"] {
        for dot in ["", "."] {
            for port in ["", ":", ":80", ":443:1"] {
                let raw = format!("{name}{dot}{port}");
                assert_eq!(normalize_host(&raw), by_the_words(&raw), "{raw:?}");
            }
        }
    }
}
