//! gRPC through the real binary to an HTTP/2 upstream (SPEC §9 "HTTP/2 and gRPC"): unary and
//! streaming calls in both directions, trailers both ways, deadlines, the gateway's own
//! statuses, the HTTP/2 connection pool. The upstream is a gRPC echo service on hyper's
//! HTTP/2 server (messages framed as gRPC frames them: a flag byte, a 4-byte length, bytes).

mod support;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::sync::mpsc;
use tokio::time::Instant;

type Frames = StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// A body fed by a channel: each frame as it is sent.
fn channel_body() -> (mpsc::Sender<Frame<Bytes>>, Frames) {
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(16);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (Ok(f), rx)) });
    (tx, StreamBody::new(stream.boxed()))
}

/// One gRPC message on the wire.
fn message(payload: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(5 + payload.len());
    b.push(0);
    b.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    b.extend_from_slice(payload);
    b.into()
}

fn trailers(status: u32, extra: &[(&'static str, &'static str)]) -> Frame<Bytes> {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(status));
    for (k, v) in extra {
        t.insert(*k, HeaderValue::from_static(v));
    }
    Frame::trailers(t)
}

/// What the echo upstream saw and did.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
    cancelled: AtomicBool,
    heads: Mutex<Vec<HeaderMap>>,
    /// What `grpc.health.v1.Health/Check` answers: NOT_SERVING when set, SERVING otherwise.
    not_serving: AtomicBool,
    /// Health checks received (they are not in `requests`).
    checks: AtomicUsize,
}

/// Sets `cancelled` when dropped before `done`: the gateway reset the stream.
struct CancelWatch(Arc<Seen>, bool);
impl Drop for CancelWatch {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.store(true, Ordering::SeqCst);
        }
    }
}

/// The echo service: `Unary` (the messages back, trailer `x-trailer`), `ServerStream` (three
/// messages 30 ms apart), `ClientStream` (the number of messages received), `Bidi` (each
/// message back as it comes), `Fail` (NOT_FOUND with a message and a trailer of its own),
/// `Slow` (answers after 3 s), `Hold` (after 300 ms).
async fn echo(req: Request<Incoming>, seen: Arc<Seen>) -> Result<Response<Frames>, Infallible> {
    if req.uri().path() == "/grpc.health.v1.Health/Check" {
        seen.checks.fetch_add(1, Ordering::SeqCst);
        let status = if seen.not_serving.load(Ordering::SeqCst) { 2 } else { 1 };
        let frames = vec![Ok(Frame::data(message(&[0x08, status]))), Ok(trailers(0, &[]))];
        let mut res = Response::new(StreamBody::new(futures_util::stream::iter(frames).boxed()));
        res.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
        return Ok(res);
    }
    seen.requests.fetch_add(1, Ordering::SeqCst);
    seen.heads.lock().unwrap().push(req.headers().clone());
    let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
    let (tx, body) = channel_body();
    let mut incoming = req.into_body();
    tokio::spawn(async move {
        match method.as_str() {
            "Unary" | "Hold" => {
                let data = incoming.collect().await.map(http_body_util::Collected::to_bytes).unwrap_or_default();
                if method == "Hold" {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let _ = tx.send(Frame::data(data)).await;
                let _ = tx.send(trailers(0, &[("x-trailer", "kept")])).await;
            }
            "ServerStream" => {
                for i in 0..3u8 {
                    let _ = tx.send(Frame::data(message(&[b'a' + i]))).await;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                let _ = tx.send(trailers(0, &[])).await;
            }
            "ClientStream" => {
                let mut n = 0u8;
                while let Some(Ok(frame)) = incoming.frame().await {
                    if let Ok(data) = frame.into_data() {
                        n += u8::try_from(data.len() / 6).unwrap();
                    }
                }
                let _ = tx.send(Frame::data(message(&[n]))).await;
                let _ = tx.send(trailers(0, &[])).await;
            }
            "Bidi" => {
                while let Some(Ok(frame)) = incoming.frame().await {
                    if let Ok(data) = frame.into_data() {
                        let _ = tx.send(Frame::data(data)).await;
                    }
                }
                let _ = tx.send(trailers(0, &[])).await;
            }
            "Fail" => {
                let _ = tx.send(trailers(5, &[("grpc-message", "no%20such%20thing"), ("x-detail", "why")])).await;
            }
            _ => {
                // Slow: the watch sees whether the gateway gives up on the stream first.
                let mut watch = CancelWatch(Arc::clone(&seen), false);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(3)) => {}
                    () = tx.closed() => return,
                }
                watch.1 = true;
                let _ = tx.send(trailers(0, &[])).await;
            }
        }
    });
    let mut res = Response::new(body);
    res.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
    Ok(res)
}

/// The echo service over HTTP/2 with prior knowledge on 127.0.0.1; `goaway_after`: each
/// connection is shut down gracefully (GOAWAY) after that many requests.
async fn grpc_upstream(goaway_after: Option<usize>) -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let state = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            state.connections.fetch_add(1, Ordering::SeqCst);
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let served = Arc::new(AtomicUsize::new(0));
                let enough = Arc::new(tokio::sync::Notify::new());
                let (count, notify) = (Arc::clone(&served), Arc::clone(&enough));
                let svc = hyper::service::service_fn(move |req| {
                    if goaway_after.is_some_and(|n| count.fetch_add(1, Ordering::SeqCst) + 1 >= n) {
                        notify.notify_one();
                    }
                    echo(req, Arc::clone(&state))
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = enough.notified() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// An HTTP/2 (prior knowledge) connection to the gateway.
async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Frames> {
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    sender
}

fn call(addr: SocketAddr, path: &str, body: Frames) -> Request<Frames> {
    Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
}

/// A body with these messages, then its end.
fn messages(payloads: &[&[u8]]) -> Frames {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = payloads.iter().map(|p| Ok(Frame::data(message(p)))).collect();
    StreamBody::new(futures_util::stream::iter(frames).boxed())
}

/// Every data frame's bytes and the trailers of a response body.
async fn read_all(mut body: Incoming) -> (Vec<u8>, HeaderMap) {
    let (mut data, mut trailers) = (Vec::new(), HeaderMap::new());
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("a frame in time")
    {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().unwrap(),
        }
    }
    (data, trailers)
}

fn gateway_for(grpc: SocketAddr) -> Gateway {
    gateway_for_with(grpc, &[])
}

fn gateway_for_with(grpc: SocketAddr, env: &[(&str, &str)]) -> Gateway {
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dead = closed_port();
    gateway_with(
        &format!(
            "rate_limits:\n  one:\n    requests: 1\n    per: 1m\n\
         upstreams:\n  grpc:\n    endpoints: [{{ url: \"http://{grpc}\" }}]\n    protocol: h2c\n\
         \x20 plain:\n    endpoints: [{{ url: \"http://{plain}\" }}]\n    protocol: http1\n\
         \x20 dead:\n    endpoints: [{{ url: \"http://127.0.0.1:{dead}\" }}]\n    protocol: h2c\n\
         routes:\n  - name: echo\n    paths: [{{ path: /test.Echo/, type: prefix }}]\n    upstream: grpc\n    timeout: 5s\n\
         \x20 - name: old\n    paths: [{{ path: /test.Old/, type: prefix }}]\n    upstream: plain\n\
         \x20 - name: dead\n    paths: [{{ path: /test.Dead/, type: prefix }}]\n    upstream: dead\n\
         \x20 - name: limited\n    paths: [{{ path: /test.Limited/, type: prefix }}]\n    upstream: grpc\n    rate_limit: one\n"
        ),
        env,
    )
}

#[tokio::test]
async fn unary_and_streaming_calls_pass_with_their_trailers() {
    let (addr, seen) = grpc_upstream(None).await;
    let gw = gateway_for(addr);
    let mut client = h2_client(gw.addr).await;

    // Unary: the message back, the upstream's trailers unchanged.
    let res = client.send_request(call(gw.addr, "/test.Echo/Unary", messages(&[b"hello"]))).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    let (data, trailers) = read_all(res.into_body()).await;
    assert_eq!(data, message(b"hello"));
    assert_eq!(
        (&trailers["grpc-status"], &trailers["x-trailer"]),
        (&HeaderValue::from_static("0"), &HeaderValue::from_static("kept"))
    );
    let head = seen.heads.lock().unwrap().last().cloned().unwrap();
    assert_eq!(head["te"], "trailers", "gRPC servers look for it");
    let deadline = nexus_core_timeout(&head["grpc-timeout"]);
    assert!(deadline <= Duration::from_secs(5) && deadline > Duration::from_secs(4), "the route's 5 s: {deadline:?}");
    assert!(head.contains_key("x-forwarded-for") && head.contains_key("x-request-id"));

    // Server streaming: three messages, then the trailers.
    let res = client.send_request(call(gw.addr, "/test.Echo/ServerStream", messages(&[b"go"]))).await.unwrap();
    let (data, trailers) = read_all(res.into_body()).await;
    assert_eq!(data, [message(b"a"), message(b"b"), message(b"c")].concat());
    assert_eq!(trailers["grpc-status"], "0");

    // Client streaming: three messages sent over time, one answer.
    let (tx, body) = channel_body();
    let pending = client.send_request(call(gw.addr, "/test.Echo/ClientStream", body));
    let sender = tokio::spawn(async move {
        for p in [b"x", b"y", b"z"] {
            tx.send(Frame::data(message(p))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (data, trailers) = read_all(pending.await.unwrap().into_body()).await;
    sender.await.unwrap();
    assert_eq!((data, trailers["grpc-status"].clone()), (message(&[3]).to_vec(), HeaderValue::from_static("0")));

    // Bidi: each message comes back before the next is sent (nothing is buffered).
    let (tx, body) = channel_body();
    let mut res = client.send_request(call(gw.addr, "/test.Echo/Bidi", body)).await.unwrap().into_body();
    for p in [&b"one"[..], b"two", b"three"] {
        tx.send(Frame::data(message(p))).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 5 + p.len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), res.frame()).await.expect("the echo in time");
            got.extend_from_slice(&frame.unwrap().unwrap().into_data().unwrap());
        }
        assert_eq!(got, message(p));
    }
    drop(tx);
    let (_, trailers) = read_all(res).await;
    assert_eq!(trailers["grpc-status"], "0");

    // An upstream's error status and its own trailers arrive unchanged.
    let res = client.send_request(call(gw.addr, "/test.Echo/Fail", messages(&[b"?"]))).await.unwrap();
    assert_eq!(res.status(), 200);
    let (data, trailers) = read_all(res.into_body()).await;
    assert!(data.is_empty());
    assert_eq!(trailers["grpc-status"], "5");
    assert_eq!(trailers["grpc-message"], "no%20such%20thing");
    assert_eq!(trailers["x-detail"], "why");

    // Counted per route and status (the gateway's own answers too, below).
    let metrics = get(&gw.admin_url("/metrics")).await.2;
    for status in ["0", "5"] {
        let series = format!("nexus_grpc_responses_total{{route=\"echo\",grpc_status=\"{status}\"}}");
        assert!(metrics.contains(&series), "{series}: {metrics}");
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1, "one multiplexed connection");
}

/// tonic's codec for raw message bytes: tonic's client frames and unframes the messages,
/// the echo sees them as they are (no generated code needed).
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Self;
    type Decoder = Self;
    fn encoder(&mut self) -> Self {
        Self
    }
    fn decoder(&mut self) -> Self {
        Self
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[tokio::test]
async fn tonic_client_streaming_and_bidirectional_calls_stream_through() {
    let (addr, _) = grpc_upstream(None).await;
    let gw = gateway_for(addr);
    let channel = tonic::transport::Channel::from_shared(gw.url("")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);

    // Client streaming: three messages sent over time, one answer (the echo counts them).
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let sender = tokio::spawn(async move {
        for p in ["x", "y", "z"] {
            tx.send(Bytes::from(p)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let messages = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/test.Echo/ClientStream");
    let counted = grpc.client_streaming(tonic::Request::new(messages), path, RawCodec).await.expect("the call");
    sender.await.unwrap();
    assert_eq!(counted.into_inner(), Bytes::from_static(&[3]));

    // Bidirectional: each message comes back before the next is sent (nothing is buffered).
    let (tx, mut rx) = mpsc::channel::<Bytes>(1);
    let messages = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/test.Echo/Bidi");
    // (The call's response head comes once the first message is on its way.)
    let (call, ()) = tokio::join!(grpc.streaming(tonic::Request::new(messages), path, RawCodec), async {
        tx.send(Bytes::from_static(b"one")).await.unwrap();
    });
    let mut replies = call.expect("the call").into_inner();
    async fn next(replies: &mut tonic::Streaming<Bytes>) -> Result<Option<Bytes>, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(5), replies.message()).await.expect("the echo in time")
    }
    assert_eq!(next(&mut replies).await.unwrap(), Some(Bytes::from_static(b"one")));
    for p in ["two", "three"] {
        tx.send(Bytes::from(p)).await.unwrap();
        assert_eq!(next(&mut replies).await.unwrap(), Some(Bytes::from(p)));
    }
    drop(tx);
    assert_eq!(next(&mut replies).await.unwrap(), None, "the stream ends with status 0");
}

/// A `grpc-timeout` value as a duration.
fn nexus_core_timeout(v: &HeaderValue) -> Duration {
    let s = v.to_str().unwrap();
    let (n, unit) = s.split_at(s.len() - 1);
    let n: u64 = n.parse().unwrap();
    match unit {
        "m" => Duration::from_millis(n),
        "S" => Duration::from_secs(n),
        other => panic!("unexpected unit {other}"),
    }
}

#[tokio::test]
async fn deadlines_and_the_gateways_own_answers_are_grpc_statuses() {
    let (addr, seen) = grpc_upstream(None).await;
    let gw = gateway_for(addr);
    let mut client = h2_client(gw.addr).await;

    // The client's deadline is shorter than the upstream takes: DEADLINE_EXCEEDED when it
    // ends, and the upstream's stream is cancelled.
    let started = Instant::now();
    let mut req = call(gw.addr, "/test.Echo/Slow", messages(&[b"zzz"]));
    req.headers_mut().insert("grpc-timeout", HeaderValue::from_static("300m"));
    let res = client.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    // The upstream sent its head at once: the deadline covers the whole call, and the
    // stream ends with the status in its trailers.
    let (_, trailers) = read_all(res.into_body()).await;
    let took = started.elapsed();
    assert_eq!(trailers["grpc-status"], "4", "{trailers:?}");
    assert!(took < Duration::from_millis(1500), "the deadline was kept: {took:?}");
    let head = seen.heads.lock().unwrap().last().cloned().unwrap();
    assert!(nexus_core_timeout(&head["grpc-timeout"]) <= Duration::from_millis(300), "the deadline went upstream");
    assert!(
        eventually(5, || async { seen.cancelled.load(Ordering::SeqCst) }).await,
        "the upstream stream was cancelled"
    );

    // No route: UNIMPLEMENTED. An HTTP/1.1 upstream: UNAVAILABLE naming the mismatch.
    let res = client.send_request(call(gw.addr, "/nowhere/Call", messages(&[b""]))).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "12");
    let res = client.send_request(call(gw.addr, "/test.Old/Call", messages(&[b""]))).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "14");
    let message = res.headers()["grpc-message"].to_str().unwrap().to_owned();
    assert!(message.contains("needs HTTP/2"), "{message}");

    // An upstream that cannot be reached: UNAVAILABLE. Over a rate limit: RESOURCE_EXHAUSTED.
    let res = client.send_request(call(gw.addr, "/test.Dead/Call", messages(&[b""]))).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "14", "{:?}", res.headers());
    let res = client.send_request(call(gw.addr, "/test.Limited/Unary", messages(&[b"1"]))).await.unwrap();
    assert_eq!(read_all(res.into_body()).await.1["grpc-status"], "0");
    let res = client.send_request(call(gw.addr, "/test.Limited/Unary", messages(&[b"2"]))).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "8", "{:?}", res.headers());

    let metrics = get(&gw.admin_url("/metrics")).await.2;
    assert!(metrics.contains("nexus_grpc_responses_total{route=\"echo\",grpc_status=\"4\"} 1"), "{metrics}");
    assert!(metrics.contains("nexus_grpc_responses_total{route=\"limited\",grpc_status=\"8\"} 1"), "{metrics}");
    assert!(metrics.contains("nexus_grpc_responses_total{route=\"old\",grpc_status=\"14\"} 1"), "{metrics}");
}

#[tokio::test]
async fn two_hundred_concurrent_calls_share_two_connections_per_worker_and_a_goaway_loses_none() {
    let (addr, seen) = grpc_upstream(None).await;
    let gw = gateway_for_with(addr, &[("NEXUS_WORKERS", "2")]);
    let mut calls = Vec::new();
    for c in 0..4 {
        let client = h2_client(gw.addr).await;
        for i in 0..50 {
            let mut client = client.clone();
            let to = gw.addr;
            calls.push(tokio::spawn(async move {
                let payload = format!("{c}-{i}");
                let res =
                    client.send_request(call(to, "/test.Echo/Hold", messages(&[payload.as_bytes()]))).await.unwrap();
                let (data, trailers) = read_all(res.into_body()).await;
                (data == message(payload.as_bytes()), trailers.get("grpc-status").cloned())
            }));
        }
    }
    for call in calls {
        let (echoed, status) = call.await.unwrap();
        assert!(echoed);
        assert_eq!(status, Some(HeaderValue::from_static("0")));
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 200);
    // Each worker has its own connections to the endpoint, up to 100 streams each.
    let conns = seen.connections.load(Ordering::SeqCst);
    assert!((1..=4).contains(&conns), "200 streams over {conns} connections from 2 workers");

    // An upstream that sends GOAWAY after every 5 requests: every call still succeeds.
    let (addr, seen) = grpc_upstream(Some(5)).await;
    let gw = gateway_for(addr);
    let client = h2_client(gw.addr).await;
    // Ten calls at a time, so that calls are on their way while a GOAWAY is.
    for round in 0..6 {
        let calls: Vec<_> = (0..10)
            .map(|i| {
                let mut client = client.clone();
                let to = gw.addr;
                tokio::spawn(async move {
                    let res = client.send_request(call(to, "/test.Echo/Unary", messages(&[b"again"]))).await.unwrap();
                    let (data, trailers) = read_all(res.into_body()).await;
                    (i, data == message(b"again"), trailers.get("grpc-status").cloned())
                })
            })
            .collect();
        for c in calls {
            let (i, echoed, status) = c.await.unwrap();
            assert!(echoed && status == Some(HeaderValue::from_static("0")), "round {round} call {i}: {status:?}");
        }
    }
    assert!(seen.connections.load(Ordering::SeqCst) >= 6, "the upstream did close its connections");
}

/// An h2c upstream (the `h2` crate's server, which can refuse a stream) that resets every
/// stream in `refuse` (counting from 0) with `REFUSED_STREAM`, and answers the others, once
/// their body has ended, with that body echoed (the messages as they came) and status 0.
/// Returns its address and the count of streams it saw.
async fn refusing_upstream(refuse: &'static [usize]) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&streams);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else { return };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    if refuse.contains(&count.fetch_add(1, Ordering::SeqCst)) {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        let mut echo = Vec::new();
                        while let Some(Ok(data)) = body.data().await {
                            let _ = body.flow_control().release_capacity(data.len());
                            echo.extend_from_slice(&data);
                        }
                        let head = Response::builder().header("content-type", "application/grpc").body(()).unwrap();
                        let Ok(mut send) = respond.send_response(head, false) else { return };
                        let _ = send.send_data(Bytes::from(echo), false);
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        let _ = send.send_trailers(trailers);
                    });
                }
            });
        }
    });
    (addr, streams)
}

#[tokio::test]
async fn a_call_the_upstream_refused_with_refused_stream_is_sent_again_once() {
    let ok = Some(HeaderValue::from_static("0"));
    // Streams 0 and 2 are refused: the first call is sent again (stream 1) and answered; the
    // second call's two tries (2, refused; 3) succeed too.
    let (addr, streams) = refusing_upstream(&[0, 2]).await;
    let gw = gateway_for(addr);
    let mut client = h2_client(gw.addr).await;
    for expected_streams in [2, 4] {
        let res = client.send_request(call(gw.addr, "/test.Echo/Unary", messages(&[b"once"]))).await.unwrap();
        let (data, trailers) = read_all(res.into_body()).await;
        assert_eq!((data, trailers.get("grpc-status").cloned()), (message(b"once").to_vec(), ok.clone()));
        assert_eq!(streams.load(Ordering::SeqCst), expected_streams);
    }

    // A client-streaming call, refused while its body is still open: the copy sends what the
    // first try sent, then the rest as the client sends it. Nothing waited for the body.
    let (addr, streams) = refusing_upstream(&[0]).await;
    let gw = gateway_for(addr);
    let mut client = h2_client(gw.addr).await;
    let (tx, body) = channel_body();
    tx.send(Frame::data(message(b"first"))).await.unwrap();
    let pending = tokio::spawn(client.send_request(call(gw.addr, "/test.Echo/ClientStream", body)));
    assert!(eventually(5, || async { streams.load(Ordering::SeqCst) == 2 }).await, "sent again while the body is open");
    tx.send(Frame::data(message(b"second"))).await.unwrap();
    drop(tx);
    let res = pending.await.unwrap().unwrap();
    let (data, trailers) = read_all(res.into_body()).await;
    assert_eq!(data, [message(b"first"), message(b"second")].concat(), "every message, once each");
    assert_eq!(trailers.get("grpc-status").cloned(), ok);

    // Sent again once, not more: refused twice in a row, the call is UNAVAILABLE.
    let (addr, streams) = refusing_upstream(&[0, 1]).await;
    let gw = gateway_for(addr);
    let mut client = h2_client(gw.addr).await;
    let res = client.send_request(call(gw.addr, "/test.Echo/Unary", messages(&[b"twice"]))).await.unwrap();
    assert_eq!(res.headers().get("grpc-status"), Some(&HeaderValue::from_static("14")), "{res:?}");
    assert_eq!(streams.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn grpc_health_checks_take_a_not_serving_endpoint_out_and_bring_it_back() {
    let (a, seen_a) = grpc_upstream(None).await;
    let (b, seen_b) = grpc_upstream(None).await;
    seen_b.not_serving.store(true, Ordering::SeqCst);
    let gw = gateway(&format!(
        "upstreams:\n  grpc:\n    endpoints: [{{ url: \"http://{a}\" }}, {{ url: \"http://{b}\" }}]\n    protocol: h2c\n\
         \x20   health_check: {{ type: grpc, interval: 100ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1 }}\n\
         routes:\n  - name: echo\n    paths: [{{ path: /test.Echo/, type: prefix }}]\n    upstream: grpc\n"
    ));
    let gauge = format!("nexus_upstream_endpoint_healthy{{upstream=\"grpc\",endpoint=\"{b}\"}}");
    let out = || async { get(&gw.admin_url("/metrics")).await.2.contains(&format!("{gauge} 0")) };
    assert!(eventually(5, out).await, "NOT_SERVING takes the endpoint out");
    let mut client = h2_client(gw.addr).await;
    for _ in 0..10 {
        let res = client.send_request(call(gw.addr, "/test.Echo/Unary", messages(&[b"hi"]))).await.unwrap();
        assert_eq!(read_all(res.into_body()).await.1["grpc-status"], "0");
    }
    assert_eq!((seen_a.requests.load(Ordering::SeqCst), seen_b.requests.load(Ordering::SeqCst)), (10, 0));
    assert!(seen_b.checks.load(Ordering::SeqCst) >= 1);
    seen_b.not_serving.store(false, Ordering::SeqCst);
    let back = || async { get(&gw.admin_url("/metrics")).await.2.contains(&format!("{gauge} 1")) };
    assert!(eventually(5, back).await, "SERVING brings it back");
}
