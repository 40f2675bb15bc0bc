//! gRPC clients through the real binary (SPEC §9): every answer the gateway makes itself is a
//! trailers-only gRPC response a gRPC client can read (an HTTP/2 upstream's own answers:
//! `grpc_upstream.rs`).

mod support;

use http_body_util::BodyExt;
use support::*;

/// An HTTP/2 (prior knowledge) request of `content_type` to `path`: status, headers, body.
async fn h2(addr: std::net::SocketAddr, path: &str, content_type: &str) -> (u16, http::HeaderMap, bytes::Bytes) {
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(body(&b"\0\0\0\0\0"[..]))
        .unwrap();
    let res =
        tokio::time::timeout(std::time::Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    let (parts, body) = res.into_parts();
    (parts.status.as_u16(), parts.headers, body.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn the_gateways_own_answers_to_grpc_requests_are_trailers_only_grpc() {
    let up = upstream("app").await;
    let routes = "  - name: svc\n    paths: [{ path: /pkg.Svc/, type: prefix }]\n    upstream: app\n\
                  \x20 - name: locked\n    paths: [{ path: /pkg.Locked/, type: prefix }]\n    upstream: app\n    auth: main\n";
    let yaml = config(&[("app", up.url())], routes).replace(
        "upstreams:\n",
        "auth:\n  jwt:\n    main:\n      algorithms: [HS256]\n      secret_env: GRPC_SECRET\nupstreams:\n",
    );
    let gw = gateway_with(&yaml, &[("GRPC_SECRET", "a gRPC-test secret of at least thirty-two bytes")]);

    for (path, grpc_status, message) in
        [("/pkg.Other/Call", "12", "no route matches the request"), ("/pkg.Locked/Call", "16", "no token")]
    {
        let (status, headers, body) = h2(gw.addr, path, "application/grpc").await;
        assert_eq!(status, 200, "{path}: gRPC errors travel in grpc-status");
        assert_eq!(headers["content-type"], "application/grpc", "{path}");
        assert_eq!(headers["grpc-status"], grpc_status, "{path}");
        let got = headers["grpc-message"].to_str().unwrap();
        assert!(got.starts_with(message), "{path}: {got}");
        assert!(headers.contains_key("x-request-id"), "{path}");
        assert!(body.is_empty(), "{path}: trailers-only, no body: {body:?}");
    }
    // The same errors to a JSON client stay the JSON of SPEC §4.
    let (status, headers, _) = h2(gw.addr, "/pkg.Other/Call", "application/json").await;
    assert_eq!((status, headers.contains_key("grpc-status")), (404, false));
    // gRPC needs HTTP/2 to the upstream: an HTTP/1.1 one gets nothing, the client UNAVAILABLE
    // naming the mismatch (an HTTP/2 upstream's own answers: tests/grpc_upstream.rs).
    let (status, headers, _) = h2(gw.addr, "/pkg.Svc/Call", "application/grpc+proto").await;
    assert_eq!((status, headers["grpc-status"].to_str().unwrap()), (200, "14"));
    assert!(headers["grpc-message"].to_str().unwrap().contains("speaks HTTP/1.1"), "{headers:?}");
    assert_eq!(up.count(), 0, "no gRPC request reached the HTTP/1.1 upstream");
}
