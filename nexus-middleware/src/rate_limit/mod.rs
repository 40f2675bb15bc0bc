//! Rate limiting: `requests` per `per` with `burst` (GCRA, on `governor`), one
//! bucket per key: the client IP, a request header, or a verified JWT claim.
//!
//! Over the limit the layer answers 429 `rate_limited` with `Retry-After` and
//! the `RateLimit-*` headers of SPEC §4, without calling the inner service;
//! under it, the response carries `RateLimit-Limit/Remaining/Reset/Policy` too.
//! Clones of the layer share one set of buckets, so axum's `Router::layer`
//! (which clones per route) still enforces one limit.
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use nexus_middleware::rate_limit::{RateLimitConfig, RateLimitLayer, RateLimiter};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let limiter = RateLimiter::local(RateLimitConfig {
//!     requests: 2,
//!     per: Duration::from_secs(60),
//!     ..Default::default()
//! }).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(limiter))
//!     .service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
//!     });
//! // The server gives each request its client's address (or axum's `ConnectInfo`, with the
//! // `axum` feature); without one a per-client limit answers 500, never one shared bucket.
//! let from = |ip: [u8; 4]| {
//!     let mut req = http::Request::new(());
//!     req.extensions_mut().insert(nexus_core::client::PeerAddr((ip, 40000).into()));
//!     req
//! };
//! assert_eq!(svc.clone().oneshot(from([192, 0, 2, 1])).await.unwrap().status(), 200);
//! let second = svc.clone().oneshot(from([192, 0, 2, 1])).await.unwrap();
//! assert_eq!(second.headers()["ratelimit-remaining"], "0");
//! let third = svc.clone().oneshot(from([192, 0, 2, 1])).await.unwrap();
//! assert_eq!(third.status(), 429);
//! assert_eq!(third.headers()["retry-after"], "30");
//! assert_eq!(svc.clone().oneshot(from([192, 0, 2, 2])).await.unwrap().status(), 200, "its own bucket");
//! assert_eq!(svc.oneshot(http::Request::new(())).await.unwrap().status(), 500);
//! # }
//! ```
//!
//! Memory stays bounded: idle keys (whose bucket is full again) are swept in
//! the background while a tokio runtime runs, and inline every 65,536 checks
//! otherwise. Local keys are 64-bit hashes (randomly seeded per process), so
//! a key costs the same whatever its length and no request allocates.

mod layer;
mod local;
#[cfg(feature = "redis")]
mod redis;

pub use layer::{RateLimit, RateLimitLayer, ResponseFuture};
#[cfg(feature = "redis")]
pub use redis::RedisOptions;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use ipnet::IpNet;
use nexus_core::claims::VerifiedClaims;
use nexus_core::client::{client_ip, peer_of};
use nexus_core::{ErrorCode, GatewayError};
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// What identifies one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The client IP: the peer address ([`peer_of`]: a `PeerAddr` in the request extensions), or
    /// the right-most untrusted `X-Forwarded-For` hop when the peer is a trusted proxy.
    ClientIp,
    /// The value of this request header (the client IP when absent).
    Header(HeaderName),
    /// This claim of the verified token ([`VerifiedClaims`]; the client IP when absent).
    Claim(String),
}

impl FromStr for RateLimitKey {
    type Err = String;

    /// `client_ip`, `header:NAME` or `claim:NAME`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "client_ip" => Ok(Self::ClientIp),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(Self::Header)
                .map_err(|_| format!("invalid header name {name:?}")),
            Some(("claim", name)) if !name.is_empty() => Ok(Self::Claim(name.to_string())),
            _ => Err(format!("unknown rate-limit key {s:?} (expected client_ip, header:NAME or claim:NAME)")),
        }
    }
}

/// One limit, in plain Rust (the binary converts `rate_limits.<name>` into this).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// The limit's name: the `limit` metric label and part of the Redis key. Default `"default"`.
    pub name: String,
    /// Requests allowed per `per`. Default 100.
    pub requests: u32,
    /// The window. Default one minute.
    pub per: Duration,
    /// Bucket size (requests that may arrive at once). Default: `requests`.
    pub burst: Option<u32>,
    /// What identifies a bucket. Default [`RateLimitKey::ClientIp`].
    pub key: RateLimitKey,
    /// Peers whose `X-Forwarded-For` is believed for [`RateLimitKey::ClientIp`]. Default none.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            requests: 100,
            per: Duration::from_secs(60),
            burst: None,
            key: RateLimitKey::ClientIp,
            trusted_proxies: Vec::new(),
        }
    }
}

/// A limit that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitError(String);

impl fmt::Display for RateLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RateLimitError {}

impl RateLimitConfig {
    fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests).max(1)
    }

    /// Time for one request's worth of bucket to refill.
    fn interval(&self) -> Result<Duration, RateLimitError> {
        if self.requests == 0 || self.per.is_zero() {
            return Err(RateLimitError("requests and per must be greater than zero".into()));
        }
        Ok((self.per / self.requests).max(Duration::from_nanos(1)))
    }

    /// `RateLimit-Policy: <requests>;w=<per seconds>;burst=<burst>`.
    fn policy(&self) -> HeaderValue {
        let w = self.per.as_secs().max(1);
        HeaderValue::try_from(format!("{};w={w};burst={}", self.requests, self.burst()))
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// One check's outcome, with what the response headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The request may pass.
    pub allowed: bool,
    /// `RateLimit-Limit`: the bucket size.
    pub limit: u32,
    /// `RateLimit-Remaining`: requests that may still pass at once.
    pub remaining: u32,
    /// `RateLimit-Reset`: whole seconds (rounded up) until the bucket is full.
    pub reset_secs: u64,
    /// `Retry-After` on a 429: whole seconds (at least 1) until a request would pass.
    pub retry_after_secs: u64,
    /// The backend could not answer; the decision is `on_backend_error`'s, and no
    /// `RateLimit-*` numbers are known.
    pub backend_error: bool,
    fixed: Fixed,
}

/// The header values a limit always answers with, made once per limiter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fixed {
    /// The bucket size `limit` was written for.
    burst: u32,
    /// `RateLimit-Limit` for `burst`.
    limit: HeaderValue,
    /// `RateLimit-Policy`.
    policy: HeaderValue,
}

impl Fixed {
    fn new(burst: u32, policy: HeaderValue) -> Self {
        Self { burst, limit: HeaderValue::from(burst), policy }
    }
}

impl Decision {
    /// Add `RateLimit-Limit/Remaining/Reset/Policy` (not when the backend failed).
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        if self.backend_error {
            return;
        }
        // The four fields, and the `X-Request-Id` a server adds to every answer, in one growth.
        headers.reserve(5);
        let limit =
            if self.limit == self.fixed.burst { self.fixed.limit.clone() } else { number(u64::from(self.limit)) };
        headers.insert(RATELIMIT_LIMIT, limit);
        headers.insert(RATELIMIT_REMAINING, number(u64::from(self.remaining)));
        headers.insert(RATELIMIT_RESET, number(self.reset_secs));
        headers.insert(RATELIMIT_POLICY, self.fixed.policy.clone());
    }

    /// The 429 answer: JSON body, `Retry-After` and the `RateLimit-*` headers.
    pub fn rejection<B: From<Bytes>>(&self, request_id: &str) -> Response<B> {
        let mut res: Response<B> = GatewayError::new(ErrorCode::RateLimited).into_response(request_id);
        self.apply_headers(res.headers_mut());
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after_secs.max(1)));
        res
    }
}

/// `RateLimit-Limit`.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The decimal numbers 0 to 999, written one after the other ("0123…9101112…999").
static DIGITS: [u8; 2890] = {
    let mut out = [0u8; 2890];
    let (mut n, mut at) = (0usize, 0usize);
    while n < 1000 {
        if n >= 100 {
            out[at] = b'0' + (n / 100) as u8;
            at += 1;
        }
        if n >= 10 {
            out[at] = b'0' + (n / 10 % 10) as u8;
            at += 1;
        }
        out[at] = b'0' + (n % 10) as u8;
        at += 1;
        n += 1;
    }
    out
};

/// A number as a header value; below 1,000 (the usual `Remaining`/`Reset`) a slice of a
/// static table, so no allocation per response.
fn number(n: u64) -> HeaderValue {
    let (start, len) = match n {
        0..=9 => (n, 1),
        10..=99 => (10 + (n - 10) * 2, 2),
        100..=999 => (190 + (n - 100) * 3, 3),
        _ => return HeaderValue::from(n),
    };
    // (in range by construction: the largest is 190 + 899 * 3 + 3 = 2890)
    let digits = &DIGITS[start as usize..(start + len) as usize];
    HeaderValue::from_maybe_shared(Bytes::from_static(digits)).unwrap_or_else(|_| HeaderValue::from(n))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The key of one request, borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyValue<'a> {
    /// A client IP.
    Ip(IpAddr),
    /// A header or claim value.
    Text(Cow<'a, str>),
}

impl fmt::Display for KeyValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "ip:{ip}"),
            Self::Text(t) => write!(f, "v:{t}"),
        }
    }
}

/// A shared limit: clones share the buckets.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    config: RateLimitConfig,
    fixed: Fixed,
    backend: Backend,
    /// The missing client address was logged once (see `unknown_client`).
    warned_unknown_client: std::sync::atomic::AtomicBool,
}

enum Backend {
    Local(Arc<local::Local>),
    #[cfg(feature = "redis")]
    Redis(redis::RedisBackend),
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match &self.inner.backend {
            Backend::Local(_) => "local",
            #[cfg(feature = "redis")]
            Backend::Redis(_) => "redis",
        };
        f.debug_struct("RateLimiter").field("config", &self.inner.config).field("backend", &backend).finish()
    }
}

impl RateLimiter {
    /// Buckets in this process.
    pub fn local(config: RateLimitConfig) -> Result<Self, RateLimitError> {
        let local = local::Local::new(config.interval()?, config.burst());
        Ok(Self::with_backend(config, Backend::Local(local)))
    }

    /// Buckets in Redis at `url`, shared by every process that names the same limit.
    /// Connections are opened on first use (inside a tokio runtime).
    #[cfg(feature = "redis")]
    pub fn redis(config: RateLimitConfig, url: &str, options: RedisOptions) -> Result<Self, RateLimitError> {
        let backend = redis::RedisBackend::new(url, &config, options)?;
        Ok(Self::with_backend(config, Backend::Redis(backend)))
    }

    fn with_backend(config: RateLimitConfig, backend: Backend) -> Self {
        let fixed = Fixed::new(config.burst(), config.policy());
        Self {
            inner: Arc::new(Inner {
                config,
                fixed,
                backend,
                warned_unknown_client: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The limit's settings.
    pub fn config(&self) -> &RateLimitConfig {
        &self.inner.config
    }

    /// Keys currently held in memory (local backend; 0 for Redis).
    pub fn len(&self) -> usize {
        match &self.inner.backend {
            Backend::Local(l) => l.len(),
            #[cfg(feature = "redis")]
            Backend::Redis(_) => 0,
        }
    }

    /// No key is held in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop the keys whose bucket is full again (done periodically by itself).
    // Without the `redis` feature, `Local` is the only backend.
    #[allow(irrefutable_let_patterns)]
    pub fn sweep(&self) {
        if let Backend::Local(l) = &self.inner.backend {
            l.sweep();
        }
    }

    /// The key of a request: see [`RateLimitKey`]; the client's address comes from
    /// [`peer_of`]. `None` when the key needs an address the server did not give.
    pub fn key_of<'r, B>(&self, req: &'r Request<B>) -> Option<KeyValue<'r>> {
        let peer = peer_of(req.extensions()).map(|p| p.ip());
        self.try_key_from(req.headers(), req.extensions().get::<VerifiedClaims>(), peer)
    }

    /// The key from a request's parts (for callers that know the peer otherwise).
    pub fn key_from<'r>(
        &self,
        headers: &'r HeaderMap,
        claims: Option<&'r VerifiedClaims>,
        peer: IpAddr,
    ) -> KeyValue<'r> {
        self.try_key_from(headers, claims, Some(peer)).unwrap_or(KeyValue::Ip(peer))
    }

    /// The key from a request's parts; `None` when it needs the client's address (a
    /// `client_ip` key, or a header or claim key whose value is missing) and `peer` is not
    /// known. Such a request must be refused ([`RateLimiter::unknown_client`]), never counted
    /// in one bucket shared by every client.
    pub fn try_key_from<'r>(
        &self,
        headers: &'r HeaderMap,
        claims: Option<&'r VerifiedClaims>,
        peer: Option<IpAddr>,
    ) -> Option<KeyValue<'r>> {
        let text = match &self.inner.config.key {
            RateLimitKey::ClientIp => None,
            RateLimitKey::Header(h) => headers.get(h).and_then(|v| v.to_str().ok()).map(Cow::Borrowed),
            RateLimitKey::Claim(c) => claims.and_then(|cl| cl.get_str(c)),
        };
        match text {
            Some(t) if !t.is_empty() => Some(KeyValue::Text(t)),
            _ => Some(KeyValue::Ip(client_ip(peer?, headers, &self.inner.config.trusted_proxies))),
        }
    }

    /// The answer to a request whose key needs the client's address when the server gave
    /// none: 500 `internal_error` (a server set-up error, not the client's), counted in
    /// `nexus_rate_limit_unknown_client_total{limit}` and logged (the first time per limit).
    pub fn unknown_client<B: From<bytes::Bytes>>(&self, request_headers: &HeaderMap) -> http::Response<B> {
        metrics::counter!(nexus_core::metric_names::RATE_LIMIT_UNKNOWN_CLIENT_TOTAL, "limit" => self.inner.config.name.clone())
            .increment(1);
        if !self.inner.warned_unknown_client.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::error!(
                limit = %self.inner.config.name,
                "a request reached a per-client rate limit without the client's address: give the server's \
                 peer address as nexus_core::client::PeerAddr (or axum's ConnectInfo with the `axum` feature); \
                 such requests are answered 500"
            );
        }
        nexus_core::GatewayError::new(nexus_core::ErrorCode::Internal)
            .with_message("the client's address is unknown to the rate limit")
            .into_response_for(request_headers)
    }

    /// Take one request from `key`'s bucket.
    pub fn check(&self, key: KeyValue<'_>) -> Check {
        match &self.inner.backend {
            Backend::Local(l) => Check { state: CheckState::Ready(Some(l.check(key, &self.inner.fixed))) },
            #[cfg(feature = "redis")]
            Backend::Redis(r) => Check { state: CheckState::Pending(r.check(key, self.inner.fixed.clone())) },
        }
    }

    /// Take one request from the bucket of `req`'s key; `None` when the key needs the
    /// client's address and the server gave none (answer [`RateLimiter::unknown_client`]).
    pub fn check_request<B>(&self, req: &Request<B>) -> Option<Check> {
        Some(self.check(self.key_of(req)?))
    }
}

type BoxDecision = Pin<Box<dyn Future<Output = Decision> + Send>>;

/// A check in progress: ready at once for local buckets, a Redis round trip otherwise.
pub struct Check {
    state: CheckState,
}

enum CheckState {
    Ready(Option<Decision>),
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Pending(BoxDecision),
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            CheckState::Ready(d) => f.debug_tuple("Check::Ready").field(d).finish(),
            CheckState::Pending(_) => f.write_str("Check::Pending"),
        }
    }
}

impl Check {
    /// The decision, if it is known without waiting (always, for local buckets).
    pub fn ready(&mut self) -> Option<Decision> {
        match &mut self.state {
            CheckState::Ready(d) => d.take(),
            CheckState::Pending(_) => None,
        }
    }
}

impl Future for Check {
    type Output = Decision;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Decision> {
        match &mut self.get_mut().state {
            CheckState::Ready(d) => Poll::Ready(d.take().expect("Check polled after completion")),
            CheckState::Pending(f) => f.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests;
