//! End-to-end: the real `nexus` binary between a real client and a real upstream.

mod support;

use http::{Request, StatusCode};
use support::*;

fn one_route(up: &Upstream, extra: &str) -> String {
    config(
        &[("app", up.url())],
        &format!("  - name: app\n    paths: [{{ path: /, type: prefix }}]\n    upstream: app\n{extra}"),
    )
}

#[tokio::test]
async fn routes_by_host_and_path_and_answers_404_with_the_json_body() {
    let (users, other) = (upstream("users").await, upstream("other").await);
    let gw = gateway(&config(
        &[("users", users.url()), ("other", other.url())],
        "  - name: user-api\n    host: api.example.com\n    paths: [{ path: /api/v1/users, type: prefix }]\n    upstream: users\n\
         \x20 - name: other\n    paths: [{ path: /other, type: exact }]\n    upstream: other\n",
    ));
    let req = Request::get(gw.url("/api/v1/users/123")).header("host", "api.example.com").body(body("")).unwrap();
    let (status, _, text) = send(req).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "users /api/v1/users/123"));
    let (status, _, text) = get(&gw.url("/other")).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "other /other"));

    let req = Request::get(gw.url("/api/v1/usersX"))
        .header("host", "api.example.com")
        .header("x-request-id", "trace-42")
        .body(body(""))
        .unwrap();
    let (status, headers, text) = send(req).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-request-id"], "trace-42");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "route_not_found");
    assert_eq!(v["error"]["status"], 404);
    assert_eq!(v["error"]["request_id"], "trace-42");
}

#[tokio::test]
async fn closed_upstream_port_is_502_and_slow_upstream_is_504() {
    let slow = upstream("slow").await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let gw = gateway(&config(
        &[("dead", dead), ("slow", slow.url())],
        "  - name: dead\n    paths: [{ path: /dead }]\n    upstream: dead\n\
         \x20 - name: slow\n    paths: [{ path: /slow }]\n    upstream: slow\n    timeout: 300ms\n",
    ));
    let (status, headers, text) = get(&gw.url("/dead")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "bad_gateway");
    assert_eq!(v["error"]["request_id"], headers["x-request-id"].to_str().unwrap());

    let started = tokio::time::Instant::now();
    let (status, _, text) = get(&gw.url("/slow/3000")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{text}");
    assert!(text.contains("gateway_timeout"));
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "timed out late: {:?}", started.elapsed());
    let (status, _, _) = get(&gw.url("/slow/10")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn body_over_the_limit_is_413_declared_or_streamed() {
    let up = upstream("app").await;
    let yaml = one_route(&up, "").replace("server:\n", "server:\n  limits: { max_request_body: 1KiB }\n");
    let gw = gateway(&yaml);
    let req = Request::post(gw.url("/upload")).body(body(vec![b'a'; 2048])).unwrap();
    let (status, _, text) = send(req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert!(text.contains("payload_too_large"));
    // Chunked (no Content-Length): caught while streaming.
    let chunks = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes::Bytes::from(vec![b'b'; 512])))),
    );
    let req = Request::post(gw.url("/upload"))
        .body(http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(chunks)))
        .unwrap();
    let (status, _, text) = send(req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    // Small chunks read whole on the lean path: refused before anything goes upstream (and
    // the connection closed, as for a declared length); at the limit they pass.
    let chunked = |sizes: &[usize]| {
        let chunks: String = sizes.iter().map(|n| format!("{n:x}\r\n{}\r\n", "d".repeat(*n))).collect();
        format!("POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n")
    };
    let res =
        raw(gw.addr, format!("{}GET /after HTTP/1.1\r\nHost: x\r\n\r\n", chunked(&[1000, 1000])).as_bytes()).await;
    assert!(res.starts_with("HTTP/1.1 413 ") && res.contains("payload_too_large"), "{res}");
    assert_eq!(res.matches("HTTP/1.1 ").count(), 1, "{res}");
    let res =
        raw(gw.addr, chunked(&[1000, 24]).replace("chunked\r\n", "chunked\r\nConnection: close\r\n").as_bytes()).await;
    assert!(res.starts_with("HTTP/1.1 200 OK\r\n") && res.ends_with("\r\n\r\n1024"), "{res}");
    // Exactly at the limit passes.
    let req = Request::post(gw.url("/upload")).body(body(vec![b'c'; 1024])).unwrap();
    let (status, _, text) = send(req).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "1024"));
}

#[tokio::test]
async fn headers_over_the_limit_are_431() {
    let up = upstream("app").await;
    let yaml = one_route(&up, "").replace("server:\n", "server:\n  limits: { max_header_bytes: 2KiB }\n");
    let gw = gateway(&yaml);
    let req = Request::get(gw.url("/")).header("x-big", "v".repeat(2100)).body(body("")).unwrap();
    let (status, headers, text) = send(req).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{text}");
    assert_eq!(headers["content-type"], "application/json");
    assert!(text.contains("headers_too_large"));
    let req = Request::get(gw.url("/")).header("x-big", "v".repeat(1500)).body(body("")).unwrap();
    assert_eq!(send(req).await.0, StatusCode::OK);
    assert_eq!(up.count(), 1, "the rejected request never reached the upstream");
}

#[tokio::test]
async fn forwarded_headers_are_set_and_hop_by_hop_headers_removed_both_ways() {
    let up = upstream("app").await;
    let gw = gateway(&one_route(&up, ""));
    let req = Request::get(gw.url("/headers?x=1"))
        .header("host", "shop.example.com:8443")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("proxy-authorization", "Basic Zm9v")
        .header("te", "trailers")
        .header("x-request-id", "bad id")
        .body(body(""))
        .unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.uri, "/headers?x=1");
    assert_eq!(seen.headers["host"], "shop.example.com:8443", "Host passes as the client sent it");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example.com:8443");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http", "untrusted peer's proto is overwritten");
    for h in ["x-secret", "proxy-authorization", "te"] {
        assert!(!seen.headers.contains_key(h), "{h} reached the upstream");
    }
    let id = seen.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "invalid client id replaced by a UUID");
    assert_eq!(headers["x-request-id"], id.as_str(), "the same id goes back to the client");
    assert_eq!(headers["x-upstream"], "app");
    for h in ["x-hop", "keep-alive"] {
        assert!(!headers.contains_key(h), "{h} reached the client");
    }
}

#[tokio::test]
async fn trusted_proxy_keeps_forwarded_proto_and_host() {
    let up = upstream("app").await;
    let yaml = one_route(&up, "").replace("server:\n", "server:\n  trusted_proxies: [127.0.0.0/8]\n");
    let gw = gateway(&yaml);
    let req = Request::get(gw.url("/"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "public.example.com")
        .body(body(""))
        .unwrap();
    assert_eq!(send(req).await.0, StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "public.example.com");
}

#[tokio::test]
async fn paths_are_normalised_and_prefixes_stripped() {
    let up = upstream("app").await;
    let gw = gateway(&config(
        &[("app", up.url())],
        "  - name: api\n    paths: [{ path: /api/, type: prefix }]\n    strip_prefix: true\n    upstream: app\n",
    ));
    let (status, _, text) = get(&gw.url("/api//v1/./users/../items/%7Ebob?q=1")).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "app /v1/items/~bob"));
    assert_eq!(up.last().uri, "/v1/items/~bob?q=1");
    let raw_res = raw(gw.addr, b"GET /api/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(raw_res.starts_with("HTTP/1.1 400"), "{raw_res}");
    // A target the URI grammar refuses: the JSON 400 with a request id, and the connection closes
    // (raw() reads until the close).
    let raw_res = raw(gw.addr, b"GET /api/a<b HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(raw_res.starts_with("HTTP/1.1 400"), "{raw_res}");
    assert!(raw_res.contains("\"code\":\"bad_request\"") && raw_res.contains("x-request-id: "), "{raw_res}");
    assert!(raw_res.contains("connection: close\r\n"), "{raw_res}");
}

#[tokio::test]
async fn conflicting_content_length_and_transfer_encoding_is_400_and_closes() {
    let up = upstream("app").await;
    let gw = gateway(&one_route(&up, ""));
    let res = raw(
        gw.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    assert!(!res.contains("HTTP/1.1 200"), "the smuggled request was served: {res}");
    assert_eq!(up.count(), 0);
    // Not HTTP at all, or a field name with a space: SPEC §4's JSON 400 with a request id, and
    // the connection closes (raw() reads until the close).
    for malformed in [&b"NOT HTTP AT ALL\r\n\r\n"[..], b"GET /a HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n"] {
        let res = raw(gw.addr, malformed).await;
        assert!(res.starts_with("HTTP/1.1 400"), "{res}");
        assert!(res.contains("\"code\":\"bad_request\"") && res.contains("x-request-id: "), "{res}");
        assert!(res.contains("connection: close\r\n"), "{res}");
    }
}

#[tokio::test]
async fn large_bodies_stream_both_ways_in_bounded_memory() {
    let up = upstream("app").await;
    let yaml = one_route(&up, "").replace("server:\n", "server:\n  limits: { max_request_body: 1GiB }\n");
    let gw = gateway(&yaml);
    const SIZE: u64 = 256 * 1024 * 1024;
    // Download.
    let res = client().request(Request::get(gw.url(&format!("/big/{SIZE}"))).body(body("")).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut n = 0u64;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        n += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(n, SIZE);
    // Upload, streamed from a generator.
    let chunk = bytes::Bytes::from(vec![b'u'; 64 * 1024]);
    let frames = futures_util::stream::iter(
        (0..SIZE / (64 * 1024)).map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
    );
    let req = Request::post(gw.url("/upload"))
        .body(http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(frames)))
        .unwrap();
    let (status, _, text) = send(req).await;
    assert_eq!((status, text), (StatusCode::OK, SIZE.to_string()));
    let rss = gw.peak_rss_kib();
    assert!(rss < 64 * 1024, "peak RSS {rss} KiB after moving 2 x 256 MiB: bodies are being buffered");
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = upstream("app").await;
    let gw = gateway(&one_route(&up, ""));
    let (mut ws, res) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let echo = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), format!("ping {i}"));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn http2_cleartext_clients_are_served() {
    let up = upstream("app").await;
    let gw = gateway(&one_route(&up, ""));
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    let res = h2.request(Request::get(gw.url("/h2")).body(body("")).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), http::Version::HTTP_2);
    let seen = up.last();
    assert_eq!(seen.uri, "/h2");
    assert_eq!(seen.headers["host"], gw.addr.to_string().as_str(), ":authority becomes Host upstream");
    // Bodies reach the HTTP/1.1 upstream whole: a small one (received whole, sent with the
    // head) and one too large for that (streamed).
    for size in [7, 100 * 1024] {
        let sent = "h".repeat(size);
        let res = h2.request(Request::post(gw.url("/echo")).body(body(sent.clone())).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{size} bytes");
        assert_eq!(res.headers()["x-framing"], format!("content-length={size}").as_str());
        let got = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
        assert!(got == sent.as_bytes(), "{size} bytes: the body differs");
    }
}

#[tokio::test]
async fn method_not_allowed_carries_allow_and_probes_win_over_routes() {
    let up = upstream("app").await;
    let gw = gateway(&one_route(&up, "    methods: [GET]\n"));
    let (status, headers, text) = send(Request::delete(gw.url("/x")).body(body("")).unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{text}");
    assert_eq!(headers["allow"], "GET, HEAD");
    assert!(text.contains("method_not_allowed"));
    let (status, _, text) = get(&gw.url("/healthz")).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, r#"{"status":"alive"}"#));
    let (status, _, text) = get(&gw.url("/readyz")).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, r#"{"status":"ready"}"#));
    let (status, _, _) = get(&format!("http://{}/readyz", gw.admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(up.count(), 0, "probes never reach the upstream");
}

#[tokio::test]
async fn each_worker_reuses_its_own_upstream_connections() {
    let up = upstream("app").await;
    let gw = gateway_with(&one_route(&up, ""), &[("NEXUS_WORKERS", "3")]);
    // Every `get` opens a new client connection, which any of the workers may accept.
    for i in 0..60 {
        assert_eq!(get(&gw.url(&format!("/n{i}"))).await.0, StatusCode::OK);
    }
    assert_eq!(up.count(), 60);
    let conns = up.connections();
    assert!((1..=3).contains(&conns), "sequential requests opened {conns} upstream connections with 3 workers");
}

#[test]
fn a_bad_worker_count_is_refused() {
    for bad in ["-1", "many", "5000"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nexus.yaml");
        std::fs::write(
            &path,
            "upstreams:\n  app:\n    endpoints: [{ url: \"http://127.0.0.1:9\" }]\n\
             routes:\n  - name: app\n    paths: [{ path: / }]\n    upstream: app\n",
        )
        .unwrap();
        let out = std::process::Command::new(nexus_bin())
            .arg("--config")
            .arg(&path)
            .env("NEXUS_WORKERS", bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "NEXUS_WORKERS={bad}: {err}");
        assert!(err.contains("NEXUS_WORKERS") && err.contains(bad), "{err}");
    }
}

#[tokio::test]
async fn weighted_round_robin_spreads_over_endpoints() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let yaml = format!(
        "upstreams:\n  app:\n    endpoints: [{{ url: \"{}\", weight: 3 }}, {{ url: \"{}\", weight: 1 }}]\n\
         routes:\n  - name: app\n    paths: [{{ path: / }}]\n    upstream: app\n",
        a.url(),
        b.url()
    );
    let gw = gateway(&yaml);
    for _ in 0..40 {
        assert_eq!(get(&gw.url("/")).await.0, StatusCode::OK);
    }
    assert_eq!((a.count(), b.count()), (30, 10));
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = upstream("app").await;
    // One worker: every request comes through the same pool (pools are per worker).
    let gw = gateway_with(&one_route(&up, ""), &[("NEXUS_WORKERS", "1")]);
    for i in 0..30 {
        let (status, _, text) = get(&gw.url(&format!("/n{i}"))).await;
        assert_eq!((status, text), (StatusCode::OK, format!("app /n{i}")));
    }
    // Streamed and empty bodies give their connection back too.
    assert_eq!(get(&gw.url("/big/100000")).await.2.len(), 100_000);
    let (status, _, _) = send(Request::head(gw.url("/head")).body(body("")).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(get(&gw.url("/status/204")).await.0, StatusCode::NO_CONTENT);
    assert_eq!(get(&gw.url("/last")).await.0, StatusCode::OK);
    assert_eq!(up.count(), 34);
    assert_eq!(up.connections(), 1, "sequential requests should share one upstream connection");
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_an_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that answers one request with keep-alive, then closes the idle
    // connection 20 ms later (a short keep-alive timeout, as Node.js has).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nonce").await;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            });
        }
    });
    let gw = gateway(&config(
        &[("app", format!("http://{addr}"))],
        "  - name: app\n    paths: [{ path: / }]\n    upstream: app\n",
    ));
    for _ in 0..10 {
        let (status, _, text) = get(&gw.url("/")).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "once"));
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 10, "each request needed a fresh connection");
}

#[tokio::test]
async fn max_concurrent_requests_answers_503_at_once_when_full() {
    let up = upstream("app").await;
    let yaml = format!(
        "upstreams:\n  app:\n    endpoints: [{{ url: \"{}\" }}]\n    max_concurrent_requests: 1\n\
         routes:\n  - name: app\n    paths: [{{ path: / }}]\n    upstream: app\n",
        up.url()
    );
    let gw = gateway(&yaml);
    let slow_url = gw.url("/slow/800");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    assert!(eventually(5, || async { up.count() == 1 }).await, "the slow request is in flight");
    let started = tokio::time::Instant::now();
    let (status, headers, text) = get(&gw.url("/fast")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("upstream_unavailable"), "{text}");
    assert_eq!(headers["retry-after"], "1");
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "answered at once, not queued");
    assert_eq!(slow.await.unwrap().0, StatusCode::OK);
    assert_eq!(get(&gw.url("/fast")).await.0, StatusCode::OK, "the slot is free again");
}

#[tokio::test]
async fn one_connection_serves_pipelined_requests_with_and_without_bodies_in_order() {
    let up = upstream("app").await;
    let gw = gateway(&one_route(&up, ""));
    // Body-less requests, then one with a (small) body, then a streamed (chunked) answer and
    // the client's close.
    let res = raw(
        gw.addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /big/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let answers: Vec<&str> = res.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 4, "{res}");
    assert!(answers.iter().all(|a| a.starts_with("200 OK\r\n")), "{res}");
    assert!(answers[0].ends_with("\r\n\r\napp /a"), "{res}");
    assert!(answers[1].contains("content-length: 6\r\n") && answers[1].ends_with("\r\n\r\n"), "HEAD: no body\n{res}");
    assert!(answers[2].ends_with("\r\n\r\n5"), "{res}");
    assert!(answers[3].contains("transfer-encoding: chunked\r\n"), "{res}");
    assert!(answers[3].contains("connection: close\r\n"), "{res}");
    assert!(answers[3].to_ascii_lowercase().ends_with("\r\n\r\na\r\nxxxxxxxxxx\r\n0\r\n\r\n"), "{res}");
    for a in &answers {
        assert!(a.contains("\r\ndate: ") && a.contains("\r\nx-request-id: "), "{a}");
    }
    let uris: Vec<String> = up.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(uris, ["/a", "/b", "/upload", "/big/10"]);
    // The same streamed answer on a connection that never carried a body.
    let res = raw(gw.addr, b"GET /big/70000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let (head, chunks) = res.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("transfer-encoding: chunked") && head.contains("connection: close"), "{head}");
    let mut rest = chunks;
    let mut total = 0;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            assert_eq!(after, "\r\n");
            break;
        }
        assert!(after[..size].bytes().all(|b| b == b'x') && &after[size..size + 2] == "\r\n");
        total += size;
        rest = &after[size + 2..];
    }
    assert_eq!(total, 70000);
}

#[tokio::test]
async fn small_bodies_arrive_whole_in_order_and_a_slow_one_still_arrives() {
    let up = upstream("app").await;
    let gw = gateway(&one_route(&up, "").replace("server:\n", "server:\n  limits: { header_read_timeout: 1s }\n"));
    // Pipelined on one connection: bodies of 11 bytes, none, and exactly 64 KiB (the most the
    // server reads whole), between requests without one.
    let big = "b".repeat(64 * 1024);
    let pipelined = format!(
        "GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world\
         PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n\
         POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{big}\
         GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        big.len()
    );
    let res = raw(gw.addr, pipelined.as_bytes()).await;
    let answers: Vec<&str> = res.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 5, "{}", &res[..res.len().min(2000)]);
    assert!(answers.iter().all(|a| a.starts_with("200 OK\r\n")), "{}", &res[..res.len().min(2000)]);
    assert!(answers[0].ends_with("\r\n\r\napp /a"));
    assert!(answers[1].contains("x-framing: content-length=11\r\n") && answers[1].ends_with("\r\n\r\nhello world"));
    assert!(answers[2].contains("content-length: 0\r\n") && answers[2].ends_with("\r\n\r\n"), "{}", answers[2]);
    assert!(answers[3].contains(&format!("x-framing: content-length={}\r\n", big.len())));
    assert!(answers[3].ends_with(&format!("\r\n\r\n{big}")), "the 64 KiB body differs");
    assert!(answers[4].ends_with("\r\n\r\napp /b"));
    assert_eq!(up.connections(), 1, "one upstream connection carried them all");

    // A body that comes in pieces: within the head's deadline, and after it (the
    // connection goes on with hyper streaming the rest, instead of being closed).
    for (pause, what) in [(200, "within the deadline"), (1_500, "past the deadline")] {
        let first = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nfirst";
        body_in_two_parts_then_a_get(gw.addr, first, pause, b" half", what).await;
    }
}

/// Send `first`, wait `pause_ms`, send `rest` and a `GET /c` that closes: the two answers are
/// `first half` (the body echoed whole) and the GET's.
async fn body_in_two_parts_then_a_get(
    addr: std::net::SocketAddr,
    first: &[u8],
    pause_ms: u64,
    rest: &[u8],
    what: &str,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(first).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
    s.write_all(rest).await.unwrap();
    s.write_all(b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(8), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let out = String::from_utf8_lossy(&out);
    let answers: Vec<&str> = out.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 2, "{what}: {out}");
    assert!(answers[0].starts_with("200 OK\r\n") && answers[0].ends_with("\r\n\r\nfirst half"), "{what}: {out}");
    assert!(answers[1].ends_with("\r\n\r\napp /c"), "{what}: {out}");
}

#[tokio::test]
async fn small_chunked_bodies_arrive_whole_with_a_length_and_other_chunked_ones_still_stream() {
    let up = upstream("app").await;
    let gw = gateway(&one_route(&up, "").replace("server:\n", "server:\n  limits: { header_read_timeout: 1s }\n"));
    // Pipelined on one connection: one chunk, three chunks, none; each goes upstream as its
    // data with a `Content-Length`, all on one upstream connection.
    let pipelined = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n\
         PUT /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nA\r\n0123456789\r\n1\r\n!\r\n0\r\n\r\n\
         POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
         GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let res = raw(gw.addr, pipelined.as_bytes()).await;
    let answers: Vec<&str> = res.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 4, "{res}");
    assert!(answers.iter().all(|a| a.starts_with("200 OK\r\n")), "{res}");
    assert!(answers[0].contains("x-framing: content-length=11\r\n") && answers[0].ends_with("\r\n\r\nhello world"));
    assert!(answers[1].contains("x-framing: content-length=14\r\n") && answers[1].ends_with("\r\n\r\nabc0123456789!"));
    assert!(answers[2].contains("x-framing: content-length=0\r\n"), "{}", answers[2]);
    assert!(answers[3].ends_with("\r\n\r\napp /b"));
    assert_eq!(up.connections(), 1, "one upstream connection carried them all");

    // Chunks the lean path does not read (an extension, a trailer field, a body that is
    // still arriving at the head's deadline) are streamed by hyper, as chunks.
    let other = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n\
         GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let res = raw(gw.addr, other.as_bytes()).await;
    let answers: Vec<&str> = res.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 2, "{res}");
    assert!(answers[0].contains("x-framing: transfer-encoding=chunked\r\n") && answers[0].ends_with("\r\n\r\nhello"));
    assert!(answers[1].ends_with("\r\n\r\napp /c"), "{res}");
    let first = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n";
    body_in_two_parts_then_a_get(gw.addr, first, 1_500, b"5\r\n half\r\n0\r\n\r\n", "chunks past the deadline").await;
}

#[tokio::test]
async fn http10_clients_keep_the_connection_they_ask_for_and_read_a_streamed_answer_to_the_close() {
    let up = upstream("app").await;
    let gw = gateway(&one_route(&up, ""));
    // As `ab -k` sends them, pipelined on one connection: a GET and a small POST asking for
    // keep-alive, then a streamed answer (an HTTP/1.0 client reads no chunks: the body is sent
    // as it is and ends with the connection), so the last request is never read.
    let res = raw(
        gw.addr,
        b"GET /a HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n\
          POST /echo HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\nContent-Length: 5\r\n\r\nhello\
          GET /big/10 HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n\
          GET /never HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n",
    )
    .await;
    let answers: Vec<&str> = res.split("HTTP/1.0 ").skip(1).collect();
    assert_eq!(answers.len(), 3, "{res}");
    assert!(answers.iter().all(|a| a.starts_with("200 OK\r\n") && a.contains("\r\nx-request-id: ")), "{res}");
    assert!(answers[0].contains("\r\nconnection: keep-alive\r\n") && answers[0].ends_with("\r\n\r\napp /a"), "{res}");
    assert!(answers[1].contains("\r\nconnection: keep-alive\r\n") && answers[1].ends_with("\r\n\r\nhello"), "{res}");
    assert!(answers[1].contains("x-framing: content-length=5\r\n"), "{res}");
    assert!(answers[2].contains("\r\nconnection: close\r\n") && !answers[2].contains("transfer-encoding"), "{res}");
    assert!(answers[2].ends_with("\r\n\r\nxxxxxxxxxx"), "{res}");
    let seen = up.seen();
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(uris, ["/a", "/echo", "/big/10"]);
    // Upstream, they are HTTP/1.1 requests on one kept connection; the client's
    // `Connection` is hop-by-hop and stays behind.
    assert!(seen.iter().all(|s| s.version == http::Version::HTTP_11 && !s.headers.contains_key("connection")));
    assert_eq!(up.connections(), 1);

    // Without `Connection: keep-alive`, one answer and the close; without `Host`, the same
    // (HTTP/1.0 does not need one), answered by the route that takes any host.
    for head in
        [&b"GET /one HTTP/1.0\r\nHost: x\r\n\r\nGET /two HTTP/1.0\r\nHost: x\r\n\r\n"[..], b"GET /one HTTP/1.0\r\n\r\n"]
    {
        let res = raw(gw.addr, head).await;
        assert_eq!(res.matches("HTTP/1.0 200 OK\r\n").count(), 1, "{res}");
        assert!(res.ends_with("\r\n\r\napp /one"), "{res}");
    }
}

#[tokio::test]
async fn a_stalled_or_idle_connection_is_closed_after_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream("app").await;
    let gw = gateway(&one_route(&up, "").replace("server:\n", "server:\n  limits: { header_read_timeout: 1s }\n"));
    for (what, bytes) in [
        ("a head that never ends", &b"GET /a HTTP/1.1\r\nHost: x\r\n"[..]),
        ("a keep-alive connection left idle", b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"),
    ] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut out = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(8), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "{what}: still open after 8 s");
        let waited = started.elapsed();
        assert!(waited >= std::time::Duration::from_millis(900), "{what}: closed after {waited:?}, before the timeout");
    }
}
