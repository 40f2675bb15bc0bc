//! The HTTP/1.1 server side: [`Server::serve_connection`] serves one accepted connection,
//! first on the lean path below, then, for what that path does not take, with hyper.
//!
//! **The lean path** takes HTTP/1.1 requests (and HTTP/1.0 ones with a `Host`) without a
//! body, and requests whose body is framed by one `Content-Length` of at most 64 KiB or sent
//! in at most 128 plain chunks of at most 64 KiB in all: such a body is read whole beside its
//! head, within the head's deadline, and the request carries it as [`ClientBody::Full`] (a body still
//! arriving at the deadline is hyper's: the connection is handed over with what was read, and
//! hyper streams the rest). A request head is parsed with
//! `httparse` straight from the connection's read buffer ([`super::head::parse_request`]:
//! field values are zero-copy slices of it), the request goes to the [`Handler`] like any
//! other, and the response is encoded into one write buffer: with a body that is already
//! there (the gateway's own answers, a small upstream response), head and body leave in one
//! `write`. Measured with `perf stat` under `wrk -c50`, hyper's server connection cost ~11k
//! user-space instructions per request beside what the gateway does; this loop is a
//! fraction of that.
//!
//! **Hyper takes the rest of the connection**, with the bytes already read replayed first
//! ([`super::sniff::HeadSniffer`]): a request with a larger body, any other
//! `Transfer-Encoding`, more than one `Content-Length` or one that is not plain digits,
//! `Expect`, an upgrade or `CONNECT`, HTTP/1.0 without `Host` or with a transfer coding, a
//! request target that is not origin-form, the HTTP/2 preface (h2c with prior knowledge, first
//! bytes only), a head with more than 64 fields. A head that is not HTTP/1 (anything `httparse` refuses but
//! too many fields), or whose target or field values are invalid, is answered on the lean
//! path as SPEC §4 says: the JSON 400 `bad_request` with a request id, then close (hyper
//! would send a bare 400); so is a head larger than hyper's buffer or with more than 100
//! fields, with the JSON 431. So streaming bodies,
//! 100-continue, upgrades and h2c stay hyper's, and the server limits hold on both paths:
//! `header_read_timeout` bounds each head on the lean path exactly as hyper does (from the
//! moment a head is awaited, so an idle keep-alive connection closes after it too), the
//! header-size limit is the handler's to check on every request, and every head hyper reads
//! after a hand-off is judged first by the same rules (the sniffer's gate): one hyper would
//! refuse with a bare 400/431, or accept by dropping `Content-Length` beside
//! `Transfer-Encoding`, reaches the handler as a stand-in request whose
//! [`Connection::refusal`] says which JSON error to answer before closing.
//!
//! **Shutdown**: the connection watches the [`Phase`]. Stopping closes an idle lean
//! connection at once; on hyper's side, draining sends HTTP/2 clients GOAWAY (HTTP/1
//! clients get `Connection: close` from the handler) and stopping ends every connection
//! gracefully.

use super::head::{Parsed, Scratch, parse_request};
use super::sniff::{HeadSniffer, Refusal};
use super::streams::{StreamGuard, Streams, Tracked, Verdict};
use super::write::respond;
use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use nexus_core::error::REQUEST_ID;
use nexus_core::{ErrorCode, GatewayError};
use nexus_health::shutdown::Phase;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// A client's request body: hyper's stream, or, for a request the lean path took, none or
/// the whole (small) body it read.
#[derive(Debug)]
pub enum ClientBody {
    /// The body as hyper reads it (HTTP/1.1 with a body the lean path does not read whole,
    /// HTTP/2, upgrades).
    Hyper(Incoming),
    /// No body (a request the lean path took without one).
    Empty,
    /// A body the lean path read whole (framed by `Content-Length`, or a few plain chunks:
    /// their data; at most 64 KiB); `None` once it has been polled.
    Full(Option<Bytes>),
}

impl ClientBody {
    /// The request came by the lean HTTP/1.1 path (so it is HTTP/1.1 with a `Host` field).
    pub fn is_lean(&self) -> bool {
        !matches!(self, Self::Hyper(_))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Hyper(b) => std::pin::Pin::new(b).poll_frame(cx),
            Self::Empty => Poll::Ready(None),
            Self::Full(b) => Poll::Ready(b.take().map(|data| Ok(http_body::Frame::data(data)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::Empty | Self::Full(None) => true,
            Self::Full(Some(_)) => false,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::Empty | Self::Full(None) => http_body::SizeHint::with_exact(0),
            Self::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
        }
    }
}

/// What a connection has learnt about itself, shared by its requests.
#[derive(Debug)]
pub struct Connection {
    /// Why the current hyper request must be refused (a [`Refusal`] as `u8`, 0: it need not).
    refusal: AtomicU8,
    /// The index among hyper's requests of the head the gate refused (`u64::MAX`: none), and why.
    refused_at: AtomicU64,
    refused_for: AtomicU8,
    /// Requests hyper has handed over on this connection.
    hyper_requests: AtomicU64,
    h2: AtomicBool,
}

impl Default for Connection {
    fn default() -> Self {
        Self {
            refusal: AtomicU8::new(0),
            refused_at: AtomicU64::new(u64::MAX),
            refused_for: AtomicU8::new(0),
            hyper_requests: AtomicU64::new(0),
            h2: AtomicBool::new(false),
        }
    }
}

impl Connection {
    /// The request being handled stands in for a head the server refused before hyper read
    /// it (see [`Refusal`]): answer the refusal's JSON error and close the connection. (For
    /// a head with both `Content-Length` and `Transfer-Encoding`, among others: hyper would
    /// drop `Content-Length`, where SPEC §4 and §10 want 400 and close.)
    pub fn refusal(&self) -> Option<Refusal> {
        Refusal::from_u8(self.refusal.load(Ordering::Relaxed))
    }

    /// The gate refused head number `index` of hyper's part of the connection (the last
    /// head it releases: nothing follows it).
    pub(super) fn refuse_at(&self, index: u64, why: Refusal) {
        self.refused_for.store(why as u8, Ordering::Relaxed);
        self.refused_at.store(index, Ordering::Relaxed);
    }

    /// The head the gate refused, and why.
    #[cfg(any(test, fuzzing))]
    pub(super) fn refused(&self) -> Option<(u64, Refusal)> {
        let at = self.refused_at.load(Ordering::Relaxed);
        (at != u64::MAX).then(|| (at, Refusal::from_u8(self.refused_for.load(Ordering::Relaxed)).expect("a refusal")))
    }

    /// Called as hyper hands over its next HTTP/1 request: whether it is the stand-in for
    /// the refused head. (HTTP/1 requests are handed over one at a time, in order.)
    fn next_hyper_request(&self) {
        let index = self.hyper_requests.fetch_add(1, Ordering::Relaxed);
        let why =
            if self.refused_at.load(Ordering::Relaxed) == index { self.refused_for.load(Ordering::Relaxed) } else { 0 };
        self.refusal.store(why, Ordering::Relaxed);
    }

    /// The client speaks HTTP/2 (learnt from its first request).
    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }
}

/// Serves the requests of one connection ([`Server::serve_connection`]).
///
/// ```
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use nexus_proxy::http1::{ClientBody, Connection, Handler};
///
/// struct Hello;
///
/// impl Handler for Hello {
///     type Body = Full<bytes::Bytes>;
///
///     async fn call(&self, _conn: &Connection, req: Request<ClientBody>) -> Response<Self::Body> {
///         Response::new(Full::from(format!("hello from {}", req.uri().path())))
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The response body.
    type Body: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static;

    /// Answer `req`, a request on `conn`.
    fn call(&self, conn: &Connection, req: Request<ClientBody>) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// A connection's handler and what it learnt, shared by hyper's requests and the sniffer.
struct Served<H> {
    handler: H,
    conn: Connection,
    streams: Arc<Streams>,
}

impl<H> AsRef<Connection> for Served<H> {
    fn as_ref(&self) -> &Connection {
        &self.conn
    }
}

impl<H> AsRef<Streams> for Served<H> {
    fn as_ref(&self) -> &Streams {
        &self.streams
    }
}

/// How a connection left the lean path.
#[derive(Debug)]
enum Outcome<S> {
    /// Closed (by either side, a timeout, shutdown, or an error).
    Closed,
    /// The rest of the connection is hyper's: the bytes read and not consumed yet come first.
    Handoff(Bytes, S),
}

/// The HTTP/1.1 (and, through hyper, HTTP/2 cleartext) server of a listener.
#[derive(Debug)]
pub struct Server {
    builder: auto::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    /// hyper's read buffer: a head larger than this is the JSON 431 on the lean path.
    max_head: usize,
    /// An HTTP/2 connection with no open stream this long gets GOAWAY.
    h2_idle_timeout: Duration,
}

impl Server {
    /// A server whose request heads must arrive within `header_read_timeout` and whose
    /// hyper side buffers enough for heads of `max_header_bytes` (the handler answers the
    /// JSON 431 over the limit itself).
    ///
    /// ```
    /// let server = nexus_proxy::http1::Server::new(std::time::Duration::from_secs(10), 64 * 1024);
    /// # drop(server);
    /// ```
    pub fn new(header_read_timeout: Duration, max_header_bytes: u64) -> Self {
        let max_headers = usize::try_from(max_header_bytes).unwrap_or(1 << 20);
        // hyper's default buffer (~400 KiB) or twice the header limit, whichever is larger.
        let max_head = (2 * max_headers + 16 * 1024).max(8192 + 4096 * 100);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .max_buf_size(max_head)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(2 * max_headers).unwrap_or(u32::MAX));
        Self { builder, header_read_timeout, max_head, h2_idle_timeout: Duration::from_secs(60) }
    }

    /// How long a request head may take (also the bound of a TLS handshake before it).
    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout
    }

    /// Close HTTP/2 connections with no open stream for `idle` (GOAWAY first). Default 60 s.
    /// (A connection that opens with the HTTP/2 preface must also open its first stream
    /// within the header read timeout, or it is closed.)
    ///
    /// ```
    /// use std::time::Duration;
    /// let server = nexus_proxy::http1::Server::new(Duration::from_secs(10), 64 * 1024)
    ///     .with_h2_idle_timeout(Duration::from_secs(30));
    /// # drop(server);
    /// ```
    #[must_use]
    pub fn with_h2_idle_timeout(mut self, idle: Duration) -> Self {
        self.h2_idle_timeout = idle;
        self
    }

    /// Serve `stream` with `handler` until it closes, following `phase` (see the module
    /// docs): the lean path first, hyper for what it does not take. Any byte stream: a TCP
    /// connection, or a TLS one after its handshake (ALPN `h2` then starts with the preface).
    pub async fn serve_connection<H, S>(&self, stream: S, handler: H, mut phase: watch::Receiver<Phase>)
    where
        H: Handler,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Connection::default();
        let (prefix, stream) =
            match serve_lean(stream, &handler, &conn, (self.header_read_timeout, self.max_head), phase.clone()).await {
                Outcome::Closed => return,
                Outcome::Handoff(prefix, stream) => (prefix, stream),
            };
        // Let the loop below look at the current phase once, whatever it saw before.
        phase.mark_changed();
        // HTTP/2 with prior knowledge: the stream timers of SPEC §10 apply.
        let h2_prior = prefix.starts_with(H2_PREFACE);
        let served = Arc::new(Served { handler, conn, streams: Arc::new(Streams::default()) });
        let io = TokioIo::new(HeadSniffer::new(prefix, stream, Arc::clone(&served), h2_prior, self.max_head));
        let watched = Arc::clone(&served);
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let served = Arc::clone(&served);
            async move {
                let Served { handler, conn, streams } = &*served;
                let guard = if req.version() == Version::HTTP_2 {
                    conn.h2.store(true, Ordering::Relaxed);
                    streams.open()
                } else {
                    conn.next_hyper_request();
                    StreamGuard::default()
                };
                let res = handler.call(conn, req.map(ClientBody::Hyper)).await;
                Ok::<_, Infallible>(res.map(|body| Tracked::new(body, guard)))
            }
        });
        let connection = self.builder.serve_connection_with_upgrades(io, svc);
        let mut connection = pin!(connection);
        let mut goaway_sent = false;
        let mut h2_timer = pin!(tokio::time::sleep(self.header_read_timeout));
        loop {
            tokio::select! {
                res = connection.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                // A header block left open at the end of a read: its deadline may come
                // before the one the timer is armed for.
                () = watched.streams.block_opened.notified(), if h2_prior => {
                    let now = tokio::time::Instant::now();
                    if let Ok(next) = watched.streams.check(now, self.header_read_timeout, self.h2_idle_timeout) {
                        h2_timer.as_mut().reset(next);
                    }
                }
                () = h2_timer.as_mut(), if h2_prior => {
                    let now = tokio::time::Instant::now();
                    match watched.streams.check(now, self.header_read_timeout, self.h2_idle_timeout) {
                        Ok(next) => h2_timer.as_mut().reset(next),
                        // No stream in time: nothing to finish, the connection just closes.
                        Err(Verdict::Close) => return,
                        Err(Verdict::Goaway) if goaway_sent => h2_timer.as_mut().reset(now + self.header_read_timeout),
                        Err(Verdict::Goaway) => {
                            connection.as_mut().graceful_shutdown();
                            goaway_sent = true;
                            // Still watched: a header block left open keeps the connection
                            // from closing after GOAWAY.
                            h2_timer.as_mut().reset(now + self.header_read_timeout);
                        }
                    }
                }
                changed = phase.changed(), if !goaway_sent => {
                    let now = if changed.is_err() { Phase::Stopping } else { *phase.borrow() };
                    // Draining: HTTP/2 gets GOAWAY now (HTTP/1 gets Connection: close per
                    // response); stopping: every connection finishes what it has and closes.
                    if now == Phase::Stopping || watched.conn.is_h2() {
                        connection.as_mut().graceful_shutdown();
                        goaway_sent = true;
                    }
                }
            }
        }
    }
}

/// Serve `stream` on the lean path until it closes or needs hyper.
async fn serve_lean<H: Handler, S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    handler: &H,
    conn: &Connection,
    (header_read_timeout, max_head): (Duration, usize),
    phase: watch::Receiver<Phase>,
) -> Outcome<S> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut wbuf: Vec<u8> = Vec::with_capacity(4 * 1024);
    let mut scratch = Scratch::default();
    // Both waits live as long as the connection, so a request costs neither a timer
    // registration nor a watch subscription: the timer is armed for some earlier head's
    // deadline and, when it fires before this head's, is re-armed (once per timeout
    // period, not per request).
    // Nothing served yet on this connection.
    let mut fresh = true;
    let mut timer = pin!(tokio::time::sleep(header_read_timeout));
    let mut stopping = pin!(nexus_health::shutdown::stopping(phase));
    loop {
        // Read one head, within header_read_timeout (hyper's semantics: from the moment a
        // head is awaited, so an idle keep-alive connection closes after it too).
        let now = tokio::time::Instant::now();
        // (A timeout too large to add is a deadline a century away, not a panic.)
        let deadline =
            now.checked_add(header_read_timeout).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        // A whole head whose body is still on its way: at the deadline, hyper takes the
        // connection (and streams the rest of the body) instead of a close.
        let mut awaiting_body = false;
        let (request, close) = loop {
            if !buf.is_empty() {
                // The HTTP/2 preface is taken only as the first bytes of a connection (SPEC
                // §10); after a request it is a malformed HTTP/1 head (400, close).
                if fresh && buf.starts_with(&H2_PREFACE[..buf.len().min(H2_PREFACE.len())]) {
                    if buf.len() >= H2_PREFACE.len() {
                        return Outcome::Handoff(buf.freeze(), stream);
                    }
                } else {
                    match parse_request(&mut buf, &mut scratch) {
                        Parsed::Ready { request, close } => break (request, close),
                        Parsed::AwaitBody(whole) => {
                            awaiting_body = true;
                            buf.reserve(whole - buf.len());
                        }
                        Parsed::Handoff => return Outcome::Handoff(buf.freeze(), stream),
                        Parsed::BadRequest(message) => {
                            // SPEC §4: the JSON `bad_request` with its request id, then close.
                            refuse(&mut stream, &mut wbuf, ErrorCode::BadRequest, message).await;
                            return Outcome::Closed;
                        }
                        Parsed::TooLarge => {
                            refuse(&mut stream, &mut wbuf, ErrorCode::HeadersTooLarge, "too many header fields").await;
                            return Outcome::Closed;
                        }
                        // Larger than hyper would read: the JSON 431 (hyper's is bare).
                        Parsed::Partial if buf.len() > max_head => {
                            refuse(&mut stream, &mut wbuf, ErrorCode::HeadersTooLarge, "request head too large").await;
                            return Outcome::Closed;
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
                        return if awaiting_body { Outcome::Handoff(buf.freeze(), stream) } else { Outcome::Closed };
                    }
                    timer.as_mut().reset(deadline);
                }
                // Stopping: an idle connection closes now.
                () = stopping.as_mut(), if buf.is_empty() => return Outcome::Closed,
            }
        };
        fresh = false;
        let head_request = request.method() == Method::HEAD;
        let http10 = request.version() == Version::HTTP_10;
        let response = handler.call(conn, request).await;
        match respond(&mut stream, &mut wbuf, response, head_request, (close, http10)).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return Outcome::Closed,
        }
    }
}

/// Answer the JSON error of SPEC §4 with a new request id, for a head that never became a
/// request; the caller closes the connection.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, wbuf: &mut Vec<u8>, code: ErrorCode, message: &'static str) {
    let id = nexus_middleware::request_id::generate();
    let mut res: Response<http_body_util::Full<Bytes>> =
        GatewayError::new(code).with_message(message).into_response(id.to_str().unwrap_or(""));
    res.headers_mut().insert(REQUEST_ID, id);
    let _ = respond(stream, wbuf, res, false, (true, false)).await;
}
