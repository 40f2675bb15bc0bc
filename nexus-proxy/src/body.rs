//! The response body the proxy hands back: the upstream's body streamed frame
//! by frame, holding the request's in-flight slot until it is done.

use crate::upstream::InFlight;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use nexus_core::body::GatewayBody;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

/// What the gateway answers with: its own bytes, or an upstream's stream.
pub type ResponseBody = GatewayBody<UpstreamBody>;

pin_project! {
    /// An upstream response body. The request counts as in flight (for
    /// `max_concurrent_requests` and least-request balancing) until this body
    /// is finished or dropped.
    #[derive(Debug)]
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        guard: Option<InFlight>,
    }
}

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, guard: Option<InFlight>) -> Self {
        Self { inner, guard }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        if matches!(res, Poll::Ready(None | Some(Err(_)))) {
            // Finished: release the slot now rather than when hyper drops the body.
            this.guard.take();
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
