//! The request body sent upstream: the client's stream as it is, or a body
//! read ahead (up to [`MAX_REPLAY_BODY`]) so that it can be sent again on a retry.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use nexus_core::retry::MAX_REPLAY_BODY;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A request body on its way upstream.
#[derive(Debug)]
pub(crate) enum SendBody<B> {
    /// The client's body, streamed.
    Stream(B),
    /// A body read whole, sent from memory (and again on a retry).
    Buffered {
        /// The bytes not sent yet.
        data: Option<Bytes>,
        /// Trailers, after the data.
        trailers: Option<HeaderMap>,
    },
    /// The part read ahead, then the rest of the stream (too large to replay).
    Prefixed {
        /// The bytes read ahead, not sent yet.
        head: Option<Bytes>,
        /// The rest.
        rest: B,
    },
}

/// A fully read body that can be sent any number of times.
#[derive(Debug, Clone, Default)]
pub(crate) struct Replay {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replay {
    pub(crate) fn body<B>(&self) -> SendBody<B> {
        SendBody::Buffered { data: (!self.data.is_empty()).then(|| self.data.clone()), trailers: self.trailers.clone() }
    }
}

impl<B> SendBody<B> {
    /// A body already read whole becomes a [`Replay`]; any other is sent once.
    // The `Err` side is the body handed back, not an error to pass around.
    #[allow(clippy::result_large_err)]
    pub(crate) fn into_replay(self) -> Result<Replay, Self> {
        match self {
            Self::Buffered { data, trailers } => Ok(Replay { data: data.unwrap_or_default(), trailers }),
            other => Err(other),
        }
    }
}

impl<B> SendBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<nexus_core::BoxError>,
{
    /// This body kept for replay when it fits in [`MAX_REPLAY_BODY`] (read ahead if
    /// still a stream); otherwise handed back to be sent once.
    pub(crate) async fn replayable(self) -> Result<Result<Replay, Self>, crate::error::ProxyError> {
        match self {
            Self::Stream(b) => read_ahead(b).await.map_err(|e| crate::error::ProxyError::client_body(e.into())),
            ready => Ok(ready.into_replay()),
        }
    }
}

/// Read `body` ahead for replay: `Ok(Some)` when it ends within the limit (the
/// empty body of a GET costs nothing), `Ok(None)` with the body to stream once
/// otherwise. Errors are the client's body errors (413 included).
pub(crate) async fn read_ahead<B>(mut body: B) -> Result<Result<Replay, SendBody<B>>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    if body.is_end_stream() {
        return Ok(Ok(Replay::default()));
    }
    if body.size_hint().lower() > MAX_REPLAY_BODY as u64 {
        return Ok(Err(SendBody::Stream(body)));
    }
    let mut buf = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                buf.extend_from_slice(&data);
                if buf.len() > MAX_REPLAY_BODY {
                    return Ok(Err(SendBody::Prefixed { head: Some(buf.freeze()), rest: body }));
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok(Ok(Replay { data: buf.freeze(), trailers }))
}

impl<B> Body for SendBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.get_mut() {
            Self::Stream(b) => Pin::new(b).poll_frame(cx),
            Self::Buffered { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Self::Prefixed { head, rest } => match head.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Stream(b) => b.is_end_stream(),
            Self::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            Self::Prefixed { head, rest } => head.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Stream(b) => b.size_hint(),
            Self::Buffered { data, .. } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Prefixed { head, rest } => {
                let h = head.as_ref().map_or(0, |d| d.len() as u64);
                let r = rest.size_hint();
                let mut s = SizeHint::new();
                s.set_lower(r.lower() + h);
                if let Some(u) = r.upper() {
                    s.set_upper(u + h);
                }
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    #[tokio::test]
    async fn small_bodies_replay_and_large_ones_stream_once() {
        let Ok(replay) = read_ahead(Full::new(Bytes::from_static(b"hello"))).await.unwrap() else {
            panic!("a small body is kept");
        };
        for _ in 0..2 {
            let b: SendBody<Full<Bytes>> = replay.body();
            assert_eq!(b.collect().await.unwrap().to_bytes(), "hello");
        }
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            (0..20).map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 8192])))).collect();
        let big = StreamBody::new(futures_util::stream::iter(chunks));
        let Err(once) = read_ahead(big).await.unwrap() else { panic!("160 KiB is not kept") };
        assert!(matches!(once, SendBody::Prefixed { .. }));
        assert_eq!(once.collect().await.unwrap().to_bytes().len(), 20 * 8192, "nothing is lost");
    }
}
