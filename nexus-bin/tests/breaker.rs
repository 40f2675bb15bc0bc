//! The upstream circuit breaker through the real binary.

mod support;

use http::StatusCode;
use support::*;

#[tokio::test]
async fn the_breaker_opens_rejects_at_once_and_closes_after_a_probe() {
    let up = upstream("app").await;
    let yaml = format!(
        "upstreams:\n  app:\n    endpoints: [{{ url: \"{}\" }}]\n\
         \x20   circuit_breaker: {{ failure_threshold: 3, success_threshold: 1, open_timeout: 1s }}\n\
         routes:\n  - name: app\n    paths: [{{ path: / }}]\n    upstream: app\n",
        up.url()
    );
    let gw = gateway(&yaml);
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/status/500")).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let (status, headers, text) = get(&gw.url("/status/200")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("upstream_unavailable"), "{text}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(up.count(), 3, "an open circuit sends nothing upstream");
    let v = get_json(&gw.admin_url("/admin/upstreams")).await;
    assert_eq!(v["upstreams"][0]["circuit"], "open");
    let metrics = get(&gw.admin_url("/metrics")).await.2;
    assert!(metrics.contains(r#"nexus_circuit_breaker_state{upstream="app"} 2"#), "{metrics}");

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(get(&gw.url("/probe")).await.0, StatusCode::OK, "half-open lets a probe through");
    assert_eq!(get_json(&gw.admin_url("/admin/upstreams")).await["upstreams"][0]["circuit"], "closed");
    assert_eq!(get(&gw.url("/after")).await.0, StatusCode::OK);
}
