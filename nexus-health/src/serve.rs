//! Serve a tower service (an axum `Router`, say) with SPEC §8's graceful shutdown, in the
//! spirit of `axum::serve(..).with_graceful_shutdown(..)` but with the whole sequence a
//! load-balanced deployment needs:
//!
//! 1. on SIGTERM or SIGINT (or the future given to [`GracefulServer::with_signal`]) the
//!    [`ReadinessGate`] turns 503 and the [`Shutdown`] enters [`Phase::Draining`]: requests are
//!    still served for `drain_delay`, HTTP/1 responses carry `Connection: close`
//!    ([`ShutdownLayer`], applied here) and HTTP/2 connections get GOAWAY;
//! 2. then the listener closes, [`Phase::Stopping`] begins, idle connections close and
//!    in-flight requests finish (a new request on a connection still open gets 503
//!    `shutting_down`);
//! 3. it waits up to `grace_period` for connections and everything else in the
//!    [`Tracker`](crate::shutdown::Tracker) (upgraded WebSockets, if the app tracks them) and
//!    returns. A second signal returns at once.
//!
//! Each request carries the client's address as a [`PeerAddr`] extension (what Nexus's
//! per-client rate limits read).
//!
//! ```no_run
//! use nexus_health::ReadinessGate;
//! use nexus_health::serve::GracefulServer;
//! use nexus_health::shutdown::Shutdown;
//! use std::time::Duration;
//! # async fn run(app: impl tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<http_body_util::Full<bytes::Bytes>>, Error = std::convert::Infallible, Future: Send + 'static> + Clone + Send + 'static) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! GracefulServer::new(ReadinessGate::new(), Shutdown::new())
//!     .drain_delay(Duration::from_secs(5))
//!     .grace_period(Duration::from_secs(30))
//!     .serve(listener, app)
//!     .await
//! # }
//! ```

use crate::ReadinessGate;
use crate::layer::ShutdownLayer;
use crate::shutdown::{Phase, Shutdown};
use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use nexus_core::BoxError;
use nexus_core::client::PeerAddr;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceExt};

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The server; see the module docs.
pub struct GracefulServer {
    gate: ReadinessGate,
    shutdown: Shutdown,
    drain_delay: Duration,
    grace_period: Duration,
    signal: Option<Signal>,
}

impl std::fmt::Debug for GracefulServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GracefulServer")
            .field("drain_delay", &self.drain_delay)
            .field("grace_period", &self.grace_period)
            .finish_non_exhaustive()
    }
}

impl GracefulServer {
    /// A server that flips `gate` and advances `shutdown` (SPEC §8's defaults: 5 s of drain,
    /// 30 s of grace). `gate` is set ready when the server starts accepting.
    pub fn new(gate: ReadinessGate, shutdown: Shutdown) -> Self {
        Self {
            gate,
            shutdown,
            drain_delay: Duration::from_secs(5),
            grace_period: Duration::from_secs(30),
            signal: None,
        }
    }

    /// How long requests are still served after the signal (so the load balancer notices).
    #[must_use]
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// How long in-flight requests and tracked connections may take once the listener closed.
    #[must_use]
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// Start the shutdown when `signal` completes, instead of on SIGTERM/SIGINT.
    #[must_use]
    pub fn with_signal(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.signal = Some(Box::pin(signal));
        self
    }

    /// Serve `service` on `listener` until the shutdown sequence is over.
    ///
    /// # Errors
    /// Installing the signal handlers failed.
    pub async fn serve<S, B>(self, listener: TcpListener, service: S) -> std::io::Result<()>
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let Self { gate, shutdown, drain_delay, grace_period, signal } = self;
        let mut signals = match signal {
            Some(s) => Signals::Given(Some(s)),
            None => Signals::unix()?,
        };
        let service = ShutdownLayer::new(shutdown.clone()).layer(service);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).keep_alive(true);
        let builder = Arc::new(builder);
        gate.set_ready();

        // Accept until the signal, and through the drain delay.
        let mut drain_over = pin!(tokio::time::sleep(Duration::MAX));
        let mut draining = false;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        tokio::spawn(connection(Arc::clone(&builder), stream, peer, service.clone(), shutdown.clone()));
                    }
                    Err(e) => tracing::debug!(error = %e, "accept failed"),
                },
                () = signals.next(), if !draining => {
                    tracing::info!(?drain_delay, "shutdown: draining");
                    gate.set_draining();
                    shutdown.drain();
                    draining = true;
                    drain_over.as_mut().reset(tokio::time::Instant::now() + drain_delay);
                }
                () = drain_over.as_mut(), if draining => break,
            }
        }
        drop(listener);
        tracing::info!(?grace_period, "shutdown: listener closed, finishing in-flight requests");
        shutdown.stop();
        tokio::select! {
            idle = shutdown.tracker().wait_idle(grace_period) => {
                if !idle {
                    tracing::warn!(open = shutdown.tracker().active(), "grace period over with connections open");
                }
            }
            () = signals.next() => tracing::warn!("second signal: exiting at once"),
        }
        Ok(())
    }
}

/// Serve one connection: HTTP/2 gets GOAWAY when draining begins, every connection is told
/// to finish when stopping.
async fn connection<S, B>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    service: S,
    shutdown: Shutdown,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let _open = shutdown.tracker().track();
    let h2 = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&h2);
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        if req.version() == Version::HTTP_2 {
            seen.store(true, Ordering::Relaxed);
        }
        req.extensions_mut().insert(PeerAddr(peer));
        service.clone().oneshot(req)
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    let mut conn = pin!(conn);
    let mut phase = shutdown.subscribe();
    // A connection accepted while draining looks at the phase once at the start.
    phase.mark_changed();
    let mut told = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = phase.changed(), if !told => {
                let now = if changed.is_err() { Phase::Stopping } else { *phase.borrow_and_update() };
                // Draining: HTTP/2 gets GOAWAY now (HTTP/1 gets `Connection: close` on each
                // answer); stopping: every connection finishes what it has and closes.
                if now == Phase::Stopping || h2.load(Ordering::Relaxed) {
                    conn.as_mut().graceful_shutdown();
                    told = true;
                }
            }
        }
    }
}

/// Where the shutdown signal comes from.
enum Signals {
    Unix(tokio::signal::unix::Signal, tokio::signal::unix::Signal),
    /// A caller's future (the first signal); there is no second one.
    Given(Option<Signal>),
}

impl Signals {
    fn unix() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self::Unix(signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
    }

    /// The next signal (cancel-safe: a dropped call loses nothing).
    async fn next(&mut self) {
        match self {
            Self::Unix(term, int) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // Polled in place, so a `select!` that drops this future (a connection was
            // accepted first) does not drop the caller's signal with it.
            Self::Given(first) => match first.as_mut() {
                Some(signal) => {
                    signal.as_mut().await;
                    *first = None;
                }
                None => std::future::pending().await,
            },
        }
    }
}
