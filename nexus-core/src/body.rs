//! [`GatewayBody`]: either a body the gateway made (an error, a probe answer)
//! or a streamed one (the upstream's), without boxing.
//!
//! ```
//! use bytes::Bytes;
//! use http_body::Body as _;
//! use nexus_core::body::GatewayBody;
//! let b: GatewayBody<http_body_util::Empty<Bytes>> = GatewayBody::from(Bytes::from_static(b"hi"));
//! assert_eq!(b.size_hint().exact(), Some(2));
//! ```

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

pub use inner::GatewayBody;
use inner::GatewayBodyProj;

mod inner {
    // pin-project-lite cannot carry docs on enum fields; the variants say it all.
    #![allow(missing_docs)]
    use super::*;

    pin_project! {
        /// A full body made by the gateway (`data`, `None` once sent), or a streamed
        /// inner body `B` passed through frame by frame.
        #[project = GatewayBodyProj]
        #[derive(Debug)]
        pub enum GatewayBody<B> {
            /// Bytes the gateway made.
            Full { data: Option<Bytes> },
            /// A streamed body.
            Stream { #[pin] body: B },
        }
    }
}

impl<B> GatewayBody<B> {
    /// An empty body.
    pub const fn empty() -> Self {
        Self::Full { data: None }
    }

    /// Wrap a streamed body.
    pub const fn stream(body: B) -> Self {
        Self::Stream { body }
    }
}

impl<B> From<Bytes> for GatewayBody<B> {
    fn from(b: Bytes) -> Self {
        Self::Full {
            data: if b.is_empty() { None } else { Some(b) },
        }
    }
}

impl<B> Default for GatewayBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B: Body<Data = Bytes>> Body for GatewayBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            GatewayBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            GatewayBodyProj::Stream { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full { data } => data.is_none(),
            Self::Stream { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Self::Stream { body } => body.size_hint(),
        }
    }
}
