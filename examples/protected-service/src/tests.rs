//! The service over real connections on loopback, each client from its own address
//! (127.0.0.1 and 127.0.0.2 are both this machine), as the rate limit sees them.

use super::*;
use http_body_util::{BodyExt, Empty};
use std::net::{IpAddr, SocketAddr};

const SECRET: &str = "a protected-service test secret of 32+ bytes";

/// The service on a free port, until the test ends.
async fn start(requests_per_minute: u32) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gate = ReadinessGate::new();
    let server = GracefulServer::new(gate.clone(), Shutdown::new()).with_signal(std::future::pending());
    tokio::spawn(server.serve(listener, app(gate, SECRET, requests_per_minute)));
    addr
}

/// GET `path` from `from` (a loopback address): status, headers, body.
async fn get(addr: SocketAddr, from: [u8; 4], path: &str, token: Option<&str>) -> (u16, http::HeaderMap, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "service.test");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = sender.send_request(req.body(Empty::<bytes::Bytes>::new()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, String::from_utf8_lossy(&body).into_owned())
}

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = serde_json::json!({ "sub": sub, "exp": exp });
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

#[tokio::test]
async fn each_client_ip_has_its_own_bucket() {
    let addr = start(2).await;
    for _ in 0..2 {
        assert_eq!(get(addr, [127, 0, 0, 1], "/", None).await.0, 200);
    }
    let (status, headers, body) = get(addr, [127, 0, 0, 1], "/", None).await;
    assert_eq!(status, 429, "{body}");
    assert!(headers.contains_key("retry-after") && body.contains("\"code\":\"rate_limited\""), "{body}");
    assert_eq!(get(addr, [127, 0, 0, 2], "/", None).await.0, 200, "another client, another bucket");
    // The probes are in front of the limit: a load balancer is never rate limited.
    assert_eq!(get(addr, [127, 0, 0, 1], "/readyz", None).await.0, 200);
}

#[tokio::test]
async fn me_needs_a_valid_token() {
    let addr = start(100).await;
    let (status, headers, _) = get(addr, [127, 0, 0, 1], "/me", None).await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    assert_eq!(get(addr, [127, 0, 0, 1], "/me", Some("not.a.token")).await.0, 401);
    let (status, _, body) = get(addr, [127, 0, 0, 1], "/me", Some(&token("alice"))).await;
    assert_eq!((status, body.as_str()), (200, "hello alice\n"));
}

#[tokio::test]
async fn the_breaker_answers_for_a_failing_dependency() {
    let addr = start(100).await;
    for _ in 0..3 {
        let (status, _, body) = get(addr, [127, 0, 0, 1], "/inventory", None).await;
        assert_eq!((status, body.as_str()), (503, "inventory is down\n"), "the dependency's own answer");
    }
    let (status, headers, body) = get(addr, [127, 0, 0, 1], "/inventory", None).await;
    assert_eq!(status, 503);
    assert!(body.contains("\"code\":\"upstream_unavailable\"") && headers.contains_key("retry-after"), "{body}");
}
