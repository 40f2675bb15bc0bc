//! SIGTERM and draining, through the real binary.

mod support;

use http::{Request, StatusCode};
use std::time::Duration;
use support::*;

fn kill(sig: &str, pid: u32) {
    let ok = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test]
async fn sigterm_drains_slow_requests_then_exits_0() {
    let up = upstream("app").await;
    let yaml = config(&[("app", up.url())], "  - name: app\n    paths: [{ path: / }]\n    upstream: app\n")
        .replace("drain_delay: 0s, grace_period: 2s", "drain_delay: 1500ms, grace_period: 5s");
    let mut gw = gateway(&yaml);
    // 20 requests of 500 ms each, in flight when the signal arrives.
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let url = gw.url("/slow/500");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    assert!(eventually(5, || async { up.count() >= 20 }).await, "the slow requests did not all start");
    let started = tokio::time::Instant::now();
    kill("-TERM", gw.pid());

    // Readiness turns 503 as soon as the signal is handled; the listener still serves
    // during drain_delay, with Connection: close so persistent clients move elsewhere.
    assert!(
        eventually(1, || async { get(&gw.url("/readyz")).await.0 == StatusCode::SERVICE_UNAVAILABLE }).await,
        "readiness did not turn 503"
    );
    assert!(get(&gw.url("/readyz")).await.2.contains("not_ready"));
    let (status, headers, _) = send(Request::get(gw.url("/during-drain")).body(body("")).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["connection"], "close");

    for r in slow {
        let (status, _, text) = r.await.unwrap();
        assert_eq!((status, text.as_str()), (StatusCode::OK, "slow done"));
    }
    let code = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(6), "exit took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_second_signal_exits_1_at_once() {
    let up = upstream("app").await;
    let yaml = config(&[("app", up.url())], "  - name: app\n    paths: [{ path: / }]\n    upstream: app\n")
        .replace("drain_delay: 0s", "drain_delay: 30s");
    let mut gw = gateway(&yaml);
    kill("-TERM", gw.pid());
    assert!(eventually(5, || async { get(&gw.url("/readyz")).await.0 == StatusCode::SERVICE_UNAVAILABLE }).await);
    kill("-INT", gw.pid());
    assert_eq!(gw.wait_exit(Duration::from_secs(5)).await, Some(1));
}

#[tokio::test]
async fn shutdown_waits_for_open_websockets() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = upstream("app").await;
    let yaml = config(&[("app", up.url())], "  - name: app\n    paths: [{ path: / }]\n    upstream: app\n")
        .replace("drain_delay: 0s, grace_period: 2s", "drain_delay: 0s, grace_period: 10s");
    let mut gw = gateway(&yaml);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr)).await.unwrap();
    kill("-TERM", gw.pid());
    // Listeners close, but the upgraded connection still works and holds the process.
    let addr = gw.addr;
    assert!(
        eventually(5, || async move { tokio::net::TcpStream::connect(addr).await.is_err() }).await,
        "the listener should be closed"
    );
    ws.send(Message::text("still here")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "still here");
    ws.close(None).await.unwrap();
    drop(ws);
    assert_eq!(gw.wait_exit(Duration::from_secs(8)).await, Some(0));
}

#[tokio::test]
async fn a_reuse_port_rolling_restart_loses_no_request() {
    let up = upstream("app").await;
    let yaml = config(&[("app", up.url())], "  - name: app\n    paths: [{ path: / }]\n    upstream: app\n")
        .replace("server:\n", "server:\n  reuse_port: true\n")
        .replace("drain_delay: 0s, grace_period: 2s", "drain_delay: 1s, grace_period: 5s");
    let mut old = gateway_at(&yaml, "127.0.0.1:0", "127.0.0.1:0");
    let (listen, admin) = (old.addr.to_string(), old.admin.to_string());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> =
        (0..4).map(|_| tokio::spawn(client_loop(old.url("/roll"), std::sync::Arc::clone(&stop)))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The new process binds the same ports before the old one leaves.
    let new = gateway_at(&yaml, &listen, &admin);
    kill("-TERM", old.pid());
    assert_eq!(old.wait_exit(Duration::from_secs(10)).await, Some(0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, retried) = join_loops(loops).await;
    eprintln!("rolling restart: {ok} ok, {failed} failed, {retried} retried once after a connection reset");
    assert_eq!(failed, 0, "{ok} ok, {failed} failed, {retried} retried");
    assert!(ok > 100, "the loop barely ran: {ok}");
    assert_eq!(get(&new.url("/after")).await.0, StatusCode::OK, "the new process serves");
}

#[tokio::test]
async fn draining_sends_goaway_to_http2_clients() {
    let up = upstream("app").await;
    let yaml = config(&[("app", up.url())], "  - name: app\n    paths: [{ path: / }]\n    upstream: app\n")
        .replace("drain_delay: 0s, grace_period: 2s", "drain_delay: 5s, grace_period: 5s");
    let gw = gateway(&yaml);
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Body>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = closed_tx.send(());
    });
    let res = sender.send_request(Request::get(gw.url("/h2")).body(body("")).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    drop(res);
    kill("-TERM", gw.pid());
    // GOAWAY ends the idle HTTP/2 connection well before the 5 s drain is over...
    tokio::time::timeout(Duration::from_secs(3), closed_rx).await.expect("no GOAWAY during drain").unwrap();
    // ...while the listener still accepts (the client reconnects, here or elsewhere).
    let (status, headers, _) = get(&gw.url("/still-serving")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["connection"], "close");
}
