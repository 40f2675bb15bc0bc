//! Certificates for TLS tests, made by the test (rcgen): a CA and leaves it signs, and
//! rustls server configs built from them.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// A test CA.
pub struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Self { issuer: rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap() }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf for `names` (DNS names, or IP addresses), written as `<dir>/<file>.crt` and
    /// `.key`; its DER.
    pub fn leaf(&self, dir: &Path, file: &str, names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(ToString::to_string).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{file}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
        cert.der().clone()
    }

    /// The CA certificate as PEM at `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.issuer.pem()).unwrap();
    }
}

/// A rustls server config serving `<dir>/<file>.crt`/`.key` (ALPN `http/1.1`); with
/// `client_ca`, client certificates signed by it are required.
pub fn server_config(dir: &Path, file: &str, client_ca: Option<&Ca>) -> Arc<rustls::ServerConfig> {
    server_config_alpn(dir, file, client_ca, &[b"http/1.1"])
}

/// [`server_config`] picking from `alpn` (in its order of preference).
pub fn server_config_alpn(dir: &Path, file: &str, client_ca: Option<&Ca>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let chain =
        CertificateDer::pem_file_iter(dir.join(format!("{file}.crt"))).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{file}.key"))).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
