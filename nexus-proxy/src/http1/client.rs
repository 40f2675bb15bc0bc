//! A lean HTTP/1.1 client exchange for requests without a body (GET, HEAD, DELETE,
//! OPTIONS and body-less POSTs: the bulk of what an API gateway forwards), or with a small
//! body that is all here (at most 64 KiB, written after the head in the same `write`).
//!
//! hyper's `client::conn::http1` hands each request to its connection through a channel, runs
//! a dispatcher state machine and encodes through a generic buffer layer; measured with
//! `perf stat` and callgrind, that was ~15k of the ~36k user-space instructions per proxied
//! request. A request without a body needs none of it: one `write` of the encoded head, one
//! `read` of the response, `httparse` for the head (header values are zero-copy slices of the
//! read buffer) and a small framing state machine for the body (`Content-Length`, chunked
//! with trailers, or until close). Requests with a body still to stream, and upgrades, keep
//! going through hyper (see [`crate::pool`]): streaming a request body while the response may
//! already be arriving is exactly the part hyper's dispatcher is for.
//!
//! Hop-by-hop response fields are left out while the head is parsed (no second pass over
//! the map). The connection lives in the response body ([`RawBody`]) while the response is read, and
//! goes back to its pool when the body is complete, the upstream allows keep-alive and no
//! stray bytes are left.

use super::head::{ResponseHead, Scratch, parse_response};
use crate::connect::UpstreamIo;
use bytes::BytesMut;
use http::{HeaderValue, Method, header, request};
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::time::Instant;

/// The read buffer grows in steps of this much at first ...
const READ_BUF: usize = 8 * 1024;
/// ... doubling (up to this) while reads fill it, as in a large download.
const MAX_READ_BUF: usize = 256 * 1024;
/// A read is only issued with at least this much room left.
const MIN_READ_ROOM: usize = 1024;

/// One keep-alive HTTP/1.1 connection to an endpoint.
#[derive(Debug)]
pub(crate) struct RawConn {
    io: UpstreamIo,
    /// Bytes read and not consumed yet.
    pub(super) buf: BytesMut,
    /// The encoded request head (kept: no allocation per request).
    wbuf: Vec<u8>,
    /// What parsing a response head needs besides the bytes (kept, as `wbuf`).
    scratch: Scratch,
    /// How much the read buffer grows by when it runs out of room.
    read_size: usize,
    /// The response-head timer, kept for the connection's life (see [`Self::poll_deadline`]).
    timer: Pin<Box<tokio::time::Sleep>>,
}

/// How an exchange failed.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// The request could not be written (a pooled connection the upstream had closed); no
    /// complete request reached the upstream.
    Unsent(io::Error),
    /// The connection was closed before any byte of a response came back: a pooled
    /// connection the upstream had already given up on.
    Closed(io::Error),
    /// The deadline passed before the whole response head came back.
    TimedOut,
    /// Anything else: the upstream broke the exchange or sent something that is not HTTP/1.
    Failed(io::Error),
}

impl RawConn {
    /// A connection over `io` (TCP opened with `TCP_NODELAY`, or TLS over it).
    pub(crate) fn new(io: impl Into<UpstreamIo>) -> Box<Self> {
        Box::new(Self {
            io: io.into(),
            buf: BytesMut::with_capacity(READ_BUF),
            wbuf: Vec::with_capacity(512),
            scratch: Scratch::default(),
            read_size: READ_BUF,
            // Armed by the first exchange.
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(86_400))),
        })
    }

    /// Whether an idle connection can take a request: not closed by the upstream and
    /// nothing unasked-for waiting on it. Costs no system call unless the socket is readable.
    pub(crate) fn is_reusable(&mut self) -> bool {
        self.buf.is_empty() && self.io.is_open_and_quiet()
    }

    /// Send a request, without a body or with a whole one (its `Content-Length`, if the head
    /// has one, must agree), and read the response head, both before `deadline`. The
    /// response body's framing comes with it; the caller wraps the connection in a
    /// [`RawBody`]. Headers that a `Connection` field names must already be gone from `parts`.
    pub(crate) async fn exchange(
        &mut self,
        parts: &request::Parts,
        body: Option<&bytes::Bytes>,
        client: Client<'_>,
        deadline: Instant,
    ) -> Result<ResponseHead, ExchangeError> {
        self.wbuf.clear();
        encode_head(parts, &client, body.map_or(0, bytes::Bytes::len), &mut self.wbuf);
        if let Some(body) = body {
            // Head and body in one write (a body here is at most 64 KiB).
            self.wbuf.extend_from_slice(body);
        }
        let head_request = parts.method == Method::HEAD;
        let mut written = 0;
        let mut received = false;
        poll_fn(|cx| {
            while written < self.wbuf.len() {
                match Pin::new(&mut self.io).poll_write(cx, &self.wbuf[written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(ExchangeError::Unsent(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::Unsent(e))),
                    Poll::Pending => return self.poll_deadline(cx, deadline),
                }
            }
            // TLS may still hold records of the head (nothing to do for TCP).
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::Unsent(e))),
                Poll::Pending => return self.poll_deadline(cx, deadline),
            }
            match self.poll_head(cx, head_request, &mut received) {
                Poll::Pending => self.poll_deadline(cx, deadline),
                done => done,
            }
        })
        .await
    }

    /// `Pending` until `deadline`, then the timeout. The timer lives as long as the
    /// connection: it stays armed for some earlier exchange's deadline and, when that fires
    /// first, is re-armed for this one, so a request costs no timer registration (a
    /// `tokio::time::timeout` per request inserts into and removes from the timer wheel).
    fn poll_deadline<T>(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<Result<T, ExchangeError>> {
        if self.timer.deadline() > deadline {
            self.timer.as_mut().reset(deadline);
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return Poll::Ready(Err(ExchangeError::TimedOut));
            }
            self.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
        received: &mut bool,
    ) -> Poll<Result<ResponseHead, ExchangeError>> {
        loop {
            if !self.buf.is_empty() {
                *received = true;
                match parse_response(&mut self.buf, &mut self.scratch, head_request) {
                    Ok(Some(head)) => return Poll::Ready(Ok(head)),
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(ExchangeError::Failed(e))),
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if *received => return Poll::Ready(Err(ExchangeError::Failed(eof("response head")))),
                Ok(0) => return Poll::Ready(Err(ExchangeError::Closed(eof("response")))),
                Ok(_) => {}
                Err(e) if !*received && is_reset(&e) => return Poll::Ready(Err(ExchangeError::Closed(e))),
                Err(e) => return Poll::Ready(Err(ExchangeError::Failed(e))),
            }
        }
    }

    /// Read more into the buffer; `Ok(0)` is the end of the stream.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < MIN_READ_ROOM {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        // `poll_read` (not `try_read`) so that a short read clears the readiness flag:
        // the next wait for a response then costs no failed `read`.
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf))?;
        if n == room && self.read_size < MAX_READ_BUF {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }
}

fn eof(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("upstream closed the connection before the end of the {what}"))
}

fn is_reset(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe)
}

/// `METHOD /path?query HTTP/1.1`, the fields as [`crate::headers::write_upstream_fields`]
/// writes them (lower-case names, as hyper sends them; hop-by-hop left out, `X-Forwarded-*`
/// set for `client`), and `content-length: 0` for a body-less POST/PUT/PATCH without one.
pub(crate) fn encode_head(parts: &request::Parts, client: &Client<'_>, body_len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    crate::headers::write_upstream_fields(&parts.headers, client.ip, client.trusted, client.proto, out);
    let body_expected = body_len > 0 || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    if body_expected && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        // Writing to a `Vec` cannot fail.
        let _ = std::io::Write::write_fmt(out, format_args!("content-length: {body_len}\r\n"));
    }
    out.extend_from_slice(b"\r\n");
}

/// Who the request is forwarded for (`X-Forwarded-*`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client<'a> {
    /// The client's IP as a header value.
    pub(crate) ip: &'a HeaderValue,
    /// Whether the peer is a trusted proxy (its `X-Forwarded-Proto/-Host` are kept).
    pub(crate) trusted: bool,
    /// `X-Forwarded-Proto`: `"http"` or `"https"`.
    pub(crate) proto: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::RawBody;
    use bytes::Bytes;
    use http::{HeaderMap, HeaderName, Response, StatusCode};
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::net::TcpStream;

    /// An upstream that answers each request (read up to its blank line) with the next of
    /// `answers`, written in pieces of `piece` bytes; returns the address and the requests seen.
    async fn scripted(answers: Vec<&'static [u8]>, piece: usize) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for answer in answers {
                let mut req = Vec::new();
                while !req.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if s.read(&mut b).await.unwrap() == 0 {
                        return seen;
                    }
                    req.push(b[0]);
                }
                seen.push(String::from_utf8(req).unwrap());
                for part in answer.chunks(piece) {
                    s.write_all(part).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
            seen
        });
        (addr, task)
    }

    fn get(path: &str) -> request::Parts {
        let (mut parts, ()) = http::Request::get(path).header("host", "example.com").body(()).unwrap().into_parts();
        parts.uri = path.parse().unwrap();
        parts
    }

    async fn round_trip(
        conn: &mut Option<Box<RawConn>>,
        parts: &request::Parts,
    ) -> io::Result<(Response<()>, Bytes, Option<HeaderMap>)> {
        let mut c = conn.take().unwrap();
        let ip = HeaderValue::from_static("10.1.2.3");
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let head = c.exchange(parts, None, Client { ip: &ip, trusted: false, proto: "http" }, deadline).await.map_err(
            |e| match e {
                ExchangeError::Unsent(e) | ExchangeError::Closed(e) | ExchangeError::Failed(e) => e,
                ExchangeError::TimedOut => io::ErrorKind::TimedOut.into(),
            },
        )?;
        let mut body = RawBody::new(c, &head);
        let mut data = BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            match frame?.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        *conn = body.take_reusable();
        Ok((head.response, data.freeze(), trailers))
    }

    #[tokio::test]
    async fn bodies_are_framed_by_length_chunks_and_close_in_any_read_sizes() {
        for piece in [1, 3, 7, 4096] {
            let (addr, upstream) = scripted(
                vec![
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 9\r\n\r\n",
                    b"HTTP/1.1 204 No Content\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\n\r\nuntil close",
                ],
                piece,
            )
            .await;
            let mut conn = Some(RawConn::new(TcpStream::connect(&addr).await.unwrap()));
            let (res, body, _) = round_trip(&mut conn, &get("/a?x=1")).await.unwrap();
            assert_eq!((res.status(), &body[..]), (StatusCode::OK, &b"hello"[..]), "read in pieces of {piece}");
            assert_eq!(res.headers()["x-a"], "1");
            assert!(conn.is_some(), "a complete Content-Length body leaves the connection reusable");

            let (res, body, trailers) = round_trip(&mut conn, &get("/b")).await.unwrap();
            assert_eq!(&body[..], b"abcde");
            assert_eq!(trailers.unwrap()["x-sum"], "9");
            assert!(!res.headers().contains_key(header::CONTENT_LENGTH));
            assert!(conn.is_some(), "a complete chunked body leaves the connection reusable");

            let (res, body, _) = round_trip(&mut conn, &get("/c")).await.unwrap();
            assert_eq!((res.status(), body.len()), (StatusCode::NO_CONTENT, 0));

            let (_, body, _) = round_trip(&mut conn, &get("/d")).await.unwrap();
            assert_eq!(&body[..], b"until close");
            assert!(conn.is_none(), "a body read until close ends the connection");

            let seen = upstream.await.unwrap();
            assert_eq!(
                seen[0],
                "GET /a?x=1 HTTP/1.1\r\nhost: example.com\r\nx-forwarded-for: 10.1.2.3\r\n\
                 x-forwarded-proto: http\r\nx-forwarded-host: example.com\r\n\r\n"
            );
            assert_eq!(seen.len(), 4, "one connection served all four");
        }
    }

    #[tokio::test]
    async fn broken_responses_are_errors_not_hangs() {
        let cases: [&'static [u8]; 5] = [
            b"NOT HTTP\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        ];
        for case in cases {
            let (addr, _upstream) = scripted(vec![case], 4096).await;
            let mut conn = Some(RawConn::new(TcpStream::connect(&addr).await.unwrap()));
            let result =
                tokio::time::timeout(std::time::Duration::from_secs(5), round_trip(&mut conn, &get("/"))).await;
            assert!(result.expect("no hang").is_err(), "{:?} is refused", String::from_utf8_lossy(case));
        }
    }

    #[tokio::test]
    async fn head_responses_have_no_body_and_keep_the_connection() {
        let (addr, _upstream) = scripted(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
            4096,
        )
        .await;
        let mut conn = Some(RawConn::new(TcpStream::connect(&addr).await.unwrap()));
        let mut head = get("/");
        head.method = Method::HEAD;
        let (res, body, _) = round_trip(&mut conn, &head).await.unwrap();
        assert_eq!((res.headers()[header::CONTENT_LENGTH].as_bytes(), body.len()), (&b"42"[..], 0));
        let (_, body, _) = round_trip(&mut conn, &get("/")).await.unwrap();
        assert_eq!(&body[..], b"ok", "the HEAD response left no bytes behind");
    }

    #[tokio::test]
    async fn connection_close_and_http_1_0_are_not_reused() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"[..],
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ] {
            let (addr, _upstream) = scripted(vec![answer], 4096).await;
            let mut conn = Some(RawConn::new(TcpStream::connect(&addr).await.unwrap()));
            let (_, body, _) = round_trip(&mut conn, &get("/")).await.unwrap();
            assert_eq!(&body[..], b"ok");
            assert!(conn.is_none());
        }
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_noticed_before_use() {
        let (addr, upstream) = scripted(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], 4096).await;
        let mut conn = Some(RawConn::new(TcpStream::connect(&addr).await.unwrap()));
        round_trip(&mut conn, &get("/")).await.unwrap();
        upstream.await.unwrap(); // the upstream closes its side
        let mut c = conn.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while c.is_reusable() {
            assert!(Instant::now() < deadline, "the close is seen");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_response_head_that_does_not_come_in_time_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(s);
        });
        let mut c = RawConn::new(TcpStream::connect(addr).await.unwrap());
        let ip = HeaderValue::from_static("10.1.2.3");
        // Each exchange finds the timer armed for (and fired at) the previous deadline.
        for wait in [Duration::from_millis(300), Duration::from_millis(200), Duration::from_millis(400)] {
            let started = Instant::now();
            let r =
                c.exchange(&get("/"), None, Client { ip: &ip, trusted: false, proto: "http" }, started + wait).await;
            assert!(matches!(r, Err(ExchangeError::TimedOut)), "{r:?}");
            let took = started.elapsed();
            assert!(took >= wait && took < wait + Duration::from_secs(1), "{wait:?}: {took:?}");
        }
        silent.abort();
    }

    #[tokio::test]
    async fn hop_by_hop_response_fields_are_left_out() {
        let (addr, _upstream) = scripted(
            vec![
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Foo: 1\r\nX-App: 1\r\nContent-Length: 0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nX-Secret: 1\r\nConnection: x-secret\r\nX-App: 2\r\nContent-Length: 0\r\n\r\n",
            ],
            4096,
        )
        .await;
        let mut conn = Some(RawConn::new(TcpStream::connect(&addr).await.unwrap()));
        let (res, _, _) = round_trip(&mut conn, &get("/")).await.unwrap();
        let names: Vec<&str> = res.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-app", "content-length"]);
        let (res, _, _) = round_trip(&mut conn, &get("/")).await.unwrap();
        let mut names: Vec<&str> = res.headers().keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "x-app"], "a header Connection names goes too");
    }

    #[test]
    fn requests_get_their_bodys_length_or_zero_where_a_body_is_expected() {
        let ip = HeaderValue::from_static("1.2.3.4");
        let client = Client { ip: &ip, trusted: true, proto: "http" };
        let mut out = Vec::new();
        let mut post = get("/p");
        post.method = Method::POST;
        post.headers.insert("x-forwarded-host", HeaderValue::from_static("outer"));
        encode_head(&post, &client, 0, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST /p HTTP/1.1\r\nhost: example.com\r\nx-forwarded-host: outer\r\nx-forwarded-for: 1.2.3.4\r\n\
             x-forwarded-proto: http\r\ncontent-length: 0\r\n\r\n"
        );
        out.clear();
        let mut delete = get("/d");
        delete.method = Method::DELETE;
        encode_head(&delete, &client, 0, &mut out);
        assert!(!String::from_utf8_lossy(&out).contains("content-length"));
        // A whole body sent with the head: its length, when the head has none.
        out.clear();
        encode_head(&delete, &client, 11, &mut out);
        assert!(String::from_utf8_lossy(&out).ends_with("\r\ncontent-length: 11\r\n\r\n"));
        out.clear();
        post.headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
        encode_head(&post, &client, 11, &mut out);
        assert_eq!(String::from_utf8_lossy(&out).matches("content-length: 11\r\n").count(), 1);
    }
}
