//! The request body sent upstream: the client's stream as it is, or a body
//! read ahead (up to [`MAX_REPLAY_BODY`]) so that it can be sent again on a retry.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use nexus_core::retry::MAX_REPLAY_BODY;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
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
    /// The client's body, streamed, keeping what it sent so that a copy can send it again.
    Kept(Kept<B>),
}

/// A streamed body that keeps the frames it has sent (up to [`MAX_REPLAY_BODY`] bytes), so
/// that [`again`](Self::again) can make a copy that sends them again and then the rest of the
/// stream as it comes. This is how an HTTP/2 request the upstream refused (`REFUSED_STREAM`:
/// never processed) is sent again without holding back a streaming call: nothing waits for
/// the body, and every copy reads the client's stream through the one kept list, so no frame is
/// lost whichever copy read it first.
#[derive(Debug)]
pub(crate) struct Kept<B> {
    shared: Arc<Mutex<Keeping<B>>>,
    /// The next kept frame this copy sends.
    next: usize,
}

#[derive(Debug)]
struct Keeping<B> {
    body: B,
    frames: Vec<KeptFrame>,
    /// Bytes kept so far; past [`MAX_REPLAY_BODY`] nothing more is kept and no copy can be made.
    bytes: usize,
    overflowed: bool,
    /// The client's body has ended.
    ended: bool,
}

#[derive(Debug, Clone)]
enum KeptFrame {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl KeptFrame {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Self::Data(d) => Frame::data(d.clone()),
            Self::Trailers(t) => Frame::trailers(t.clone()),
        }
    }
}

impl<B> Kept<B> {
    pub(crate) fn new(body: B) -> Self {
        let keeping = Keeping { body, frames: Vec::new(), bytes: 0, overflowed: false, ended: false };
        Self { shared: Arc::new(Mutex::new(keeping)), next: 0 }
    }

    /// A copy that sends the body from its start; `None` once more than [`MAX_REPLAY_BODY`]
    /// bytes went out.
    pub(crate) fn again(&self) -> Option<Self> {
        let overflowed = lock(&self.shared).overflowed;
        (!overflowed).then(|| self.again_unchecked())
    }

    /// A handle on the same body from its start, to call [`again`](Self::again) on later.
    pub(crate) fn again_unchecked(&self) -> Self {
        Self { shared: Arc::clone(&self.shared), next: 0 }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B> Kept<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut k = lock(&self.shared);
        if let Some(kept) = k.frames.get(self.next) {
            self.next += 1;
            return Poll::Ready(Some(Ok(kept.frame())));
        }
        if k.ended {
            return Poll::Ready(None);
        }
        if Arc::strong_count(&self.shared) == 1 && !k.overflowed {
            // No other handle is left to send the body again (the request was answered, or
            // this is the last try), and this one has sent what was kept: keep nothing more. A
            // long streaming call does not hold its first 64 KiB to its end.
            k.overflowed = true;
            k.frames = Vec::new();
            self.next = 0;
        }
        let polled = Pin::new(&mut k.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => k.ended = true,
            Poll::Ready(Some(Ok(frame))) if !k.overflowed => {
                let kept = match (frame.data_ref(), frame.trailers_ref()) {
                    (Some(d), _) => Some(KeptFrame::Data(d.clone())),
                    (None, Some(t)) => Some(KeptFrame::Trailers(t.clone())),
                    (None, None) => None,
                };
                k.bytes += frame.data_ref().map_or(0, Bytes::len);
                if k.bytes > MAX_REPLAY_BODY {
                    k.overflowed = true;
                    k.frames = Vec::new();
                } else if let Some(kept) = kept {
                    k.frames.push(kept);
                    self.next = k.frames.len();
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let k = lock(&self.shared);
        self.next >= k.frames.len() && (k.ended || k.body.is_end_stream())
    }
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
    /// A handle that [`resend`](Self::resend) can make this body again from: for a body read
    /// whole, or one that keeps what it sends ([`Kept`]); `None` for a body sent once.
    pub(crate) fn spare(&self) -> Option<Self> {
        match self {
            Self::Buffered { data, trailers } => {
                Some(Self::Buffered { data: data.clone(), trailers: trailers.clone() })
            }
            Self::Kept(k) => Some(Self::Kept(k.again_unchecked())),
            Self::Stream(_) | Self::Prefixed { .. } => None,
        }
    }

    /// The body again from its start, made from a [`spare`](Self::spare); `None` when it can no
    /// longer be (a kept body that sent more than [`MAX_REPLAY_BODY`]).
    pub(crate) fn resend(&self) -> Option<Self> {
        match self {
            Self::Kept(k) => k.again().map(Self::Kept),
            other => other.spare(),
        }
    }

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

/// What [`SendBody::into_whole`] found.
#[derive(Debug)]
pub(crate) enum Whole<B> {
    /// The whole body, here now.
    Here(Bytes),
    /// Not all here (or not small): the body to stream, nothing of it lost.
    Not(SendBody<B>),
    /// The client's body failed.
    Failed(crate::error::ProxyError),
}

impl<B> SendBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<nexus_core::BoxError>,
{
    /// The whole body when it is at most `max` bytes and needs no waiting: one that was read
    /// ahead, or a stream of known length whose data is all here (a body the lean server
    /// read, or one hyper has received). A stream is polled once, without a waker of this
    /// task's (`Pending` consumes nothing, and the next poll registers the real one).
    pub(crate) fn into_whole(self, max: usize) -> Whole<B> {
        match self {
            Self::Buffered { data: Some(data), trailers: None } if data.len() <= max => Whole::Here(data),
            Self::Stream(mut body) => {
                let Some(len) = body.size_hint().exact().filter(|n| (1..=max as u64).contains(n)) else {
                    return Whole::Not(Self::Stream(body));
                };
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match Pin::new(&mut body).poll_frame(&mut cx) {
                    Poll::Pending => Whole::Not(Self::Stream(body)),
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) if data.len() as u64 == len && body.is_end_stream() => Whole::Here(data),
                        Ok(data) => Whole::Not(Self::Prefixed { head: Some(data), rest: body }),
                        // Trailers before the data a known length promised: a broken body.
                        Err(_) => {
                            Whole::Failed(crate::error::ProxyError::client_body("trailers before the body".into()))
                        }
                    },
                    Poll::Ready(Some(Err(e))) => Whole::Failed(crate::error::ProxyError::client_body(e.into())),
                    Poll::Ready(None) => {
                        Whole::Failed(crate::error::ProxyError::client_body("the body ended before its length".into()))
                    }
                }
            }
            other => Whole::Not(other),
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
            Self::Kept(k) => k.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Stream(b) => b.is_end_stream(),
            Self::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            Self::Prefixed { head, rest } => head.is_none() && rest.is_end_stream(),
            Self::Kept(k) => k.is_end_stream(),
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
            Self::Kept(_) => SizeHint::new(),
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

    /// A body of a declared length whose frames come from a channel.
    struct Declared {
        len: u64,
        rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
        ended: bool,
    }

    impl Body for Declared {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let polled = self.rx.poll_recv(cx);
            if let Poll::Ready(None) = polled {
                self.ended = true;
            }
            polled
        }
        fn is_end_stream(&self) -> bool {
            self.ended || self.rx.is_closed() && self.rx.is_empty()
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.len)
        }
    }

    fn declared(len: u64) -> (tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>, SendBody<Declared>) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (tx, SendBody::Stream(Declared { len, rx, ended: false }))
    }

    #[tokio::test]
    async fn a_whole_body_is_taken_as_it_is_and_any_other_loses_nothing() {
        // Read ahead, or all here: taken.
        let buffered: SendBody<Declared> =
            SendBody::Buffered { data: Some(Bytes::from_static(b"abc")), trailers: None };
        assert!(matches!(buffered.into_whole(64), Whole::Here(d) if d == "abc"));
        let full = SendBody::Stream(Full::new(Bytes::from_static(b"hello")));
        assert!(matches!(full.into_whole(64), Whole::Here(d) if d == "hello"));
        // Over the limit: not even polled.
        let full = SendBody::Stream(Full::new(Bytes::from_static(b"hello")));
        let Whole::Not(SendBody::Stream(rest)) = full.into_whole(4) else { panic!("5 bytes are over 4") };
        assert_eq!(rest.collect().await.unwrap().to_bytes(), "hello");
        // Nothing here yet: handed back untouched, and it still delivers.
        let (tx, body) = declared(5);
        let Whole::Not(body) = body.into_whole(64) else { panic!("nothing has arrived") };
        tx.send(Ok(Frame::data(Bytes::from_static(b"hello")))).await.unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        // Only part of it here: what was read goes first, then the rest.
        let (tx, body) = declared(10);
        tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await.unwrap();
        let Whole::Not(body @ SendBody::Prefixed { .. }) = body.into_whole(64) else { panic!("half a body") };
        tx.send(Ok(Frame::data(Bytes::from_static(b" half")))).await.unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "first half");
        // All of it here, in one frame, and the stream ended: taken.
        let (tx, body) = declared(5);
        tx.send(Ok(Frame::data(Bytes::from_static(b"hello")))).await.unwrap();
        drop(tx);
        assert!(matches!(body.into_whole(64), Whole::Here(d) if d == "hello"));
        // A failed body, or one that ends short of its length: the client's error.
        let (tx, body) = declared(5);
        tx.send(Err(std::io::Error::other("reset"))).await.unwrap();
        assert!(matches!(body.into_whole(64), Whole::Failed(e) if e.kind() == crate::error::ErrorKind::ClientBody));
        let (tx, body) = declared(5);
        drop(tx);
        assert!(matches!(body.into_whole(64), Whole::Failed(_)));
    }

    #[tokio::test]
    async fn a_kept_body_sends_everything_again_whichever_copy_read_it() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        let stream = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let kept = Kept::new(stream);
        // A handle to make the copy from, taken before the first try (as `send_h2` does).
        let spare = kept.again_unchecked();
        let mut first = SendBody::Kept(kept);
        tx.send(Ok(Frame::data(Bytes::from_static(b"one ")))).await.unwrap();
        // The first try sends one frame, and is refused.
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "one ");
        let second = SendBody::Kept(spare.again().expect("a small body can be sent again"));
        // The dead try reads the next frame before it is dropped: the copy still gets it.
        tx.send(Ok(Frame::data(Bytes::from_static(b"two ")))).await.unwrap();
        assert_eq!(first.frame().await.unwrap().unwrap().into_data().unwrap(), "two ");
        drop(first);
        tx.send(Ok(Frame::data(Bytes::from_static(b"three")))).await.unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        tx.send(Ok(Frame::trailers(trailers))).await.unwrap();
        drop(tx);
        let all = second.collect().await.unwrap();
        assert_eq!(all.trailers().map(|t| t["grpc-status"].clone()), Some(http::HeaderValue::from_static("0")));
        assert_eq!(all.to_bytes(), "one two three");

        // Past the replay limit, no copy can be made.
        let big: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            (0..20).map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 8192])))).collect();
        // With no handle left to make a copy from, nothing more is kept.
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"a"))), Ok(Frame::data(Bytes::from_static(b"b")))];
        let alone = Kept::new(StreamBody::new(futures_util::stream::iter(frames)));
        let shared = Arc::downgrade(&alone.shared);
        let body = SendBody::Kept(alone);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ab");
        assert!(shared.upgrade().is_none(), "dropped with its body");
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"a"))), Ok(Frame::data(Bytes::from_static(b"b")))];
        let alone = Kept::new(StreamBody::new(futures_util::stream::iter(frames)));
        let spare = alone.again_unchecked();
        let mut body = SendBody::Kept(alone);
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "a");
        assert_eq!(lock(&spare.shared).frames.len(), 1, "kept while a copy can be made");
        drop(spare);
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "b");
        let SendBody::Kept(k) = &body else { unreachable!() };
        assert!(lock(&k.shared).frames.is_empty(), "nothing kept once no copy can be made");

        let sent = Kept::new(StreamBody::new(futures_util::stream::iter(big)));
        let spare = sent.again_unchecked();
        assert!(spare.again().is_some());
        let body = SendBody::Kept(sent);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 20 * 8192, "nothing is lost");
        assert!(spare.again().is_none(), "160 KiB is not kept");
    }
}
