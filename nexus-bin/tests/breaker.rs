//! The upstream circuit breaker through the real binary.

mod support;

use http::StatusCode;
use support::*;

/// One route to `up`, whose upstream has the `circuit_breaker` block `breaker`.
fn config(up: &Upstream, breaker: &str) -> String {
    format!(
        "upstreams:\n  app:\n    endpoints: [{{ url: \"{}\" }}]\n    circuit_breaker: {breaker}\n\
         routes:\n  - name: app\n    paths: [{{ path: / }}]\n    upstream: app\n",
        up.url()
    )
}

#[tokio::test]
async fn the_breaker_opens_rejects_at_once_and_closes_after_a_probe() {
    let up = upstream("app").await;
    let gw = gateway(&config(&up, "{ failure_threshold: 3, success_threshold: 1, open_timeout: 1s }"));
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
    let metrics = get(&gw.admin_url("/metrics")).await.2;
    assert!(metrics.contains(r#"nexus_circuit_breaker_state{upstream="app"} 0"#), "{metrics}");
    assert_eq!(get(&gw.url("/after")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_state_gauge_follows_half_open_probes_and_a_reopen() {
    let up = upstream("app").await;
    let gw = gateway(&config(&up, "{ failure_threshold: 1, success_threshold: 2, open_timeout: 1s }"));
    let gauge = || async { get(&gw.admin_url("/metrics")).await.2 };
    let state = |n: u8| format!(r#"nexus_circuit_breaker_state{{upstream="app"}} {n}"#);
    assert_eq!(get(&gw.url("/status/200")).await.0, StatusCode::OK);
    assert!(gauge().await.contains(&state(0)));
    assert_eq!(get(&gw.url("/status/502")).await.0, StatusCode::BAD_GATEWAY);
    assert!(gauge().await.contains(&state(2)), "one failure of one opens it");

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(get(&gw.url("/status/200")).await.0, StatusCode::OK, "the first probe");
    let m = gauge().await;
    assert!(m.contains(&state(1)), "one success of two: still half-open\n{m}");
    assert_eq!(get(&gw.url("/status/503")).await.0, StatusCode::SERVICE_UNAVAILABLE, "a failed probe");
    let m = gauge().await;
    assert!(m.contains(&state(2)), "a failed probe opens it again\n{m}");
}
