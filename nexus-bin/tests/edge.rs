//! The edge rules of SPEC §10 through the real binary: what the client gets, and what
//! reaches (or never reaches) the upstream.

mod support;

use jsonwebtoken::{EncodingKey, Header, encode};
use support::*;

const SECRET: &str = "an edge-test secret of at least thirty-two bytes";

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = serde_json::json!({ "sub": sub, "exp": exp });
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// `internal` only for `internal.example.com` (and `*.example.com` for `wild`), `public` for
/// the rest; `/me` needs a token and forwards its `sub` as `X-User-Id`.
fn edge_config(internal: &Upstream, wild: &Upstream, public: &Upstream) -> String {
    format!(
        "server:\n  shutdown: {{ drain_delay: 0s, grace_period: 2s }}\n\
         auth:\n  jwt:\n    main:\n      algorithms: [HS256]\n      secret_env: EDGE_SECRET\n\
         \x20     forward_claims: {{ sub: X-User-Id }}\n\
         upstreams:\n  internal:\n    endpoints: [{{ url: \"{}\" }}]\n  wild:\n    endpoints: [{{ url: \"{}\" }}]\n\
         \x20 public:\n    endpoints: [{{ url: \"{}\" }}]\n\
         routes:\n  - name: internal\n    host: internal.example.com\n    paths: [{{ path: /, type: prefix }}]\n    upstream: internal\n\
         \x20 - name: wild\n    host: \"*.example.com\"\n    paths: [{{ path: /, type: prefix }}]\n    upstream: wild\n\
         \x20 - name: me\n    paths: [{{ path: /me }}]\n    upstream: public\n    auth: main\n\
         \x20 - name: public\n    paths: [{{ path: /, type: prefix }}]\n    upstream: public\n",
        internal.url(),
        wild.url(),
        public.url()
    )
}

fn status_of(response: &str) -> &str {
    response.get(9..12).unwrap_or("")
}

#[tokio::test]
async fn host_and_authority_decide_the_route_and_are_what_is_forwarded() {
    let (internal, wild, public) = (upstream("internal").await, upstream("wild").await, upstream("public").await);
    let gw = gateway_with(&edge_config(&internal, &wild, &public), &[("EDGE_SECRET", SECRET)]);

    // Refused before routing: no Host, two Hosts, a Host that is not an authority. Both the
    // lean path (no body) and hyper's (a body) answer the JSON 400 and close.
    for (what, request) in [
        ("no Host", &b"GET /x HTTP/1.1\r\n\r\n"[..]),
        ("no Host, with a body", b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"),
        ("two Hosts", b"GET /x HTTP/1.1\r\nHost: internal.example.com\r\nHost: public.test\r\n\r\n"),
        ("a path in Host", b"GET /x HTTP/1.1\r\nHost: evil.com/.example.com\r\n\r\n"),
        ("userinfo in Host", b"GET /x HTTP/1.1\r\nHost: user@internal.example.com\r\n\r\n"),
        ("a stray % in the path", b"GET /%%36%31dmin HTTP/1.1\r\nHost: public.test\r\n\r\n"),
    ] {
        let res = raw(gw.addr, request).await;
        assert_eq!(status_of(&res), "400", "{what}: {res}");
        assert!(res.contains("\"code\":\"bad_request\"") && res.contains("x-request-id: "), "{what}: {res}");
    }
    assert_eq!(internal.count() + wild.count() + public.count(), 0, "nothing reached an upstream");

    // The absolute-form target's authority wins over Host, and is what goes upstream.
    let res =
        raw(gw.addr, b"GET http://public.test/x HTTP/1.1\r\nHost: internal.example.com\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(status_of(&res), "200", "{res}");
    assert_eq!(internal.count(), 0, "the host-restricted route is not reachable through Host alone");
    let seen = public.last();
    assert_eq!(seen.uri, "/x");
    assert_eq!(seen.headers["host"], "public.test");
    assert_eq!(seen.headers["x-forwarded-host"], "public.test");

    // And the other way round: an absolute-form target naming the internal host routes there.
    let res =
        raw(gw.addr, b"GET http://internal.example.com/y HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(status_of(&res), "200", "{res}");
    assert_eq!(internal.last().headers["host"], "internal.example.com");
}

#[tokio::test]
async fn gateway_owned_headers_cannot_be_spoofed_or_removed_by_the_client() {
    let (internal, wild, public) = (upstream("internal").await, upstream("wild").await, upstream("public").await);
    let gw = gateway_with(&edge_config(&internal, &wild, &public), &[("EDGE_SECRET", SECRET)]);
    let request = format!(
        "GET /me HTTP/1.1\r\nHost: public.test\r\nAuthorization: Bearer {}\r\nX-User-Id: admin\r\nX_User_Id: admin\r\n\
         X_Forwarded_For: 10.9.9.9\r\nX_Request_Id: spoofed\r\nConnection: X-User-Id, X-Request-Id, close\r\n\r\n",
        token("alice")
    );
    let res = raw(gw.addr, request.as_bytes()).await;
    assert_eq!(status_of(&res), "200", "{res}");
    let seen = public.last();
    let users: Vec<_> = seen.headers.get_all("x-user-id").iter().collect();
    assert_eq!(users, ["alice"], "the verified claim, once, in spite of the client's spellings and Connection");
    for gone in ["x_user_id", "x_forwarded_for", "x_request_id"] {
        assert!(!seen.headers.contains_key(gone), "{gone} reached the upstream");
    }
    assert!(seen.headers.contains_key("x-request-id"), "Connection cannot remove the gateway's request id");

    // A route without auth strips the claim header too (every route, every spelling).
    let res =
        raw(gw.addr, b"GET /open HTTP/1.1\r\nHost: public.test\r\nX_User_Id: admin\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&res), "200", "{res}");
    let seen = public.last();
    assert!(!seen.headers.contains_key("x-user-id") && !seen.headers.contains_key("x_user_id"), "{:?}", seen.headers);

    // Two Authorization fields: refused, nothing forwarded.
    let before = public.count();
    let request = format!(
        "GET /me HTTP/1.1\r\nHost: public.test\r\nAuthorization: Bearer {}\r\nAuthorization: Bearer x\r\n\r\n",
        token("alice")
    );
    let res = raw(gw.addr, request.as_bytes()).await;
    assert_eq!(status_of(&res), "400", "{res}");
    assert_eq!(public.count(), before);
}

#[tokio::test]
async fn connect_unknown_codings_and_h2c_upgrades_never_reach_the_upstream_as_such() {
    let (internal, wild, public) = (upstream("internal").await, upstream("wild").await, upstream("public").await);
    let gw = gateway_with(&edge_config(&internal, &wild, &public), &[("EDGE_SECRET", SECRET)]);

    let res =
        raw(gw.addr, b"CONNECT internal.example.com:443 HTTP/1.1\r\nHost: internal.example.com:443\r\n\r\n").await;
    assert_eq!(status_of(&res), "405", "{res}");
    assert!(res.contains("\"code\":\"method_not_allowed\""), "{res}");
    assert!(res.contains("allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH\r\n"), "{res}");

    let res = raw(
        gw.addr,
        b"POST /x HTTP/1.1\r\nHost: public.test\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&res), "501", "{res}");
    assert!(res.contains("\"code\":\"not_implemented\"") && res.contains("x-request-id: "), "{res}");
    // Codings that do not end in chunked cannot frame a request body at all: refused.
    let res = raw(gw.addr, b"POST /x HTTP/1.1\r\nHost: public.test\r\nTransfer-Encoding: gzip\r\n\r\nxx").await;
    assert_eq!(status_of(&res), "501", "{res}");
    assert!(res.contains("\"code\":\"not_implemented\"") && res.contains("x-request-id: "), "{res}");
    assert_eq!(internal.count() + wild.count() + public.count(), 0);

    // An h2c upgrade: the request goes on without it, as plain HTTP/1.1.
    let res = raw(
        gw.addr,
        b"GET /plain HTTP/1.1\r\nHost: public.test\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&res), "200", "{res}");
    let seen = public.last();
    assert_eq!(seen.uri, "/plain");
    for gone in ["upgrade", "http2-settings"] {
        assert!(!seen.headers.contains_key(gone), "{gone} reached the upstream");
    }
}

#[tokio::test]
async fn framing_is_checked_on_every_request_of_a_connection() {
    let (internal, wild, public) = (upstream("internal").await, upstream("wild").await, upstream("public").await);
    let gw = gateway_with(&edge_config(&internal, &wild, &public), &[("EDGE_SECRET", SECRET)]);
    // The first request has a body (the connection is hyper's from there), the second is
    // plain, the third carries both framings: it is refused and the connection closes, so
    // the "request" hidden in its body never becomes one.
    let res = raw(
        gw.addr,
        b"POST /one HTTP/1.1\r\nHost: public.test\r\nContent-Length: 5\r\n\r\nhello\
          GET /two HTTP/1.1\r\nHost: public.test\r\n\r\n\
          POST /three HTTP/1.1\r\nHost: public.test\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: public.test\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = res.match_indices("HTTP/1.1 ").map(|(i, _)| &res[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "200", "400"], "{res}");
    assert!(res.contains("conflicting Content-Length and Transfer-Encoding"), "{res}");
    let paths: Vec<String> = public.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(paths, ["/one", "/two"], "neither the conflicting request nor what it hid reached the upstream");
}

#[tokio::test]
async fn heads_hyper_would_refuse_get_the_json_error_on_every_request_of_a_connection() {
    let (internal, wild, public) = (upstream("internal").await, upstream("wild").await, upstream("public").await);
    let gw = gateway_with(&edge_config(&internal, &wild, &public), &[("EDGE_SECRET", SECRET)]);
    let many = format!("GET /many HTTP/1.1\r\nHost: public.test\r\n{}\r\n", "X-F: 1\r\n".repeat(120));
    let mut huge = b"GET /huge HTTP/1.1\r\nHost: public.test\r\nX-Big: ".to_vec();
    huge.resize(420_000, b'v');
    for (what, bad, status, code) in [
        ("too many fields", many.as_bytes(), "431", "headers_too_large"),
        ("a head larger than the server reads", &huge[..], "431", "headers_too_large"),
        ("a malformed head", b"GET /bad HTTP/1.1\r\nHost: public.test\r\nBad Name: x\r\n\r\n", "400", "bad_request"),
        (
            "a coding",
            b"POST /gz HTTP/1.1\r\nHost: public.test\r\nTransfer-Encoding: gzip\r\n\r\nxx",
            "501",
            "not_implemented",
        ),
    ] {
        // The first request has a body: hyper reads the connection from there on.
        let stream = [&b"POST /first HTTP/1.1\r\nHost: public.test\r\nContent-Length: 2\r\n\r\nhi"[..], bad].concat();
        let res = raw(gw.addr, &stream).await;
        let statuses: Vec<&str> = res.match_indices("HTTP/1.1 ").map(|(i, _)| &res[i + 9..i + 12]).collect();
        assert_eq!(statuses, ["200", status], "{what}: {res}");
        let second = &res[res.rfind("HTTP/1.1 ").unwrap()..];
        assert!(second.contains(&format!("\"code\":\"{code}\"")), "{what}: the JSON error: {second}");
        assert!(second.contains("x-request-id: ") && second.contains("connection: close"), "{what}: {second}");
    }
    let paths: Vec<String> = public.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(paths, ["/first"; 4], "no refused head reached the upstream");
}

#[tokio::test]
async fn an_http_1_0_client_never_gets_a_100_continue() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (internal, wild, public) = (upstream("internal").await, upstream("wild").await, upstream("public").await);
    let gw = gateway_with(&edge_config(&internal, &wild, &public), &[("EDGE_SECRET", SECRET)]);
    for (version, interim) in [("1.0", false), ("1.1", true)] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST /upload HTTP/{version}\r\nHost: public.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // Wait for an interim answer before sending the body, as a client would.
        let mut buf = [0u8; 256];
        let early = tokio::time::timeout(std::time::Duration::from_millis(700), s.read(&mut buf)).await;
        let got = early.map(|n| String::from_utf8_lossy(&buf[..n.unwrap()]).into_owned()).unwrap_or_default();
        assert_eq!(got.starts_with("HTTP/1.1 100"), interim, "HTTP/{version}: {got:?}");
        s.write_all(b"hi").await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        let res = String::from_utf8_lossy(&rest);
        assert!(res.contains(" 200 ") || got.contains(" 200 "), "HTTP/{version}: {got}{res}");
        let seen = public.last();
        assert_eq!(seen.headers.contains_key("expect"), interim, "HTTP/{version}: what the upstream saw");
    }
}

#[tokio::test]
async fn the_http2_preface_is_taken_only_at_the_start_of_a_connection() {
    let (internal, wild, public) = (upstream("internal").await, upstream("wild").await, upstream("public").await);
    let gw = gateway_with(&edge_config(&internal, &wild, &public), &[("EDGE_SECRET", SECRET)]);
    let res = raw(gw.addr, b"GET /one HTTP/1.1\r\nHost: public.test\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let statuses: Vec<&str> = res.match_indices("HTTP/1.1 ").map(|(i, _)| &res[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "400"], "the preface after a request is a malformed HTTP/1 head: {res}");
    assert_eq!(public.count(), 1);
}

/// An upstream that answers every request (read in one piece) with `answer`, then holds the
/// connection for two seconds.
async fn raw_upstream(answer: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                    let _ = s.write_all(answer).await;
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            });
        }
    });
    addr
}

/// One catch-all route to the upstream named `raw`.
const RAW_ROUTE: &str = "  - name: all\n    paths: [{ path: /, type: prefix }]\n    upstream: raw\n";

/// The same request on the lean path (no body) and on hyper's (a body).
const BOTH_PATHS: [(&str, &[u8]); 2] = [
    ("lean (no body)", b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("hyper (a body)", b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"),
];

#[tokio::test]
async fn an_upstreams_unasked_for_switch_is_a_502_on_both_paths() {
    let addr =
        raw_upstream(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nraw bytes").await;
    let gw = gateway(&config(&[("raw", format!("http://{addr}"))], RAW_ROUTE));
    for (what, request) in BOTH_PATHS {
        let res = raw(gw.addr, request).await;
        assert_eq!(status_of(&res), "502", "{what}: {res}");
        assert!(!res.contains("raw bytes"), "{what}: nothing of the switched protocol reaches the client: {res}");
    }
}

#[tokio::test]
async fn the_gateway_answers_in_its_own_http_version_whatever_the_upstream_speaks() {
    // RFC 9110 §6.2: an intermediary sends its own version, not the upstream's.
    let addr = raw_upstream(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = gateway(&config(&[("raw", format!("http://{addr}"))], RAW_ROUTE));
    for (what, request) in BOTH_PATHS {
        let res = raw(gw.addr, request).await;
        assert!(res.starts_with("HTTP/1.1 200 "), "{what}: {res}");
        assert!(res.ends_with("ok"), "{what}: {res}");
    }
}

#[tokio::test]
async fn parser_limits_are_the_json_431_with_a_request_id() {
    let (internal, wild, public) = (upstream("internal").await, upstream("wild").await, upstream("public").await);
    let gw = gateway_with(&edge_config(&internal, &wild, &public), &[("EDGE_SECRET", SECRET)]);
    // More fields than any server path takes (hyper's limit is 100).
    let many = format!("GET /x HTTP/1.1\r\nHost: public.test\r\n{}\r\n", "X-F: 1\r\n".repeat(120));
    let res = raw(gw.addr, many.as_bytes()).await;
    assert_eq!(status_of(&res), "431", "{res}");
    assert!(res.contains("\"code\":\"headers_too_large\"") && res.contains("x-request-id: "), "{res}");
    // A head that never ends, larger than the server reads (hyper's buffer, ~408 KiB here).
    let mut huge = b"GET /x HTTP/1.1\r\nHost: public.test\r\nX-Big: ".to_vec();
    huge.resize(420_000, b'v');
    let res = raw(gw.addr, &huge).await;
    assert_eq!(status_of(&res), "431", "{res}");
    assert!(res.contains("\"code\":\"headers_too_large\"") && res.contains("x-request-id: "), "{res}");
    assert_eq!(public.count(), 0);
}

/// An upstream `app` behind one catch-all route, with these `server.limits`.
async fn one_route_gateway(limits: &str) -> (Upstream, Gateway) {
    let up = upstream("app").await;
    let routes = "  - name: all\n    paths: [{ path: /, type: prefix }]\n    upstream: app\n";
    let yaml =
        config(&[("app", up.url())], routes).replace("server:\n", &format!("server:\n  limits: {{ {limits} }}\n"));
    let gw = gateway(&yaml);
    (up, gw)
}

#[tokio::test]
async fn http2_connections_must_open_a_stream_in_time_and_go_away_when_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, gw) = one_route_gateway("header_read_timeout: 1s, h2_idle_timeout: 1s").await;

    // The preface and an empty SETTINGS frame, then nothing: closed after header_read_timeout.
    let started = tokio::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let took = started.elapsed();
    assert!(closed.is_ok(), "a connection that opens no stream is closed");
    assert!(took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(4), "{took:?}");

    // One request, then idle: GOAWAY and close after h2_idle_timeout.
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/a", gw.addr)).body(body("")).unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    http_body_util::BodyExt::collect(res.into_body()).await.unwrap();
    let idle_from = tokio::time::Instant::now();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
    let idle = idle_from.elapsed();
    assert!(ended.is_ok(), "an idle HTTP/2 connection is closed");
    assert!(idle >= std::time::Duration::from_millis(900) && idle < std::time::Duration::from_secs(4), "{idle:?}");
    assert_eq!(up.count(), 1, "the one request reached the upstream");
}

#[tokio::test]
async fn an_http2_header_block_left_open_after_the_first_stream_closes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, gw) = one_route_gateway("header_read_timeout: 1s, h2_idle_timeout: 30s").await;
    /// A frame: 24-bit length, type, flags, stream id.
    fn frame(kind: u8, flags: u8, stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0, 0, u8::try_from(payload.len()).unwrap(), kind, flags, 0, 0, 0, stream];
        f.extend_from_slice(payload);
        f
    }
    // HPACK, static table: GET, http, /, and :authority "a" as a literal.
    let request = [0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(frame(0x4, 0, 0, &[]));
    // Stream 1: a whole request (END_STREAM | END_HEADERS), answered by the upstream.
    opening.extend(frame(0x1, 0x5, 1, &request));
    s.write_all(&opening).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Wait for stream 1's answer (a DATA frame with the upstream's name in it).
    while !seen.windows(3).any(|w| w == b"app") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the first stream is answered");
        seen.extend_from_slice(&buf[..n]);
    }
    // Stream 3: HEADERS without END_HEADERS, and never the CONTINUATION.
    let started = tokio::time::Instant::now();
    s.write_all(&frame(0x1, 0x1, 3, &request[..2])).await.unwrap();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    let took = started.elapsed();
    assert!(closed.is_ok(), "a header block that never completes closes its connection");
    assert!(took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(4), "{took:?}");
    assert_eq!(up.count(), 1, "only the whole request reached the upstream");
}
