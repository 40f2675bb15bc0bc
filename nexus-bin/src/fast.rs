//! The lean HTTP/1.1 server path for requests without a body.
//!
//! Every connection starts here. A request head is parsed with `httparse` straight from the
//! connection's read buffer (field values are zero-copy slices of it), the request goes
//! through [`stack::handle`] like any other, and the response is encoded into one write
//! buffer: with a body that is already there (the gateway's own answers, a small upstream
//! response), head and body leave in one `write`. Measured with `perf stat` under `wrk -c50`,
//! hyper's server connection cost ~11k user-space instructions per request beside what the
//! gateway does; this loop is a fraction of that.
//!
//! Whatever it does not handle itself goes to hyper for the rest of the connection, with
//! the bytes already read replayed first ([`crate::sniff::HeadSniffer`]): a request with a body (or
//! `Content-Length` other than 0, `Transfer-Encoding`, `Expect`), an upgrade or
//! `CONNECT`, HTTP/1.0, a request target that is not origin-form, the HTTP/2 preface
//! (h2c with prior knowledge), a head larger than [`MAX_LEAN_HEAD`] or with more than
//! [`MAX_FIELDS`] fields. A head that is not HTTP/1 (anything `httparse` refuses but too
//! many fields), or whose target or field values are invalid, is answered here as SPEC §4
//! says: the JSON 400 `bad_request` with a request id, then close (hyper would send a bare
//! 400). So streaming bodies, 100-continue, upgrades and h2c stay hyper's, and the server
//! limits of SPEC §3 hold on both paths:
//! `header_read_timeout` bounds each head here exactly as hyper does (from the moment a head
//! is awaited, so an idle keep-alive connection closes after it too), `max_header_bytes` is
//! checked by the stack on every request, and the first request head hyper sees after a
//! hand-off is scanned for framing conflicts as the first head of a connection is.

use crate::stack::{self, ClientBody, Conn, Shared};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version, header};
use http_body::Body;
use nexus_core::error::REQUEST_ID;
use nexus_core::field_names::FieldNames;
use nexus_core::{ErrorCode, GatewayError};
use nexus_health::shutdown::Phase;
use std::cell::RefCell;
use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Largest request head taken here; a larger one goes to hyper (its buffer is larger and
/// the stack answers the JSON 431 over `max_header_bytes`).
pub(crate) const MAX_LEAN_HEAD: usize = 16 * 1024;
/// Most request fields taken here (hyper takes 100).
pub(crate) const MAX_FIELDS: usize = 64;
/// The write buffer is sent once it holds this much of a streamed body.
const WRITE_HIGH_WATER: usize = 64 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// How a connection left the lean path.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Closed (by either side, a timeout, shutdown, or an error).
    Closed,
    /// The rest of the connection is hyper's: the bytes read and not consumed yet come first.
    Handoff(Bytes, TcpStream),
}

/// A request head parsed here.
struct Head {
    request: Request<ClientBody>,
    /// The client asked to close after this exchange.
    close: bool,
}

// The large variant is the common one; boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// More bytes needed.
    Partial,
    /// Not for this path: hyper takes the connection from here (nothing consumed).
    Handoff,
    /// Not an HTTP/1 request head, or one whose target or field values are invalid: the
    /// JSON 400 with this message, then close.
    BadRequest(&'static str),
    /// Not boxed: that would be an allocation per request.
    Ready(Head),
}

/// Serve `stream` until it closes or needs hyper.
pub(crate) async fn serve(
    mut stream: TcpStream,
    shared: &Shared,
    conn: &Conn,
    header_read_timeout: Duration,
    mut phase: watch::Receiver<Phase>,
) -> Outcome {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut wbuf: Vec<u8> = Vec::with_capacity(4 * 1024);
    let mut fields: Vec<(HeaderName, usize, usize)> = Vec::new();
    let mut names = FieldNames::default();
    // Both waits live as long as the connection, so a request costs neither a timer
    // registration nor a watch subscription: the timer is armed for some earlier head's
    // deadline and, when it fires before this head's, is re-armed (once per timeout
    // period, not per request).
    let mut timer = pin!(tokio::time::sleep(header_read_timeout));
    let mut stopping = pin!(async move {
        while *phase.borrow_and_update() != Phase::Stopping {
            if phase.changed().await.is_err() {
                break;
            }
        }
    });
    loop {
        // Read one head, within header_read_timeout (hyper's semantics: from the moment a
        // head is awaited, so an idle keep-alive connection closes after it too).
        let now = tokio::time::Instant::now();
        // (A timeout too large to add is a deadline a century away, not a panic.)
        let deadline =
            now.checked_add(header_read_timeout).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        let head = loop {
            if !buf.is_empty() {
                if buf.starts_with(&H2_PREFACE[..buf.len().min(H2_PREFACE.len())]) {
                    if buf.len() >= H2_PREFACE.len() {
                        return Outcome::Handoff(buf.freeze(), stream);
                    }
                } else {
                    match parse(&mut buf, &mut fields, &mut names) {
                        Parsed::Ready(head) => break head,
                        Parsed::Handoff => return Outcome::Handoff(buf.freeze(), stream),
                        Parsed::BadRequest(message) => {
                            // SPEC §4: the JSON `bad_request` with its request id, then close.
                            let id = nexus_middleware::request_id::generate();
                            let mut res: http::Response<http_body_util::Full<Bytes>> =
                                GatewayError::new(ErrorCode::BadRequest)
                                    .with_message(message)
                                    .into_response(id.to_str().unwrap_or(""));
                            res.headers_mut().insert(REQUEST_ID, id);
                            let _ = respond(&mut stream, &mut wbuf, res, false, true).await;
                            return Outcome::Closed;
                        }
                        Parsed::Partial if buf.len() > MAX_LEAN_HEAD => {
                            return Outcome::Handoff(buf.freeze(), stream);
                        }
                        Parsed::Partial => {}
                    }
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(8 * 1024);
            }
            tokio::select! {
                biased;
                read = stream.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return Outcome::Closed,
                    Ok(_) => {}
                },
                () = timer.as_mut() => {
                    if tokio::time::Instant::now() >= deadline {
                        return Outcome::Closed;
                    }
                    timer.as_mut().reset(deadline);
                }
                // Stopping: an idle connection closes now.
                () = stopping.as_mut(), if buf.is_empty() => return Outcome::Closed,
            }
        };
        let Head { request, close } = head;
        let head_request = request.method() == Method::HEAD;
        let response = stack::handle(shared, conn, request).await;
        match respond(&mut stream, &mut wbuf, response, head_request, close).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return Outcome::Closed,
        }
    }
}

/// Parse a request head at the start of `buf`.
fn parse(buf: &mut BytesMut, fields: &mut Vec<(HeaderName, usize, usize)>, names: &mut FieldNames) -> Parsed {
    fields.clear();
    // Uninitialised slots: an array of empty headers costs a 2 KiB copy per request.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Too many fields: hyper takes up to 100, and the stack answers 431 over the limit.
        Err(httparse::Error::TooManyHeaders) => return Parsed::Handoff,
        // Malformed (SPEC §4): hyper would close with a bare 400; the JSON answer with a
        // request id instead.
        Err(_) => return Parsed::BadRequest("malformed request head"),
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Handoff;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::Handoff };
    if method == Method::CONNECT || !path.starts_with('/') {
        return Parsed::Handoff;
    }
    let base = buf.as_ptr() as usize;
    let mut close = false;
    for (i, h) in req.headers.iter().enumerate() {
        let Ok(name) = names.name(i, h.name.as_bytes()) else { return Parsed::Handoff };
        if name == header::CONTENT_LENGTH {
            if h.value != b"0" {
                return Parsed::Handoff;
            }
        } else if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return Parsed::Handoff;
        } else if name == header::CONNECTION {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Handoff;
                }
            }
        }
        let start = h.value.as_ptr() as usize - base;
        fields.push((name, start, start + h.value.len()));
    }
    let path_start = path.as_ptr() as usize - base;
    let path_end = path_start + path.len();
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path_start..path_end)) else {
        return Parsed::BadRequest("invalid request target");
    };
    let mut headers = HeaderMap::with_capacity(fields.len() + 4);
    for (name, start, end) in fields.drain(..) {
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(start..end)) else {
            return Parsed::BadRequest("invalid header value");
        };
        headers.append(name, value);
    }
    let mut request = Request::new(ClientBody::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Parsed::Ready(Head { request, close })
}

/// How the response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body bytes (HEAD, 1xx, 204, 304).
    None,
    /// As they come, `Content-Length` given.
    Length,
    Chunked,
}

/// Write `res`; `Ok(true)` when the connection can take another request.
async fn respond<B>(
    stream: &mut TcpStream,
    wbuf: &mut Vec<u8>,
    res: http::Response<B>,
    head_request: bool,
    client_close: bool,
) -> std::io::Result<bool>
where
    B: Body<Data = Bytes>,
{
    let (parts, body) = res.into_parts();
    let mut body = pin!(body);
    wbuf.clear();
    let status = parts.status;
    wbuf.extend_from_slice(b"HTTP/1.1 ");
    wbuf.extend_from_slice(status.as_str().as_bytes());
    wbuf.push(b' ');
    wbuf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    wbuf.extend_from_slice(b"\r\n");
    let mut close = client_close;
    // The declared length: the body is held to it (a shorter or longer body closes the
    // connection, so the client never reads a wrong message boundary).
    let mut length: Option<u64> = None;
    let (mut has_date, mut has_connection) = (false, false);
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING {
            // The framing is this server's to choose.
            continue;
        }
        if name == header::CONTENT_LENGTH {
            length = Some(std::str::from_utf8(value.as_bytes()).ok().and_then(|v| v.parse().ok()).unwrap_or(0));
        } else if name == header::CONNECTION {
            has_connection = true;
            close |= value.as_bytes().eq_ignore_ascii_case(b"close");
        } else if name == header::DATE {
            has_date = true;
        }
        wbuf.extend_from_slice(name.as_str().as_bytes());
        wbuf.extend_from_slice(b": ");
        wbuf.extend_from_slice(value.as_bytes());
        wbuf.extend_from_slice(b"\r\n");
    }
    if !has_date {
        wbuf.extend_from_slice(b"date: ");
        http_date(wbuf);
        wbuf.extend_from_slice(b"\r\n");
    }
    let bodiless_status =
        status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let exact = body.size_hint().exact();
    let framing = if bodiless_status {
        Framing::None
    } else {
        if length.is_none()
            && let Some(n) = exact
        {
            wbuf.extend_from_slice(b"content-length: ");
            wbuf.extend_from_slice(itoa(n, &mut [0u8; 20]));
            wbuf.extend_from_slice(b"\r\n");
            length = Some(n);
        }
        if head_request {
            Framing::None
        } else if length.is_some() {
            Framing::Length
        } else {
            wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
    };
    if close && !has_connection {
        wbuf.extend_from_slice(b"connection: close\r\n");
    }
    wbuf.extend_from_slice(b"\r\n");
    if framing == Framing::None {
        stream.write_all(wbuf).await?;
        return Ok(!close);
    }
    // The body: every frame that is ready goes into the buffer; the buffer is written when
    // the body has to wait (or is over the high-water mark), so a small response is one write.
    let mut remaining = length;
    loop {
        let step = poll_fn(|cx| {
            let mut progressed = false;
            loop {
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            if framing == Framing::Chunked {
                                let mut hex = [0u8; 16];
                                wbuf.extend_from_slice(hex_len(data.len(), &mut hex));
                                wbuf.extend_from_slice(b"\r\n");
                                wbuf.extend_from_slice(&data);
                                wbuf.extend_from_slice(b"\r\n");
                            } else {
                                let left = remaining.unwrap_or(0);
                                let take = left.min(data.len() as u64);
                                // (`take` is at most `data.len()`.)
                                wbuf.extend_from_slice(&data[..take as usize]);
                                remaining = Some(left - take);
                                if take < data.len() as u64 {
                                    return Poll::Ready(Step::Failed);
                                }
                            }
                            progressed = true;
                            if wbuf.len() >= WRITE_HIGH_WATER {
                                return Poll::Ready(Step::More);
                            }
                        }
                        // (Trailers are dropped, as hyper does for HTTP/1 clients.)
                    }
                    Poll::Ready(None) => return Poll::Ready(Step::End),
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(Step::Failed),
                    Poll::Pending if progressed => return Poll::Ready(Step::More),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        match step {
            Step::More => {
                stream.write_all(wbuf).await?;
                wbuf.clear();
            }
            Step::End => {
                if framing == Framing::Chunked {
                    wbuf.extend_from_slice(b"0\r\n\r\n");
                }
                stream.write_all(wbuf).await?;
                // A body shorter than it declared: the client must not wait for the rest.
                return Ok(!close && remaining.is_none_or(|r| r == 0));
            }
            Step::Failed => {
                // The upstream broke mid-body (or sent more than declared): what was sent
                // stays, the connection closes (the client sees a truncated body, never a
                // wrong one).
                stream.write_all(wbuf).await?;
                return Ok(false);
            }
        }
    }
}

enum Step {
    More,
    End,
    Failed,
}

fn itoa(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &out[i..];
        }
    }
}

fn hex_len(mut n: usize, out: &mut [u8; 16]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            return &out[i..];
        }
    }
}

/// The current time as an HTTP date, formatted once per second per thread.
fn http_date(out: &mut Vec<u8>) {
    thread_local!(static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) });
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *at = secs;
            }
        }
        out.extend_from_slice(text);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(raw: &[u8]) -> Parsed {
        let mut buf = BytesMut::from(raw);
        parse(&mut buf, &mut Vec::new(), &mut FieldNames::default())
    }

    #[test]
    fn plain_requests_are_taken_and_the_rest_goes_to_hyper() {
        let Parsed::Ready(head) = parse_one(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") else {
            panic!("a plain GET is taken")
        };
        assert_eq!(head.request.uri(), "/a?b=1");
        assert_eq!(head.request.headers()["host"], "x");
        assert!(head.close);
        assert!(matches!(parse_one(b"GET /a HTTP/1.1\r\nHost: x\r\n"), Parsed::Partial));
        assert!(matches!(parse_one(b"DELETE /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), Parsed::Ready(_)));
        for handoff in [
            &b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET /a HTTP/1.0\r\n\r\n",
            b"GET http://example.com/a HTTP/1.1\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
            b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        ] {
            assert!(matches!(parse_one(handoff), Parsed::Handoff), "{}", String::from_utf8_lossy(handoff));
        }
        // More fields than taken here: hyper's limit is higher (and the stack's 431 applies).
        let many = format!("GET /a HTTP/1.1\r\n{}\r\n", "x-f: 1\r\n".repeat(MAX_FIELDS + 1));
        assert!(matches!(parse_one(many.as_bytes()), Parsed::Handoff));
        for malformed in [
            &b"GARBAGE\r\n\r\n"[..],
            b"NOT HTTP AT ALL\r\n\r\n",
            b"GET /a HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET /a HTTP/9.9\r\n\r\n",
            b"GET /a<b HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(parse_one(malformed), Parsed::BadRequest(_)), "{}", String::from_utf8_lossy(malformed));
        }
    }

    /// What `respond` writes for `res` and whether it keeps the connection.
    async fn written(res: http::Response<http_body_util::Full<Bytes>>, head: bool) -> (String, bool) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let keep = respond(&mut server, &mut Vec::new(), res, head, false).await.unwrap();
        drop(server);
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        (out, keep)
    }

    #[tokio::test]
    async fn responses_are_framed_and_held_to_their_declared_length() {
        let full = |s: &'static str| http_body_util::Full::new(Bytes::from_static(s.as_bytes()));
        let (out, keep) = written(http::Response::new(full("hello")), false).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n") && out.contains("\r\ncontent-length: 5\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nhello") && keep, "{out}");
        let (out, keep) = written(http::Response::new(full("hello")), true).await;
        assert!(out.contains("content-length: 5\r\n") && out.ends_with("\r\n\r\n") && keep, "HEAD: {out}");
        // A body shorter or longer than declared: the declared bytes at most, then close.
        for (declared, sent) in [("10", "\r\n\r\nhello"), ("3", "\r\n\r\nhel")] {
            let mut res = http::Response::new(full("hello"));
            res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static(declared));
            let (out, keep) = written(res, false).await;
            assert!(out.ends_with(sent) && !keep, "declared {declared}: {out:?}, keep-alive {keep}");
        }
        let mut res = http::Response::new(full(""));
        *res.status_mut() = StatusCode::NO_CONTENT;
        let (out, keep) = written(res, false).await;
        assert!(out.starts_with("HTTP/1.1 204 No Content\r\n") && !out.contains("content-length") && keep, "{out}");
    }

    /// Mutated and truncated request heads: taken, handed to hyper, refused or waited for,
    /// never a panic; a head that is taken has a method, an origin-form target and no body.
    #[test]
    fn arbitrary_request_heads_never_panic() {
        let seeds: [&[u8]; 3] = [
            b"GET /a/b?c=d HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Request-Id: abc\r\n\r\n",
            b"DELETE /x HTTP/1.1\r\nContent-Length: 0\r\nAccept: */*\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
        ];
        let rng = nexus_core::rng::Rng::seeded(11);
        let (mut fields, mut names) = (Vec::new(), FieldNames::default());
        for i in 0..20_000 {
            let bytes = rng.mutate(seeds[i % seeds.len()], b"\r\n: /%#\x800", 3);
            let mut buf = BytesMut::from(&bytes[..]);
            if let Parsed::Ready(head) = parse(&mut buf, &mut fields, &mut names) {
                assert!(head.request.uri().path().starts_with('/'));
                assert!(head.request.headers().get(header::CONTENT_LENGTH).is_none_or(|v| v == "0"));
                assert!(!head.request.headers().contains_key(header::TRANSFER_ENCODING));
            }
        }
    }

    #[test]
    fn numbers_and_dates_are_formatted_for_the_wire() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1234567, &mut [0; 20]), b"1234567");
        assert_eq!(hex_len(255, &mut [0; 16]), b"ff");
        assert_eq!(hex_len(0x10000, &mut [0; 16]), b"10000");
        let mut out = Vec::new();
        http_date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
    }
}
