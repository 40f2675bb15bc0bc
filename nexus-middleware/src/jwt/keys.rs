//! Verification keys: parsed once (never per request), looked up by `kid` and
//! algorithm family, swapped whole when a JWKS file or URL changes.

use super::fetch::Fetcher;
use super::{JwksOptions, KeySource};
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The family a key type serves; a key is only ever used with its own family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

impl Family {
    pub(crate) fn of(alg: Algorithm) -> Option<Self> {
        Some(match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Self::Hmac,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Self::Rsa,
            Algorithm::ES256 | Algorithm::ES384 => Self::Ec,
            Algorithm::EdDSA => Self::Ed,
            // An algorithm added to jsonwebtoken later has no key here until we say which.
            _ => return None,
        })
    }
}

struct Key {
    kid: Option<String>,
    family: Family,
    /// The `alg` a JWKS entry pins, if any.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// One version of the key set.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| (&k.kid, k.family))).finish()
    }
}

impl KeySet {
    pub(crate) fn secret(secret: &[u8]) -> Self {
        Self { keys: vec![Key { kid: None, family: Family::Hmac, alg: None, key: DecodingKey::from_secret(secret) }] }
    }

    /// A PEM public key: RSA, EC or Ed25519.
    pub(crate) fn pem(pem: &[u8]) -> Result<Self, String> {
        let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (Family::Rsa, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            (Family::Ec, k)
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (Family::Ed, k)
        } else {
            return Err("not a PEM RSA, EC or Ed25519 public key".into());
        };
        Ok(Self { keys: vec![Key { kid: None, family, alg: None, key }] })
    }

    /// A JWKS document. Keys of unsupported types are skipped; symmetric (`oct`)
    /// keys are refused, since a published key set must not hold secrets.
    pub(crate) fn jwks(json: &[u8]) -> Result<Self, String> {
        use jsonwebtoken::jwk::AlgorithmParameters as P;
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("invalid JWKS: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let family = match &jwk.algorithm {
                P::RSA(_) => Family::Rsa,
                P::EllipticCurve(_) => Family::Ec,
                P::OctetKeyPair(_) => Family::Ed,
                _ => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            let alg = jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok());
            keys.push(Key { kid: jwk.common.key_id.clone(), family, alg, key });
        }
        Ok(Self { keys })
    }

    /// The key for a token: same family as `alg` (and the `alg` a JWKS entry
    /// pins), the token's `kid` when it names one.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&DecodingKey> {
        let family = Family::of(alg)?;
        self.keys
            .iter()
            .filter(|k| k.family == family && k.alg.is_none_or(|a| a == alg))
            .find(|k| match (kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) | (None, _) => true,
            })
            .map(|k| &k.key)
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// Where the keys come from and the set in force.
pub(crate) struct KeyStore {
    current: ArcSwap<KeySet>,
    source: Source,
    options: JwksOptions,
    /// When keys were last fetched because of an unknown `kid`; one fetch at a time, at
    /// most one such per `unknown_kid_cooldown`, and every waiting request shares its
    /// result. (The start-up and periodic fetches take the lock but leave the time alone.)
    refetch: tokio::sync::Mutex<Option<Instant>>,
    /// Bumped after every change of the key set: a verified-token cache entry made under an
    /// older generation is not used.
    generation: AtomicU64,
}

/// Whether the keys were loaded when the store was made.
enum SourceKind {
    Loaded,
    Url,
}

enum Source {
    Fixed,
    File(PathBuf),
    Url(Box<Fetcher>),
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::Fixed => "fixed".to_string(),
            Source::File(p) => format!("file {}", p.display()),
            Source::Url(u) => format!("url {}", u.url()),
        };
        f.debug_struct("KeyStore").field("source", &source).field("keys", &self.current.load().len()).finish()
    }
}

impl KeyStore {
    pub(crate) fn new(source: &KeySource, options: JwksOptions) -> Result<Arc<Self>, String> {
        let source_kind = if matches!(source, KeySource::JwksUrl(_)) { SourceKind::Url } else { SourceKind::Loaded };
        let (set, source) = match source {
            KeySource::Secret(s) => (KeySet::secret(s), Source::Fixed),
            KeySource::PublicKeyPem(pem) => (KeySet::pem(pem)?, Source::Fixed),
            KeySource::Jwks(json) => (KeySet::jwks(json.as_bytes())?, Source::Fixed),
            KeySource::JwksFile(path) => {
                let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                (KeySet::jwks(&bytes)?, Source::File(path.clone()))
            }
            KeySource::JwksUrl(url) => {
                (KeySet::default(), Source::Url(Box::new(Fetcher::new(url, options.fetch_timeout)?)))
            }
        };
        let store = Arc::new(Self {
            current: ArcSwap::from_pointee(set),
            source,
            options,
            refetch: tokio::sync::Mutex::new(None),
            // 0: nothing loaded yet (a JWKS URL before its first fetch).
            generation: AtomicU64::new(u64::from(!matches!(source_kind, SourceKind::Url))),
        });
        if !matches!(store.source, Source::Fixed)
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(refresher(Arc::downgrade(&store)));
        }
        Ok(store)
    }

    pub(crate) fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    /// The key set's generation. Read it *before* [`keys`](Self::keys): a result verified
    /// with those keys is then never filed under a newer generation than theirs.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reload because a token named a key we do not have. Returns whether the set changed.
    pub(crate) async fn refetch(&self) -> bool {
        if matches!(self.source, Source::Fixed) {
            return false;
        }
        let before = self.current.load_full();
        let mut last = self.refetch.lock().await;
        if !Arc::ptr_eq(&before, &self.current.load_full()) {
            // Another request's refetch finished while this one waited: use its result.
            return true;
        }
        if last.is_some_and(|at| at.elapsed() < self.options.unknown_kid_cooldown) {
            return false;
        }
        // Before the first keys arrived, a token's kid is not "unknown" yet: this fetch stands
        // in for the start-up one and starts no cooldown.
        if self.generation() > 0 {
            *last = Some(Instant::now());
        }
        self.reload().await.is_ok()
    }

    /// Load the source again; on failure the last good set stays. Returns the
    /// refresh interval the source asked for (URL `Cache-Control: max-age`).
    async fn reload(&self) -> Result<Option<Duration>, String> {
        let result = match &self.source {
            Source::Fixed => return Ok(None),
            Source::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|b| KeySet::jwks(&b))
                .map(|set| (set, None)),
            Source::Url(f) => f.fetch().await,
        };
        match result {
            Ok((set, max_age)) => {
                tracing::debug!(keys = set.len(), "JWT keys loaded");
                self.current.store(Arc::new(set));
                self.generation.fetch_add(1, Ordering::Release);
                Ok(max_age)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh JWT keys; the last good set stays in force");
                Err(e)
            }
        }
    }
}

fn file_stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Background refresh while the store lives: a JWKS file is re-read when its
/// modification time or size changes; a JWKS URL is fetched at once, then
/// again after its `max-age` (within bounds) or the default interval; a failed
/// fetch is retried sooner, and the last good keys stay in force meanwhile.
async fn refresher(store: Weak<KeyStore>) {
    let mut stamp = match store.upgrade().as_deref().map(|s| &s.source) {
        Some(Source::File(p)) => file_stamp(p),
        _ => None,
    };
    let mut first = true;
    loop {
        let Some(s) = store.upgrade() else { return };
        let wait = match &s.source {
            Source::Fixed => return,
            Source::File(path) => {
                let now = file_stamp(path);
                if now != stamp && now.is_some() && s.reload().await.is_ok() {
                    stamp = now;
                }
                s.options.file_poll_interval
            }
            Source::Url(_) => {
                let o = &s.options;
                // The first fetch holds the refetch lock: requests that arrive before
                // the keys do wait for it instead of failing or fetching again. It does not
                // start the unknown-kid cooldown: a key the issuer publishes right after
                // start-up is fetched at once when a token names it.
                let guard = if first { Some(s.refetch.lock().await) } else { None };
                let result = s.reload().await;
                drop(guard);
                match result {
                    Ok(max_age) => max_age.unwrap_or(o.refresh_interval).clamp(o.min_refresh, o.max_refresh),
                    Err(_) => o.unknown_kid_cooldown.max(Duration::from_secs(1)),
                }
            }
        };
        first = false;
        drop(s);
        tokio::time::sleep(wait).await;
    }
}
