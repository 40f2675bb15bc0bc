//! The gateway's front: what the `nexus` binary runs on its listeners around the
//! config-built [`Gateway`], so that an embedder who serves its own listener gets
//! exactly the binary's answers. One request's path, outermost first:
//!
//! | step | why it sits there |
//! | --- | --- |
//! | request id | every answer carries it, errors and panics included |
//! | shutdown phase | once listeners close, a request on a connection still open is refused (503, `Connection: close`); while draining, HTTP/1 answers close their connection |
//! | panic guard | a bug answers 500 for its request instead of resetting the connection |
//! | `traceparent` | the gateway's span of the client's trace (or a new one, sampled per `tracing:`) |
//! | refused heads, probes | the listener's business: a head the server refused (its JSON error), `/healthz` and `/readyz` (no route can shadow them), HTTP/1.1 without `Host` |
//! | the gateway | limits, route match and the route's stack of Layers ([`crate::stack`]) |
//!
//! [`Front::accept_loop`] serves a listener with it; [`Front::install`] swaps in a new
//! config version, whose state carries over (endpoint health, breakers, buckets, key sets).
//! The process around it (signals, the drain sequence, the admin API, reading the file)
//! stays with the server.

use crate::access_log::Pending;
use crate::http1::{ClientBody, Connection, Handler, Refusal, Server};
use crate::{ClientInfo, Gateway, ResponseBody};
use arc_swap::ArcSwap;
use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, Version, header};
use ipnet::IpNet;
use nexus_core::body::LimitedBody;
use nexus_core::config::{Config, ConfigErrors};
use nexus_core::error::REQUEST_ID;
use nexus_core::{ErrorCode, GatewayError, grpc};
use nexus_health::ReadinessGate;
use nexus_health::probe::{self, Probe};
use nexus_health::shutdown::{Phase, Shutdown};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The request body the front's gateway forwards: the client's, size-limited.
pub type FrontBody = LimitedBody<ClientBody>;

/// Everything a request needs from one config version; swapped whole by [`Front::install`].
#[derive(Debug)]
pub struct Snapshot {
    gateway: Gateway<ClientBody>,
    probe_prefix: String,
    trusted: Vec<IpNet>,
}

impl Snapshot {
    /// Build for `config`; with the `previous` snapshot, state that must survive a
    /// reload (endpoint health, breakers, buckets, key sets) carries over.
    ///
    /// ```
    /// use nexus_proxy::config::Config;
    /// use nexus_proxy::front::Snapshot;
    /// let config = Config::from_json(serde_json::json!({
    ///     "upstreams": { "api": { "endpoints": [{ "url": "http://127.0.0.1:8081" }] } },
    ///     "routes": [{ "name": "api", "paths": [{ "path": "/" }], "upstream": "api" }],
    /// })).unwrap();
    /// let first = Snapshot::build(&config, None).unwrap();
    /// let next = Snapshot::build(&config, Some(&first)).unwrap();
    /// assert_eq!(next.gateway().table().in_precedence_order().len(), 1);
    /// ```
    pub fn build(config: &Config, previous: Option<&Snapshot>) -> Result<Self, ConfigErrors> {
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

    /// Limits, routes and every route's stack of Layers.
    pub fn gateway(&self) -> &Gateway<ClientBody> {
        &self.gateway
    }
}

/// The state every connection of a running gateway shares: the config snapshot, readiness,
/// the shutdown phase and the TLS listener's certificates.
///
/// ```no_run
/// use nexus_proxy::config::Config;
/// use nexus_proxy::front::Front;
/// use nexus_proxy::http1::Server;
/// use nexus_proxy::nexus_health::ReadinessGate;
/// use std::time::Duration;
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::from_json(serde_json::json!({
///     "upstreams": { "api": { "endpoints": [{ "url": "http://127.0.0.1:8081" }] } },
///     "routes": [{ "name": "api", "paths": [{ "path": "/" }], "upstream": "api" }],
/// }))?;
/// let gate = ReadinessGate::new();
/// let front = Front::new(&config, gate.clone())?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let server = Server::new(Duration::from_secs(10), 64 * 1024);
/// let serving = tokio::spawn(front.clone().accept_loop(listener, server, false));
/// gate.set_ready();
/// // ... on SIGTERM: readiness 503, keep serving a while, then close the listener.
/// front.drain();
/// front.shutdown().stop();
/// serving.await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Front {
    snapshot: ArcSwap<Snapshot>,
    gate: ReadinessGate,
    /// `nexus_inflight_requests`, registered once.
    inflight: metrics::Gauge,
    /// Shutdown phase and what must finish before exit.
    shutdown: Shutdown,
    /// The TLS listener's handshakes (`server.tls`), whose certificates reload.
    #[cfg(feature = "tls")]
    tls: Option<Arc<crate::tls::TlsTerminator>>,
}

impl Front {
    /// The front for `config`, ready or not as `gate` says (the server sets it ready once
    /// its listeners are bound). Installs the config's trace export.
    pub fn new(config: &Config, gate: ReadinessGate) -> Result<Arc<Self>, ConfigErrors> {
        let snapshot = Snapshot::build(config, None)?;
        snapshot.gateway.tracing().install();
        #[cfg(feature = "tls")]
        let tls = config.server.tls.as_ref().map(crate::tls::TlsTerminator::new).transpose()?.map(Arc::new);
        #[cfg(not(feature = "tls"))]
        without_tls(config)?;
        Ok(Arc::new(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            gate,
            inflight: metrics::gauge!(nexus_core::metric_names::INFLIGHT_REQUESTS),
            shutdown: Shutdown::new(),
            #[cfg(feature = "tls")]
            tls,
        }))
    }

    /// The config version serving new requests (requests in flight keep theirs).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Readiness (`/readyz`).
    pub fn gate(&self) -> &ReadinessGate {
        &self.gate
    }

    /// The shutdown phase: [`Shutdown::drain`] and [`Shutdown::stop`] move it on, and its
    /// tracker counts open connections.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The shutdown's first step: `/readyz` answers 503 at once, so load balancers stop
    /// sending; requests are still served (HTTP/1 answers close their connection). Then
    /// [`Shutdown::stop`] closes the listeners.
    pub fn drain(&self) {
        self.gate.set_draining();
        self.shutdown.drain();
    }

    /// The TLS listener's certificates (`server.tls`), if any.
    #[cfg(feature = "tls")]
    pub fn tls(&self) -> Option<&Arc<crate::tls::TlsTerminator>> {
        self.tls.as_ref()
    }

    /// Serve `config` from now on: a new snapshot that keeps the running one's state, and
    /// the TLS listener's certificate files read again. Nothing is swapped unless all of it
    /// loads: on an error the running config (and certificates) stay.
    pub fn install(&self, config: &Config) -> Result<(), ConfigErrors> {
        #[cfg(not(feature = "tls"))]
        without_tls(config)?;
        let snapshot = Snapshot::build(config, Some(&self.snapshot.load()))?;
        // The TLS files are read before anything is swapped.
        #[cfg(feature = "tls")]
        let tls = match (&self.tls, &config.server.tls) {
            (Some(terminator), Some(tls)) => match crate::tls::LoadedTls::load(tls) {
                Ok(loaded) => Some((terminator, loaded)),
                Err(e) => {
                    terminator.count_failed_reload();
                    return Err(e);
                }
            },
            _ => None,
        };
        // Upstream tries' client spans go to the new config's export from now on.
        snapshot.gateway.tracing().install();
        self.snapshot.store(Arc::new(snapshot));
        #[cfg(feature = "tls")]
        if let Some((terminator, loaded)) = tls {
            terminator.install(loaded);
        }
        Ok(())
    }

    /// Re-read the certificate files of the running `config`: the TLS listener's, and the
    /// CA files and client certificates of `https://` upstreams. A pair that fails to load
    /// keeps the running one (logged with `trigger`, and counted).
    pub fn refresh_tls(&self, config: &Config, trigger: &str) {
        #[cfg(feature = "tls")]
        if let (Some(terminator), Some(tls)) = (&self.tls, &config.server.tls) {
            match terminator.reload(tls) {
                Ok(()) => tracing::info!(%trigger, "TLS certificates re-read"),
                Err(errors) => {
                    for e in &errors {
                        tracing::error!(%trigger, error = %e, "TLS reload failed; the running certificates stay");
                    }
                }
            }
        }
        #[cfg(not(feature = "tls"))]
        let _ = config;
        for (name, upstream) in self.snapshot.load().gateway.upstreams() {
            if let Err(errors) = upstream.reload_tls() {
                for e in &errors {
                    tracing::error!(%trigger, upstream = %name, error = %e,
                        "upstream TLS reload failed; the running CA and client certificate stay");
                }
            }
        }
    }

    /// Accept connections on `listener` and serve each with `server` until the shutdown
    /// stops (then the listener closes; connections finish what they have). `tls`: this is
    /// the TLS listener (each connection's handshake first, within the header read timeout,
    /// with the certificates of `server.tls`; without that block connections are plain).
    pub async fn accept_loop(self: Arc<Self>, listener: TcpListener, server: Server, tls: bool) {
        #[cfg(feature = "tls")]
        let tls = if tls { self.tls.clone() } else { None };
        #[cfg(not(feature = "tls"))]
        let tls: Option<Arc<std::convert::Infallible>> = {
            let _ = tls;
            None
        };
        let server = Arc::new(server);
        // `stopping` looks at the current phase first: a worker thread that starts after the
        // shutdown began (a loaded machine, drain_delay 0) still closes its copy of the listener.
        let mut stopping = std::pin::pin!(nexus_health::shutdown::stopping(self.shutdown.subscribe()));
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                _ = stopping.as_mut() => break,
            };
            let _ = stream.set_nodelay(true);
            let tracked = self.shutdown.tracker().track();
            let client = ClientInfo::new(peer.ip(), &self.snapshot.load().trusted)
                .with_tracker(self.shutdown.tracker().clone())
                .with_https(tls.is_some());
            let handler = Listener { front: Arc::clone(&self), client };
            let server = Arc::clone(&server);
            let phase = self.shutdown.subscribe();
            let tls = tls.clone();
            tokio::spawn(async move {
                // Counted until closed, so the process waits for it (within the grace period).
                let _tracked = tracked;
                match tls {
                    None => server.serve_connection(stream, handler, phase).await,
                    // Boxed: the handshake and a TLS stream's connection future are several KiB
                    // more than a plain one's, and every connection's task would be as large as
                    // the largest branch (7.6 KiB against 2.9 KiB), copied in at each spawn.
                    #[cfg(feature = "tls")]
                    Some(tls) => {
                        Box::pin(async move {
                            match tls.accept(stream, server.header_read_timeout()).await {
                                Ok(stream) => server.serve_connection(stream, handler, phase).await,
                                Err(reason) => tracing::debug!(%peer, %reason, "TLS handshake failed"),
                            }
                        })
                        .await;
                    }
                    #[cfg(not(feature = "tls"))]
                    Some(never) => match *never {},
                }
            });
        }
        drop(listener);
    }
}

/// A build without the `tls` feature refuses `server.tls`, with its path, instead of serving
/// plain where TLS was asked for.
#[cfg(not(feature = "tls"))]
fn without_tls(config: &Config) -> Result<(), ConfigErrors> {
    match config.server.tls {
        Some(_) => Err(ConfigErrors(vec![nexus_core::config::ConfigError::new(
            "server.tls",
            "needs the `tls` feature, which this build lacks",
        )])),
        None => Ok(()),
    }
}

/// One connection's handler: the front and who the client is.
#[derive(Debug)]
struct Listener {
    front: Arc<Front>,
    client: ClientInfo,
}

impl Handler for Listener {
    type Body = ResponseBody<FrontBody>;

    fn call(&self, conn: &Connection, req: Request<ClientBody>) -> impl Future<Output = Response<Self::Body>> + Send {
        handle(&self.front, &self.client, conn, req)
    }
}

/// Serve one request.
///
/// Neither this nor [`serve`] is an `async fn`: an `async fn` whose by-value argument is
/// `mut` holds it twice in its state (the argument, and the local it is rebound to) and
/// copies one into the other. An `async` block that captures the request changes it in place.
#[allow(clippy::manual_async_fn)] // An `async fn` would hold the request twice (the doc above says why).
fn handle<'f>(
    front: &'f Front,
    client: &'f ClientInfo,
    conn: &Connection,
    mut req: Request<ClientBody>,
) -> impl Future<Output = Response<ResponseBody<FrontBody>>> + Send {
    async move {
        // hyper sizes the map to what the client sent; make room once for what the gateway adds
        // instead of growing it step by step (the lean parse has made this room already).
        req.headers_mut().reserve(crate::http1::ADDED_REQUEST_FIELDS);
        // Request id first: every answer below, errors and panics included, carries it.
        let id = nexus_middleware::request_id::ensure(req.headers_mut());
        let http1 = req.version() < Version::HTTP_2;
        // A gRPC request gets the front's own answers (shutdown, prechecks, a panic's 500) as
        // trailers-only gRPC responses; the gateway does the same for its own. (Not looked up
        // for a request without a body, which gRPC never is.)
        let grpc = !matches!(req.body(), ClientBody::Empty) && grpc::is_grpc(req.headers());
        let phase = front.shutdown.phase();
        if phase == Phase::Stopping {
            // Listeners are closed: a new request on a connection still open is refused.
            let mut res: Response<ResponseBody<FrontBody>> =
                GatewayError::new(ErrorCode::ShuttingDown).into_response(id.to_str().unwrap_or(""));
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return if grpc { grpc::trailers_only(res) } else { res };
        }
        let inflight = &front.inflight;
        inflight.increment(1.0);
        // Catch panics: a bug answers 500 for this request instead of resetting the connection.
        let served = AssertUnwindSafe(serve(front, client, conn, req)).catch_unwind().await;
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
}

/// The request's trace, the prechecks, then the gateway, on the snapshot current at the
/// first poll (all of it inside [`handle`]'s `catch_unwind`). The request is captured once
/// and changed in place (see [`handle`] on why this is no `async fn`).
#[allow(clippy::manual_async_fn)] // An `async fn` would hold the request twice (see `handle`).
fn serve<'f>(
    front: &'f Front,
    client: &'f ClientInfo,
    conn: &Connection,
    mut req: Request<ClientBody>,
) -> impl Future<Output = Response<ResponseBody<FrontBody>>> + Send {
    async move {
        let snap = front.snapshot.load_full();
        // The gateway's span of the client's trace (or a new trace, sampled per `tracing:`):
        // one traceparent upstream.
        let tracing = snap.gateway.tracing();
        let started = nexus_middleware::trace_context::ensure_with(req.headers_mut(), tracing.sampling());
        // Probes and refused heads: the listener's business, before the gateway's.
        if let Some(mut res) = precheck(&snap, &front.gate, &req, conn.refusal()) {
            // Probes are neither counted nor logged (kubelet's every few seconds would drown the rest).
            if probe::probe_for(req.uri().path(), &snap.probe_prefix).is_none() {
                snap.gateway.record_unmatched(req.method(), res.status().as_u16(), Duration::ZERO);
                if snap.gateway.access_log() {
                    Pending::start(&req, &client.ip).finish(&mut res);
                }
            }
            return res;
        }
        // Limits, route, and the route's stack of Layers (crate::stack), for this
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
}

/// Refused heads and probes, before the gateway sees the request.
fn precheck(
    snap: &Snapshot,
    gate: &ReadinessGate,
    req: &Request<ClientBody>,
    refusal: Option<Refusal>,
) -> Option<Response<ResponseBody<FrontBody>>> {
    // A stand-in for a head the server refused before hyper read it (malformed, too large,
    // both framings, an unsupported coding): its JSON error, and the connection closes.
    if let Some(refusal) = refusal {
        let (code, message) = refusal.error();
        let mut res: Response<ResponseBody<FrontBody>> =
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
    // The lean server path takes no HTTP/1.1 head without `Host`: nothing below applies to its requests.
    if req.body().is_lean() {
        return None;
    }
    // RFC 9112 §3.2 (the lean path checks its own requests): HTTP/1.1 needs a Host.
    if req.version() == Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
        let mut res: Response<ResponseBody<FrontBody>> =
            GatewayError::new(ErrorCode::BadRequest).with_message("missing Host").into_response_for(req.headers());
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Some(res);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A route to a port nothing listens on (connections are refused: 502).
    fn config() -> Config {
        Config::from_json(serde_json::json!({
            "upstreams": { "gone": { "endpoints": [{ "url": "http://127.0.0.1:1" }] } },
            "routes": [{ "name": "gone", "paths": [{ "path": "/api", "type": "prefix" }], "upstream": "gone" }],
        }))
        .unwrap()
    }

    fn server() -> Server {
        Server::new(Duration::from_secs(5), 64 * 1024)
    }

    /// One HTTP/1.1 exchange on a new connection: the whole answer, head and body.
    async fn exchange(addr: std::net::SocketAddr, head: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer)).await.unwrap().unwrap();
        answer
    }

    #[tokio::test]
    async fn a_listener_served_in_process_answers_as_the_binary_does() {
        let gate = ReadinessGate::new();
        let front = Front::new(&config(), gate.clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(Arc::clone(&front).accept_loop(listener, server(), false));
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");

        assert!(exchange(addr, &get("/readyz")).await.starts_with("HTTP/1.1 503"), "not ready yet");
        gate.set_ready();
        assert!(exchange(addr, &get("/readyz")).await.starts_with("HTTP/1.1 200"));
        assert!(exchange(addr, &get("/healthz")).await.starts_with("HTTP/1.1 200"));

        // The gateway's own error: JSON naming the request id the answer carries.
        let refused = exchange(addr, &get("/api/users")).await;
        assert!(refused.starts_with("HTTP/1.1 502"), "{refused}");
        let id = refused
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap_or_else(|| panic!("no request id: {refused}"));
        assert!(refused.contains(&format!("\"request_id\":\"{id}\"")), "{refused}");
        assert!(exchange(addr, &get("/elsewhere")).await.starts_with("HTTP/1.1 404"));

        // A new config version: the route is gone, the probes stay.
        let empty = Config::from_json(serde_json::json!({ "routes": [] })).unwrap();
        front.install(&empty).unwrap();
        assert!(exchange(addr, &get("/api/users")).await.starts_with("HTTP/1.1 404"));

        front.drain();
        let draining = exchange(addr, &get("/readyz")).await;
        assert!(draining.starts_with("HTTP/1.1 503"), "draining: {draining}");
        front.shutdown().stop();
        tokio::time::timeout(Duration::from_secs(5), serving).await.unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is still open");
    }

    #[cfg(not(feature = "tls"))]
    #[tokio::test]
    async fn without_the_tls_feature_server_tls_is_refused_with_its_path() {
        let mut doc = serde_json::to_value(config()).unwrap();
        doc["server"]["tls"] = serde_json::json!({
            "listen": "127.0.0.1:0",
            "certificates": [{ "cert_file": "cert.pem", "key_file": "key.pem" }],
        });
        let with_tls = Config::from_json(doc).unwrap();
        let refused = Front::new(&with_tls, ReadinessGate::new()).unwrap_err();
        assert!(
            refused.to_string().contains("server.tls") && refused.to_string().contains("`tls` feature"),
            "{refused}"
        );
        let front = Front::new(&config(), ReadinessGate::new()).unwrap();
        let refused = front.install(&with_tls).unwrap_err();
        assert!(refused.to_string().contains("server.tls"), "{refused}");
    }

    #[tokio::test]
    async fn an_accept_loop_started_after_shutdown_closes_its_listener() {
        // A worker thread can start its loop after a quick SIGTERM (drain_delay 0s) has
        // already reached Stopping: it must still close its copy of the listener.
        let front = Front::new(&config(), ReadinessGate::new()).unwrap();
        front.shutdown().drain();
        front.shutdown().stop();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), front.accept_loop(listener, server(), false)).await;
        assert!(ended.is_ok(), "the accept loop did not see the shutdown");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is still open");
    }
}
