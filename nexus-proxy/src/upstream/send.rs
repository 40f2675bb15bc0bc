//! How one try goes out: the lean HTTP/1.1 exchange for a head without a body or with a
//! small one that is all here ([`crate::http1`]), hyper's client for bodies to stream and
//! upgrades.

use super::auto::{Learned, Spoken};
use super::{ClientInfo, InFlight, Upstream, deadline_after};
use crate::body::UpstreamBody;
use crate::error::{ErrorKind, ProxyError};
use crate::headers::LEAN_BODY_MAX;
use crate::headers::{self, HeadScan};
use crate::replay::{Kept, SendBody, Whole};
use futures_util::future::Either;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body;
use hyper_util::rt::TokioIo;
use nexus_core::BoxError;
use nexus_health::shutdown::Tracker;
use std::future::Future;

impl<B> Upstream<B>
where
    B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// `deadline`, or sooner when the upstream's own `timeout` ends first.
    fn capped(&self, deadline: tokio::time::Instant) -> tokio::time::Instant {
        self.timeout.map_or(deadline, |t| deadline.min(deadline_after(t)))
    }

    /// The lean exchange for a head without a body, or with a small one that is all here:
    /// hop-by-hop fields are left out and `X-Forwarded-*` written as the head is encoded (the
    /// map is not rewritten), and left out of the response as its head is parsed.
    async fn send_lean(
        &self,
        guard: InFlight<B>,
        parts: &http::request::Parts,
        body: Option<bytes::Bytes>,
        client: &ClientInfo,
        deadline: tokio::time::Instant,
    ) -> Result<Response<UpstreamBody<B>>, ProxyError> {
        let pool = self.shared.endpoints[guard.endpoint].pool();
        let client = crate::http1::Client { ip: &client.ip, trusted: client.trusted, proto: client.proto() };
        let res = pool.send_raw(parts, body.as_ref(), client, self.connect_timeout, self.capped(deadline)).await?;
        Ok(res.map(|body| UpstreamBody::raw(body, guard)))
    }

    /// Send on the endpoint `guard` holds: the lean exchange for a head without a body or
    /// with a small whole one, hyper's client for the rest. The way is chosen before the first poll.
    pub(super) fn send<'a>(
        &'a self,
        guard: InFlight<B>,
        req: Outgoing<'a, B>,
        client: &'a ClientInfo,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<Response<UpstreamBody<B>>, ProxyError>> + 'a {
        let endpoint = &self.shared.endpoints[guard.endpoint];
        if endpoint.h2.is_some() {
            match endpoint.learned.as_ref().map_or(Spoken::H2, Learned::now) {
                // HTTP/2: every request on a multiplexed connection (boxed, as hyper's path).
                Spoken::H2 => {
                    let req = match req {
                        Outgoing::Lean(parts) => {
                            super::retry::rebuild(parts, SendBody::Buffered { data: None, trailers: None })
                        }
                        Outgoing::Owned(req, _) => req,
                    };
                    let sending: Sending<'a, B> = Box::pin(self.send_h2(guard, req, client, deadline));
                    return Either::Right(Either::Right(sending));
                }
                Spoken::Unknown => {
                    return Either::Right(Either::Right(self.send_learning(guard, req, client, deadline)));
                }
                // `auto`, and the endpoint picked HTTP/1.1: as any HTTP/1.1 endpoint.
                Spoken::Http1 => {}
            }
        }
        let (req, scan) = match req {
            Outgoing::Lean(parts) => return Either::Left(self.send_lean(guard, parts, None, client, deadline)),
            Outgoing::Owned(req, scan) => (req, scan),
        };
        let (mut parts, body) = req.into_parts();
        let upgrade = scan.upgrade;
        let client_upgrade = if upgrade { parts.extensions.remove::<hyper::upgrade::OnUpgrade>() } else { None };
        to_origin_form(&mut parts, scan.host);
        // No body, or a small one that is all here (read by the lean server, or ahead for a
        // retry): the lean exchange sends it after the head, in the same write.
        let whole = if scan.lean_upstream() && body.is_end_stream() {
            Ok(None)
        } else if upgrade || scan.transfer_encoding() {
            Err(body)
        } else {
            match body.into_whole(LEAN_BODY_MAX as usize) {
                Whole::Here(data) if length_agrees(&parts.headers, data.len()) => Ok(Some(data)),
                Whole::Here(_) => {
                    let e = ProxyError::client_body("the body's length differs from its Content-Length".into());
                    return Either::Right(Either::Right(Box::pin(std::future::ready(Err(e)))));
                }
                Whole::Not(body) => Err(body),
                Whole::Failed(e) => return Either::Right(Either::Right(Box::pin(std::future::ready(Err(e))))),
            }
        };
        let body = match whole {
            Ok(data) => {
                if scan.names_others {
                    headers::remove_hop_by_hop(&mut parts.headers, false);
                }
                return Either::Right(Either::Left(async move {
                    self.send_lean(guard, &parts, data, client, deadline).await
                }));
            }
            Err(body) => body,
        };
        // Bodies and upgrades go through hyper's client: a future several times the lean one's
        // size, boxed so that every request's future (moved at each await) stays small.
        Either::Right(Either::Right(Box::pin(self.send_hyper_boxed(
            guard,
            parts,
            body,
            (upgrade, client_upgrade),
            client,
            deadline,
        ))))
    }

    /// The first request to a `protocol: auto` endpoint: learn what it speaks (one
    /// connection, ALPN; see [`super::auto`]), then send as it speaks. Its return type is
    /// named (not `impl Future`): it calls [`send`](Self::send), which returns it.
    fn send_learning<'a>(
        &'a self,
        guard: InFlight<B>,
        req: Outgoing<'a, B>,
        client: &'a ClientInfo,
        deadline: tokio::time::Instant,
    ) -> Sending<'a, B> {
        Box::pin(async move {
            let endpoint = &self.shared.endpoints[guard.endpoint];
            let (Some(learned), Some(h2)) = (endpoint.learned.as_ref(), endpoint.h2.as_ref()) else {
                return Err(ProxyError::new(ErrorKind::Upstream, Some("not a `protocol: auto` endpoint".into())));
            };
            let learning = learned.learn(endpoint.pool(), h2, self.connect_timeout);
            match tokio::time::timeout_at(self.capped(deadline), learning).await {
                Ok(Ok(_)) => self.send(guard, req, client, deadline).await,
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ProxyError::new(ErrorKind::Timeout, None)),
            }
        })
    }

    /// [`send_hyper`](Self::send_hyper) as the same future type as [`send_h2`](Self::send_h2).
    fn send_hyper_boxed<'a>(
        &'a self,
        guard: InFlight<B>,
        parts: http::request::Parts,
        body: SendBody<B>,
        upgrade: (bool, Option<hyper::upgrade::OnUpgrade>),
        client: &'a ClientInfo,
        deadline: tokio::time::Instant,
    ) -> Sending<'a, B> {
        Box::pin(self.send_hyper(guard, parts, body, upgrade, client, deadline))
    }

    /// A request to an HTTP/2 endpoint (`protocol: h2 | h2c`): hop-by-hop fields out (`TE:
    /// trailers` kept: gRPC servers look for it), `X-Forwarded-*` set, the target sent as
    /// `:scheme`, `:authority` (the client's `Host`) and `:path`. Trailers pass both ways.
    async fn send_h2(
        &self,
        guard: InFlight<B>,
        req: Request<SendBody<B>>,
        client: &ClientInfo,
        deadline: tokio::time::Instant,
    ) -> Result<Response<UpstreamBody<B>>, ProxyError> {
        let deadline = self.capped(deadline);
        let endpoint = &self.shared.endpoints[guard.endpoint];
        let Some(pool) = endpoint.h2.as_ref() else {
            return Err(ProxyError::new(ErrorKind::Upstream, Some("not an HTTP/2 endpoint".into())));
        };
        let (mut parts, body) = req.into_parts();
        let trailers = parts.headers.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        headers::remove_hop_by_hop(&mut parts.headers, false);
        parts.headers.reserve(3);
        let host = parts.headers.remove(header::HOST);
        let authority = match (&host, parts.uri.authority()) {
            (Some(h), _) => h.to_str().ok().map(str::to_owned),
            (None, Some(a)) => Some(a.as_str().to_owned()),
            (None, None) => None,
        }
        .unwrap_or_else(|| endpoint.authority().to_owned());
        headers::set_forwarded(&mut parts.headers, &client.ip, client.trusted, client.proto(), host.as_ref());
        if trailers {
            parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::builder()
            .scheme(if endpoint.addr.is_tls() { "https" } else { "http" })
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
            .map_err(|e| ProxyError::new(ErrorKind::Upstream, Some(Box::new(e))))?;
        parts.version = Version::HTTP_2;
        // A gRPC call's body keeps what it sends (not waiting for it), and a body read whole
        // is at hand: either can be sent again if the upstream refuses the stream
        // (`REFUSED_STREAM`: never processed). Other streamed bodies go once.
        let body = match body {
            SendBody::Stream(b) if nexus_core::grpc::is_grpc(&parts.headers) => SendBody::Kept(Kept::new(b)),
            other => other,
        };
        let copy = body.spare().map(|spare| (spare, parts.method.clone(), parts.uri.clone(), parts.headers.clone()));
        let again = move || {
            let (spare, method, uri, headers) = copy.as_ref()?;
            let body = spare.resend()?;
            let mut req = Request::new(body);
            *req.method_mut() = method.clone();
            *req.uri_mut() = uri.clone();
            *req.version_mut() = Version::HTTP_2;
            *req.headers_mut() = headers.clone();
            Some(req)
        };
        let req = Request::from_parts(parts, body);
        let sending = pool.send(req, self.connect_timeout, again);
        let (mut res, stream) = match tokio::time::timeout_at(deadline, sending).await {
            Ok(Ok(sent)) => sent,
            Ok(Err(e)) => {
                // An `auto` endpoint that no longer takes an HTTP/2 connection (it stopped
                // offering `h2`, or is down): the next request learns again.
                if let (Some(learned), ErrorKind::Connect | ErrorKind::ConnectTimeout) = (&endpoint.learned, e.kind()) {
                    learned.forget();
                }
                return Err(e);
            }
            Err(_) => return Err(ProxyError::new(ErrorKind::Timeout, None)),
        };
        headers::remove_hop_by_hop(res.headers_mut(), false);
        Ok(res.map(|body| UpstreamBody::h2(body, stream, guard)))
    }

    /// A request with a body, or an upgrade, through hyper's client connection.
    async fn send_hyper(
        &self,
        guard: InFlight<B>,
        mut parts: http::request::Parts,
        body: SendBody<B>,
        (upgrade, client_upgrade): (bool, Option<hyper::upgrade::OnUpgrade>),
        client: &ClientInfo,
        deadline: tokio::time::Instant,
    ) -> Result<Response<UpstreamBody<B>>, ProxyError> {
        let deadline = self.capped(deadline);
        let pool = self.shared.endpoints[guard.endpoint].pool();
        headers::remove_hop_by_hop(&mut parts.headers, upgrade);
        // Room for X-Forwarded-For/-Proto/-Host at once (hyper sizes the map to what the client sent).
        parts.headers.reserve(3);
        let host = parts.headers.get(header::HOST).cloned();
        headers::set_forwarded(&mut parts.headers, &client.ip, client.trusted, client.proto(), host.as_ref());
        let req = Request::from_parts(parts, body);
        if let Some(client_side) = client_upgrade {
            let mut res = match tokio::time::timeout_at(deadline, pool.send_upgrade(req, self.connect_timeout)).await {
                Ok(r) => r?,
                Err(_) => return Err(ProxyError::new(ErrorKind::Timeout, None)),
            };
            if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream_side = hyper::upgrade::on(&mut res);
                let name = self.shared.name.clone();
                let tracked = client.tracker.as_ref().map(Tracker::track);
                tokio::spawn(async move {
                    // The upgraded connection holds its in-flight slot, and its place in the
                    // shutdown tracker, until it closes.
                    let _slot = guard;
                    let _tracked = tracked;
                    match tokio::try_join!(client_side, upstream_side) {
                        Ok((c, u)) => {
                            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                                tracing::debug!(upstream = %name, error = %e, "upgraded connection ended");
                            }
                        }
                        Err(e) => tracing::debug!(upstream = %name, error = %e, "upgrade failed"),
                    }
                });
                let (parts, body) = res.into_parts();
                return Ok(Response::from_parts(parts, UpstreamBody::new(body, None, self.detached())));
            }
            headers::remove_hop_by_hop(res.headers_mut(), false);
            let (parts, body) = res.into_parts();
            return Ok(Response::from_parts(parts, UpstreamBody::new(body, None, guard)));
        }
        let (mut res, conn) = match tokio::time::timeout_at(deadline, pool.send(req, self.connect_timeout)).await {
            Ok(r) => r?,
            Err(_) => return Err(ProxyError::new(ErrorKind::Timeout, None)),
        };
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            // A switch the client did not ask for (SPEC §10): never relayed; the connection
            // is dropped with the response.
            return Err(ProxyError::new(
                ErrorKind::Upstream,
                Some("upstream switched protocols on a request that asked for no upgrade".into()),
            ));
        }
        headers::remove_hop_by_hop(res.headers_mut(), false);
        let (parts, body) = res.into_parts();
        Ok(Response::from_parts(parts, UpstreamBody::new(body, Some(conn), guard)))
    }
}

/// A try on hyper's client or HTTP/2 (boxed: see [`Upstream::send`]).
type Sending<'a, B> =
    std::pin::Pin<Box<dyn Future<Output = Result<Response<UpstreamBody<B>>, ProxyError>> + Send + 'a>>;

/// A body of `len` bytes agrees with the request's `Content-Length`, if it has one (without
/// one, the lean exchange writes it).
fn length_agrees(headers: &http::HeaderMap, len: usize) -> bool {
    headers.get(header::CONTENT_LENGTH).is_none_or(|v| crate::http1::parse_length(v.as_bytes()) == Some(len as u64))
}

/// What one try sends.
// Not boxed: the owned request is the common case, and boxing it is an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Outgoing<'a, B> {
    /// A request of its own (a body to send, an upgrade, or the only try), and what its
    /// head says ([`HeadScan`], made once per request).
    Owned(Request<SendBody<B>>, HeadScan),
    /// The head of a request without a body, borrowed from the retry loop: already in
    /// origin form and without hop-by-hop fields named by `Connection` ([`to_origin_form`]).
    Lean(&'a http::request::Parts),
}

/// The head as it goes on the wire: origin-form target (`GET /path?query HTTP/1.1`; the
/// endpoint is the connection's), HTTP/1.1, and `Host` from an HTTP/2 client's `:authority`.
/// `has_host`: the head has a `Host` field already.
pub(super) fn to_origin_form(parts: &mut http::request::Parts, has_host: bool) {
    let uri = std::mem::take(&mut parts.uri).into_parts();
    if !has_host
        && let Some(a) = &uri.authority
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    parts.uri = Uri::from(uri.path_and_query.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
    parts.version = Version::HTTP_11;
}
