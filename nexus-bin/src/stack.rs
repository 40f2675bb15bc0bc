//! One request's path through the binary, outermost first: request id (every
//! answer carries it), shutdown phase, panic guard, probes and framing
//! conflicts (the listener's business), then the gateway that `nexus-proxy`
//! builds from the config: limits, route match and the route's stack of Layers
//! (`nexus_proxy::stack`). The binary holds no per-route policy of its own.

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::Incoming;
use ipnet::IpNet;
use nexus_core::body::LimitedBody;
use nexus_core::config::Config;
use nexus_core::config::ConfigErrors;
use nexus_core::error::REQUEST_ID;
use nexus_core::{ErrorCode, GatewayError};
use nexus_health::ReadinessGate;
use nexus_health::probe::{self, Probe};
use nexus_health::shutdown::{Phase, Shutdown};
use nexus_proxy::{ClientInfo, Gateway, ResponseBody};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The request body type the gateway forwards: the client's, size-limited.
pub(crate) type ReqBody = LimitedBody<ClientBody>;

/// A client's request body: hyper's stream, or none (a request the lean path of
/// [`crate::fast`] took, which only takes requests without a body).
#[derive(Debug)]
pub(crate) enum ClientBody {
    Hyper(Incoming),
    Empty,
}

impl http_body::Body for ClientBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Hyper(b) => std::pin::Pin::new(b).poll_frame(cx),
            Self::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::Empty => http_body::SizeHint::with_exact(0),
        }
    }
}

/// Everything a request needs from one config version; swapped whole on reload.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Limits, routes and every route's stack of Layers.
    pub(crate) gateway: Gateway<ClientBody>,
    /// `server.limits.header_read_timeout` (the listeners take it when they start).
    pub(crate) header_read_timeout: std::time::Duration,
    pub(crate) probe_prefix: String,
    pub(crate) trusted: Vec<IpNet>,
}

impl Snapshot {
    /// Build for `config`; with the `previous` snapshot, state that must survive a
    /// reload (endpoint health, breakers, buckets, key sets) carries over.
    pub(crate) fn build(config: &Config, previous: Option<&Snapshot>) -> Result<Self, ConfigErrors> {
        let limits = &config.server.limits;
        let gateway = match previous {
            Some(p) => p.gateway.reload(config)?,
            None => Gateway::from_config(config)?,
        };
        Ok(Self {
            gateway,
            header_read_timeout: limits.header_read_timeout.as_std(),
            probe_prefix: config.server.probe_prefix.clone(),
            trusted: config.server.trusted_proxies.clone(),
        })
    }
}

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) gate: ReadinessGate,
    /// `nexus_inflight_requests`, registered once.
    pub(crate) inflight: metrics::Gauge,
    /// Shutdown phase and what must finish before exit.
    pub(crate) shutdown: Shutdown,
}

/// What one connection knows of itself.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) client: ClientInfo,
    /// Set by [`crate::sniff::HeadSniffer`] when the first request head had both
    /// `Content-Length` and `Transfer-Encoding` (hyper hides this).
    pub(crate) framing_conflict: Arc<AtomicBool>,
    /// The client speaks HTTP/2 (learned from its first request): draining sends GOAWAY.
    pub(crate) h2: AtomicBool,
}

/// Serve one request on the main listener.
pub(crate) async fn handle(
    shared: &Shared,
    conn: &Conn,
    mut req: Request<ClientBody>,
) -> Response<ResponseBody<ReqBody>> {
    // hyper sizes the map to what the client sent; make room once for what the gateway adds
    // (X-Request-Id, X-Forwarded-For/-Proto/-Host) instead of growing it step by step.
    req.headers_mut().reserve(4);
    // Request id first: every answer below, errors and panics included, carries it.
    let id = nexus_middleware::request_id::ensure(req.headers_mut());
    let http1 = req.version() < Version::HTTP_2;
    if !http1 {
        conn.h2.store(true, Ordering::Relaxed);
    }
    let phase = shared.shutdown.phase();
    if phase == Phase::Stopping {
        // Listeners are closed: a new request on a connection still open is refused.
        let mut res: Response<ResponseBody<ReqBody>> =
            GatewayError::new(ErrorCode::ShuttingDown).into_response(id.to_str().unwrap_or(""));
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return res;
    }
    let inflight = &shared.inflight;
    inflight.increment(1.0);
    // Catch panics: a bug answers 500 for this request instead of resetting the connection.
    let served = AssertUnwindSafe(serve(shared, conn, req)).catch_unwind().await;
    let mut res = served.unwrap_or_else(|_| {
        tracing::error!(request_id = ?id, "panic while serving a request");
        GatewayError::new(ErrorCode::Internal).into_response(id.to_str().unwrap_or(""))
    });
    inflight.decrement(1.0);
    res.headers_mut().insert(REQUEST_ID, id);
    if http1 && phase != Phase::Running {
        // Draining: persistent HTTP/1 clients reconnect elsewhere after this response.
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

async fn serve(shared: &Shared, conn: &Conn, req: Request<ClientBody>) -> Response<ResponseBody<ReqBody>> {
    let snap = shared.snapshot.load_full();
    // Probes and framing conflicts: the listener's business, before the gateway's.
    if let Some(res) = precheck(&snap, &shared.gate, &req, conn.framing_conflict.load(Ordering::Relaxed)) {
        if probe::probe_for(req.uri().path(), &snap.probe_prefix).is_none() {
            snap.gateway.record_unmatched(req.method(), res.status().as_u16(), std::time::Duration::ZERO);
        }
        return res;
    }
    // Limits, route, and the route's stack of Layers (nexus_proxy::stack), for this
    // connection's client (rate-limit keys, X-Forwarded-*).
    snap.gateway.serve(req, &conn.client).await
}

/// Probes and framing conflicts, before the gateway sees the request.
fn precheck(
    snap: &Snapshot,
    gate: &ReadinessGate,
    req: &Request<ClientBody>,
    framing_conflict: bool,
) -> Option<Response<ResponseBody<ReqBody>>> {
    // Probes win over any route, so a route can never shadow them.
    if let Some(p) = probe::probe_for(req.uri().path(), &snap.probe_prefix) {
        return Some(match p {
            Probe::Liveness => probe::liveness(),
            Probe::Readiness => probe::readiness(gate),
        });
    }
    // The lean server path takes no head with `Transfer-Encoding` or a `Content-Length` other
    // than 0 (see `fast`): nothing below applies to its requests.
    if matches!(req.body(), ClientBody::Empty) {
        return None;
    }
    let headers = req.headers();
    // Request smuggling guard: both framings present is refused and the connection closed.
    if framing_conflict
        || headers.contains_key(header::TRANSFER_ENCODING) && headers.contains_key(header::CONTENT_LENGTH)
    {
        let mut res: Response<ResponseBody<ReqBody>> = GatewayError::new(ErrorCode::BadRequest)
            .with_message("conflicting Content-Length and Transfer-Encoding")
            .into_response_for(headers);
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Some(res);
    }
    None
}

/// Shared state for a config.
pub(crate) fn shared(config: &Config, gate: ReadinessGate) -> Result<Arc<Shared>, ConfigErrors> {
    Ok(Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(Snapshot::build(config, None)?),
        gate,
        inflight: metrics::gauge!(crate::telemetry::INFLIGHT),
        shutdown: Shutdown::new(),
    }))
}
