//! A route's target: the upstream it forwards to, or the sides of a split (by weight, by a
//! sticky key, with a fallback), and a mirror; and the answer a forward gives the client
//! (the upstream's response, or the JSON of SPEC §4 for a failed one).

use crate::balance::Rng;
use crate::body::{RequestBody, ResponseBody};
use crate::error::ProxyError;
use crate::replay::SendBody;
use crate::upstream::{ClientInfo, Upstream};
use futures_util::FutureExt;
use futures_util::future::Either;
use http::{HeaderName, HeaderValue, Request, Response, header};
use nexus_core::body::GatewayBody;
use nexus_core::claims::VerifiedClaims;
use nexus_core::config::ConfigError;
use nexus_core::error::REQUEST_ID;
use nexus_core::grpc;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// How a route chooses the side of a split for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    /// The value of this request header.
    Header(HeaderName),
    /// The value of this cookie.
    Cookie(String),
    /// This verified JWT claim.
    Claim(String),
}

impl StickyKey {
    /// Parse `header:NAME`, `cookie:NAME` or `claim:NAME`.
    pub fn parse(s: &str) -> Option<Self> {
        let (kind, name) = s.split_once(':')?;
        match kind {
            "header" => HeaderName::from_bytes(name.as_bytes()).ok().map(Self::Header),
            "cookie" => Some(Self::Cookie(name.to_string())),
            "claim" => Some(Self::Claim(name.to_string())),
            _ => None,
        }
    }

    fn value<'r, B>(&self, req: &'r Request<B>) -> Option<std::borrow::Cow<'r, str>> {
        match self {
            Self::Header(h) => req.headers().get(h).and_then(|v| v.to_str().ok()).map(Into::into),
            Self::Cookie(name) => nexus_core::cookie::get(req.headers(), name).map(Into::into),
            Self::Claim(c) => {
                req.extensions().get::<VerifiedClaims>().and_then(|cl| cl.get_str(c)).map(|v| v.into_owned().into())
            }
        }
    }
}

/// Where one route sends its requests: the sides of its split (one for a plain
/// `upstream`), the sticky key that picks a side, its mirror and its timeout.
#[derive(Debug)]
pub struct RouteTarget<B> {
    sides: Box<[(Arc<Upstream<B>>, u64)]>,
    total: u64,
    sticky: Option<StickyKey>,
    /// `on_unavailable: fallback`: a side with no endpoint in rotation gives its share away.
    fallback: bool,
    timeout: Duration,
    mirror: Option<Mirror<B>>,
    rng: Rng,
}

/// Copies at most this many mirrored requests in flight per route; more are dropped.
const MIRROR_SLOTS: usize = 128;

/// Shadow traffic of one route: a sample of requests copied to another upstream,
/// fire-and-forget. The client's answer never waits for it.
#[derive(Debug)]
struct Mirror<B> {
    upstream: Arc<Upstream<B>>,
    /// Requests copied per 10,000.
    per_10k: u64,
    slots: Arc<Semaphore>,
    outcomes: Arc<MirrorMetrics>,
}

/// `nexus_mirror_requests_total{route,upstream,outcome}`: `success` (a non-5xx
/// answer), `error`, `timeout`, `dropped` (too many copies in flight), `skipped`
/// (body over 64 KiB, or an upgrade).
#[derive(Debug)]
struct MirrorMetrics {
    success: metrics::Counter,
    error: metrics::Counter,
    timeout: metrics::Counter,
    dropped: metrics::Counter,
    skipped: metrics::Counter,
}

impl MirrorMetrics {
    fn new(route: &str, upstream: &str) -> Self {
        let c = |outcome: &'static str| {
            metrics::counter!(nexus_core::metric_names::MIRROR_REQUESTS_TOTAL, "route" => route.to_string(),
                "upstream" => upstream.to_string(), "outcome" => outcome)
        };
        Self {
            success: c("success"),
            error: c("error"),
            timeout: c("timeout"),
            dropped: c("dropped"),
            skipped: c("skipped"),
        }
    }
}

impl<B> RouteTarget<B> {
    /// Whether the split's side is chosen by a verified claim (which must then be in the
    /// request's extensions).
    pub(crate) fn reads_claims(&self) -> bool {
        matches!(self.sticky, Some(StickyKey::Claim(_)))
    }

    /// The target of `route` (the `i`-th, for error paths), from the built `upstreams`; an
    /// unknown upstream, or a split where nothing carries traffic, is an error in `errors`.
    pub(crate) fn build(
        i: usize,
        route: &nexus_core::router::Route,
        upstreams: &BTreeMap<String, Arc<Upstream<B>>>,
        default_timeout: Duration,
        rng: Rng,
        errors: &mut Vec<ConfigError>,
    ) -> Self {
        let rc = route.config();
        let wanted: Vec<(&str, u32)> = match (&rc.upstream, &rc.split) {
            (Some(u), _) => vec![(u.as_str(), 1)],
            (None, Some(split)) => split.iter().map(|s| (s.upstream.as_str(), s.weight)).collect(),
            (None, None) => Vec::new(),
        };
        let mut acc = 0u64;
        let mut sides = Vec::new();
        for (name, weight) in wanted {
            match upstreams.get(name) {
                Some(up) => {
                    acc += u64::from(weight);
                    sides.push((Arc::clone(up), acc));
                }
                None => {
                    errors
                        .push(ConfigError::new(format!("routes[{i}].upstream"), format!("unknown upstream {name:?}")));
                }
            }
        }
        if acc == 0 {
            errors.push(ConfigError::new(format!("routes[{i}]"), "no upstream carries traffic"));
        }
        let mirror = rc.mirror.as_ref().and_then(|m| {
            let Some(up) = upstreams.get(&m.upstream) else {
                errors.push(ConfigError::new(
                    format!("routes[{i}].mirror.upstream"),
                    format!("unknown upstream {:?}", m.upstream),
                ));
                return None;
            };
            // The percentage is validated to 0..=100 before this point.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let per_10k = (m.percent.clamp(0.0, 100.0) * 100.0).round() as u64;
            Some(Mirror {
                upstream: Arc::clone(up),
                per_10k,
                slots: Arc::new(Semaphore::new(MIRROR_SLOTS)),
                outcomes: Arc::new(MirrorMetrics::new(route.name(), &m.upstream)),
            })
        });
        RouteTarget {
            mirror,
            sides: sides.into_boxed_slice(),
            total: acc.max(1),
            sticky: rc.sticky.as_deref().and_then(StickyKey::parse),
            fallback: rc.on_unavailable == nexus_core::config::OnUnavailable::Fallback,
            timeout: rc.timeout.map_or(default_timeout, nexus_core::config::Duration::as_std),
            rng,
        }
    }

    /// The upstreams and their cumulative weights.
    pub fn sides(&self) -> impl Iterator<Item = (&Upstream<B>, u64)> {
        let mut prev = 0;
        self.sides.iter().map(move |(u, c)| {
            let w = c - prev;
            prev = *c;
            (&**u, w)
        })
    }

    fn choose<Req>(&self, req: &Request<Req>) -> &Arc<Upstream<B>> {
        let rng = &self.rng;
        if self.sides.len() == 1 {
            return &self.sides[0].0;
        }
        let point = match self.sticky.as_ref().and_then(|k| k.value(req)) {
            // Same key, same point on the weight line: a weight change only moves
            // the keys whose point crosses the new boundary.
            Some(key) => fnv1a(key.as_bytes()) % self.total,
            None => rng.below(self.total),
        };
        let i = self.sides.partition_point(|(_, c)| *c <= point).min(self.sides.len() - 1);
        if self.fallback && !self.sides[i].0.has_endpoint_in_rotation() {
            return self.fall_back(i, point);
        }
        &self.sides[i].0
    }

    /// Side `out` has no endpoint in rotation: the same point on the weight line of the
    /// other sides that have one (a sticky key keeps landing on one side); `out` itself
    /// (503) when none has.
    fn fall_back(&self, out: usize, point: u64) -> &Arc<Upstream<B>> {
        let mut prev = 0;
        let available: Vec<(usize, u64)> = self
            .sides
            .iter()
            .enumerate()
            .map(|(i, (u, c))| {
                let w = c - prev;
                prev = *c;
                (i, if i != out && w > 0 && u.has_endpoint_in_rotation() { w } else { 0 })
            })
            .filter(|(_, w)| *w > 0)
            .collect();
        let total: u64 = available.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return &self.sides[out].0;
        }
        let mut at = point % total;
        for (i, w) in available {
            if at < w {
                return &self.sides[i].0;
            }
            at -= w;
        }
        &self.sides[out].0
    }
}

/// Copy `req` to the mirror (in a task of its own) and give back the request to
/// send to the primary. The body is read ahead (up to 64 KiB) so both get it;
/// a larger body, or an upgrade, is not mirrored.
async fn mirror<B>(
    m: &Mirror<B>,
    req: Request<SendBody<B>>,
    client: &ClientInfo,
    timeout: Duration,
) -> Result<Request<SendBody<B>>, ProxyError>
where
    B: RequestBody,
{
    if crate::headers::is_upgrade(req.headers()) {
        m.outcomes.skipped.increment(1);
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let read = body.replayable().await?;
    let replay = match read {
        Ok(r) => r,
        Err(once) => {
            m.outcomes.skipped.increment(1);
            return Ok(Request::from_parts(parts, once));
        }
    };
    let Ok(slot) = Arc::clone(&m.slots).try_acquire_owned() else {
        m.outcomes.dropped.increment(1);
        return Ok(Request::from_parts(parts, replay.body()));
    };
    let mut shadow = crate::upstream::rebuild(&parts, replay.body());
    shadow.headers_mut().insert(MIRROR_HEADER, HeaderValue::from_static("true"));
    let upstream = Arc::clone(&m.upstream);
    let outcomes = Arc::clone(&m.outcomes);
    // The copy is not the client's request: it is not tracked for shutdown.
    let client = ClientInfo { tracker: None, ..client.clone() };
    tokio::spawn(async move {
        let _slot = slot;
        let outcome = tokio::time::timeout(timeout, async {
            let res = upstream.forward_send(shadow, &client, timeout).await?;
            let status = res.status();
            // Read the answer to its end so the connection goes back to the pool.
            let _ = http_body_util::BodyExt::collect(res.into_body()).await;
            Ok::<_, ProxyError>(status)
        })
        .await;
        match outcome {
            Ok(Ok(status)) if !status.is_server_error() => outcomes.success.increment(1),
            Ok(Err(e)) if e.is_timeout() => outcomes.timeout.increment(1),
            Err(_) => outcomes.timeout.increment(1),
            Ok(_) => outcomes.error.increment(1),
        }
    });
    Ok(Request::from_parts(parts, replay.body()))
}

/// Marks the copies a mirror receives.
pub(crate) const MIRROR_HEADER: HeaderName = HeaderName::from_static("x-nexus-mirror");

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Finalise (murmur3 fmix64) so nearby keys spread over the whole range.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

impl<B> RouteTarget<B>
where
    B: RequestBody,
{
    /// Forward one request: the side of the split, a copy to the mirror, then the
    /// upstream (balancer, retries, breaker, per try). A failed forward is answered
    /// with the JSON of SPEC §4 (502, 503 with `Retry-After`, 504); never fails.
    ///
    /// The upstream's part of the future (the try, its connection exchange) is boxed,
    /// once per request: whatever wraps the returned future moves a pointer, not that state.
    pub fn forward<'a>(
        &'a self,
        req: Request<B>,
        client: &'a ClientInfo,
    ) -> impl Future<Output = Response<ResponseBody<B>>> + Send + 'a {
        let grpc = grpc::is_grpc(req.headers());
        let request_id = req.headers().get(REQUEST_ID).cloned();
        self.forward_as(req, client, grpc, request_id)
    }

    /// [`forward`](Self::forward) for a request already known to be gRPC or not: a gRPC
    /// request's `grpc-timeout` caps the route's timeout, the deadline goes upstream as
    /// `grpc-timeout`, and an upstream that speaks HTTP/1.1 gets no gRPC request (503,
    /// UNAVAILABLE to the client, naming the mismatch). `rid`: the request's id, for a failed
    /// forward's answer.
    pub(crate) fn forward_as<'a>(
        &'a self,
        mut req: Request<B>,
        client: &'a ClientInfo,
        grpc: bool,
        rid: Option<HeaderValue>,
    ) -> impl Future<Output = Response<ResponseBody<B>>> + Send + 'a {
        let upstream = self.choose(&req);
        let mut timeout = self.timeout;
        let mut deadline = None;
        if grpc {
            if !upstream.speaks_h2() {
                let refused = Err(ProxyError::new(crate::error::ErrorKind::ProtocolMismatch, None));
                return Either::Left(std::future::ready(answer(refused, upstream, rid.as_ref(), None)));
            }
            if let Some(t) = req.headers().get(grpc::GRPC_TIMEOUT).and_then(|v| grpc::parse_timeout(v.as_bytes())) {
                timeout = timeout.min(t);
            }
            req.headers_mut().insert(grpc::GRPC_TIMEOUT, grpc::timeout_value(timeout));
            // A call's deadline covers its whole stream, not only the response head.
            deadline = Some(tokio::time::Instant::now() + timeout);
        }
        let req = req.map(SendBody::Stream);
        // Chosen before the first poll, so the request is held once (see `Upstream::forward_send`).
        let sent = match &self.mirror {
            // Rare, and a task of its own anyway: boxed, so the common future stays small.
            Some(m) if self.rng.below(10_000) < m.per_10k => {
                Either::Left(Box::pin(mirror_then_send(m, upstream, req, client, timeout)))
            }
            // (Boxed inside: see `Upstream::forward_send`.)
            _ => Either::Right(upstream.forward_send(req, client, timeout)),
        };
        Either::Right(sent.map(move |sent| answer(sent, upstream, rid.as_ref(), deadline)))
    }
}

/// Copy to the mirror, then send to `upstream`.
async fn mirror_then_send<B>(
    m: &Mirror<B>,
    upstream: &Upstream<B>,
    req: Request<SendBody<B>>,
    client: &ClientInfo,
    timeout: Duration,
) -> Result<Response<crate::body::UpstreamBody<B>>, ProxyError>
where
    B: RequestBody,
{
    let req = mirror(m, req, client, timeout).await?;
    upstream.forward_send(req, client, timeout).await
}

/// An upstream's response as the gateway sends it: in the gateway's own HTTP version, not
/// the upstream's (RFC 9110 §6.2; an HTTP/1.0 upstream's answer is sent as HTTP/1.1, with
/// hyper framing it for the client's version).
pub(crate) fn own_version<T>(mut res: Response<T>) -> Response<T> {
    *res.version_mut() = http::Version::HTTP_11;
    res
}

/// The client's answer to a forward: the upstream's response (a gRPC call's with its
/// `deadline`), or the JSON of SPEC §4 for a failed one (502, 503 with `Retry-After`, 504),
/// labelled with the upstream.
fn answer<B: RequestBody>(
    sent: Result<Response<crate::body::UpstreamBody<B>>, ProxyError>,
    upstream: &Upstream<B>,
    rid: Option<&HeaderValue>,
    deadline: Option<tokio::time::Instant>,
) -> Response<ResponseBody<B>> {
    match sent {
        Ok(mut res) => {
            if let Some(at) = deadline {
                res.body_mut().grpc_deadline(at);
            }
            own_version(res).map(GatewayBody::stream)
        }
        Err(e) => {
            tracing::debug!(upstream = upstream.name(), error = %e, "forward failed");
            let id = rid.and_then(|v| v.to_str().ok()).unwrap_or("");
            let mut res: Response<ResponseBody<B>> = e.to_gateway_error().into_response(id);
            if let Some(secs) = e.retry_after() {
                res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            // The answer is about this upstream (its `upstream` metric label).
            res.map(|body| match body {
                GatewayBody::Full { data } => {
                    GatewayBody::stream(crate::body::UpstreamBody::answer(data, upstream.detached()))
                }
                streamed => streamed,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_keys_parse() {
        assert_eq!(StickyKey::parse("header:X-User-Id"), Some(StickyKey::Header(HeaderName::from_static("x-user-id"))));
        assert_eq!(StickyKey::parse("cookie:ab"), Some(StickyKey::Cookie("ab".into())));
        assert_eq!(StickyKey::parse("ip"), None);
    }

    #[test]
    fn fnv_spreads_keys_evenly() {
        let n = 10_000u64;
        let below: u64 = (0..n).filter(|i| fnv1a(format!("user-{i}").as_bytes()) % 100 < 10).count() as u64;
        assert!((800..=1200).contains(&below), "{below}");
    }
}
