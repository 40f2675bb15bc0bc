//! The upstream connection pool, built on hyper's `client::conn::http1`.
//!
//! A request's upstream connection is driven *inside the task that serves the
//! client* (its `Connection` future is polled next to the response future, and
//! then from the response body), rather than by a connection task of its own
//! as in hyper-util's legacy `Client`. That removes the task hand-offs (channel
//! send, wake, oneshot back) on every request: measured with `perf stat` under
//! `wrk -c50` on one core, ~44k user instructions per proxied request with the
//! legacy client against ~37k with this pool. Idle connections wait in stacks per
//! endpoint, one per thread (see [`shard`] and [`Shards`]); a connection that the upstream closed while idle
//! is noticed at checkout, and a request that was never written is sent again on a fresh one.
//!
//! Requests without a body, or with a small one that is all here, skip hyper altogether:
//! they go over connections of their own
//! ([`RawConn`], kept in a second set of idle queues) with the lean exchange of [`crate::http1`].

use crate::connect::{Connector, UpstreamIo};
use crate::error::{ErrorKind, ProxyError};
use crate::http1::{Client, ExchangeError, RawBody, RawConn};
use http::{Request, Response, request};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use nexus_core::BoxError;
use nexus_core::retry::is_idempotent;
use std::cell::Cell;
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;

/// How long an idle connection may wait in the pool (below common upstream keep-alive timeouts).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 connection to an endpoint: the sender and the connection future that drives it.
pub(crate) struct PooledConn<B> {
    sender: SendRequest<B>,
    /// hyper's `Connection` future, boxed once per connection (not per request) so
    /// that the types holding it need no `Body` bound.
    conn: Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>,
    /// The connection future has completed (closed or failed): it must not be polled again.
    done: bool,
}

impl<B> std::fmt::Debug for PooledConn<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConn").field("done", &self.done).finish_non_exhaustive()
    }
}

impl<B> PooledConn<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Drive the connection's IO once; returns false once it has ended.
    pub(crate) fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done
            && let Poll::Ready(res) = self.conn.as_mut().poll(cx)
        {
            if let Err(e) = res {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            self.done = true;
        }
        !self.done
    }

    fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.drive(&mut cx) && !self.sender.is_closed() && self.sender.is_ready()
    }
}

/// Thread shards per pool. A thread's shard is the order in which it first touched a pool,
/// modulo this (so up to 64 worker threads each keep their own idle connections).
pub(crate) const SHARDS: usize = 64;

/// The calling thread's shard of every pool.
///
/// A TCP connection is registered with the IO driver of the runtime that opened it, and its
/// readiness is delivered by that runtime. Under thread-per-core serving (one single-threaded
/// runtime per worker, as the `nexus` binary runs) a connection handed to another worker would
/// need a cross-thread wake-up for every response; keeping idle connections per thread means a
/// worker reuses its own. Under tokio's multi-thread scheduler any shard works; the per-thread
/// split only spreads the queues' contention.
pub(crate) fn shard() -> usize {
    thread_local!(static SHARD: Cell<usize> = const { Cell::new(usize::MAX) });
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    SHARD.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            s.set(i);
        }
        i
    })
}

/// Idle connections of one kind, per thread shard.
///
/// Each shard is a stack: checkout takes the connection used last. After a burst (a thousand
/// clients for a moment) the pool holds many connections, and a steady load afterwards keeps
/// reusing the few at the top, whose sockets and buffers are still in cache, while the rest
/// age out at the bottom. A queue (first in, first out) would rotate through all of them:
/// measured with `perf stat` on one pinned worker, `wrk -c50` after a `wrk -c1000` burst took
/// twice the cycles per request (user and kernel) with a queue, against nginx's stack-like
/// keep-alive cache.
struct Shards<T> {
    /// A shard is created on its thread's first check-in, so memory follows the threads that
    /// use the pool (a one-worker process on a 64-CPU host allocates one, not 64). The lock is
    /// uncontended under thread-per-core serving (a shard belongs to one thread).
    slots: Box<[OnceLock<Stack<T>>]>,
    max_idle: usize,
}

/// One thread's idle connections, the most recently used last.
type Stack<T> = Mutex<VecDeque<Idle<T>>>;

/// An idle connection and since when.
struct Idle<T> {
    since: Instant,
    conn: T,
}

impl<T> std::fmt::Debug for Shards<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards").field("idle", &self.len()).finish_non_exhaustive()
    }
}

impl<T> Shards<T> {
    fn new(max_idle: usize) -> Self {
        Self { slots: (0..SHARDS).map(|_| OnceLock::new()).collect(), max_idle: max_idle.max(1) }
    }

    /// The calling thread's most recently used idle entry that `usable` accepts. Entries it
    /// refuses, and entries idle for [`IDLE_TIMEOUT`] or longer, are dropped.
    fn pop(&self, mut usable: impl FnMut(&mut T) -> bool) -> Option<T> {
        let stack = self.slots[shard()].get()?;
        let now = Instant::now();
        loop {
            let top = lock(stack).pop_back()?;
            if now.saturating_duration_since(top.since) >= IDLE_TIMEOUT {
                // Everything below is older still.
                let expired = std::mem::take(&mut *lock(stack));
                drop((top, expired));
                return None;
            }
            let mut conn = top.conn;
            if usable(&mut conn) {
                return Some(conn);
            }
        }
    }

    /// Keep `c` on top of the calling thread's stack. A full stack drops its oldest entry,
    /// and entries at the bottom idle for [`IDLE_TIMEOUT`] are dropped as `c` goes in, so
    /// connections the load no longer needs are closed while traffic flows.
    fn push(&self, c: T) {
        let stack = self.slots[shard()].get_or_init(|| Mutex::new(VecDeque::new()));
        let now = Instant::now();
        let evicted = {
            let mut idle = lock(stack);
            let evicted = match idle.front() {
                Some(old)
                    if idle.len() >= self.max_idle || now.saturating_duration_since(old.since) >= IDLE_TIMEOUT =>
                {
                    idle.pop_front()
                }
                _ => None,
            };
            idle.push_back(Idle { since: now, conn: c });
            evicted
        };
        // (Closed outside the lock.)
        drop(evicted);
    }

    fn len(&self) -> usize {
        self.slots.iter().filter_map(OnceLock::get).map(|q| lock(q).len()).sum()
    }
}

/// A shard's lock; a panic while it was held leaves a stack that is still valid.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Idle connections of one endpoint, per thread shard: hyper's (requests with a body) and
/// raw ones (requests without).
#[derive(Debug)]
pub(crate) struct EndpointPool<B> {
    connector: Connector,
    idle: Shards<PooledConn<B>>,
    raw: Shards<Box<RawConn>>,
}

impl<B> EndpointPool<B> {
    /// How this pool opens connections.
    pub(crate) fn connector(&self) -> &Connector {
        &self.connector
    }
}

impl<B> EndpointPool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A pool keeping at most `max_idle` idle connections of each kind per thread shard.
    pub(crate) fn new(connector: Connector, max_idle: usize) -> Self {
        Self { connector, idle: Shards::new(max_idle), raw: Shards::new(max_idle) }
    }

    fn checkout(&self) -> Option<PooledConn<B>> {
        self.idle.pop(PooledConn::is_reusable)
    }

    /// Return a connection whose response is complete.
    ///
    /// It is not polled here: checkout polls it anyway (and drops it if it cannot take
    /// another request), so a poll here was a second pass through hyper's dispatcher per
    /// request (~800 instructions, measured with callgrind).
    pub(crate) fn checkin(&self, c: PooledConn<B>) {
        if !c.done && !c.sender.is_closed() {
            self.idle.push(c);
        }
    }

    /// Return a raw connection whose response is complete.
    pub(crate) fn checkin_raw(&self, c: Box<RawConn>) {
        self.raw.push(c);
    }

    /// Number of idle connections.
    pub(crate) fn idle(&self) -> usize {
        self.idle.len() + self.raw.len()
    }

    /// Send a request that has no body (no body frames, no framing fields) on a raw pooled (or
    /// new) connection, forwarded for `client`, and read the response head before
    /// `deadline`; the body reads from the connection. A pooled connection found closed
    /// before any byte of the answer came back is given up, and the request sent again on
    /// a fresh one when that cannot run it twice: the write failed, or the method is
    /// idempotent.
    pub(crate) async fn send_raw(
        &self,
        parts: &request::Parts,
        body: Option<&bytes::Bytes>,
        client: Client<'_>,
        connect_timeout: Duration,
        deadline: Instant,
    ) -> Result<Response<RawBody>, ProxyError> {
        loop {
            let (mut conn, reused) = match self.raw.pop(|c| c.is_reusable()) {
                Some(c) => (c, true),
                None => match tokio::time::timeout_at(deadline, self.connector.connect(connect_timeout)).await {
                    Ok(stream) => (RawConn::new(stream?), false),
                    Err(_) => return Err(ProxyError::new(ErrorKind::Timeout, None)),
                },
            };
            match conn.exchange(parts, body, client, deadline).await {
                Ok(head) => {
                    let body = RawBody::new(conn, &head);
                    return Ok(head.response.map(|()| body));
                }
                Err(ExchangeError::Unsent(_)) if reused => {}
                Err(ExchangeError::Closed(_)) if reused && is_idempotent(&parts.method) => {}
                Err(ExchangeError::TimedOut) => return Err(ProxyError::new(ErrorKind::Timeout, None)),
                Err(ExchangeError::Unsent(e) | ExchangeError::Closed(e) | ExchangeError::Failed(e)) => {
                    return Err(ProxyError::new(ErrorKind::Upstream, Some(Box::new(e))));
                }
            }
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<PooledConn<B>, ProxyError> {
        let (sender, conn) = self.handshake(timeout).await?;
        Ok(PooledConn { sender, conn: Box::pin(conn), done: false })
    }

    async fn handshake(
        &self,
        timeout: Duration,
    ) -> Result<(SendRequest<B>, Connection<TokioIo<UpstreamIo>, B>), ProxyError> {
        let stream = self.connector.connect(timeout).await?;
        http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::new(ErrorKind::Connect, Some(Box::new(e))))
    }

    /// Send a request on a pooled (or new) connection and wait for the response head,
    /// driving the connection in this task. A request that a stale pooled connection
    /// could not take is sent again on a fresh connection.
    pub(crate) async fn send(
        &self,
        mut req: Request<B>,
        connect_timeout: Duration,
    ) -> Result<(Response<Incoming>, PooledConn<B>), ProxyError> {
        loop {
            let (mut pc, reused) = match self.checkout() {
                Some(c) => (c, true),
                None => (self.connect(connect_timeout).await?, false),
            };
            let result = {
                let mut fut = pin!(pc.sender.try_send_request(req));
                poll_fn(|cx| {
                    pc.drive(cx);
                    fut.as_mut().poll(cx)
                })
                .await
            };
            match result {
                Ok(res) => return Ok((res, pc)),
                Err(mut e) => match e.take_message() {
                    // Never written: safe to send again, for any method.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(ProxyError::from_hyper(e.into_error())),
                },
            }
        }
    }

    /// Open a dedicated connection for an upgrade (WebSocket) and send the request; the
    /// connection is driven by a task of its own and never pooled.
    pub(crate) async fn send_upgrade(
        &self,
        req: Request<B>,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (mut sender, conn) = self.handshake(connect_timeout).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upgrade connection ended with an error");
            }
        });
        sender.send_request(req).await.map_err(ProxyError::from_hyper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &Shards<u32>) -> Vec<u32> {
        std::iter::from_fn(|| s.pop(|_| true)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn checkout_takes_the_connection_used_last() {
        let s = Shards::new(8);
        for c in 1..=4 {
            s.push(c);
        }
        assert_eq!(s.len(), 4);
        assert_eq!(drain(&s), [4, 3, 2, 1]);
        assert_eq!(s.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_stack_drops_its_oldest_and_refused_entries_are_dropped() {
        let s = Shards::new(3);
        for c in 1..=5 {
            s.push(c);
        }
        assert_eq!(s.len(), 3);
        // 5 is refused (closed by the upstream, say): dropped, and the next one taken.
        assert_eq!(s.pop(|c| *c != 5), Some(4));
        assert_eq!(drain(&s), [3]);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_idle_too_long_are_dropped() {
        let s = Shards::new(8);
        s.push(1);
        s.push(2);
        tokio::time::advance(IDLE_TIMEOUT).await;
        // The bottom entry has aged out: a check-in drops it.
        s.push(3);
        assert_eq!(s.len(), 2);
        tokio::time::advance(IDLE_TIMEOUT / 2).await;
        assert_eq!(s.pop(|_| true), Some(3));
        // 2 is stale: checkout drops it (and anything below) instead of using it.
        assert_eq!(s.pop(|_| true), None);
        assert_eq!(s.len(), 0);
    }
}
