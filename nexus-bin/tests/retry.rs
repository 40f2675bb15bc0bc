//! Upstream retries through the real binary.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::*;

/// An endpoint that reads each request's body, then answers `status` (with
/// `Retry-After` when given). Returns its URL and how many requests it saw.
async fn failing(status: u16, retry_after: Option<u64>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        seen.fetch_add(1, Ordering::SeqCst);
                        let _ = req.into_body().collect().await;
                        let mut res = Response::builder().status(status);
                        if let Some(s) = retry_after {
                            res = res.header("retry-after", s);
                        }
                        Ok::<_, Infallible>(res.body(Full::new(Bytes::from("failing"))).unwrap())
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, hits)
}

fn config(endpoints: &[String], retry: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|u| format!("{{ url: \"{u}\" }}")).collect();
    format!(
        "upstreams:\n  app:\n    endpoints: [{}]\n    retry: {{ {retry} }}\n\
         routes:\n  - name: app\n    paths: [{{ path: / }}]\n    upstream: app\n",
        eps.join(", ")
    )
}

#[tokio::test]
async fn idempotent_requests_are_retried_on_another_endpoint_and_posts_are_not() {
    let up = upstream("live").await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let gw = gateway(&config(&[dead, up.url()], "max_retries: 1, initial_delay: 5ms"));
    for i in 0..10 {
        let (status, _, body) = get(&gw.url(&format!("/get/{i}"))).await;
        assert_eq!(status, StatusCode::OK, "GET {i}: {body}");
    }
    let mut failed_posts = 0;
    for _ in 0..10 {
        let req = Request::post(gw.url("/upload")).body(body("x")).unwrap();
        if send(req).await.0 == StatusCode::BAD_GATEWAY {
            failed_posts += 1;
        }
    }
    assert!(failed_posts >= 3, "POST is never retried: half go to the dead endpoint ({failed_posts} failed)");
    let metrics = get(&gw.admin_url("/metrics")).await.2;
    assert!(metrics.contains(r#"nexus_upstream_retries_total{upstream="app"}"#), "{metrics}");
}

#[tokio::test]
async fn a_put_body_is_replayed_to_the_next_endpoint() {
    let up = upstream("live").await;
    let (bad, bad_hits) = failing(503, None).await;
    let gw = gateway(&config(&[bad, up.url()], "max_retries: 2, initial_delay: 5ms, retry_on: [503]"));
    let payload = vec![b'p'; 10_000];
    for _ in 0..4 {
        let req = Request::put(gw.url("/upload")).body(body(payload.clone())).unwrap();
        let (status, _, text) = send(req).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(text, "10000", "the whole body reached the second endpoint");
    }
    assert!(bad_hits.load(Ordering::SeqCst) >= 1, "the failing endpoint was tried first at least once");
}

#[tokio::test]
async fn a_retried_get_reaches_the_next_endpoint_as_the_client_sent_it() {
    let up = upstream("live").await;
    let (bad, bad_hits) = failing(503, None).await;
    let gw = gateway(&config(&[bad, up.url()], "max_retries: 2, initial_delay: 5ms, retry_on: [503]"));
    for i in 0..4 {
        let req = Request::get(gw.url(&format!("/items/{i}?q=a%20b")))
            .header("x-custom", "kept")
            .header("connection", "x-private")
            .header("x-private", "dropped")
            .body(body(""))
            .unwrap();
        let (status, _, text) = send(req).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        // Every try sends the same head: the last one (to the live endpoint) included.
        let seen = up.last();
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.uri, format!("/items/{i}?q=a%20b"));
        assert_eq!(seen.headers["x-custom"], "kept");
        assert_eq!(seen.headers["host"], gw.url("").trim_start_matches("http://").trim_end_matches('/'));
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
        assert!(!seen.headers.contains_key("x-private"), "a field named by Connection is hop-by-hop");
        assert!(!seen.headers.contains_key("connection"));
    }
    assert!(bad_hits.load(Ordering::SeqCst) >= 1, "the failing endpoint was tried first at least once");
}

#[tokio::test]
async fn a_retry_after_longer_than_max_delay_is_the_answer() {
    let (bad, hits) = failing(503, Some(5)).await;
    let gw = gateway(&config(&[bad], "max_retries: 2, initial_delay: 5ms, max_delay: 1s, retry_on: [503]"));
    let (status, headers, _) = get(&gw.url("/x")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "5");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "not retried");
}

#[tokio::test]
async fn the_retry_budget_caps_retries_during_an_outage() {
    let (bad, hits) = failing(503, None).await;
    let gw = gateway(&config(
        &[bad],
        "max_retries: 3, initial_delay: 1ms, max_delay: 2ms, retry_on: [503], budget_ratio: 0.0, budget_min_per_second: 1",
    ));
    for _ in 0..10 {
        assert_eq!(get(&gw.url("/x")).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
    let hits = hits.load(Ordering::SeqCst);
    // Without a budget: 40 tries. With one retry a second (plus the first second's), a handful.
    assert!((11..=14).contains(&hits), "{hits} upstream requests for 10 client requests");
}

#[tokio::test]
async fn without_a_retry_block_nothing_is_retried() {
    let (bad, hits) = failing(503, None).await;
    let yaml = format!(
        "upstreams:\n  app:\n    endpoints: [{{ url: \"{bad}\" }}]\n\
         routes:\n  - name: app\n    paths: [{{ path: / }}]\n    upstream: app\n"
    );
    let gw = gateway(&yaml);
    assert_eq!(get(&gw.url("/x")).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
