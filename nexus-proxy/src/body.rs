//! The response body the proxy hands back: the upstream's body streamed frame
//! by frame. It drives the upstream connection while it is read, returns the
//! connection to the pool when the response is complete, and holds the
//! request's in-flight slot until then.

use crate::http1::RawBody;
use crate::pool::PooledConn;
use crate::replay::SendBody;
use crate::upstream::InFlight;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use nexus_core::BoxError;
use nexus_core::body::GatewayBody;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A request body the gateway can forward: bytes, sendable, and an error any
/// [`BoxError`] can hold. Every `http_body::Body` of that kind is one (hyper's
/// `Incoming`, axum's `Body`, `http_body_util`'s bodies).
pub trait RequestBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B> RequestBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

/// What the gateway answers with: its own bytes, or an upstream's stream.
/// `B` is the request body type of the upstream connections.
pub type ResponseBody<B> = GatewayBody<UpstreamBody<B>>;

/// The upstream a response is from or about (the `upstream` label of
/// `http_requests_total`): the upstream that answered, or whose failure the
/// gateway answered for (502, 503, 504); empty when the gateway answered before
/// an upstream was chosen (404, 401, 429, ...).
pub fn upstream_of<B>(body: &ResponseBody<B>) -> &str {
    match body {
        GatewayBody::Full { .. } => "",
        GatewayBody::Stream { body } => body.guard.upstream(),
    }
}

/// An upstream response body. The request counts as in flight (for
/// `max_concurrent_requests` and least-request balancing) until this body
/// is finished or dropped; a body dropped early closes its connection.
#[derive(Debug)]
pub struct UpstreamBody<B> {
    inner: Inner,
    /// The connection the body comes from, when the body does not hold it itself (raw
    /// bodies do).
    conn: Option<Held<B>>,
    /// The request's in-flight slot (held until the body is finished), and the upstream's name.
    guard: InFlight<B>,
    /// What rides on the body until it ends (`None` for most: one pointer, so that every
    /// response the gateway moves stays its size).
    tail: Option<Box<Tail>>,
}

/// The connection behind a body read through hyper.
#[derive(Debug)]
enum Held<B> {
    /// An HTTP/1.1 connection, driven by the body and given back to the pool at its end.
    H1(PooledConn<SendBody<B>>),
    /// A stream's place on a multiplexed HTTP/2 connection (given back when dropped).
    H2(#[allow(dead_code)] crate::h2::Stream),
}

/// What is done when a body ends: its access-log line is written, a gRPC answer's
/// `grpc-status` counted; and a gRPC call's deadline (the stream is ended with
/// `DEADLINE_EXCEEDED` when it passes).
#[derive(Debug, Default)]
struct Tail {
    record: Option<crate::access_log::Record>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    counts: Option<Arc<crate::metrics::GrpcResponses>>,
}

/// Where the bytes come from: hyper's client connection (requests that had a body,
/// upgrades) or the lean exchange of [`crate::http1`].
#[derive(Debug)]
enum Inner {
    Hyper(Incoming),
    Raw(RawBody),
    /// The gateway's own answer about this upstream (its JSON error); `None` once sent.
    Answer(Option<Bytes>),
}

impl<B> UpstreamBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(inner: Incoming, conn: Option<PooledConn<SendBody<B>>>, guard: InFlight<B>) -> Self {
        Self::start(Inner::Hyper(inner), conn.map(Held::H1), guard)
    }

    pub(crate) fn h2(inner: Incoming, stream: crate::h2::Stream, guard: InFlight<B>) -> Self {
        Self::start(Inner::Hyper(inner), Some(Held::H2(stream)), guard)
    }

    pub(crate) fn raw(inner: RawBody, guard: InFlight<B>) -> Self {
        Self::start(Inner::Raw(inner), None, guard)
    }

    /// The gateway's answer (`data`) about the upstream `tag` names ([`InFlight::detached`]).
    pub(crate) fn answer(data: Option<Bytes>, tag: InFlight<B>) -> Self {
        Self { inner: Inner::Answer(data), conn: None, guard: tag, tail: None }
    }

    fn start(inner: Inner, conn: Option<Held<B>>, guard: InFlight<B>) -> Self {
        let mut body = Self { inner, conn, guard, tail: None };
        if body.is_end_stream() {
            // No body to read (HEAD, 204, 304, empty): the exchange is over now.
            body.finish();
        }
        body
    }

    /// The response is complete: give the connection back to its pool and free the slot.
    fn finish(&mut self) {
        self.write_log();
        if self.guard.is_held() {
            let pool = self.guard.endpoint().pool();
            if let Some(Held::H1(conn)) = self.conn.take() {
                pool.checkin(conn);
            }
            if let Inner::Raw(raw) = &mut self.inner
                && let Some(conn) = raw.take_reusable()
            {
                pool.checkin_raw(conn);
            }
            self.guard.release();
        }
    }

    /// A broken exchange: the connection is dropped (closed), never pooled.
    fn abort(&mut self) {
        self.write_log();
        self.conn = None;
        self.guard.release();
    }

    /// The deadline passed: the upstream's stream goes, the client's ends with DEADLINE_EXCEEDED.
    fn deadline_exceeded(&mut self) -> Frame<Bytes> {
        self.inner = Inner::Answer(None);
        self.abort();
        let mut trailers = http::HeaderMap::new();
        trailers.insert(nexus_core::grpc::GRPC_STATUS, http::HeaderValue::from_static("4"));
        trailers.insert(nexus_core::grpc::GRPC_MESSAGE, http::HeaderValue::from_static("deadline exceeded"));
        if let Some(counts) = self.tail.as_mut().and_then(|t| t.counts.take()) {
            counts.count(trailers.get(nexus_core::grpc::GRPC_STATUS));
        }
        Frame::trailers(trailers)
    }
}

impl<B> UpstreamBody<B> {
    /// Write `record` to the access log when this body ends (at once if it has: nothing is
    /// left to send and the slot is given back).
    pub(crate) fn log_at_end(&mut self, record: crate::access_log::Record) {
        self.tail.get_or_insert_default().record = Some(record);
        if self.is_over() && !self.guard.is_held() {
            self.write_log();
        }
    }

    /// Count this gRPC answer's `grpc-status` in `counts` when its trailers come (or as 13
    /// when it ends without them).
    pub(crate) fn count_grpc_at_end(&mut self, counts: Arc<crate::metrics::GrpcResponses>) {
        if self.is_over() {
            counts.count(None);
        } else {
            self.tail.get_or_insert_default().counts = Some(counts);
        }
    }

    /// A gRPC call's deadline: when it passes before the upstream's stream ended, the stream
    /// is dropped (HTTP/2 resets it: the upstream sees the call cancelled) and the client's
    /// ends with trailers `grpc-status: 4` (`DEADLINE_EXCEEDED`).
    pub(crate) fn grpc_deadline(&mut self, at: tokio::time::Instant) {
        if !self.is_over() {
            self.tail.get_or_insert_default().deadline = Some(Box::pin(tokio::time::sleep_until(at)));
        }
    }

    fn is_over(&self) -> bool {
        match &self.inner {
            Inner::Hyper(b) => http_body::Body::is_end_stream(b),
            Inner::Raw(b) => http_body::Body::is_end_stream(b),
            Inner::Answer(d) => d.is_none(),
        }
    }

    /// Write the access-log line, if one rides on this body (once), naming who answered.
    fn write_log(&mut self) {
        if let Some(record) = self.tail.as_mut().and_then(|t| t.record.take()) {
            record.write(Some(self.guard.upstream()), self.guard.endpoint_name());
        }
    }
}

impl<B> Drop for UpstreamBody<B> {
    /// A body dropped before its end (the client went away) still gets its line; a gRPC
    /// answer that never had its trailers is counted as INTERNAL.
    fn drop(&mut self) {
        self.write_log();
        if let Some(counts) = self.tail.as_mut().and_then(|t| t.counts.take()) {
            counts.count(None);
        }
    }
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(deadline) = this.tail.as_mut().and_then(|t| t.deadline.as_mut())
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Ok(this.deadline_exceeded())));
        }
        let res = match &mut this.inner {
            Inner::Hyper(inner) => {
                if let Some(Held::H1(conn)) = this.conn.as_mut() {
                    // Drive the upstream connection: it is what fills `inner`.
                    conn.drive(cx);
                }
                Pin::new(inner).poll_frame(cx).map_err(BoxError::from)
            }
            Inner::Raw(inner) => Pin::new(inner).poll_frame(cx).map_err(BoxError::from),
            Inner::Answer(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(tail)) = (&res, this.tail.as_mut()) {
            if let Some(data) = frame.data_ref() {
                if let Some(record) = &mut tail.record {
                    record.bytes += data.len() as u64;
                }
            } else if let (Some(trailers), Some(counts)) = (frame.trailers_ref(), tail.counts.take()) {
                counts.count(trailers.get(nexus_core::grpc::GRPC_STATUS));
            }
        }
        match &res {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) if this.is_end_stream() => this.finish(),
            Poll::Ready(Some(Err(_))) => this.abort(),
            _ => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.is_over()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(b) => b.size_hint(),
            Inner::Raw(b) => b.size_hint(),
            Inner::Answer(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
