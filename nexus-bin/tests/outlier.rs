//! Passive outlier detection, peak-EWMA balancing and split fallback, through the real
//! binary (SPEC §9 "Passive outlier detection and load-aware balancing").

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::*;

/// An endpoint that answers every request with `status` after `delay`, and counts them.
struct Fixed {
    url: String,
    hits: Arc<AtomicUsize>,
}

impl Fixed {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn fixed(status: u16, delay: Duration) -> Fixed {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(delay).await;
                        let res = http::Response::builder()
                            .status(status)
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"fixed")))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Fixed { url, hits }
}

/// One upstream `app` over `endpoints` (`url` or `url, weight`), with `extra` keys, and a
/// route to it.
fn config(endpoints: &[(&str, u32)], extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|(u, w)| format!("{{ url: \"{u}\", weight: {w} }}")).collect();
    format!(
        "server:\n  shutdown: {{ drain_delay: 0s, grace_period: 2s }}\n\
         upstreams:\n  app:\n    endpoints: [{}]\n{extra}\
         routes:\n  - name: app\n    paths: [{{ path: / }}]\n    upstream: app\n",
        eps.join(", ")
    )
}

async fn statuses(gw: &Gateway, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get(&gw.url("/x")).await.0.as_u16());
    }
    out
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_comes_back_and_is_ejected_longer_next_time() {
    let (good, bad) = (fixed(200, Duration::ZERO).await, fixed(500, Duration::ZERO).await);
    let gw = gateway(&config(
        &[(&good.url, 1), (&bad.url, 1)],
        "    outlier_detection: { consecutive_5xx: 3, base_ejection_time: 1s, max_ejection_time: 10s }\n",
    ));
    // Round robin: the bad endpoint gets every other request until its third 500 in a row.
    let first = statuses(&gw, 10).await;
    assert_eq!(first.iter().filter(|s| **s == 500).count(), 3, "{first:?}");
    assert_eq!(bad.hits(), 3);
    let up = get_json(&gw.admin_url("/admin/upstreams")).await;
    let eps = &up["upstreams"][0]["endpoints"];
    assert!(eps[0]["ejected_until"].is_null(), "{up}");
    assert!(eps[1]["ejected_until"].is_string(), "{up}");
    let metrics = get(&gw.admin_url("/metrics")).await.2;
    let endpoint = bad.url.trim_start_matches("http://");
    let gauge = format!(r#"nexus_upstream_endpoint_ejected{{upstream="app",endpoint="{endpoint}"}}"#);
    let total = format!(r#"nexus_outlier_ejections_total{{upstream="app",endpoint="{endpoint}"}} 1"#);
    assert!(metrics.contains(&format!("{gauge} 1")) && metrics.contains(&total), "{metrics}");
    // Active checks' verdict is not ejection: the endpoint still reads healthy.
    assert!(metrics.contains(&format!(r#"nexus_upstream_endpoint_healthy{{upstream="app",endpoint="{endpoint}"}} 1"#)));

    // After base_ejection_time (1 s) it gets traffic again, fails three times more, and the
    // second ejection lasts 2 × base.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = statuses(&gw, 10).await;
    assert_eq!(bad.hits(), 6, "{second:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(statuses(&gw, 6).await.iter().all(|s| *s == 200), "still ejected 1.2 s into a 2 s ejection");
    assert_eq!(bad.hits(), 6);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(get(&gw.admin_url("/metrics")).await.2.contains(&format!("{gauge} 0")), "the gauge follows the end");
    statuses(&gw, 6).await;
    assert!(bad.hits() > 6, "back in rotation after 2 s");
}

#[tokio::test]
async fn an_ejection_survives_a_reload_that_keeps_the_endpoint() {
    let (good, bad) = (fixed(200, Duration::ZERO).await, fixed(500, Duration::ZERO).await);
    let outlier = "    outlier_detection: { consecutive_5xx: 2, base_ejection_time: 30s }\n";
    let gw = gateway(&config(&[(&good.url, 1), (&bad.url, 1)], outlier));
    statuses(&gw, 6).await;
    assert_eq!(bad.hits(), 2);
    // Another route added: the upstream is rebuilt, its endpoints' state carried over.
    gw.write_config(&format!(
        "{}  - name: other\n    paths: [{{ path: /other }}]\n    upstream: app\n",
        config(&[(&good.url, 1), (&bad.url, 1)], outlier)
    ));
    let (status, _, v) = post_json(&gw.admin_url("/admin/reload"), None).await;
    // ("unchanged" when the file watch got there first.)
    assert!(status.is_success() && ["ok", "unchanged"].contains(&v["result"].as_str().unwrap_or("")), "{v}");
    assert!(get(&gw.url("/other")).await.0.is_success(), "the new config runs");
    statuses(&gw, 6).await;
    assert_eq!(bad.hits(), 2, "the reload put an ejected endpoint back");
    let eps = &get_json(&gw.admin_url("/admin/upstreams")).await["upstreams"][0]["endpoints"];
    assert!(eps[1]["ejected_until"].is_string(), "{eps}");
}

#[tokio::test]
async fn max_ejection_percent_keeps_an_endpoint_in_rotation() {
    let (a, b) = (fixed(500, Duration::ZERO).await, fixed(500, Duration::ZERO).await);
    let gw = gateway(&config(
        &[(&a.url, 1), (&b.url, 1)],
        "    outlier_detection: { consecutive_5xx: 2, max_ejection_percent: 50 }\n",
    ));
    statuses(&gw, 10).await;
    let (ha, hb) = (a.hits(), b.hits());
    statuses(&gw, 10).await;
    // One of the two is out (50 % of 2); the other takes every request, failing or not.
    let moved = [(a.hits() - ha), (b.hits() - hb)];
    assert!(moved.contains(&0) && moved.contains(&10), "{moved:?}");
}

#[tokio::test]
async fn a_closed_port_is_ejected_by_gateway_errors() {
    let good = fixed(200, Duration::ZERO).await;
    let closed = format!("http://127.0.0.1:{}", closed_port());
    let gw = gateway(&config(
        &[(&good.url, 1), (&closed, 1)],
        "    outlier_detection: { consecutive_5xx: 100, consecutive_gateway_errors: 2, base_ejection_time: 30s }\n",
    ));
    let all = statuses(&gw, 20).await;
    assert_eq!(all.iter().filter(|s| **s == 502).count(), 2, "{all:?}");
    assert_eq!(good.hits(), 18);
}

#[tokio::test]
async fn one_bad_endpoint_of_three_never_opens_the_breaker() {
    let (bad, g1, g2) =
        (fixed(503, Duration::ZERO).await, fixed(200, Duration::ZERO).await, fixed(200, Duration::ZERO).await);
    // Weights 10:1:1 (smooth round robin: the bad endpoint gets the first picks in a row), a
    // breaker that opens after 3 failures in a row, an ejection after 3 5xx in a row: the
    // third failure ejects the endpoint and is not the breaker's.
    let gw = gateway(&config(
        &[(&bad.url, 10), (&g1.url, 1), (&g2.url, 1)],
        "    circuit_breaker: { failure_threshold: 3, open_timeout: 30s }\n    outlier_detection: { consecutive_5xx: 3, max_ejection_percent: 34 }\n",
    ));
    let all = statuses(&gw, 20).await;
    assert_eq!(&all[..3], &[503, 503, 503], "{all:?}");
    assert!(all[3..].iter().all(|s| *s == 200), "the breaker opened: {all:?}");
    assert_eq!(get_json(&gw.admin_url("/admin/upstreams")).await["upstreams"][0]["circuit"], "closed");
    assert_eq!(bad.hits(), 3);
}

/// Requests from `clients` concurrent loops for `total` requests in all.
async fn load(gw: &Gateway, clients: usize, total: usize) -> Vec<u16> {
    let per = total / clients;
    let loops: Vec<_> = (0..clients)
        .map(|_| {
            let url = gw.url("/x");
            tokio::spawn(async move {
                let client = client();
                let mut out = Vec::with_capacity(per);
                for _ in 0..per {
                    let req = http::Request::get(&url).body(body("")).unwrap();
                    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await;
                    out.push(res.map_or(0, |r| r.map_or(0, |r| r.status().as_u16())));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for l in loops {
        all.extend(l.await.unwrap());
    }
    all
}

#[tokio::test]
async fn peak_ewma_sends_most_traffic_to_the_fast_endpoint() {
    let (fast, slow) = (fixed(200, Duration::ZERO).await, fixed(200, Duration::from_millis(80)).await);
    let gw = gateway(&config(&[(&fast.url, 1), (&slow.url, 1)], "    load_balancing: peak_ewma\n"));
    let all = load(&gw, 8, 400).await;
    assert!(all.iter().all(|s| *s == 200));
    let share = fast.hits() as f64 / (fast.hits() + slow.hits()) as f64;
    assert!(share > 0.75, "fast {} slow {}", fast.hits(), slow.hits());
}

#[tokio::test]
async fn a_fast_failing_endpoint_does_not_attract_traffic_under_peak_ewma() {
    // Ejection is off (0 %): what keeps traffic away is that failures count as slow.
    let (good, failing) = (fixed(200, Duration::from_millis(2)).await, fixed(500, Duration::ZERO).await);
    let gw = gateway(&config(
        &[(&good.url, 1), (&failing.url, 1)],
        "    load_balancing: peak_ewma\n    outlier_detection: { consecutive_5xx: 1, max_ejection_percent: 0 }\n",
    ));
    let all = load(&gw, 4, 400).await;
    let failed = all.iter().filter(|s| **s == 500).count();
    assert!(failed < 40, "{failed} of 400 went to the failing endpoint (good {})", good.hits());
    // With ejection on, it is out after its first failure and gets nothing more.
    let (good, failing) = (fixed(200, Duration::from_millis(2)).await, fixed(500, Duration::ZERO).await);
    let gw = gateway(&config(
        &[(&good.url, 1), (&failing.url, 1)],
        "    load_balancing: peak_ewma\n    outlier_detection: { consecutive_5xx: 1, base_ejection_time: 30s }\n",
    ));
    load(&gw, 4, 200).await;
    assert!(failing.hits() <= 4, "{} requests reached the failing endpoint", failing.hits());
}

/// A route split 50/50 between `a` (one endpoint) and `b`, with `on_unavailable`.
fn split_config(a: &str, b: &str, on_unavailable: &str) -> String {
    format!(
        "upstreams:\n  a:\n    endpoints: [{{ url: \"{a}\" }}]\n    outlier_detection: {{ consecutive_5xx: 1, max_ejection_percent: 100 }}\n\
         \x20 b:\n    endpoints: [{{ url: \"{b}\" }}]\n\
         routes:\n  - name: app\n    paths: [{{ path: / }}]\n    split: [{{ upstream: a, weight: 50 }}, {{ upstream: b, weight: 50 }}]\n\
         \x20   on_unavailable: {on_unavailable}\n"
    )
}

#[tokio::test]
async fn a_split_side_with_every_endpoint_out_answers_503_or_falls_back() {
    let (bad, good) = (fixed(500, Duration::ZERO).await, fixed(200, Duration::ZERO).await);
    let gw = gateway(&split_config(&bad.url, &good.url, "fail"));
    let all = statuses(&gw, 40).await;
    assert_eq!(bad.hits(), 1, "ejected after its first 500");
    let unavailable = all.iter().filter(|s| **s == 503).count();
    assert!(unavailable > 5 && all.iter().all(|s| [200, 500, 503].contains(s)), "{all:?}");
    let metrics = get(&gw.admin_url("/metrics")).await.2;
    assert!(metrics.contains(r#"status="503",upstream="a""#), "the canary's share shows as its 503s\n{metrics}");

    let (bad, good) = (fixed(500, Duration::ZERO).await, fixed(200, Duration::ZERO).await);
    let gw = gateway(&split_config(&bad.url, &good.url, "fallback"));
    let all = statuses(&gw, 40).await;
    assert_eq!(bad.hits(), 1);
    assert_eq!(all.iter().filter(|s| **s == 200).count(), 39, "{all:?}");
}

#[tokio::test]
async fn outlier_settings_are_validated_with_their_paths() {
    let err = refused_at_start(&config(
        &[("http://127.0.0.1:1", 1)],
        "    outlier_detection: { consecutive_5xx: 0, max_ejection_percent: 101, base_ejection_time: 10s, max_ejection_time: 5s }\n",
    ));
    for path in ["consecutive_5xx", "max_ejection_percent", "max_ejection_time"] {
        assert!(err.contains(&format!("upstreams.app.outlier_detection.{path}")), "{path}: {err}");
    }
    let err = refused_at_start(
        "upstreams:\n  a:\n    endpoints: [{ url: \"http://127.0.0.1:1\" }]\n\
         routes:\n  - name: r\n    paths: [{ path: / }]\n    upstream: a\n    on_unavailable: fallback\n",
    );
    assert!(err.contains("routes[0].on_unavailable"), "{err}");
}
