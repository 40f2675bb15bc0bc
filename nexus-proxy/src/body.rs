//! The response body the proxy hands back: the upstream's body streamed frame
//! by frame. It drives the upstream connection while it is read, returns the
//! connection to the pool when the response is complete, and holds the
//! request's in-flight slot until then.

use crate::pool::PooledConn;
use crate::replay::SendBody;
use crate::upstream::InFlight;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use nexus_core::BoxError;
use nexus_core::body::GatewayBody;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

/// What the gateway answers with: its own bytes, or an upstream's stream.
/// `B` is the request body type of the upstream connections.
pub type ResponseBody<B> = GatewayBody<UpstreamBody<B>>;

pin_project! {
    /// An upstream response body. The request counts as in flight (for
    /// `max_concurrent_requests` and least-request balancing) until this body
    /// is finished or dropped; a body dropped early closes its connection.
    #[derive(Debug)]
    pub struct UpstreamBody<B> {
        #[pin]
        inner: Incoming,
        conn: Option<PooledConn<SendBody<B>>>,
        guard: Option<InFlight<B>>,
    }
}

impl<B> UpstreamBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(inner: Incoming, conn: Option<PooledConn<SendBody<B>>>, guard: Option<InFlight<B>>) -> Self {
        let mut body = Self { inner, conn, guard };
        if body.inner.is_end_stream() {
            // No body to read (HEAD, 204, 304, empty): the exchange is over now.
            finish(&mut body.conn, &mut body.guard);
        }
        body
    }
}

/// The response is complete: give the connection back to its pool and free the slot.
fn finish<B>(conn: &mut Option<PooledConn<SendBody<B>>>, guard: &mut Option<InFlight<B>>)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    if let (Some(conn), Some(guard)) = (conn.take(), guard.as_ref()) {
        guard.endpoint().pool().checkin(conn);
    }
    *guard = None;
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        if let Some(conn) = this.conn.as_mut() {
            // Drive the upstream connection: it is what fills `inner`.
            conn.drive(cx);
        }
        let res = this.inner.as_mut().poll_frame(cx);
        match &res {
            Poll::Ready(None) => finish(this.conn, this.guard),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => finish(this.conn, this.guard),
            Poll::Ready(Some(Err(_))) => {
                // A broken exchange: the connection is dropped (closed), never pooled.
                this.conn.take();
                this.guard.take();
            }
            _ => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
