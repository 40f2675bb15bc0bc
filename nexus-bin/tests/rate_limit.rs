//! Rate limits through the real binary: local buckets, and Redis buckets shared
//! by two gateway processes.

mod support;

use http::{Request, StatusCode};
use nexus_middleware::test_util::RedisServer;
use support::*;

fn from(gw: &Gateway, path: &str, client: &str) -> Request<Body> {
    Request::get(gw.url(path)).header("x-forwarded-for", client).body(Body::default()).unwrap()
}

fn limited(up: &Upstream, limit: &str) -> String {
    format!(
        "server:\n  trusted_proxies: [127.0.0.1/32]\n\
         rate_limits:\n  per-ip:\n    requests: 5\n    per: 1m\n{limit}\
         upstreams:\n  app:\n    endpoints: [{{ url: \"{}\" }}]\n\
         routes:\n  - name: api\n    paths: [{{ path: /api }}]\n    upstream: app\n    rate_limit: per-ip\n\
         \x20 - name: open\n    paths: [{{ path: /open }}]\n    upstream: app\n",
        up.url()
    )
}

/// Port of the seed's `TestRateLimiter_ReturnsHTTP429`, through the binary.
#[tokio::test]
async fn rate_limiter_returns_http_429() {
    let up = upstream("app").await;
    let gw = gateway(&limited(&up, ""));
    for i in 0..5 {
        let (status, headers, _) = send(from(&gw, "/api/x", "192.168.1.1")).await;
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(headers["ratelimit-limit"], "5");
        assert_eq!(headers["ratelimit-remaining"], (4 - i).to_string().as_str());
        assert_eq!(headers["ratelimit-policy"], "5;w=60;burst=5");
    }
    let (status, headers, text) = send(from(&gw, "/api/x", "192.168.1.1")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    assert_eq!(v["error"]["request_id"], headers["x-request-id"].to_str().unwrap());
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((11..=12).contains(&retry), "{retry}");
    assert_eq!(headers["ratelimit-remaining"], "0");
    assert_eq!(up.count(), 5, "the rejected request never reached the upstream");
    // Another client, and another route without a limit, are not affected.
    assert_eq!(send(from(&gw, "/api/x", "192.168.1.2")).await.0, StatusCode::OK);
    let (status, headers, _) = send(from(&gw, "/open", "192.168.1.1")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("ratelimit-limit"));
    let metrics = get(&gw.admin_url("/metrics")).await.2;
    assert!(metrics.contains(r#"nexus_rate_limited_total{route="api",limit="per-ip"} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"http_requests_total{route="api",method="GET",status="429",upstream=""} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_reload_that_keeps_the_limit_keeps_its_buckets() {
    let up = upstream("app").await;
    let yaml = limited(&up, "");
    let gw = gateway(&yaml);
    for _ in 0..5 {
        assert_eq!(send(from(&gw, "/api", "192.0.2.1")).await.0, StatusCode::OK);
    }
    // A change elsewhere in the file: a new version, the same limit.
    gw.write_config(&format!("{yaml}  - name: extra\n    paths: [{{ path: /extra }}]\n    upstream: app\n"));
    assert_eq!(post_json(&gw.admin_url("/admin/reload"), None).await.0, StatusCode::OK);
    assert_eq!(send(from(&gw, "/extra", "192.0.2.1")).await.0, StatusCode::OK);
    assert_eq!(send(from(&gw, "/api", "192.0.2.1")).await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn two_gateways_share_one_redis_limit() {
    let redis = RedisServer::start().await;
    let up = upstream("app").await;
    let yaml = limited(&up, "    backend: redis\n    redis_url_env: TEST_REDIS_URL\n    on_backend_error: deny\n");
    let url = redis.url();
    let a = gateway_with(&yaml, &[("TEST_REDIS_URL", &url)]);
    let b = gateway_with(&yaml, &[("TEST_REDIS_URL", &url)]);
    let mut statuses = Vec::new();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &a } else { &b };
        statuses.push(send(from(gw, "/api", "192.168.1.1")).await.0.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    // Redis gone: on_backend_error deny answers 429 at once, never hangs.
    drop(redis);
    let started = tokio::time::Instant::now();
    let (status, headers, _) = send(from(&a, "/api", "192.168.1.9")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn a_redis_limit_without_its_url_is_a_config_error() {
    let up = upstream("app").await;
    let yaml = limited(&up, "    backend: redis\n    redis_url_env: NEXUS_TEST_UNSET_VAR\n");
    let stderr = refused_at_start(&yaml);
    assert!(stderr.contains("rate_limits.per-ip.redis_url_env"), "{stderr}");
}

#[tokio::test]
async fn header_keys_and_burst_through_the_binary() {
    let up = upstream("app").await;
    let yaml = format!(
        "rate_limits:\n  per-key:\n    requests: 1\n    per: 1h\n    burst: 2\n    key: header:X-Api-Key\n\
         upstreams:\n  app:\n    endpoints: [{{ url: \"{}\" }}]\n    timeout: 200ms\n\
         routes:\n  - name: api\n    paths: [{{ path: / }}]\n    upstream: app\n    rate_limit: per-key\n",
        up.url()
    );
    let gw = gateway(&yaml);
    let keyed = |k: &str| Request::get(gw.url("/x")).header("x-api-key", k).body(Body::default()).unwrap();
    for _ in 0..2 {
        let (status, headers, _) = send(keyed("alpha")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["ratelimit-policy"], "1;w=3600;burst=2");
    }
    let (status, headers, _) = send(keyed("alpha")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "3600");
    assert_eq!(send(keyed("beta")).await.0, StatusCode::OK, "another key, another bucket");
    // The upstream's own timeout (shorter than the server's request timeout) is a 504.
    let slow = Request::get(gw.url("/slow/1000")).header("x-api-key", "delta").body(Body::default()).unwrap();
    let (status, _, text) = send(slow).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{text}");
}
