//! HTTP/2 to an endpoint (`protocol: h2` over TLS with ALPN `h2`, `h2c` with prior knowledge,
//! `auto` when the endpoint picks `h2`): hyper's HTTP/2 client over the project's
//! [`Connector`], with connections shared by every request of a worker thread to the endpoint
//! (one set per worker, as the HTTP/1.1 pool keeps its idle connections: a connection is driven
//! by a task on the worker that opened it, so its requests never wake another thread). A
//! connection carries up to [`STREAMS_PER_CONNECTION`] requests at once; the next request opens
//! a second one (one opening at a time per worker, so a burst of requests shares it instead of
//! opening one each). A connection the upstream closed or sent GOAWAY on is left for a new one.

use crate::connect::{Connector, UpstreamIo};
use crate::error::{ErrorKind, ProxyError};
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nexus_core::BoxError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Requests one connection carries at once before a second one is opened. RFC 9113 §6.5.2
/// asks servers to allow at least 100 concurrent streams.
pub(crate) const STREAMS_PER_CONNECTION: usize = 100;

/// A PING every this long on an idle connection (a dead peer is noticed without a request).
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// One HTTP/2 connection and the requests it carries now.
struct Conn<B> {
    sender: SendRequest<B>,
    streams: Arc<AtomicUsize>,
}

/// The HTTP/2 connections of one endpoint, per worker thread ([`crate::pool::shard`]).
pub(crate) struct H2Pool<B> {
    connector: Connector,
    /// A shard is made on its thread's first request.
    shards: Box<[OnceLock<Shard<B>>]>,
}

/// One worker's connections to the endpoint.
struct Shard<B> {
    conns: Mutex<Vec<Conn<B>>>,
    /// Held while a connection is opened.
    opening: tokio::sync::Mutex<()>,
}

impl<B> std::fmt::Debug for H2Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool").field("connections", &self.connections()).finish_non_exhaustive()
    }
}

/// A stream's place on its connection, given back when the response (or its body) is done.
#[derive(Debug)]
pub(crate) struct Stream(Arc<AtomicUsize>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B> H2Pool<B> {
    /// Connections open now, every worker's.
    pub(crate) fn connections(&self) -> usize {
        self.shards.iter().filter_map(OnceLock::get).map(|s| lock(&s.conns).len()).sum()
    }

    /// The calling worker's connections.
    fn shard(&self) -> &Shard<B> {
        self.shards[crate::pool::shard()]
            .get_or_init(|| Shard { conns: Mutex::new(Vec::new()), opening: tokio::sync::Mutex::new(()) })
    }
}

impl<B> H2Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A pool opening connections with `connector`.
    pub(crate) fn new(connector: Connector) -> Self {
        Self { connector, shards: (0..crate::pool::SHARDS).map(|_| OnceLock::new()).collect() }
    }

    /// A connection with room for one more stream, and the stream's place on it.
    fn take(&self) -> Option<(SendRequest<B>, Stream)> {
        let mut conns = lock(&self.shard().conns);
        conns.retain(|c| !c.sender.is_closed());
        let c =
            conns.iter().find(|c| c.sender.is_ready() && c.streams.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION)?;
        c.streams.fetch_add(1, Ordering::Relaxed);
        Some((c.sender.clone(), Stream(Arc::clone(&c.streams))))
    }

    async fn open(&self, timeout: Duration) -> Result<(SendRequest<B>, Stream), ProxyError> {
        let _one_at_a_time = self.shard().opening.lock().await;
        // Someone else may have opened one while this request waited.
        if let Some(found) = self.take() {
            return Ok(found);
        }
        let io = self.connector.connect(timeout).await?;
        let (sender, streams) = self.start(io, 1).await?;
        Ok((sender, Stream(streams)))
    }

    /// Start HTTP/2 on `io` and keep the connection for the next requests: for a connection
    /// opened elsewhere (the one that learned a `protocol: auto` endpoint picks `h2`).
    pub(crate) async fn adopt(&self, io: UpstreamIo) -> Result<(), ProxyError> {
        self.start(io, 0).await.map(drop)
    }

    /// The HTTP/2 handshake on `io`; the connection is kept with `streams` of its streams taken.
    async fn start(&self, io: UpstreamIo, streams: usize) -> Result<(SendRequest<B>, Arc<AtomicUsize>), ProxyError> {
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::new(ErrorKind::Connect, Some(Box::new(e))))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP/2 upstream connection ended with an error");
            }
        });
        let streams = Arc::new(AtomicUsize::new(streams));
        lock(&self.shard().conns).push(Conn { sender: sender.clone(), streams: Arc::clone(&streams) });
        Ok((sender, streams))
    }

    /// Send `req` (absolute-form URI: HTTP/2 sends its scheme and authority) and wait for the
    /// response head. The [`Stream`] goes with the response body.
    ///
    /// Sent again, once, when HTTP/2 guarantees the upstream never processed it (RFC 9113
    /// §8.7): a request the connection gave back unsent (it was closing: a GOAWAY came) goes
    /// on a fresh connection; one the upstream refused with `REFUSED_STREAM` goes again when
    /// `again` can make a copy (a body read whole, or one that kept what it sent:
    /// [`crate::replay::Kept`]). A stream a GOAWAY cut is not sent
    /// again: h2 reports streams above the GOAWAY's last stream id and streams the closing
    /// connection left behind with the same error, and the second kind may have been processed.
    pub(crate) async fn send(
        &self,
        req: Request<B>,
        connect_timeout: Duration,
        mut again: impl FnMut() -> Option<Request<B>>,
    ) -> Result<(Response<Incoming>, Stream), ProxyError> {
        let mut req = req;
        for _ in 0..2 {
            let (mut sender, stream) = match self.take() {
                Some(found) => found,
                None => self.open(connect_timeout).await?,
            };
            match sender.try_send_request(req).await {
                Ok(res) => return Ok((res, stream)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        lock(&self.shard().conns).retain(|c| !Arc::ptr_eq(&c.streams, &stream.0));
                        req = unsent;
                    }
                    None => {
                        let e = e.into_error();
                        match again().filter(|_| refused(&e)) {
                            Some(copy) => {
                                tracing::debug!("the upstream refused the stream (REFUSED_STREAM); sending it again");
                                req = copy;
                            }
                            None => return Err(ProxyError::from_hyper(e)),
                        }
                    }
                },
            }
        }
        Err(ProxyError::new(
            ErrorKind::Upstream,
            Some("HTTP/2 kept closing or refusing the stream before the upstream processed the request".into()),
        ))
    }
}

/// Whether the upstream reset the stream with `REFUSED_STREAM`: it did not process it.
fn refused(e: &hyper::Error) -> bool {
    crate::error::chain(e)
        .find_map(|err| err.downcast_ref::<h2::Error>())
        .is_some_and(|h2| h2.is_reset() && h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}
