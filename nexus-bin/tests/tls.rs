//! TLS termination through the real binary (SPEC §9): real handshakes on 127.0.0.1 with
//! certificates made by the test (rcgen), a client built on rustls.

mod support;

use rustls::pki_types::{CertificateDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::certs::Ca;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A rustls client trusting `ca`, offering `alpn`, limited to `versions`, with an optional
/// client certificate (`(cert, key)` PEM files).
fn client_config(
    ca: &Ca,
    alpn: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
    identity: Option<(&Path, &Path)>,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap()).unwrap()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

const ALL: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>, sni: &str) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

fn served_cert(tls: &Tls) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// One keep-alive HTTP/1.1 GET on `tls`; the raw answer's head and body.
async fn get_over(tls: &mut Tls, path: &str) -> String {
    tls.write_all(format!("GET {path} HTTP/1.1\r\nhost: api.example.com\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the whole body (Content-Length) is in.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.unwrap().unwrap();
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0usize);
            if body.len() >= len {
                return text;
            }
        }
        assert!(n > 0, "closed early: {text}");
    }
}

struct Setup {
    dir: tempfile::TempDir,
    ca: Ca,
    up: Upstream,
    gw: Gateway,
    tls: std::net::SocketAddr,
}

fn path(dir: &Path, file: &str) -> PathBuf {
    dir.join(file)
}

/// `tls:` with `extra` keys, certificates `files` (names of `.crt`/`.key` pairs in `dir`).
fn tls_yaml(dir: &Path, files: &[&str], extra: &str) -> String {
    let certs: Vec<String> = files
        .iter()
        .map(|f| {
            format!(
                "      - {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
                path(dir, &format!("{f}.crt")).display(),
                path(dir, &format!("{f}.key")).display()
            )
        })
        .collect();
    format!("  tls:\n    listen: \"127.0.0.1:0\"\n    certificates:\n{}{extra}", certs.concat())
}

/// The gateway with one route to a test upstream and `tls` under `server:`.
async fn start_tls(prepare: impl FnOnce(&Path, &Ca) -> String) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("nexus test CA");
    let tls = prepare(dir.path(), &ca);
    let up = upstream("app").await;
    let yaml = config(&[("app", up.url())], "  - name: app\n    paths: [{ path: / }]\n    upstream: app\n")
        .replace("server:\n", &format!("server:\n{tls}"));
    let gw = gateway(&yaml);
    let addr = tls_addr(&gw).await;
    Setup { dir, ca, up, gw, tls: addr }
}

/// The TLS listener's address, from the log line it prints before "nexus started".
async fn tls_addr(gw: &Gateway) -> std::net::SocketAddr {
    let logs = gw.logs.lock().unwrap().clone();
    logs.iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["tls_listen"].as_str().and_then(|a| a.parse().ok()))
        .unwrap_or_else(|| panic!("no TLS listener in the log:\n{}", logs.join("\n")))
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_requests_go_upstream_as_https() {
    let mut ders = Vec::new();
    let s = start_tls(|dir, ca| {
        ders.push(ca.leaf(dir, "default", &["default.test"]));
        ders.push(ca.leaf(dir, "api", &["api.example.com"]));
        ders.push(ca.leaf(dir, "wild", &["*.wild.test"]));
        tls_yaml(dir, &["default", "api", "wild"], "")
    })
    .await;
    let config = client_config(&s.ca, &["http/1.1"], ALL, None);
    for (sni, expect) in [("api.example.com", 1), ("x.wild.test", 2), ("default.test", 0)] {
        let tls = connect(s.tls, Arc::clone(&config), sni).await.unwrap();
        assert_eq!(served_cert(&tls), ders[expect], "SNI {sni}");
    }
    // No SNI (an IP address as the name): the first certificate. Its name does not match
    // the address, so the client only gets as far as seeing which certificate came.
    let no_sni = {
        let mut c = (*client_config(&s.ca, &["http/1.1"], ALL, None)).clone();
        c.dangerous().set_certificate_verifier(Arc::new(Recorder));
        Arc::new(c)
    };
    let tls = connect(s.tls, no_sni, "127.0.0.1").await.unwrap();
    assert_eq!(served_cert(&tls), ders[0]);

    let mut tls = connect(s.tls, config, "api.example.com").await.unwrap();
    let answer = get_over(&mut tls, "/hello").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("app /hello"), "{answer}");
    assert_eq!(s.up.last().headers["x-forwarded-proto"], "https");
    // Keep-alive over TLS.
    assert!(get_over(&mut tls, "/again").await.ends_with("app /again"));
    // The plaintext listener still says http.
    assert_eq!(get(&s.gw.url("/plain")).await.0, http::StatusCode::OK);
    assert_eq!(s.up.last().headers["x-forwarded-proto"], "http");
    let metrics = get(&s.gw.admin_url("/metrics")).await.2;
    assert!(metrics.contains(r#"nexus_tls_certificate_expiry_timestamp_seconds{name="api.example.com"}"#), "{metrics}");
}

type Signed = rustls::DigitallySignedStruct;
type SignatureCheck = Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>;

/// Accepts any server certificate (to see which one an SNI-less client gets).
#[derive(Debug, Default)]
struct Recorder;

impl rustls::client::danger::ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, _: &[u8], _: &CertificateDer<'_>, _: &Signed) -> SignatureCheck {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &Signed) -> SignatureCheck {
        self.verify_tls12_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test]
async fn alpn_h2_serves_http2_over_tls() {
    let s = start_tls(|dir, ca| {
        ca.leaf(dir, "api", &["api.example.com"]);
        tls_yaml(dir, &["api"], "")
    })
    .await;
    let tls = connect(s.tls, client_config(&s.ca, &["h2", "http/1.1"], ALL, None), "api.example.com").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Body>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://api.example.com/h2").body(body("")).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(s.up.last().headers["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn tls_1_3_only_refuses_a_1_2_client_and_plaintext_is_closed() {
    let s = start_tls(|dir, ca| {
        ca.leaf(dir, "api", &["api.example.com"]);
        tls_yaml(dir, &["api"], "    min_version: \"1.3\"\n")
    })
    .await;
    let tls12 = client_config(&s.ca, &["http/1.1"], &[&rustls::version::TLS12], None);
    assert!(connect(s.tls, tls12, "api.example.com").await.is_err());
    let tls13 = client_config(&s.ca, &["http/1.1"], &[&rustls::version::TLS13], None);
    assert!(connect(s.tls, tls13, "api.example.com").await.is_ok());
    // Plaintext HTTP on the TLS port: closed, no answer.
    let mut tcp = tokio::net::TcpStream::connect(s.tls).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf));
    let metrics = get(&s.gw.admin_url("/metrics")).await.2;
    for reason in ["not_tls", "protocol_version"] {
        assert!(
            metrics.contains(&format!(r#"nexus_tls_handshake_failures_total{{reason="{reason}"}} 1"#)),
            "{reason}\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_rotated_pair_is_served_to_new_handshakes_and_a_broken_one_keeps_the_old() {
    // Kubernetes mounts a Secret as `..data -> ..<timestamp>/` with `tls.crt -> ..data/tls.crt`.
    let mut first = None;
    let s = start_tls(|dir, ca| {
        let v1 = dir.join("..v1");
        std::fs::create_dir(&v1).unwrap();
        first = Some(ca.leaf(&v1, "tls", &["api.example.com"]));
        std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", dir.join("tls.key")).unwrap();
        tls_yaml(dir, &["tls"], "")
    })
    .await;
    let config = client_config(&s.ca, &["http/1.1"], ALL, None);
    let mut open = connect(s.tls, Arc::clone(&config), "api.example.com").await.unwrap();
    assert_eq!(served_cert(&open), first.clone().unwrap());
    assert!(get_over(&mut open, "/before").await.ends_with("app /before"));

    // The swap: a new directory, then `..data` renamed over (atomic, as kubelet does).
    let dir = s.dir.path();
    let v2 = dir.join("..v2");
    std::fs::create_dir(&v2).unwrap();
    let second = s.ca.leaf(&v2, "tls", &["api.example.com"]);
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let rotated = eventually(2, || {
        let config = Arc::clone(&config);
        let second = second.clone();
        async move { connect(s.tls, config, "api.example.com").await.is_ok_and(|t| served_cert(&t) == second) }
    })
    .await;
    assert!(
        rotated,
        "new handshakes did not get the new certificate within 2 s\n{}",
        s.gw.logs.lock().unwrap().join("\n")
    );
    assert!(get_over(&mut open, "/after").await.ends_with("app /after"), "the open connection carries on");

    // A broken pair (a key that is not the certificate's): the running one stays.
    let v3 = dir.join("..v3");
    std::fs::create_dir(&v3).unwrap();
    s.ca.leaf(&v3, "tls", &["api.example.com"]);
    s.ca.leaf(&v3, "other", &["other.test"]);
    std::fs::rename(v3.join("other.key"), v3.join("tls.key")).unwrap();
    std::os::unix::fs::symlink("..v3", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let counted = eventually(3, || async {
        get(&s.gw.admin_url("/metrics")).await.2.contains(r#"nexus_tls_reloads_total{result="error"} 1"#)
    })
    .await;
    assert!(counted, "the failed reload was not counted");
    let tls = connect(s.tls, config, "api.example.com").await.unwrap();
    assert_eq!(served_cert(&tls), second, "the broken pair replaced the good one");
}

#[tokio::test]
async fn mutual_tls_accepts_a_client_of_the_ca_and_refuses_the_others() {
    let clients = Ca::new("client CA");
    let strangers = Ca::new("another CA");
    let s = start_tls(|dir, ca| {
        ca.leaf(dir, "api", &["api.example.com"]);
        clients.write(&dir.join("client-ca.crt"));
        clients.leaf(dir, "client", &["client.test"]);
        strangers.leaf(dir, "stranger", &["stranger.test"]);
        let auth = format!("    client_auth:\n      ca_file: \"{}\"\n", dir.join("client-ca.crt").display());
        tls_yaml(dir, &["api"], &auth)
    })
    .await;
    let dir = s.dir.path();
    let good = client_config(&s.ca, &["http/1.1"], ALL, Some((&dir.join("client.crt"), &dir.join("client.key"))));
    let mut tls = connect(s.tls, good, "api.example.com").await.unwrap();
    assert!(get_over(&mut tls, "/mtls").await.ends_with("app /mtls"));

    // Without a certificate, or with one of another CA: no request gets through (TLS 1.3
    // reports the refusal after the client's handshake, so try a request too).
    let none = client_config(&s.ca, &["http/1.1"], ALL, None);
    let stranger =
        client_config(&s.ca, &["http/1.1"], ALL, Some((&dir.join("stranger.crt"), &dir.join("stranger.key"))));
    for config in [none, stranger] {
        let refused = match connect(s.tls, config, "api.example.com").await {
            Err(_) => true,
            Ok(mut tls) => {
                let _ = tls.write_all(b"GET /no HTTP/1.1\r\nhost: x\r\n\r\n").await;
                let mut buf = [0u8; 64];
                matches!(tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
            }
        };
        assert!(refused);
    }
    assert!(!s.up.seen().iter().any(|r| r.uri == "/no"));
    let metrics = get(&s.gw.admin_url("/metrics")).await.2;
    for reason in ["no_client_certificate", "bad_client_certificate"] {
        assert!(
            metrics.contains(&format!(r#"nexus_tls_handshake_failures_total{{reason="{reason}"}} 1"#)),
            "{reason}\n{metrics}"
        );
    }
}

#[tokio::test]
async fn validate_checks_the_files_unless_told_to_skip_them() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    ca.leaf(dir.path(), "a", &["a.test"]);
    ca.leaf(dir.path(), "b", &["b.test"]);
    // a's certificate with b's key.
    std::fs::rename(dir.path().join("b.key"), dir.path().join("a.key")).unwrap();
    let yaml =
        config(&[("app", "http://127.0.0.1:1".into())], "  - name: app\n    paths: [{ path: / }]\n    upstream: app\n")
            .replace("server:\n", &format!("server:\n{}", tls_yaml(dir.path(), &["a", "missing"], "")));
    let file = dir.path().join("nexus.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let run =
        |args: &[&str]| std::process::Command::new(nexus_bin()).args(args).arg("--config").arg(&file).output().unwrap();
    let out = run(&["validate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("server.tls.certificates[0].key_file") && err.contains("does not match"), "{err}");
    assert!(err.contains("server.tls.certificates[1].cert_file"), "{err}");
    let out = run(&["validate", "--skip-files"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The gateway refuses to start on them, with the same paths.
    assert!(refused_at_start(&yaml).contains("server.tls.certificates[0].key_file"));
}

#[tokio::test]
async fn a_yaml_reload_naming_a_broken_pair_is_refused_whole_and_tls_keeps_serving() {
    let mut first = None;
    let s = start_tls(|dir, ca| {
        first = Some(ca.leaf(dir, "api", &["api.example.com"]));
        tls_yaml(dir, &["api"], "")
    })
    .await;
    // The same config with a second route and a certificate file that does not exist.
    let running = std::fs::read_to_string(&s.gw.config_path).unwrap();
    let broken = running.replace(
        "    certificates:\n",
        &format!(
            "    certificates:\n      - {{ cert_file: \"{}\", key_file: \"x.key\" }}\n",
            s.dir.path().join("gone.crt").display()
        ),
    ) + "  - name: other\n    paths: [{ path: /other }]\n    upstream: app\n";
    s.gw.write_config(&broken);
    let (status, _, v) = post_json(&s.gw.admin_url("/admin/reload"), None).await;
    // (Whether or not the file watch tried it first, the file is not the running version, so the
    // admin call tries it and reports the error.)
    assert_eq!(status.as_u16(), 422, "{v}");
    assert!(v.to_string().contains("server.tls.certificates[0].cert_file"), "{v}");
    // Nothing of it applies: still one route, the running certificate still served.
    let routes = get_json(&s.gw.admin_url("/admin/routes")).await;
    assert_eq!(routes["routes"].as_array().map(Vec::len), Some(1), "{routes}");
    let config = client_config(&s.ca, &["http/1.1"], ALL, None);
    let tls = connect(s.tls, config, "api.example.com").await.unwrap();
    assert_eq!(served_cert(&tls), first.unwrap());
    let metrics = get(&s.gw.admin_url("/metrics")).await.2;
    assert!(metrics.contains(r#"nexus_config_reloads_total{result="error"}"#), "{metrics}");
}
