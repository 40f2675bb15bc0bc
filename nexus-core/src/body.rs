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
        Self::Full { data: if b.is_empty() { None } else { Some(b) } }
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

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
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
            Self::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Stream { body } => body.size_hint(),
        }
    }
}

/// A request body went over its size limit (the gateway answers 413).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request body is larger than {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit in bytes.
    pub limit: u64,
}

pin_project! {
    /// A body that fails with [`BodyTooLarge`] once more than `limit` bytes have
    /// passed, without buffering (unlike `http_body_util::Limited`, its error is
    /// a type callers can find in an error's source chain).
    ///
    /// ```
    /// use http_body::Body as _;
    /// use nexus_core::body::LimitedBody;
    /// let body = LimitedBody::new(http_body_util::Full::new(bytes::Bytes::from_static(b"12345")), 4);
    /// assert_eq!(body.size_hint().exact(), Some(5));
    /// ```
    #[derive(Debug)]
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        remaining: u64,
        limit: u64,
    }
}

impl<B> LimitedBody<B> {
    /// Limit `inner` to `limit` bytes.
    pub const fn new(inner: B, limit: u64) -> Self {
        Self { inner, remaining: limit, limit }
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<crate::BoxError>,
{
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > *this.remaining {
                        *this.remaining = 0;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: *this.limit }))));
                    }
                    *this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `err` or one of its sources is [`BodyTooLarge`].
pub fn is_body_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<BodyTooLarge>() {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn limited_body_passes_under_and_fails_over() {
        let rt = |b: LimitedBody<http_body_util::Full<Bytes>>| {
            futures_lite_block_on(async move { b.collect().await.map(http_body_util::Collected::to_bytes) })
        };
        assert_eq!(rt(LimitedBody::new(http_body_util::Full::new(Bytes::from_static(b"1234")), 4)).unwrap(), "1234");
        let err = rt(LimitedBody::new(http_body_util::Full::new(Bytes::from_static(b"12345")), 4)).unwrap_err();
        assert!(is_body_too_large(&*err));
    }

    /// A tiny executor for futures that never wait (bodies already in memory).
    fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }
}
