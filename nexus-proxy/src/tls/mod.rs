//! TLS termination (feature `tls`): rustls, certificates chosen by SNI (exact and
//! wildcard DNS names; the first certificate answers when nothing matches or no SNI is
//! sent), a minimum version, ALPN (`h2`, `http/1.1`), optional client certificates,
//! and hot reload: [`TlsTerminator::reload`] builds a new rustls config from the files
//! and swaps it in atomically, so new handshakes use it and open connections carry on;
//! a pair that fails to load keeps the old config.
//!
//! Metrics: `nexus_tls_certificate_expiry_timestamp_seconds{name}` (notAfter of every
//! loaded certificate, `name` its first DNS name), `nexus_tls_reloads_total{result}`,
//! `nexus_tls_handshake_failures_total{reason}` (`not_tls`, `protocol_version`,
//! `no_client_certificate`, `bad_client_certificate`, `other`).
//!
//! The other direction, TLS to `https://` upstreams, is [`UpstreamTls`]: the webpki roots
//! or a CA file, the URL's host or `server_name` verified, an optional client certificate
//! for upstreams that require mutual TLS, and the same re-read without a restart.
//!
//! ```no_run
//! use nexus_proxy::tls::TlsTerminator;
//! # async fn run(config: nexus_core::config::TlsConfig) -> std::io::Result<()> {
//! let tls = TlsTerminator::new(&config).expect("certificates load");
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! let (tcp, _) = listener.accept().await?;
//! match tls.accept(tcp, std::time::Duration::from_secs(10)).await {
//!     Ok(stream) => { /* serve HTTP on `stream`, e.g. with http1::Server */ let _ = stream; }
//!     Err(failure) => eprintln!("handshake failed: {failure}"),
//! }
//! # Ok(()) }
//! ```

use arc_swap::ArcSwap;
use nexus_core::config::{ConfigError, ConfigErrors, TlsConfig, TlsVersion};
use nexus_core::metric_names::{TLS_CERTIFICATE_EXPIRY, TLS_HANDSHAKE_FAILURES_TOTAL, TLS_RELOADS_TOTAL};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

mod upstream;
pub use upstream::UpstreamTls;
pub(crate) use upstream::UpstreamTlsTarget;

/// Why a TLS handshake failed (the `reason` label of `nexus_tls_handshake_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The first bytes were not a TLS handshake (plaintext HTTP on the TLS port, say).
    NotTls,
    /// No TLS version both sides accept.
    ProtocolVersion,
    /// Mutual TLS requires a client certificate and none was sent.
    NoClientCertificate,
    /// The client certificate does not chain to the configured CA (or is expired, ...).
    BadClientCertificate,
    /// Anything else: a timeout, a reset, a bad message.
    Other,
}

impl HandshakeFailure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotTls => "not_tls",
            Self::ProtocolVersion => "protocol_version",
            Self::NoClientCertificate => "no_client_certificate",
            Self::BadClientCertificate => "bad_client_certificate",
            Self::Other => "other",
        }
    }

    fn of(e: &std::io::Error) -> Self {
        let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
            return Self::Other;
        };
        match tls {
            rustls::Error::NoCertificatesPresented => Self::NoClientCertificate,
            rustls::Error::InvalidCertificate(_) => Self::BadClientCertificate,
            rustls::Error::PeerIncompatible(p) if is_version(&format!("{p:?}")) => Self::ProtocolVersion,
            rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion) => Self::ProtocolVersion,
            _ => Self::Other,
        }
    }
}

fn is_version(incompatibility: &str) -> bool {
    incompatibility.contains("Version") || incompatibility.contains("Tls12") || incompatibility.contains("Tls13")
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A TLS listener's handshakes, with a config that reloads.
#[derive(Debug)]
pub struct TlsTerminator {
    config: ArcSwap<rustls::ServerConfig>,
    failures: [metrics::Counter; 5],
    reloads_ok: metrics::Counter,
    reloads_error: metrics::Counter,
}

/// A TLS config loaded from its files, not in use yet (see [`TlsTerminator::install`]).
#[derive(Debug)]
pub struct LoadedTls {
    config: Arc<rustls::ServerConfig>,
    /// (first DNS name, notAfter as Unix time) per certificate.
    expiry: Vec<(String, i64)>,
}

impl LoadedTls {
    /// Read and check every file `config` names: certificates (a key that matches each),
    /// the client CA. Every error has its field path.
    pub fn load(config: &TlsConfig) -> Result<Self, ConfigErrors> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut errors = Vec::new();
        let mut certs = Vec::new();
        let mut expiry = Vec::new();
        for (i, c) in config.certificates.iter().enumerate() {
            let at = |key: &str| format!("server.tls.certificates[{i}].{key}");
            match load_pair(&provider, &c.cert_file, &c.key_file) {
                Ok((names, key, not_after)) => {
                    expiry.push((names.first().cloned().unwrap_or_else(|| format!("certificate-{i}")), not_after));
                    certs.push((names, key));
                }
                Err((key, message)) => errors.push(ConfigError::new(at(key), message)),
            }
        }
        let versions: &[&rustls::SupportedProtocolVersion] = match config.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder =
            match rustls::ServerConfig::builder_with_provider(Arc::clone(&provider)).with_protocol_versions(versions) {
                Ok(b) => b,
                Err(e) => return Err(ConfigErrors(vec![ConfigError::new("server.tls.min_version", e.to_string())])),
            };
        let builder = match &config.client_auth {
            None => Some(builder.with_no_client_auth()),
            Some(auth) => match client_verifier(&provider, &auth.ca_file, auth.required) {
                Ok(v) => Some(builder.with_client_cert_verifier(v)),
                Err(message) => {
                    errors.push(ConfigError::new("server.tls.client_auth.ca_file", message));
                    None
                }
            },
        };
        match builder {
            Some(builder) if errors.is_empty() => {
                let mut server = builder.with_cert_resolver(Arc::new(BySni { certs }));
                server.alpn_protocols = config.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
                Ok(Self { config: Arc::new(server), expiry })
            }
            _ => Err(ConfigErrors(errors)),
        }
    }
}

impl TlsTerminator {
    /// Load `config`'s files and start with them.
    pub fn new(config: &TlsConfig) -> Result<Self, ConfigErrors> {
        let loaded = LoadedTls::load(config)?;
        let reason = |r: HandshakeFailure| metrics::counter!(TLS_HANDSHAKE_FAILURES_TOTAL, "reason" => r.as_str());
        let this = Self {
            config: ArcSwap::new(Arc::clone(&loaded.config)),
            failures: [
                reason(HandshakeFailure::NotTls),
                reason(HandshakeFailure::ProtocolVersion),
                reason(HandshakeFailure::NoClientCertificate),
                reason(HandshakeFailure::BadClientCertificate),
                reason(HandshakeFailure::Other),
            ],
            reloads_ok: metrics::counter!(TLS_RELOADS_TOTAL, "result" => "ok"),
            reloads_error: metrics::counter!(TLS_RELOADS_TOTAL, "result" => "error"),
        };
        publish_expiry(&loaded.expiry);
        Ok(this)
    }

    /// Use `loaded` for every new handshake from now on (open connections keep theirs).
    pub fn install(&self, loaded: LoadedTls) {
        publish_expiry(&loaded.expiry);
        self.config.store(loaded.config);
        self.reloads_ok.increment(1);
    }

    /// Re-read `config`'s files and use them; on an error the running config stays (the
    /// error is counted in `nexus_tls_reloads_total{result="error"}` and returned).
    pub fn reload(&self, config: &TlsConfig) -> Result<(), ConfigErrors> {
        match LoadedTls::load(config) {
            Ok(loaded) => {
                self.install(loaded);
                Ok(())
            }
            Err(e) => {
                self.reloads_error.increment(1);
                Err(e)
            }
        }
    }

    /// Count a reload that failed before it reached [`reload`](Self::reload).
    pub fn count_failed_reload(&self) {
        self.reloads_error.increment(1);
    }

    /// The TLS handshake on `tcp`, within `timeout` (plaintext, a refused client
    /// certificate or no common version is an error; each is counted by reason).
    ///
    /// A failure is counted before the connection is closed, so a client that sees the
    /// close and then reads the metrics finds its failure there.
    pub async fn accept(&self, tcp: TcpStream, timeout: Duration) -> Result<TlsStream<TcpStream>, HandshakeFailure> {
        // Pinned here, so that on a timeout the connection it holds outlives the count.
        let mut handshake = std::pin::pin!(self.handshake(tcp));
        let (reason, _connection) = match tokio::time::timeout(timeout, handshake.as_mut()).await {
            Ok(Ok(tls)) => return Ok(tls),
            Ok(Err((reason, tcp))) => (reason, Some(tcp)),
            Err(_) => (HandshakeFailure::Other, None),
        };
        self.failures[reason as usize].increment(1);
        Err(reason)
    }

    /// The handshake; a failed one gives the connection back (for [`accept`](Self::accept)
    /// to count the failure before closing it).
    async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, (HandshakeFailure, TcpStream)> {
        // A TLS connection opens with a handshake record (content type 22).
        let mut first = [0u8; 1];
        match tcp.peek(&mut first).await {
            Ok(1) if first[0] == 0x16 => {}
            Ok(_) => return Err((HandshakeFailure::NotTls, tcp)),
            Err(_) => return Err((HandshakeFailure::Other, tcp)),
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.load_full());
        acceptor.accept(tcp).into_fallible().await.map_err(|(e, tcp)| (HandshakeFailure::of(&e), tcp))
    }
}

fn publish_expiry(expiry: &[(String, i64)]) {
    for (name, not_after) in expiry {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(TLS_CERTIFICATE_EXPIRY, "name" => name.clone()).set(*not_after as f64);
    }
}

/// A loaded pair: its DNS names, the key, notAfter (Unix time).
type Pair = (Vec<String>, Arc<CertifiedKey>, i64);

/// A certificate chain and its key, checked to match; or (the field at fault, why).
fn load_pair(
    provider: &rustls::crypto::CryptoProvider,
    cert_file: &str,
    key_file: &str,
) -> Result<Pair, (&'static str, String)> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| ("cert_file", format!("cannot read PEM certificates from {cert_file}: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(("cert_file", format!("{cert_file} holds no certificate")));
    };
    let (names, not_after) = describe(leaf).map_err(|e| ("cert_file", format!("{cert_file}: {e}")))?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| ("key_file", format!("cannot read a PEM private key from {key_file}: {e}")))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| ("key_file", format!("{key_file}: unsupported key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| ("key_file", format!("{key_file} does not match {cert_file}: {e}")))?;
    Ok((names, Arc::new(certified), not_after))
}

/// The leaf's DNS names (lower case) and notAfter.
fn describe(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty()
        && let Some(cn) = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok())
    {
        names.push(cn.to_ascii_lowercase());
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// Client certificates must chain to the CAs in `ca_file`.
fn client_verifier(
    provider: &Arc<rustls::crypto::CryptoProvider>,
    ca_file: &str,
    required: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    read_roots(ca_file, &mut roots)?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
    let builder = if required { builder } else { builder.allow_unauthenticated() };
    builder.build().map_err(|e| format!("{ca_file}: {e}"))
}

/// Certificates by SNI: an exact DNS name first, then a wildcard (`*.example.com` covers
/// one label), else the first certificate.
#[derive(Debug)]
struct BySni {
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl BySni {
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni.map(str::to_ascii_lowercase) {
            let exact = self.certs.iter().find(|(names, _)| names.contains(&name));
            let wildcard = || {
                let (_, parent) = name.split_once('.')?;
                self.certs
                    .iter()
                    .find(|(names, _)| names.iter().any(|n| n.strip_prefix("*.").is_some_and(|rest| rest == parent)))
            };
            if let Some((_, key)) = exact.or_else(wildcard) {
                return Some(Arc::clone(key));
            }
        }
        self.certs.first().map(|(_, key)| Arc::clone(key))
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// Add the CA certificates of `ca_file` to `roots` (at least one).
fn read_roots(ca_file: &str, roots: &mut rustls::RootCertStore) -> Result<(), String> {
    let cas = CertificateDer::pem_file_iter(ca_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("cannot read PEM certificates from {ca_file}: {e}"))?;
    for ca in cas {
        roots.add(ca).map_err(|e| format!("{ca_file}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{ca_file} holds no CA certificate"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_core::config::CertificateConfig;

    fn pair(dir: &std::path::Path, name: &str, sans: &[&str]) -> CertificateConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(sans.iter().map(ToString::to_string).collect::<Vec<_>>()).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        CertificateConfig { cert_file: c.display().to_string(), key_file: k.display().to_string() }
    }

    fn config(certificates: Vec<CertificateConfig>) -> TlsConfig {
        TlsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            certificates,
            min_version: TlsVersion::Tls12,
            alpn: vec!["h2".into(), "http/1.1".into()],
            client_auth: None,
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let dir = tempfile_dir();
        let certs = vec![
            pair(dir.path(), "default", &["default.test"]),
            pair(dir.path(), "api", &["api.example.com"]),
            pair(dir.path(), "wild", &["*.example.com"]),
        ];
        let loaded = LoadedTls::load(&config(certs)).unwrap();
        let names: Vec<&str> = loaded.expiry.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["default.test", "api.example.com", "*.example.com"]);
        let resolver = BySni {
            certs: ["default.test", "api.example.com", "*.example.com"]
                .iter()
                .map(|n| (vec![(*n).to_string()], Arc::new(CertifiedKey::new(vec![], dummy_key()))))
                .collect(),
        };
        let which = |sni: Option<&str>| {
            let k = resolver.pick(sni).unwrap();
            resolver.certs.iter().position(|(_, c)| Arc::ptr_eq(c, &k)).unwrap()
        };
        assert_eq!(which(Some("API.example.com")), 1);
        assert_eq!(which(Some("www.example.com")), 2);
        assert_eq!(which(Some("a.b.example.com")), 0, "a wildcard covers one label");
        assert_eq!(which(Some("other.test")), 0);
        assert_eq!(which(None), 0);
    }

    #[test]
    fn every_bad_file_is_an_error_with_its_path() {
        let dir = tempfile_dir();
        let good = pair(dir.path(), "good", &["a.test"]);
        let other = pair(dir.path(), "other", &["b.test"]);
        let mismatched = CertificateConfig { cert_file: good.cert_file.clone(), key_file: other.key_file.clone() };
        let missing = CertificateConfig { cert_file: "/nonexistent/x.crt".into(), key_file: good.key_file.clone() };
        let mut c = config(vec![good, mismatched, missing]);
        c.client_auth =
            Some(nexus_core::config::ClientAuthConfig { ca_file: "/nonexistent/ca.crt".into(), required: true });
        let errors = LoadedTls::load(&c).unwrap_err().to_string();
        for path in [
            "server.tls.certificates[1].key_file",
            "server.tls.certificates[2].cert_file",
            "server.tls.client_auth.ca_file",
        ] {
            assert!(errors.contains(path), "{path}: {errors}");
        }
        assert!(!errors.contains("certificates[0]"), "{errors}");
    }

    fn dummy_key() -> Arc<dyn rustls::sign::SigningKey> {
        let key = rcgen::KeyPair::generate().unwrap();
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        rustls::crypto::aws_lc_rs::default_provider().key_provider.load_private_key(der).unwrap()
    }

    fn tempfile_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }
}
