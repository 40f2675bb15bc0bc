//! The example as an operator runs it: a real process, a keep-alive client that reconnects
//! when told `Connection: close`, a request in flight, then `kill -TERM`. Readiness reads 503
//! during the drain, the request in flight completes, no request fails before the listener
//! closes, and the process exits 0.

use http_body_util::{BodyExt, Empty};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

type Sender = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;

async fn connect(addr: &str) -> std::io::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// GET `path` on `sender`: status, whether the server said `Connection: close`, the body.
async fn get(sender: &mut Sender, addr: &str, path: &str) -> Result<(u16, bool, String), hyper::Error> {
    let req = http::Request::get(format!("http://{addr}{path}")).header("host", addr).body(Empty::new()).unwrap();
    let res = sender.send_request(req).await?;
    let close = res.headers().get("connection").is_some_and(|v| v == "close");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, close, String::from_utf8_lossy(&body).into_owned()))
}

#[derive(Debug, Default)]
struct Seen {
    ok: usize,
    told_to_close: usize,
    /// When requests failed, from the test's start.
    failed_at: Vec<Duration>,
    /// When a new connection was first refused (the listener closed).
    refused_at: Option<Duration>,
}

/// A keep-alive client: one request after another until the listener refuses it (bounded).
async fn client_loop(addr: String, start: Instant) -> Seen {
    let mut seen = Seen::default();
    let mut sender: Option<Sender> = None;
    while start.elapsed() < Duration::from_secs(20) {
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match connect(&addr).await {
                Ok(s) => sender.insert(s),
                Err(_) => {
                    seen.refused_at = Some(start.elapsed());
                    return seen;
                }
            },
        };
        match get(s, &addr, "/work/20").await {
            Ok((200, close, _)) => {
                seen.ok += 1;
                if close {
                    seen.told_to_close += 1;
                    sender = None;
                }
            }
            Ok((status, ..)) => panic!("unexpected status {status}"),
            Err(_) => {
                seen.failed_at.push(start.elapsed());
                sender = None;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_without_failing_a_request() {
    let drain = Duration::from_millis(1500);
    let mut child = Command::new(env!("CARGO_BIN_EXE_example-graceful-axum"))
        .env("GRACEFUL_ADDR", "127.0.0.1:0")
        .env("GRACEFUL_DRAIN_MS", drain.as_millis().to_string())
        .env("GRACEFUL_GRACE_MS", "5000")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the example");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on http://").expect("the address line").to_string();

    let mut probe = connect(&addr).await.unwrap();
    assert_eq!(get(&mut probe, &addr, "/readyz").await.unwrap().0, 200);

    let start = Instant::now();
    let looping = tokio::spawn(client_loop(addr.clone(), start));
    // A request in flight across the signal, the drain and the listener's close.
    let mut slow = connect(&addr).await.unwrap();
    let slow_addr = addr.clone();
    let in_flight = tokio::spawn(async move { get(&mut slow, &slow_addr, "/work/2500").await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = start.elapsed();
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, close, _) = get(&mut probe, &addr, "/readyz").await.expect("still serving while draining");
    assert_eq!((status, close), (503, true), "draining: not ready, and the keep-alive connection is told to close");

    let (status, _, body) = in_flight.await.unwrap().expect("the request in flight completes");
    assert_eq!((status, body.as_str()), (200, "worked 2500 ms\n"));
    let seen = looping.await.unwrap();
    let closed = seen.refused_at.expect("the listener closed");
    assert!(closed >= signalled + drain, "the listener stayed open through the drain: {seen:?}");
    assert!(seen.ok > 10 && seen.told_to_close >= 1, "served, and told to reconnect while draining: {seen:?}");
    // A request on a connection the server was closing as the listener went is not "before".
    assert!(seen.failed_at.iter().all(|t| *t >= signalled + drain), "a request failed during the drain: {seen:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the process did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit}");
}
