//! Active upstream health checks through the real binary.

mod support;

use http::StatusCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use support::*;

/// An upstream whose `/health` answers 200 or 500 as `up` says; other paths name it.
async fn switchable(name: &'static str, up: Arc<AtomicBool>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let up = Arc::clone(&up);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let healthy = up.load(Ordering::Relaxed);
                    async move {
                        let (status, text) = match (req.uri().path(), healthy) {
                            ("/health", true) => (200, "ok".to_string()),
                            ("/health", false) => (500, "down".to_string()),
                            _ => (200, name.to_string()),
                        };
                        let res = http::Response::builder()
                            .status(status)
                            .body(http_body_util::Full::new(bytes::Bytes::from(text)))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_unhealthy_endpoint_leaves_balancing_and_returns_after_recovery() {
    let (a_up, b_up) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(true)));
    let a = switchable("a", Arc::clone(&a_up)).await;
    let b = switchable("b", Arc::clone(&b_up)).await;
    let yaml = format!(
        "upstreams:\n  app:\n    endpoints: [{{ url: \"http://{a}\" }}, {{ url: \"http://{b}\" }}]\n\
         \x20   health_check: {{ type: http, path: /health, interval: 100ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }}\n\
         routes:\n  - name: app\n    paths: [{{ path: / }}]\n    upstream: app\n"
    );
    let gw = gateway(&yaml);
    let seen = |n: usize| {
        let url = gw.url("/who");
        let logs = std::sync::Arc::clone(&gw.logs);
        async move {
            let mut names = Vec::new();
            for _ in 0..n {
                let (status, _, text) = get(&url).await;
                assert_eq!(status, StatusCode::OK, "{text} {}", logs.lock().unwrap().join("\n"));
                names.push(text);
            }
            names
        }
    };
    let names = seen(10).await;
    assert!(names.iter().any(|n| n == "a") && names.iter().any(|n| n == "b"), "{names:?}");

    b_up.store(false, Ordering::Relaxed);
    assert!(
        eventually(5, || async {
            get_json(&gw.admin_url("/admin/upstreams")).await["upstreams"][0]["endpoints"][1]["healthy"] == false
        })
        .await,
        "b never became unhealthy"
    );
    let v = get_json(&gw.admin_url("/admin/upstreams")).await;
    let last = &v["upstreams"][0]["endpoints"][1]["last_check"];
    assert_eq!(last["ok"], false);
    assert!(last["message"].as_str().unwrap().contains("500"), "{last}");
    assert!(seen(20).await.iter().all(|n| n == "a"), "traffic still reached the unhealthy endpoint");
    let metrics = get(&gw.admin_url("/metrics")).await.2;
    assert!(
        metrics.contains(&format!("nexus_upstream_endpoint_healthy{{upstream=\"app\",endpoint=\"{b}\"}} 0")),
        "{metrics}"
    );

    // All down: 503 upstream_unavailable with Retry-After, at once rather than hanging.
    a_up.store(false, Ordering::Relaxed);
    assert!(eventually(5, || async { get(&gw.url("/who")).await.0 == StatusCode::SERVICE_UNAVAILABLE }).await);
    let (status, headers, text) = get(&gw.url("/who")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(text.contains("upstream_unavailable"), "{text}");
    assert_eq!(headers["retry-after"], "1");

    // Recovery after the healthy threshold.
    a_up.store(true, Ordering::Relaxed);
    b_up.store(true, Ordering::Relaxed);
    assert!(eventually(5, || async { get(&gw.url("/who")).await.0 == StatusCode::OK }).await, "no recovery");
    assert!(
        eventually(5, || async {
            let v = get_json(&gw.admin_url("/admin/upstreams")).await;
            v["upstreams"][0]["endpoints"][0]["healthy"] == true && v["upstreams"][0]["endpoints"][1]["healthy"] == true
        })
        .await
    );
    let names = seen(10).await;
    assert!(names.iter().any(|n| n == "a") && names.iter().any(|n| n == "b"), "{names:?}");
}
