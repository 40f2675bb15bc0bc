//! An axum app that terminates TLS itself with Nexus's [`TlsTerminator`]: certificates
//! chosen by SNI, HTTP/2 by ALPN, and new certificates picked up on SIGHUP without a
//! restart (open connections keep theirs; a pair that fails to load keeps the old one).
//!
//! Run with
//!
//! ```sh
//! cargo run --manifest-path examples/Cargo.toml -p example-tls-axum -- 127.0.0.1:3443 tls.crt tls.key
//! curl -k https://127.0.0.1:3443/hello
//! kill -HUP <pid>      # after replacing tls.crt / tls.key
//! ```

use axum::Router;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use nexus_proxy::config::{CertificateConfig, TlsConfig, TlsVersion};
use nexus_proxy::tls::TlsTerminator;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, cert_file, key_file] = <[String; 3]>::try_from(args).map_err(|_| "usage: ADDR CERT_FILE KEY_FILE")?;
    let config = TlsConfig {
        listen: listen.parse()?,
        certificates: vec![CertificateConfig { cert_file, key_file }],
        min_version: TlsVersion::Tls12,
        alpn: vec!["h2".into(), "http/1.1".into()],
        client_auth: None,
    };
    let tls = Arc::new(TlsTerminator::new(&config)?);
    // SIGHUP re-reads the files; on an error the running certificate stays.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let (reloading, settings) = (Arc::clone(&tls), config.clone());
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match reloading.reload(&settings) {
                Ok(()) => println!("certificates reloaded"),
                Err(e) => eprintln!("certificates kept: {e}"),
            }
        }
    });

    let app = Router::new().route("/hello", get(|| async { "hello over TLS" }));
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    println!("listening on https://{}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let (tls, app) = (Arc::clone(&tls), app.clone());
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(tcp, Duration::from_secs(10)).await else { return };
            let service = TowerToHyperService::new(app);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
