//! TLS to `https://` upstreams: the CAs an endpoint's chain must lead to, the name verified,
//! the client certificate for mutual TLS, ALPN, and the re-read of the files.

use super::{load_pair, publish_expiry, read_roots};
use crate::connect::Offer;
use arc_swap::ArcSwap;
use nexus_core::config::{ConfigError, ConfigErrors, UpstreamTlsConfig};
use nexus_core::metric_names::TLS_RELOADS_TOTAL;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use tokio::net::TcpStream;

/// TLS to one upstream's `https://` endpoints: which CAs the endpoints' certificates must
/// lead to (`ca_file`, else the webpki roots), and the client certificate the gateway
/// presents (`client_cert_file` / `client_key_file`) to upstreams that require mutual TLS.
/// Verification cannot be turned off. The files are re-read by [`reload`](Self::reload)
/// (a failure keeps the running set); connections already open keep their session.
///
/// ```
/// use nexus_proxy::tls::UpstreamTls;
/// // No `tls:` block: the webpki roots, no client certificate.
/// let tls = UpstreamTls::load("orders", &Default::default()).unwrap();
/// assert_eq!(tls.upstream(), "orders");
/// let missing = nexus_core::config::UpstreamTlsConfig { ca_file: Some("/nonexistent/ca.crt".into()), ..Default::default() };
/// let errors = UpstreamTls::load("orders", &missing).unwrap_err().to_string();
/// assert!(errors.contains("upstreams.orders.tls.ca_file"), "{errors}");
/// ```
#[derive(Debug)]
pub struct UpstreamTls {
    upstream: String,
    spec: UpstreamTlsConfig,
    /// ALPN offers `h2` only (`protocol: h2`), else `http/1.1`.
    h2: bool,
    config: ArcSwap<rustls::ClientConfig>,
}

impl UpstreamTls {
    /// Read `spec`'s files for upstream `upstream`; every error has its field path
    /// (`upstreams.<name>.tls.<key>`).
    pub fn load(upstream: &str, spec: &UpstreamTlsConfig) -> Result<Self, ConfigErrors> {
        Self::load_for(upstream, spec, false)
    }

    /// [`load`](Self::load) for an upstream that speaks HTTP/2 (`protocol: h2`): ALPN offers
    /// `h2` only, and a server that does not pick it fails the handshake.
    pub fn load_for(upstream: &str, spec: &UpstreamTlsConfig, h2: bool) -> Result<Self, ConfigErrors> {
        let (config, expiry) = client_config(upstream, spec, h2)?;
        publish_expiry(&expiry);
        Ok(Self { upstream: upstream.to_string(), spec: spec.clone(), h2, config: ArcSwap::from_pointee(config) })
    }

    /// The upstream's name.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The settings it was loaded from.
    pub fn spec(&self) -> &UpstreamTlsConfig {
        &self.spec
    }

    /// Re-read the files (a rotated CA or client certificate) and use them for new
    /// connections; on an error the running set stays and the error is counted in
    /// `nexus_tls_reloads_total{result="error"}`.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        match client_config(&self.upstream, &self.spec, self.h2) {
            Ok((config, expiry)) => {
                publish_expiry(&expiry);
                self.config.store(Arc::new(config));
                metrics::counter!(TLS_RELOADS_TOTAL, "result" => "ok").increment(1);
                Ok(())
            }
            Err(e) => {
                metrics::counter!(TLS_RELOADS_TOTAL, "result" => "error").increment(1);
                Err(e)
            }
        }
    }

    /// Where connections to an endpoint whose URL host is `host` go: `server_name` when
    /// set, the host otherwise (an IP address is verified as one).
    pub(crate) fn target(self: &Arc<Self>, host: &str) -> Result<UpstreamTlsTarget, String> {
        let name = self.spec.server_name.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| format!("{name:?} is not a valid TLS server name: {e}"))?;
        Ok(UpstreamTlsTarget { tls: Arc::clone(self), name })
    }
}

/// One `https://` endpoint: its upstream's TLS settings and the name to verify.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamTlsTarget {
    tls: Arc<UpstreamTls>,
    name: ServerName<'static>,
}

impl UpstreamTlsTarget {
    /// The client handshake on `tcp`; any failure (the certificate does not verify, no
    /// common version, a reset) is a connect error.
    ///
    /// `offer` is what ALPN offers: the upstream's default (`h2` for `protocol: h2`, else
    /// `http/1.1`), `h2` alone, or both (`protocol: auto` learning what the endpoint speaks).
    /// Where `h2` alone is offered, a server that does not pick it fails the handshake.
    pub(crate) async fn handshake(
        &self,
        tcp: TcpStream,
        offer: Offer,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, crate::error::ProxyError> {
        let connector = tokio_rustls::TlsConnector::from(self.tls.config.load_full());
        let connecting = match offer {
            Offer::Default => connector.connect(self.name.clone(), tcp),
            Offer::H2 => connector.with_alpn(vec![b"h2".to_vec()]).connect(self.name.clone(), tcp),
            Offer::Both => {
                connector.with_alpn(vec![b"h2".to_vec(), b"http/1.1".to_vec()]).connect(self.name.clone(), tcp)
            }
        };
        let stream = connecting.await.map_err(|e| {
            tracing::debug!(upstream = %self.tls.upstream, error = %e, "TLS handshake to the upstream failed");
            crate::error::ProxyError::new(crate::error::ErrorKind::Connect, Some(Box::new(e)))
        })?;
        let h2_only = offer == Offer::H2 || (offer == Offer::Default && self.tls.h2);
        if h2_only && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            tracing::debug!(upstream = %self.tls.upstream, "the upstream did not pick h2 in ALPN");
            return Err(crate::error::ProxyError::new(
                crate::error::ErrorKind::Connect,
                Some("the upstream did not agree to HTTP/2 (ALPN h2) on a connection that offered only h2".into()),
            ));
        }
        Ok(stream)
    }
}

/// A rustls client config for `spec`, and the client certificate's expiry (if any).
fn client_config(
    upstream: &str,
    spec: &UpstreamTlsConfig,
    h2: bool,
) -> Result<(rustls::ClientConfig, Vec<(String, i64)>), ConfigErrors> {
    let at = |key: &str| format!("upstreams.{upstream}.tls.{key}");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut errors = Vec::new();
    let mut roots = rustls::RootCertStore::empty();
    match &spec.ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(ca_file) => {
            if let Err(message) = read_roots(ca_file, &mut roots) {
                errors.push(ConfigError::new(at("ca_file"), message));
            }
        }
    }
    let client = match (&spec.client_cert_file, &spec.client_key_file) {
        (Some(cert), Some(key)) => match load_pair(&provider, cert, key) {
            Ok(pair) => Some(pair),
            Err((which, message)) => {
                errors.push(ConfigError::new(at(&format!("client_{which}")), message));
                None
            }
        },
        (None, None) => None,
        _ => {
            errors.push(ConfigError::new(at("client_cert_file"), "client_cert_file and client_key_file go together"));
            None
        }
    };
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigErrors(vec![ConfigError::new(at("ca_file"), e.to_string())]))?
        .with_root_certificates(roots);
    let mut expiry = Vec::new();
    let mut config = match client {
        Some((names, key, not_after)) => {
            expiry.push((names.first().cloned().unwrap_or_else(|| format!("{upstream}-client")), not_after));
            builder.with_client_cert_resolver(Arc::new(OneClientCert(key)))
        }
        None => builder.with_no_client_auth(),
    };
    // `protocol: h2` offers h2 alone; otherwise HTTP/1.1 alone. (`auto` offers both on the one
    // connection that learns what an endpoint speaks: `Offer::Both`.)
    config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    Ok((config, expiry))
}

/// The one client certificate, offered whenever an upstream asks for one.
#[derive(Debug)]
struct OneClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for OneClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
