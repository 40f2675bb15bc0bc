//! `GracefulServer` over real connections on 127.0.0.1: HTTP/2 clients get GOAWAY when the
//! drain begins while the listener still accepts; after the drain the listener is closed;
//! every request carries its peer address.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use nexus_core::client::PeerAddr;
use nexus_health::ReadinessGate;
use nexus_health::serve::GracefulServer;
use nexus_health::shutdown::Shutdown;
use std::convert::Infallible;
use std::time::Duration;

#[tokio::test]
async fn http2_goes_away_at_the_drain_and_the_listener_closes_after_it() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (gate, shutdown) = (ReadinessGate::new(), Shutdown::new());
    let (signal, signalled) = tokio::sync::oneshot::channel::<()>();
    let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip().to_string()).unwrap_or_default();
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(peer))))
    });
    let server = GracefulServer::new(gate.clone(), shutdown.clone())
        .drain_delay(Duration::from_millis(800))
        .grace_period(Duration::from_secs(2))
        .with_signal(async move {
            let _ = signalled.await;
        });
    let served = tokio::spawn(server.serve(listener, app));

    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = || http::Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new())).unwrap();
    let res = h2.send_request(req()).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "127.0.0.1", "the peer address rides along");
    assert!(gate.is_ready(), "ready once serving");

    let signalled_at = tokio::time::Instant::now();
    signal.send(()).unwrap();
    // GOAWAY: the client's connection ends well before the drain delay is over.
    let ended = tokio::time::timeout(Duration::from_millis(500), conn).await;
    assert!(ended.is_ok(), "HTTP/2 connection told to go away at the start of the drain");
    assert!(gate.is_draining());
    // The listener still accepts during the drain (HTTP/1 this time, told to close).
    let (status, close) = http1_get(addr).await.expect("still accepting while draining");
    assert_eq!((status, close), (200, true));

    tokio::time::sleep_until(signalled_at + Duration::from_millis(800 + 700)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed after the drain");
    let done = tokio::time::timeout(Duration::from_secs(3), served).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "serve returns once nothing is open");
}

async fn http1_get(addr: std::net::SocketAddr) -> Option<(u16, bool)> {
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.ok()?);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}/")).header("host", "x").body(Full::new(Bytes::new())).unwrap();
    let res = sender.send_request(req).await.ok()?;
    Some((res.status().as_u16(), res.headers().get("connection").is_some_and(|v| v == "close")))
}
