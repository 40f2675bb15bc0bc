//! The example as a user runs it: a real process serving TLS with a certificate made here,
//! a rustls client that trusts it, then the certificate replaced and SIGHUP: new handshakes
//! get the new one.

use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A self-signed certificate for `localhost`, written to `dir`; its DER.
fn certificate(dir: &std::path::Path) -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    cert.der().clone()
}

/// A handshake trusting `trusted`: the certificate served, and a GET /hello's answer.
async fn hello(addr: &str, trusted: &CertificateDer<'static>) -> Option<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.ok()?;
    tls.write_all(b"GET /hello HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test]
async fn serves_tls_and_picks_up_a_new_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let first = certificate(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_example-tls-axum"))
        .arg("127.0.0.1:0")
        .arg(dir.path().join("tls.crt"))
        .arg(dir.path().join("tls.key"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines.next().unwrap().unwrap().trim_start_matches("listening on https://").to_string();
    let answer = hello(&addr, &first).await.expect("the handshake with the first certificate");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello over TLS"), "{answer}");

    let second = certificate(dir.path());
    Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "certificates reloaded");
    assert!(hello(&addr, &first).await.is_none(), "the old certificate is still served");
    assert!(hello(&addr, &second).await.is_some_and(|a| a.ends_with("hello over TLS")));
    let _ = child.kill();
    let _ = child.wait();
}
