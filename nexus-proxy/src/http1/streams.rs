//! HTTP/2 connection timers (SPEC §10): a connection that opens with the HTTP/2 preface must
//! open its first stream within `header_read_timeout`, every header block must complete
//! within it too (the sniffer's [`Frames`](super::frames::Frames) tells when one is open), and
//! one with no open stream for `h2_idle_timeout` gets GOAWAY and is closed. A stream counts as open from the moment hyper
//! hands its request over until its response body is done (or dropped): [`Tracked`] carries
//! the count down.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Open streams on one connection, and since when none has been.
#[derive(Debug)]
pub(super) struct Streams {
    start: Instant,
    open: AtomicUsize,
    /// Streams opened so far.
    opened: AtomicU64,
    /// When the count last fell to zero, in milliseconds since `start`.
    idle_since_ms: AtomicU64,
    /// Since when a header block has been open, in milliseconds since `start` (`u64::MAX`: none).
    block_since_ms: AtomicU64,
    /// Told when a header block is left open at the end of a read, so the connection's
    /// timer is re-armed for it (a block that arrives whole in one read costs nothing).
    pub(super) block_opened: Notify,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            open: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            block_since_ms: AtomicU64::new(u64::MAX),
            block_opened: Notify::new(),
        }
    }
}

impl Streams {
    pub(super) fn open(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.opened.fetch_add(1, Ordering::Relaxed);
        StreamGuard(Some(Arc::clone(self)))
    }

    /// At the end of a read: whether a header block is open, and whether a block began in
    /// that read (the open one is then a new one, whatever was open before).
    pub(super) fn header_block(&self, open: bool, began: bool) {
        let since = self.block_since_ms.load(Ordering::Relaxed);
        if open && (since == u64::MAX || began) {
            let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.block_since_ms.store(ms, Ordering::Relaxed);
            self.block_opened.notify_one();
        } else if !open && since != u64::MAX {
            self.block_since_ms.store(u64::MAX, Ordering::Relaxed);
        }
    }

    /// What the connection should do at `now`: `Ok(next)` check again then, `Err(Close)`
    /// close it at once (no first stream, or a header block not complete, within
    /// `header_read`), `Err(Goaway)` say GOAWAY (idle).
    pub(super) fn check(&self, now: Instant, header_read: Duration, idle: Duration) -> Result<Instant, Verdict> {
        let next = self.check_streams(now, header_read, idle)?;
        match self.block_since_ms.load(Ordering::Relaxed) {
            u64::MAX => Ok(next),
            since => {
                let deadline = self.start + Duration::from_millis(since) + header_read;
                if now >= deadline { Err(Verdict::Close) } else { Ok(next.min(deadline)) }
            }
        }
    }

    fn check_streams(&self, now: Instant, first_stream: Duration, idle: Duration) -> Result<Instant, Verdict> {
        if self.opened.load(Ordering::Relaxed) == 0 {
            let deadline = self.start + first_stream;
            return if now >= deadline { Err(Verdict::Close) } else { Ok(deadline) };
        }
        if self.open.load(Ordering::Relaxed) > 0 {
            return Ok(now + idle);
        }
        let since = self.start + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        let deadline = since + idle;
        if now >= deadline { Err(Verdict::Goaway) } else { Ok(deadline) }
    }
}

/// See [`Streams::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Close,
    Goaway,
}

/// One open stream; dropping it closes it. (`None` for HTTP/1 requests: nothing to count.)
#[derive(Debug, Default)]
pub(super) struct StreamGuard(Option<Arc<Streams>>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take()
            && s.open.fetch_sub(1, Ordering::Relaxed) == 1
        {
            let ms = u64::try_from(s.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            s.idle_since_ms.store(ms, Ordering::Relaxed);
        }
    }
}

pin_project! {
    /// A response body that keeps its stream open until it is done.
    #[derive(Debug)]
    pub(super) struct Tracked<B> {
        #[pin]
        inner: B,
        guard: StreamGuard,
    }
}

impl<B> Tracked<B> {
    pub(super) fn new(inner: B, guard: StreamGuard) -> Self {
        Self { inner, guard }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            // Done: the stream closes now, not when hyper drops the body.
            drop(std::mem::take(this.guard));
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_streams_is_closed_then_told_to_go_away() {
        let streams = Arc::new(Streams::default());
        let (first, idle) = (Duration::from_secs(3), Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(streams.check(start, first, idle), Ok(start + first), "waiting for the first stream");
        assert_eq!(streams.check(start + first, first, idle), Err(Verdict::Close));
        let guard = streams.open();
        tokio::time::advance(Duration::from_secs(4)).await;
        let now = Instant::now();
        assert_eq!(streams.check(now, first, idle), Ok(now + idle), "a stream is open");
        drop(guard);
        assert_eq!(streams.check(now, first, idle), Ok(now + idle), "idle from now");
        assert_eq!(streams.check(now + idle, first, idle), Err(Verdict::Goaway));
    }

    #[tokio::test(start_paused = true)]
    async fn a_header_block_left_open_closes_the_connection_after_the_header_read_timeout() {
        let streams = Arc::new(Streams::default());
        let (header_read, idle) = (Duration::from_secs(3), Duration::from_secs(60));
        let _open = streams.open();
        tokio::time::advance(Duration::from_secs(5)).await;
        let now = Instant::now();
        streams.header_block(true, true);
        // Re-armed for the block, not the idle timer.
        assert_eq!(streams.check(now, header_read, idle), Ok(now + header_read));
        assert_eq!(streams.check(now + header_read, header_read, idle), Err(Verdict::Close));
        streams.header_block(false, false);
        assert_eq!(streams.check(now + header_read, header_read, idle), Ok(now + header_read + idle));
    }
}
