//! JWT bearer authentication on `jsonwebtoken`: the token from `Authorization:
//! Bearer` (or a named cookie or header), its algorithm limited to an
//! allow-list (`none` never), the key chosen by `kid` and only ever used with
//! its own algorithm family, then `exp`/`nbf` (with leeway), `iss`, `aud` and
//! required claims. Failures answer 401 (or 403 for a missing required claim)
//! with `WWW-Authenticate` as RFC 6750 says, and never reach the inner
//! service. On success the verified claims go into the request extensions
//! ([`VerifiedClaims`], which `claim:NAME` rate-limit and sticky keys read),
//! `forward_claims` become request headers (the same headers sent by the
//! client are removed first, so they cannot be spoofed), and `Authorization`
//! can be stripped.
//!
//! Keys come from an HMAC secret, a PEM public key, a JWKS document, a JWKS
//! file (re-read when it changes) or a JWKS URL (fetched, cached, refreshed in
//! the background by its `Cache-Control: max-age` within bounds, refetched on
//! an unknown `kid` at most once per `min_refetch_interval` with one fetch
//! shared by every waiting request; the last good set stays when the issuer
//! is down).
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use nexus_middleware::jwt::{JwtAuth, JwtAuthLayer, JwtConfig, KeySource};
//! use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let auth = JwtAuth::new(JwtConfig {
//!     issuer: Some("https://issuer.example.com".into()),
//!     audiences: vec!["nexus".into()],
//!     algorithms: vec![Algorithm::HS256],
//!     keys: KeySource::Secret(b"a secret of 32 bytes or more....".to_vec()),
//!     forward_claims: vec![("sub".into(), http::HeaderName::from_static("x-user-id"))],
//!     ..JwtConfig::default()
//! }).unwrap();
//! let svc = ServiceBuilder::new().layer(JwtAuthLayer::new(auth)).service_fn(|req: http::Request<()>| async move {
//!     let user = req.headers()["x-user-id"].to_str().unwrap().to_string();
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(user))))
//! });
//! let claims = serde_json::json!({"sub": "alice", "iss": "https://issuer.example.com", "aud": "nexus", "exp": 4_000_000_000u64});
//! let token = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"a secret of 32 bytes or more....")).unwrap();
//! let req = http::Request::get("/").header("authorization", format!("Bearer {token}")).body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), 200);
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 401);
//! assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"nexus\"");
//! # }
//! ```

mod fetch;
mod keys;
mod layer;

/// The algorithms, as `jsonwebtoken` names them.
pub use jsonwebtoken::Algorithm;
pub use layer::{Failures, JwtAuthLayer, JwtAuthService, ResponseFuture};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, header};
use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use keys::KeyStore;

/// The shortest HMAC secret accepted: 256 bits (RFC 7518 §3.2 for HS256).
pub const MIN_SECRET: usize = 32;
use nexus_core::claims::VerifiedClaims;
use nexus_core::{ErrorCode, GatewayError};
use serde_json::{Map, Value};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where the verification keys come from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An HMAC secret (HS256/384/512).
    Secret(Vec<u8>),
    /// A PEM public key (RSA, EC or Ed25519).
    PublicKeyPem(Vec<u8>),
    /// A JWKS document.
    Jwks(String),
    /// A JWKS file, re-read when it changes.
    JwksFile(PathBuf),
    /// A JWKS URL, fetched and refreshed.
    JwksUrl(String),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret(..)"),
            Self::PublicKeyPem(_) => f.write_str("PublicKeyPem(..)"),
            Self::Jwks(_) => f.write_str("Jwks(..)"),
            Self::JwksFile(p) => f.debug_tuple("JwksFile").field(p).finish(),
            Self::JwksUrl(u) => f.debug_tuple("JwksUrl").field(u).finish(),
        }
    }
}

/// Where the token is read from, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Authorization,
    /// A request header holding the token (a `Bearer ` prefix is allowed).
    Header(HeaderName),
    /// A cookie holding the token.
    Cookie(String),
}

/// How key sets are refreshed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksOptions {
    /// Refresh interval of a JWKS URL without `max-age`. Default 5 minutes.
    pub refresh_interval: Duration,
    /// Bounds on the refresh interval a `max-age` asks for. Default 1 minute ..= 24 hours.
    pub min_refresh: Duration,
    /// See `min_refresh`.
    pub max_refresh: Duration,
    /// Least time between two fetches caused by tokens naming an unknown `kid` (start-up
    /// and periodic fetches do not count, so they never delay a rotation). Default 5 s.
    pub unknown_kid_cooldown: Duration,
    /// Timeout of one fetch. Default 5 s.
    pub fetch_timeout: Duration,
    /// How often a JWKS file is checked for changes. Default 1 s.
    pub file_poll_interval: Duration,
}

impl Default for JwksOptions {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(300),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(86_400),
            unknown_kid_cooldown: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(5),
            file_poll_interval: Duration::from_secs(1),
        }
    }
}

/// One authentication policy, in plain Rust (the binary converts `auth.jwt.<name>`).
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one); empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Allowed algorithms. Default `[RS256]`.
    pub algorithms: Vec<Algorithm>,
    /// The keys. Default: an empty JWKS (every token fails).
    pub keys: KeySource,
    /// Clock skew allowed on `exp`/`nbf`. Default 30 s.
    pub leeway: Duration,
    /// Claims copied into request headers: (claim, header).
    pub forward_claims: Vec<(String, HeaderName)>,
    /// Claims that must hold this value; `scope`/`scp` must contain every listed
    /// space-separated value. Missing or different: 403.
    pub required_claims: Vec<(String, String)>,
    /// Where the token is looked for. Default `[Authorization]`.
    pub token_sources: Vec<TokenSource>,
    /// Remove `Authorization` before the request goes on. Default false.
    pub strip_authorization: bool,
    /// Key refresh settings.
    pub jwks: JwksOptions,
    /// Verified tokens kept (see [`JwtAuth`]); 0: every request is verified. Default 10,000.
    pub cache_size: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            audiences: Vec::new(),
            algorithms: vec![Algorithm::RS256],
            keys: KeySource::Jwks(r#"{"keys":[]}"#.into()),
            leeway: Duration::from_secs(30),
            forward_claims: Vec::new(),
            required_claims: Vec::new(),
            token_sources: vec![TokenSource::Authorization],
            strip_authorization: false,
            jwks: JwksOptions::default(),
            cache_size: 10_000,
        }
    }
}

/// Why a request was refused; the `reason` label of `nexus_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No token.
    Missing,
    /// Not a well-formed JWT (or a claim of the wrong type).
    Malformed,
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// Wrong or missing `iss`.
    BadIssuer,
    /// Wrong or missing `aud`.
    BadAudience,
    /// The signature does not verify.
    BadSignature,
    /// No key for the token's `kid`.
    UnknownKey,
    /// `none`, or an algorithm outside the allow-list.
    BadAlgorithm,
    /// Valid token, but a required claim is missing or different (403).
    Forbidden,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 10] = [
        Self::Missing,
        Self::Malformed,
        Self::Expired,
        Self::NotYetValid,
        Self::BadIssuer,
        Self::BadAudience,
        Self::BadSignature,
        Self::UnknownKey,
        Self::BadAlgorithm,
        Self::Forbidden,
    ];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadIssuer => "bad_issuer",
            Self::BadAudience => "bad_audience",
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::BadAlgorithm => "bad_algorithm",
            Self::Forbidden => "forbidden",
        }
    }

    /// Position in [`Reason::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    const fn description(self) -> &'static str {
        match self {
            Self::Missing => "no token",
            Self::Malformed => "the token is malformed",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::BadIssuer => "the token's issuer is not accepted",
            Self::BadAudience => "the token's audience is not accepted",
            Self::BadSignature => "the token's signature is invalid",
            Self::UnknownKey => "the token's signing key is unknown",
            Self::BadAlgorithm => "the token's algorithm is not allowed",
            Self::Forbidden => "a required claim is missing",
        }
    }

    /// The answer: 401 with `WWW-Authenticate` (RFC 6750 §3), or 403.
    pub fn rejection<B: From<Bytes>>(self, request_id: &str) -> Response<B> {
        let (code, challenge) = match self {
            Self::Missing => (ErrorCode::Unauthorized, "Bearer realm=\"nexus\"".to_string()),
            Self::Forbidden => {
                (ErrorCode::Forbidden, "Bearer realm=\"nexus\", error=\"insufficient_scope\"".to_string())
            }
            other => (
                ErrorCode::Unauthorized,
                format!(
                    "Bearer realm=\"nexus\", error=\"invalid_token\", error_description=\"{}\"",
                    other.description()
                ),
            ),
        };
        let mut res: Response<B> = GatewayError::new(code).with_message(self.description()).into_response(request_id);
        if let Ok(v) = HeaderValue::try_from(challenge) {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        res
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// A shared authenticator: keys, validation settings, claim rules. Clones share keys.
#[derive(Debug, Clone)]
pub struct JwtAuth {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: JwtConfig,
    store: Arc<KeyStore>,
    /// One prepared `Validation` per allowed algorithm (no per-request setup).
    validations: Vec<(Algorithm, Validation)>,
    /// Verified tokens by the whole token (`None`: `cache_size` 0).
    cache: Option<quick_cache::sync::Cache<Box<[u8]>, Verified>>,
    /// `nexus_jwt_cache_requests_total{result="hit"}` and `{result="miss"}`.
    hits: metrics::Counter,
    misses: metrics::Counter,
}

/// A token that passed verification, as the cache keeps it.
#[derive(Debug, Clone)]
struct Verified {
    /// The key set's generation it was verified under (a newer one makes it a miss).
    generation: u64,
    claims: VerifiedClaims,
    /// Its `forward_claims` values, made when it was verified (`None` when the policy
    /// forwards no claims: a hit then clones nothing more).
    forwarded: Option<Forwarded>,
    /// `exp` and `nbf`, seconds since the epoch: checked again on every use.
    exp: u64,
    nbf: Option<u64>,
}

/// A token's `forward_claims` header values, in `forward_claims` order (`None`: the claim is
/// absent, or no valid field value), made once per cached token: a cache hit clones them
/// instead of looking each claim up and copying it into a new value (~200 instructions per
/// request for one claim).
pub(crate) type Forwarded = Arc<[Option<HeaderValue>]>;

/// A field value's bytes when `HeaderValue::to_str` would take it, checked a word at a time
/// instead of byte by byte. A `HeaderValue` holds no control bytes but tab, so `to_str`'s
/// "visible ASCII or tab" is plain ASCII.
fn ascii(v: &HeaderValue) -> Option<&[u8]> {
    Some(v.as_bytes()).filter(|b| b.is_ascii())
}

/// A numeric claim as whole seconds.
fn seconds(claims: &Map<String, Value>, name: &str) -> Option<u64> {
    let v = claims.get(name)?;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Why a [`JwtConfig`] cannot make a [`JwtAuth`]: each is a policy that could never verify
/// a token safely, refused when it is built rather than at the first request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtConfigError {
    /// `algorithms` is empty.
    #[error("at least one algorithm is required")]
    NoAlgorithm,
    /// An HMAC secret shorter than [`MIN_SECRET`] bytes.
    #[error("an HMAC secret must be at least {MIN_SECRET} bytes (RFC 7518 §3.2); this one has {0}")]
    ShortSecret(usize),
    /// An HMAC secret beside an asymmetric algorithm (the `[RS256]` default, say).
    #[error("an HMAC secret verifies HS256, HS384 or HS512 only, not {0:?}")]
    SecretWithAsymmetric(Algorithm),
    /// An HS* algorithm beside public keys or a JWKS (algorithm confusion).
    #[error("{0:?} needs an HMAC secret; public keys and JWKS verify asymmetric algorithms")]
    HmacWithoutSecret(Algorithm),
    /// The keys could not be read (a PEM or JWKS that does not parse, a bad JWKS URL).
    #[error("{0}")]
    Keys(String),
}

impl JwtAuth {
    /// Load the keys (a JWKS URL is fetched in the background) and prepare validation.
    ///
    /// # Errors
    /// A policy that could never verify safely ([`JwtConfigError`]).
    pub fn new(config: JwtConfig) -> Result<Self, JwtConfigError> {
        if config.algorithms.is_empty() {
            return Err(JwtConfigError::NoAlgorithm);
        }
        // Safe by construction: an HMAC secret verifies HS* only and is long enough to be one;
        // public keys and JWKS verify asymmetric algorithms only (no algorithm confusion).
        let hmac = |a: &Algorithm| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        match &config.keys {
            KeySource::Secret(secret) => {
                if secret.len() < MIN_SECRET {
                    return Err(JwtConfigError::ShortSecret(secret.len()));
                }
                if let Some(a) = config.algorithms.iter().find(|a| !hmac(a)) {
                    return Err(JwtConfigError::SecretWithAsymmetric(*a));
                }
            }
            _ => {
                if let Some(a) = config.algorithms.iter().find(|a| hmac(a)) {
                    return Err(JwtConfigError::HmacWithoutSecret(*a));
                }
            }
        }
        let store = KeyStore::new(&config.keys, config.jwks.clone()).map_err(JwtConfigError::Keys)?;
        let validations = config
            .algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = config.leeway.as_secs();
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if let Some(iss) = &config.issuer {
                    v.set_issuer(&[iss]);
                    required.push("iss");
                }
                if config.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&config.audiences);
                    required.push("aud");
                }
                v.set_required_spec_claims(&required);
                (alg, v)
            })
            .collect();
        let cache = (config.cache_size > 0).then(|| quick_cache::sync::Cache::new(config.cache_size));
        let counter = |result: &'static str| metrics::counter!(nexus_core::metric_names::JWT_CACHE_REQUESTS_TOTAL, "result" => result);
        let (hits, misses) = (counter("hit"), counter("miss"));
        Ok(Self { inner: Arc::new(Inner { config, store, validations, cache, hits, misses }) })
    }

    /// The policy.
    pub fn config(&self) -> &JwtConfig {
        &self.inner.config
    }

    /// The token of a request, from the first configured source that has one.
    pub fn token<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        // ASCII (`token_bytes` takes nothing else), so this cannot fail.
        self.token_bytes(headers).and_then(|t| std::str::from_utf8(t).ok())
    }

    /// [`token`](Self::token) as bytes: a cached token is found without the text check
    /// `&str` needs (a bearer token is hundreds of bytes; `is_ascii` goes a word at a time).
    fn token_bytes<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        self.inner.config.token_sources.iter().find_map(|s| match s {
            TokenSource::Authorization => headers.get(header::AUTHORIZATION).and_then(|v| bearer(ascii(v)?)),
            TokenSource::Header(h) => headers.get(h).and_then(ascii).map(|v| bearer(v).unwrap_or(v.trim_ascii())),
            TokenSource::Cookie(name) => nexus_core::cookie::get(headers, name).map(str::as_bytes),
        })
    }

    /// Verify with the keys in force now (no waiting). `UnknownKey` may pass
    /// after [`JwtAuth::authenticate`] refetches the keys.
    ///
    /// A token verified before under the same key set comes from the cache (`cache_size`):
    /// its signature is not checked again, its `exp`/`nbf` (with leeway) and the required
    /// claims are, on every use.
    pub fn verify(&self, headers: &HeaderMap) -> Result<VerifiedClaims, Reason> {
        self.verify_forwarding(headers).map(|(claims, _)| claims)
    }

    /// [`verify`](Self::verify), with the cached `forward_claims` values when the token came
    /// from the cache (for [`forward_from`](Self::forward_from)).
    pub(crate) fn verify_forwarding(&self, headers: &HeaderMap) -> Result<(VerifiedClaims, Option<Forwarded>), Reason> {
        let token = self.token_bytes(headers).filter(|t| !t.is_empty()).ok_or(Reason::Missing)?;
        let verified = self.verified(token)?;
        self.check_required(verified.0.as_map())?;
        Ok(verified)
    }

    /// `token`'s claims: from the cache when it was verified under the keys in force now,
    /// else verified (and kept, with its `forward_claims` values).
    fn verified(&self, token: &[u8]) -> Result<(VerifiedClaims, Option<Forwarded>), Reason> {
        let inner = &*self.inner;
        // ASCII (see `token_bytes`): text for the verifier, checked on a miss only.
        let text = || std::str::from_utf8(token).map_err(|_| Reason::Malformed);
        let Some(cache) = &inner.cache else {
            return self.verify_token(text()?).map(|claims| (VerifiedClaims::new(claims), None));
        };
        // Before the keys are read (see `KeyStore::generation`).
        let generation = inner.store.generation();
        if let Some(v) = cache.get(token).filter(|v| v.generation == generation) {
            inner.hits.increment(1);
            self.check_times(v.exp, v.nbf)?;
            return Ok((v.claims, v.forwarded));
        }
        inner.misses.increment(1);
        let claims = self.verify_token(text()?)?;
        let (exp, nbf) = (seconds(&claims, "exp"), seconds(&claims, "nbf"));
        let claims = VerifiedClaims::new(claims);
        let Some(exp) = exp else { return Ok((claims, None)) };
        let forward = &inner.config.forward_claims;
        let forwarded: Option<Forwarded> =
            (!forward.is_empty()).then(|| forward.iter().map(|(c, _)| claim_value(&claims, c)).collect());
        cache.insert(
            token.into(),
            Verified { generation, claims: claims.clone(), forwarded: forwarded.clone(), exp, nbf },
        );
        Ok((claims, forwarded))
    }

    /// Tokens in the cache.
    #[cfg(test)]
    fn cached(&self) -> u64 {
        self.inner.cache.as_ref().map_or(0, |c| c.len() as u64)
    }

    /// `exp` and `nbf` of a cached token against the clock, as verification checks them.
    fn check_times(&self, exp: u64, nbf: Option<u64>) -> Result<(), Reason> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let leeway = self.inner.config.leeway.as_secs();
        if exp.saturating_add(leeway) < now {
            return Err(Reason::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(Reason::NotYetValid);
        }
        Ok(())
    }

    /// Verify, refetching the keys once (shared, rate-limited) when the token
    /// names a key not in the set.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<VerifiedClaims, Reason> {
        match self.verify(headers) {
            Err(Reason::UnknownKey) if self.inner.store.refetch().await => self.verify(headers),
            other => other,
        }
    }

    /// The key store (the layer refetches through it on an unknown `kid`).
    pub(crate) fn store(&self) -> &Arc<KeyStore> {
        &self.inner.store
    }

    fn verify_token(&self, token: &str) -> Result<Map<String, Value>, Reason> {
        let mut parts = token.split('.');
        let (Some(head), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(Reason::Malformed);
        };
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head).map_err(|_| Reason::Malformed)?;
        let header: RawHeader = serde_json::from_slice(&raw).map_err(|_| Reason::Malformed)?;
        // `none` (any case) and every name outside the allow-list stop here.
        let alg: Algorithm = header.alg.parse().map_err(|_| Reason::BadAlgorithm)?;
        let (_, validation) = self.inner.validations.iter().find(|(a, _)| *a == alg).ok_or(Reason::BadAlgorithm)?;
        let keys = self.inner.store.keys();
        let key = keys.find(header.kid.as_deref(), alg).ok_or(Reason::UnknownKey)?;
        match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => Reason::Expired,
                ErrorKind::ImmatureSignature => Reason::NotYetValid,
                ErrorKind::InvalidIssuer => Reason::BadIssuer,
                ErrorKind::InvalidAudience => Reason::BadAudience,
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => Reason::BadIssuer,
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => Reason::BadAudience,
                ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
                    Reason::BadSignature
                }
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
                    Reason::BadAlgorithm
                }
                _ => Reason::Malformed,
            }),
        }
    }

    fn check_required(&self, claims: &Map<String, Value>) -> Result<(), Reason> {
        for (name, want) in &self.inner.config.required_claims {
            let ok = if name == "scope" || name == "scp" {
                let granted: Vec<&str> = match (claims.get("scope"), claims.get("scp")) {
                    (Some(Value::String(s)), _) => s.split(' ').collect(),
                    (_, Some(Value::Array(a))) => a.iter().filter_map(Value::as_str).collect(),
                    (_, Some(Value::String(s))) => s.split(' ').collect(),
                    _ => Vec::new(),
                };
                want.split(' ').filter(|w| !w.is_empty()).all(|w| granted.contains(&w))
            } else {
                match claims.get(name) {
                    Some(Value::String(s)) => s == want,
                    Some(Value::Null) | None => false,
                    Some(other) => *other == serde_json::from_str::<Value>(want).unwrap_or(Value::Null),
                }
            };
            if !ok {
                return Err(Reason::Forbidden);
            }
        }
        Ok(())
    }

    /// Remove the forwarded-claim headers a client sent (always, even when auth
    /// fails later), and `Authorization` when configured to.
    pub fn scrub(&self, headers: &mut HeaderMap) {
        for (_, h) in &self.inner.config.forward_claims {
            headers.remove(h);
        }
        if self.inner.config.strip_authorization {
            headers.remove(header::AUTHORIZATION);
        }
    }

    /// Copy `forward_claims` into the request headers.
    pub fn forward(&self, claims: &VerifiedClaims, headers: &mut HeaderMap) {
        self.forward_from(claims, None, headers);
    }

    /// [`forward`](Self::forward), from the values cached with the token when there are.
    pub(crate) fn forward_from(&self, claims: &VerifiedClaims, cached: Option<&Forwarded>, headers: &mut HeaderMap) {
        let names = self.inner.config.forward_claims.iter();
        match cached {
            Some(values) => {
                for ((_, h), v) in names.zip(values.iter()) {
                    if let Some(v) = v {
                        headers.insert(h.clone(), v.clone());
                    }
                }
            }
            None => {
                for (claim, h) in names {
                    if let Some(v) = claim_value(claims, claim) {
                        headers.insert(h.clone(), v);
                    }
                }
            }
        }
    }
}

/// A claim as a field value (see [`VerifiedClaims::get_str`]), when it makes a valid one.
fn claim_value(claims: &VerifiedClaims, claim: &str) -> Option<HeaderValue> {
    claims.get_str(claim).and_then(|v| HeaderValue::try_from(v.as_ref()).ok())
}

/// The token of `Bearer <token>` (the scheme in any case; spaces and tabs around it dropped).
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let v = v.trim_ascii();
    let at = v.iter().position(|&b| b == b' ')?;
    let (scheme, token) = (&v[..at], &v[at + 1..]);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| token.trim_ascii())
}

#[cfg(test)]
mod tests;
