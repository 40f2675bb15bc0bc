//! Progressive delivery through the real binary: weighted canary, A/B by
//! header, sticky assignment, mirroring, and a blue-green flip under load.

mod support;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::*;
use tokio::time::Instant;

type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

/// GET on a shared keep-alive client; the answer's status and body.
async fn fetch(client: &Client, url: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req.body(Body::default()).unwrap()))
        .await
        .expect("answered in time")
        .expect("request failed");
    let status = res.status();
    (status, String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned())
}

fn canary(v1: &Upstream, v2: &Upstream, w1: u32, w2: u32) -> String {
    config(
        &[("v1", v1.url()), ("v2", v2.url())],
        &format!(
            "  - name: testers\n    paths: [{{ path: / }}]\n    headers: {{ x-canary: \"true\" }}\n    upstream: v2\n\
             \x20 - name: web\n    paths: [{{ path: / }}]\n    split:\n      - {{ upstream: v1, weight: {w1} }}\n\
             \x20     - {{ upstream: v2, weight: {w2} }}\n    sticky: header:X-User-Id\n"
        ),
    )
}

#[tokio::test]
async fn a_90_10_split_lands_within_tolerance() {
    let (v1, v2) = (upstream("v1").await, upstream("v2").await);
    let gw = gateway(&canary(&v1, &v2, 90, 10));
    let client = client();
    let n = 2000;
    let mut to_v2 = 0;
    for _ in 0..n {
        let (status, body) = fetch(&client, &gw.url("/"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        if body.starts_with("v2 ") {
            to_v2 += 1;
        }
    }
    // Binomial(2000, 0.1): mean 200, sd 13.4. ±6 sd is [120, 280]: a correct split leaves
    // it about once in 10^9 runs; a 85/15 or 95/5 split (mean 300 or 100) fails it.
    assert!((120..=280).contains(&to_v2), "{to_v2} of {n} went to v2");
}

#[tokio::test]
async fn the_header_canary_wins_and_sticky_keys_hold_and_move_consistently() {
    let (v1, v2) = (upstream("v1").await, upstream("v2").await);
    let gw = gateway(&canary(&v1, &v2, 90, 10));
    let client = client();
    for _ in 0..20 {
        let (_, body) = fetch(&client, &gw.url("/"), &[("x-canary", "true"), ("x-user-id", "u-1")]).await;
        assert!(body.starts_with("v2 "), "testers always get v2: {body}");
    }
    let users = 1000;
    let mut before = Vec::with_capacity(users);
    for u in 0..users {
        let id = format!("user-{u}");
        let (_, first) = fetch(&client, &gw.url("/"), &[("x-user-id", &id)]).await;
        for _ in 0..2 {
            let (_, again) = fetch(&client, &gw.url("/"), &[("x-user-id", &id)]).await;
            assert_eq!(first[..2], again[..2], "{id} flipped under steady weights");
        }
        before.push(first.starts_with("v2 "));
    }
    // 10 -> 20: only the keys whose point falls in the new band move, all of them v1 -> v2.
    gw.write_config(&canary(&v1, &v2, 80, 20));
    assert_eq!(post_json(&gw.admin_url("/admin/reload"), None).await.0, StatusCode::OK);
    let mut moved = 0;
    for (u, was_v2) in before.iter().enumerate() {
        let (_, now) = fetch(&client, &gw.url("/"), &[("x-user-id", &format!("user-{u}"))]).await;
        let is_v2 = now.starts_with("v2 ");
        assert!(is_v2 || !was_v2, "user-{u} went back from v2 to v1");
        if is_v2 != *was_v2 {
            moved += 1;
        }
    }
    // Expect ~10% (100 of 1000, sd 9.5); a re-shuffle would move ~26%.
    assert!((60..=140).contains(&moved), "{moved} of {users} keys moved");
}

/// A listener that accepts connections and never answers.
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    url
}

#[tokio::test]
async fn a_slow_or_dead_mirror_changes_neither_status_nor_latency() {
    let (app, shadow) = (upstream("app").await, upstream("shadow").await);
    let slow = black_hole().await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let yaml = config(
        &[("app", app.url()), ("shadow", shadow.url()), ("slow", slow), ("dead", dead)],
        "  - name: plain\n    paths: [{ path: /plain }]\n    upstream: app\n\
         \x20 - name: shadowed\n    paths: [{ path: /shadowed }]\n    upstream: app\n    mirror: { upstream: shadow, percent: 100 }\n\
         \x20 - name: to-slow\n    paths: [{ path: /to-slow }]\n    upstream: app\n    mirror: { upstream: slow }\n    timeout: 300ms\n\
         \x20 - name: to-dead\n    paths: [{ path: /to-dead }]\n    upstream: app\n    mirror: { upstream: dead }\n",
    );
    let gw = gateway(&yaml);
    let client = client();
    let mut p90 = Vec::new();
    for path in ["/plain", "/to-slow", "/to-dead", "/plain"] {
        let mut times = Vec::new();
        for _ in 0..60 {
            let started = Instant::now();
            let (status, body) = fetch(&client, &gw.url(path), &[]).await;
            times.push(started.elapsed());
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            assert!(body.starts_with("app "), "{path}: the client gets the primary's answer: {body}");
        }
        times.sort();
        p90.push(times[54]);
    }
    let baseline = p90[0].max(p90[3]);
    for (path, t) in [("/to-slow", p90[1]), ("/to-dead", p90[2])] {
        // The mirror never waits on the client's path: its P90 stays within noise of no mirror.
        assert!(t < baseline * 3 + Duration::from_millis(20), "{path}: p90 {t:?} vs {baseline:?} without a mirror");
    }
    // A healthy mirror gets a marked copy of each request, and every outcome is counted.
    for _ in 0..5 {
        assert_eq!(fetch(&client, &gw.url("/shadowed/x"), &[]).await.0, StatusCode::OK);
    }
    assert!(eventually(5, || async { shadow.count() == 5 }).await, "the mirror saw {}", shadow.count());
    assert_eq!(shadow.last().headers["x-nexus-mirror"], "true");
    assert_eq!(shadow.last().uri, "/shadowed/x");
    let metrics = get(&gw.admin_url("/metrics")).await.2;
    for line in [
        r#"nexus_mirror_requests_total{route="shadowed",upstream="shadow",outcome="success"} 5"#,
        r#"nexus_mirror_requests_total{route="to-dead",upstream="dead",outcome="error"} 60"#,
        r#"nexus_mirror_requests_total{route="to-slow",upstream="slow",outcome="timeout"} 60"#,
    ] {
        let ok = eventually(5, || async { get(&gw.admin_url("/metrics")).await.2.contains(line) }).await;
        assert!(ok, "{line}\n{metrics}");
    }
}

fn blue_green(blue: &Upstream, green: &Upstream, b: u32, g: u32) -> String {
    config(
        &[("blue", blue.url()), ("green", green.url())],
        &format!(
            "  - name: app\n    paths: [{{ path: / }}]\n    split:\n      - {{ upstream: blue, weight: {b} }}\n\
             \x20     - {{ upstream: green, weight: {g} }}\n"
        ),
    )
}

/// Client loops that record when each answer arrived and from which side.
async fn watch(url: String, stop: Arc<AtomicBool>) -> Vec<(Instant, Result<String, String>)> {
    let client = client();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let req = Request::get(&url).body(Body::default()).unwrap();
        let answer = match client.request(req).await {
            Ok(res) if res.status() == StatusCode::OK => {
                Ok(String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned())
            }
            Ok(res) => Err(res.status().to_string()),
            Err(e) => Err(e.to_string()),
        };
        seen.push((Instant::now(), answer));
    }
    seen
}

/// From `at`, how long until every later answer came from `side`.
fn switch_time(seen: &[Vec<(Instant, Result<String, String>)>], at: Instant, side: &str) -> Duration {
    let last_other = seen
        .iter()
        .flatten()
        .filter(|(t, a)| *t >= at && !a.as_ref().is_ok_and(|b| b.starts_with(side)))
        .map(|(t, _)| *t)
        .max();
    last_other.map_or(Duration::ZERO, |t| t - at)
}

#[tokio::test]
async fn a_blue_green_flip_and_back_under_load_loses_nothing() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let gw = gateway(&blue_green(&blue, &green, 100, 0));
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..4).map(|_| tokio::spawn(watch(gw.url("/"), Arc::clone(&stop)))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Flip by editing the file (the watcher reloads it), as an operator or a ConfigMap would.
    let to_green = Instant::now();
    gw.write_config(&blue_green(&blue, &green, 0, 100));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let to_blue = Instant::now();
    gw.write_config(&blue_green(&blue, &green, 100, 0));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for l in loops {
        seen.push(l.await.unwrap());
    }
    let total: usize = seen.iter().map(Vec::len).sum();
    let failed: Vec<_> = seen.iter().flatten().filter_map(|(_, a)| a.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} of {total} requests failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    let green_after =
        seen.iter().flatten().filter(|(t, a)| *t < to_blue && a.as_ref().is_ok_and(|b| b.starts_with("green"))).count();
    assert!(green_after > 0, "green served during the flip window");
    // The flip to green is measured within its own window (before the flip back).
    let window: Vec<Vec<_>> = seen.iter().map(|l| l.iter().filter(|(t, _)| *t < to_blue).cloned().collect()).collect();
    let flip = switch_time(&window, to_green, "green");
    let back = switch_time(&seen, to_blue, "blue");
    eprintln!(
        "blue->green: 100% green {flip:?} after the file write; green->blue: {back:?}; {total} requests, 0 failed"
    );
    assert!(flip < Duration::from_secs(1) && back < Duration::from_secs(1), "{flip:?} / {back:?}");
}
