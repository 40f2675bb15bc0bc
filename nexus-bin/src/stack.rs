//! One request's path through the binary, outermost first: request id (every
//! answer carries it), shutdown phase, panic guard, probes and framing
//! conflicts (the listener's business), then the gateway that `nexus-proxy`
//! builds from the config: limits, route match and the route's stack of Layers
//! (`nexus_proxy::stack`). The binary holds no per-route policy of its own.

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, Version, header};
use ipnet::IpNet;
use nexus_core::body::LimitedBody;
use nexus_core::config::Config;
use nexus_core::config::ConfigErrors;
use nexus_core::error::REQUEST_ID;
use nexus_core::{ErrorCode, GatewayError, grpc};
use nexus_health::ReadinessGate;
use nexus_health::probe::{self, Probe};
use nexus_health::shutdown::{Phase, Shutdown};
use nexus_proxy::access_log::Pending;
use nexus_proxy::http1::{ClientBody, Connection, Handler, Refusal};
use nexus_proxy::tls::TlsTerminator;
use nexus_proxy::{ClientInfo, Gateway, ResponseBody};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// The request body type the gateway forwards: the client's, size-limited.
pub(crate) type ReqBody = LimitedBody<ClientBody>;

/// Everything a request needs from one config version; swapped whole on reload.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Limits, routes and every route's stack of Layers.
    pub(crate) gateway: Gateway<ClientBody>,
    pub(crate) probe_prefix: String,
    pub(crate) trusted: Vec<IpNet>,
}

impl Snapshot {
    /// Build for `config`; with the `previous` snapshot, state that must survive a
    /// reload (endpoint health, breakers, buckets, key sets) carries over.
    pub(crate) fn build(config: &Config, previous: Option<&Snapshot>) -> Result<Self, ConfigErrors> {
        let gateway = match previous {
            Some(p) => p.gateway.reload(config)?,
            None => Gateway::from_config(config)?,
        };
        Ok(Self {
            gateway,
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
    /// The TLS listener's handshakes (`server.tls`), whose certificates reload.
    pub(crate) tls: Option<Arc<TlsTerminator>>,
}

/// The main listener's handler for one connection: the shared state and who the client is.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) shared: Arc<Shared>,
    pub(crate) client: ClientInfo,
}

impl Handler for Listener {
    type Body = ResponseBody<ReqBody>;

    fn call(&self, conn: &Connection, req: Request<ClientBody>) -> impl Future<Output = Response<Self::Body>> + Send {
        handle(&self.shared, &self.client, conn, req)
    }
}

/// Serve one request on the main listener.
pub(crate) async fn handle(
    shared: &Shared,
    client: &ClientInfo,
    conn: &Connection,
    mut req: Request<ClientBody>,
) -> Response<ResponseBody<ReqBody>> {
    // hyper sizes the map to what the client sent; make room once for what the gateway adds
    // (X-Request-Id, traceparent, X-Forwarded-For/-Proto/-Host) instead of growing it step by step.
    req.headers_mut().reserve(5);
    // Request id first: every answer below, errors and panics included, carries it.
    let id = nexus_middleware::request_id::ensure(req.headers_mut());
    let http1 = req.version() < Version::HTTP_2;
    // A gRPC request gets the listener's own answers (shutdown, prechecks, a panic's 500) as
    // trailers-only gRPC responses; the gateway does the same for its own. (Not looked up
    // for the lean path's requests: HTTP/1.1 without a body, which gRPC never is.)
    let grpc = !matches!(req.body(), ClientBody::Empty) && grpc::is_grpc(req.headers());
    let phase = shared.shutdown.phase();
    if phase == Phase::Stopping {
        // Listeners are closed: a new request on a connection still open is refused.
        let mut res: Response<ResponseBody<ReqBody>> =
            GatewayError::new(ErrorCode::ShuttingDown).into_response(id.to_str().unwrap_or(""));
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return if grpc { grpc::trailers_only(res) } else { res };
    }
    let inflight = &shared.inflight;
    inflight.increment(1.0);
    // Catch panics: a bug answers 500 for this request instead of resetting the connection.
    let served = AssertUnwindSafe(serve(shared, client, conn, req)).catch_unwind().await;
    let mut res = served.unwrap_or_else(|_| {
        tracing::error!(request_id = ?id, "panic while serving a request");
        GatewayError::new(ErrorCode::Internal).into_response(id.to_str().unwrap_or(""))
    });
    if grpc {
        res = grpc::trailers_only(res);
    }
    inflight.decrement(1.0);
    res.headers_mut().insert(REQUEST_ID, id);
    if http1 && phase != Phase::Running {
        // Draining: persistent HTTP/1 clients reconnect elsewhere after this response.
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

async fn serve(
    shared: &Shared,
    client: &ClientInfo,
    conn: &Connection,
    mut req: Request<ClientBody>,
) -> Response<ResponseBody<ReqBody>> {
    let snap = shared.snapshot.load_full();
    // The gateway's span of the client's trace (or a new trace, sampled per `tracing:`):
    // one traceparent upstream.
    let tracing = snap.gateway.tracing();
    let started = nexus_middleware::trace_context::ensure_with(req.headers_mut(), tracing.sampling());
    // Probes and framing conflicts: the listener's business, before the gateway's.
    if let Some(mut res) = precheck(&snap, &shared.gate, &req, conn.refusal()) {
        // Probes are neither counted nor logged (kubelet's every few seconds would drown the rest).
        if probe::probe_for(req.uri().path(), &snap.probe_prefix).is_none() {
            snap.gateway.record_unmatched(req.method(), res.status().as_u16(), std::time::Duration::ZERO);
            if snap.gateway.access_log() {
                Pending::start(&req, &client.ip).finish(&mut res);
            }
        }
        return res;
    }
    // Limits, route, and the route's stack of Layers (nexus_proxy::stack), for this
    // connection's client (rate-limit keys, X-Forwarded-*).
    if snap.gateway.access_log() || (tracing.exports() && started.ours.sampled()) {
        // Off the common path: the line's (and span's) fields are copied out of the request
        // before it goes. (Nothing of it lives across the common path's await: the request's
        // future stays its size.)
        let log = Pending::start_with(&req, &client.ip, snap.gateway.access_log(), tracing.trace(&started));
        let mut res = Box::pin(snap.gateway.serve(req, client)).await;
        log.finish(&mut res);
        return res;
    }
    snap.gateway.serve(req, client).await
}

/// Refused heads and probes, before the gateway sees the request.
fn precheck(
    snap: &Snapshot,
    gate: &ReadinessGate,
    req: &Request<ClientBody>,
    refusal: Option<Refusal>,
) -> Option<Response<ResponseBody<ReqBody>>> {
    // A stand-in for a head the server refused before hyper read it (malformed, too large,
    // both framings, an unsupported coding): its JSON error, and the connection closes.
    if let Some(refusal) = refusal {
        let (code, message) = refusal.error();
        let mut res: Response<ResponseBody<ReqBody>> =
            GatewayError::new(code).with_message(message).into_response_for(req.headers());
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Some(res);
    }
    // Probes win over any route, so a route can never shadow them.
    if let Some(p) = probe::probe_for(req.uri().path(), &snap.probe_prefix) {
        return Some(match p {
            Probe::Liveness => probe::liveness(),
            Probe::Readiness => probe::readiness(gate),
        });
    }
    // The lean server path takes no head without `Host`: nothing below applies to its requests.
    if matches!(req.body(), ClientBody::Empty) {
        return None;
    }
    // RFC 9112 §3.2 (the lean path checks its own requests): HTTP/1.1 needs a Host.
    if req.version() == Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
        let mut res: Response<ResponseBody<ReqBody>> =
            GatewayError::new(ErrorCode::BadRequest).with_message("missing Host").into_response_for(req.headers());
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Some(res);
    }
    None
}

/// Shared state for a config.
pub(crate) fn shared(config: &Config, gate: ReadinessGate) -> Result<Arc<Shared>, ConfigErrors> {
    let snapshot = Snapshot::build(config, None)?;
    snapshot.gateway.tracing().install();
    Ok(Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        gate,
        inflight: metrics::gauge!(crate::telemetry::INFLIGHT),
        shutdown: Shutdown::new(),
        tls: config.server.tls.as_ref().map(TlsTerminator::new).transpose()?.map(Arc::new),
    }))
}
