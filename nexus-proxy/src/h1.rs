//! A lean HTTP/1.1 client exchange for requests without a body (GET, HEAD, DELETE,
//! OPTIONS and body-less POSTs: the bulk of what an API gateway forwards).
//!
//! hyper's `client::conn::http1` hands each request to its connection through a channel, runs
//! a dispatcher state machine and encodes through a generic buffer layer; measured with
//! `perf stat` and callgrind, that was ~15k of the ~36k user-space instructions per proxied
//! request. A request without a body needs none of it: one `write` of the encoded head, one
//! `read` of the response, `httparse` for the head (header values are zero-copy slices of the
//! read buffer) and a small framing state machine for the body (`Content-Length`, chunked
//! with trailers, or until close). Requests with a body, and upgrades, keep going through
//! hyper (see [`crate::pool`]): streaming a request body while the response may already be
//! arriving is exactly the part hyper's dispatcher is for.
//!
//! Hop-by-hop response fields are left out while the head is parsed (no second pass over
//! the map). The connection lives in the response body ([`RawBody`]) while the response is read, and
//! goes back to its pool when the body is complete, the upstream allows keep-alive and no
//! stray bytes are left.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header, request};
use http_body::{Body, Frame, SizeHint};
use nexus_core::field_names::FieldNames;
use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Most header fields taken in a response head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Largest response head (status line and fields); a longer one is a 502.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size line (with extensions) and trailer section accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// The read buffer grows in steps of this much at first ...
const READ_BUF: usize = 8 * 1024;
/// ... doubling (up to this) while reads fill it, as in a large download.
const MAX_READ_BUF: usize = 256 * 1024;
/// A read is only issued with at least this much room left.
const MIN_READ_ROOM: usize = 1024;

/// One keep-alive HTTP/1.1 connection to an endpoint.
#[derive(Debug)]
pub(crate) struct RawConn {
    io: TcpStream,
    /// Bytes read and not consumed yet.
    buf: BytesMut,
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
    /// A connection over `io` (opened with `TCP_NODELAY`).
    pub(crate) fn new(io: TcpStream) -> Box<Self> {
        Box::new(Self {
            io,
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
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable while idle: closed, or stray bytes (or a stale readiness flag).
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Send a request without a body and read the response head, both before `deadline`.
    /// The body's framing comes with it; the caller wraps the connection in a [`RawBody`].
    /// Headers that a `Connection` field names must already be gone from `parts`.
    pub(crate) async fn exchange(
        &mut self,
        parts: &request::Parts,
        client: Client<'_>,
        deadline: Instant,
    ) -> Result<Head, ExchangeError> {
        self.wbuf.clear();
        encode_head(parts, &client, &mut self.wbuf);
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
    ) -> Poll<Result<Head, ExchangeError>> {
        loop {
            if !self.buf.is_empty() {
                *received = true;
                match parse_head(&mut self.buf, &mut self.scratch, head_request) {
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
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
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

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn is_reset(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe)
}

/// `METHOD /path?query HTTP/1.1`, the fields as [`crate::headers::write_upstream_fields`]
/// writes them (lower-case names, as hyper sends them; hop-by-hop left out, `X-Forwarded-*`
/// set for `client`), and `content-length: 0` for a body-less POST/PUT/PATCH without one.
fn encode_head(parts: &request::Parts, client: &Client<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    crate::headers::write_upstream_fields(&parts.headers, client.ip, client.trusted, out);
    let body_expected = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    if body_expected && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
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
}

/// A parsed response head and how its body is framed.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) response: Response<()>,
    framing: Framing,
    keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 204, 304, `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes (no length, or a transfer coding other than chunked last).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// Parse a response head at the start of `buf`: `Ok(None)` when more bytes are needed.
/// Interim 1xx responses (100 Continue, 103 Early Hints) are skipped.
/// What parsing a response head needs besides its bytes, kept per connection.
#[derive(Debug, Default)]
struct Scratch {
    /// Field names and value spans of the head being parsed.
    fields: Vec<(HeaderName, usize, usize)>,
    /// The previous head's field names (name parsing is skipped where they repeat).
    names: FieldNames,
}

fn parse_head(buf: &mut BytesMut, scratch: &mut Scratch, head_request: bool) -> io::Result<Option<Head>> {
    let Scratch { fields, names } = scratch;
    loop {
        fields.clear();
        // Uninitialised slots: a 100-field array of empty headers costs a 3 KiB copy per response.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len =
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                    return Err(invalid("upstream response head is too large"));
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(invalid("upstream response has too many header fields"));
                }
                Err(_) => return Err(invalid("upstream response is not valid HTTP/1")),
            };
        let code = parsed.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(|_| invalid("upstream response has an invalid status code"))?;
        let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(invalid("upstream switched protocols on a request that asked for no upgrade"));
            }
            buf.advance(len);
            continue;
        }
        let base = buf.as_ptr() as usize;
        let mut length: Option<u64> = None;
        let mut chunked = None;
        let mut close = version == Version::HTTP_10;
        // A `Connection` value naming other headers: those are hop-by-hop too, and the
        // general remover runs on the map; otherwise hop-by-hop fields are never inserted.
        let mut named_other = false;
        for (i, h) in parsed.headers.iter().enumerate() {
            let name = names.name(i, h.name.as_bytes()).map_err(|_| invalid("upstream sent an invalid header name"))?;
            let start = h.value.as_ptr() as usize - base;
            if name == header::CONTENT_LENGTH {
                let n = parse_length(h.value).ok_or_else(|| invalid("upstream sent an invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(invalid("upstream sent conflicting Content-Length values"));
                }
                length = Some(n);
            } else if name == header::TRANSFER_ENCODING {
                // Only the last coding matters: chunked last frames the body.
                chunked = Some(last_token(h.value).eq_ignore_ascii_case(b"chunked"));
            } else if name == header::CONNECTION {
                named_other |= crate::headers::names_other_headers(h.value);
                for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                        close = false;
                    }
                }
            }
            fields.push((name, start, start + h.value.len()));
        }
        let head = buf.split_to(len).freeze();
        // Room for what the gateway adds to a response (X-Request-Id, four RateLimit-*
        // fields): a map sized to the upstream's fields grows (and rehashes) on the first.
        let mut headers = HeaderMap::with_capacity(fields.len() + 5);
        for (name, start, end) in fields.drain(..) {
            if chunked.is_some() && name == header::CONTENT_LENGTH {
                // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
                continue;
            }
            if !named_other && crate::headers::is_hop_by_hop(&name) {
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head.slice(start..end))
                .map_err(|_| invalid("upstream sent an invalid header value"))?;
            headers.append(name, value);
        }
        if named_other {
            crate::headers::remove_hop_by_hop(&mut headers, false);
        }
        let framing = if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Empty
        } else {
            match (chunked, length) {
                (Some(true), _) => Framing::Chunked(Chunk::Size),
                (Some(false), _) | (None, None) => Framing::Close,
                (None, Some(0)) => Framing::Empty,
                (None, Some(n)) => Framing::Length(n),
            }
        };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        let keep_alive = !close && framing != Framing::Close;
        return Ok(Some(Head { response, framing, keep_alive }));
    }
}

/// `Content-Length`: decimal digits only (a list of equal values, as some servers send, too).
fn parse_length(value: &[u8]) -> Option<u64> {
    let mut result = None;
    for part in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if result.is_some_and(|r| r != n) {
            return None;
        }
        result = Some(n);
    }
    result
}

fn last_token(value: &[u8]) -> &[u8] {
    value.rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii()
}

/// A response body read straight off the connection.
#[derive(Debug)]
pub(crate) struct RawBody {
    /// Boxed (as the pool keeps it): the response, and the futures that carry it up
    /// through the stack, stay small to move.
    conn: Option<Box<RawConn>>,
    framing: Option<Framing>,
    keep_alive: bool,
}

impl RawBody {
    /// The body of `head`, read from `conn`.
    pub(crate) fn new(conn: Box<RawConn>, head: &Head) -> Self {
        let framing = (head.framing != Framing::Empty).then_some(head.framing);
        Self { conn: Some(conn), framing, keep_alive: head.keep_alive }
    }

    /// Once the body is complete: the connection, if it can take another request.
    pub(crate) fn take_reusable(&mut self) -> Option<Box<RawConn>> {
        if self.framing.is_some() || !self.keep_alive {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.conn = None;
        self.framing = None;
        self.keep_alive = false;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let (Some(framing), Some(conn)) = (this.framing.as_mut(), this.conn.as_mut()) else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match framing {
                Framing::Empty => this.framing = None,
                Framing::Length(remaining) | Framing::Chunked(Chunk::Data(remaining)) if !buf.is_empty() => {
                    let n = (*remaining).min(buf.len() as u64);
                    // `n` fits: it is at most `buf.len()`.
                    let data = buf.split_to(n as usize).freeze();
                    *remaining -= n;
                    if *remaining == 0 {
                        match framing {
                            Framing::Chunked(c) => *c = Chunk::DataEnd,
                            _ => this.framing = None,
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close if !buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                }
                Framing::Chunked(Chunk::Size) if !buf.is_empty() => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *framing = Framing::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                        continue;
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_CHUNK_LINE => {}
                    _ => return this.fail(invalid("upstream sent an invalid chunk size")),
                },
                Framing::Chunked(Chunk::DataEnd) if !buf.is_empty() => {
                    let used = if buf.starts_with(b"\r\n") {
                        2
                    } else if buf[0] == b'\n' {
                        1
                    } else if buf[..] == *b"\r" {
                        0 // half of the CRLF: wait for the rest
                    } else {
                        return this.fail(invalid("upstream chunk is longer than its size"));
                    };
                    if used > 0 {
                        buf.advance(used);
                        *framing = Framing::Chunked(Chunk::Size);
                        continue;
                    }
                }
                Framing::Chunked(Chunk::Trailers) if !buf.is_empty() => match parse_trailers(buf) {
                    Ok(Some(trailers)) => {
                        this.framing = None;
                        if let Some(t) = trailers {
                            return Poll::Ready(Some(Ok(Frame::trailers(t))));
                        }
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => return this.fail(e),
                },
                _ => {}
            }
            if this.framing.is_none() {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == Some(Framing::Close) => {
                    this.framing = None;
                    this.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(eof("response body")),
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            None => SizeHint::with_exact(0),
            Some(Framing::Length(n)) => SizeHint::with_exact(n),
            Some(_) => SizeHint::default(),
        }
    }
}

/// The trailer section after the last chunk: `Ok(Some(None))` for none, `Ok(None)` when
/// more bytes are needed.
fn parse_trailers(buf: &mut BytesMut) -> io::Result<Option<Option<HeaderMap>>> {
    if buf.starts_with(b"\r\n") {
        buf.advance(2);
        return Ok(Some(None));
    }
    if buf.starts_with(b"\n") {
        buf.advance(1);
        return Ok(Some(None));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((used, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let (Ok(name), Ok(value)) =
                    (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value))
                else {
                    return Err(invalid("upstream sent an invalid trailer field"));
                };
                map.append(name, value);
            }
            buf.advance(used);
            Ok(Some(Some(map)))
        }
        Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILERS => Ok(None),
        _ => Err(invalid("upstream sent invalid trailers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

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
        let head = c.exchange(parts, Client { ip: &ip, trusted: false }, deadline).await.map_err(|e| match e {
            ExchangeError::Unsent(e) | ExchangeError::Closed(e) | ExchangeError::Failed(e) => e,
            ExchangeError::TimedOut => io::ErrorKind::TimedOut.into(),
        })?;
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
            let r = c.exchange(&get("/"), Client { ip: &ip, trusted: false }, started + wait).await;
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
    fn field_names_carried_from_the_previous_head_are_only_reused_where_they_match() {
        let mut scratch = Scratch::default();
        let mut parse = |head: &[u8]| {
            let mut buf = BytesMut::from(head);
            parse_head(&mut buf, &mut scratch, false).unwrap().unwrap().response.headers().clone()
        };
        let first = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nServer: s\r\n\r\n");
        assert_eq!((first["x-a"].as_bytes(), first["server"].as_bytes()), (&b"1"[..], &b"s"[..]));
        // Same names in another case, a different name in the second place, one more field.
        let second = parse(b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 2\r\nX-B: 2\r\nSERVER: t\r\nX-C: 3\r\n\r\n");
        let names: Vec<&str> = second.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-length", "x-b", "server", "x-c"]);
        assert_eq!(second["server"], "t");
        assert!(!second.contains_key("x-a"));
        // Fewer fields than before.
        let third = parse(b"HTTP/1.1 204 No Content\r\nX-A: 9\r\n\r\n");
        assert_eq!(third.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-a"]);
    }

    /// Mutated and truncated response heads: parsed, refused or waited for, never a panic,
    /// and a head that parses keeps its framing consistent with its status.
    #[test]
    fn arbitrary_response_heads_never_panic() {
        let seeds: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-a\r\nX-A: 1\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 204 No Content\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7, 7\r\nProxy-X: y\r\n\r\n",
            b"HTTP/1.1 502 Bad\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        ];
        let rng = nexus_core::rng::Rng::seeded(7);
        let mut scratch = Scratch::default();
        for i in 0..20_000 {
            let bytes = rng.mutate(seeds[i % seeds.len()], b"\r\n:, 0z\x80\0", 3);
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(head)) = parse_head(&mut buf, &mut scratch, i % 5 == 0) {
                let status = head.response.status();
                if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                    assert_eq!(head.framing, Framing::Empty);
                }
                assert!(!status.is_informational());
            }
        }
    }

    #[test]
    fn body_less_requests_get_a_zero_length_only_where_a_body_is_expected() {
        let ip = HeaderValue::from_static("1.2.3.4");
        let client = Client { ip: &ip, trusted: true };
        let mut out = Vec::new();
        let mut post = get("/p");
        post.method = Method::POST;
        post.headers.insert("x-forwarded-host", HeaderValue::from_static("outer"));
        encode_head(&post, &client, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST /p HTTP/1.1\r\nhost: example.com\r\nx-forwarded-host: outer\r\nx-forwarded-for: 1.2.3.4\r\n\
             x-forwarded-proto: http\r\ncontent-length: 0\r\n\r\n"
        );
        out.clear();
        let mut delete = get("/d");
        delete.method = Method::DELETE;
        encode_head(&delete, &client, &mut out);
        assert!(!String::from_utf8_lossy(&out).contains("content-length"));
        assert_eq!(parse_length(b"12"), Some(12));
        assert_eq!(parse_length(b"7, 7"), Some(7));
        assert_eq!(parse_length(b"7, 8"), None);
        assert_eq!(parse_length(b"-1"), None);
        assert_eq!(parse_length(b""), None);
    }
}
