//! `nexus demo`: the gateway and two demo upstreams on loopback, so a newcomer
//! can curl it at once.

use crate::config_file::LoadedConfig;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nexus_core::config::{Config, Overrides};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

/// Start a demo upstream that answers every request with a body naming `version`.
pub(crate) async fn spawn_upstream(version: &'static str) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                    let body = format!("hello from {version} (path {})\n", req.uri().path());
                    let res = http::Response::builder()
                        .header("content-type", "text/plain; charset=utf-8")
                        .header("x-demo-version", version)
                        .body(Full::new(Bytes::from(body)))
                        .expect("static response");
                    Ok::<_, Infallible>(res)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The demo config: `GET /` split 90/10 between v1 and v2.
pub(crate) fn config(v1: SocketAddr, v2: SocketAddr) -> Config {
    Config::from_json(serde_json::json!({
        "server": {
            "listen": "127.0.0.1:8080",
            "admin_listen": "127.0.0.1:9090",
            "shutdown": { "drain_delay": "0s", "grace_period": "5s" },
        },
        "logging": { "level": "info", "format": "text" },
        "upstreams": {
            "demo-v1": { "endpoints": [{ "url": format!("http://{v1}") }] },
            "demo-v2": { "endpoints": [{ "url": format!("http://{v2}") }] },
        },
        "routes": [{
            "name": "demo",
            "paths": [{ "path": "/", "type": "exact" }],
            "methods": ["GET", "HEAD"],
            "split": [{ "upstream": "demo-v1", "weight": 90 }, { "upstream": "demo-v2", "weight": 10 }],
        }],
    }))
    .expect("the demo config is valid")
}

pub(crate) fn run(overrides: Overrides) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nexus demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let (v1, v2) = match (spawn_upstream("v1").await, spawn_upstream("v2").await) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("nexus demo: cannot start the demo upstreams: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut config = config(v1, v2);
        if let Err(e) = overrides.apply(&mut config) {
            eprintln!("nexus demo: {e}");
            return ExitCode::from(crate::cli::EXIT_BAD_CONFIG);
        }
        crate::logging::init(&config.logging);
        let loaded = LoadedConfig {
            version: crate::config_file::version_of(b"nexus demo"),
            source: crate::config_file::BUILT_IN.into(),
            loaded_at: std::time::SystemTime::now(),
            config,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            if let Ok((gw, admin)) = rx.await {
                println!("nexus demo is running: gateway http://{gw}, admin http://{admin}");
                println!("demo upstreams: v1 on {v1}, v2 on {v2}; GET / is split 90/10 between them.\n");
                println!("Try:");
                println!("  curl -i http://{gw}/");
                println!("  for i in $(seq 20); do curl -s http://{gw}/; done | sort | uniq -c");
                println!("  curl -i http://{gw}/healthz        # liveness probe");
                println!("  curl -i -X POST http://{gw}/       # 405 with the JSON error body");
                println!("  curl -i http://{gw}/nope           # 404 route_not_found");
                println!("  curl -s 'http://{admin}/admin/explain?method=GET&path=/'");
                println!("  curl -s http://{admin}/admin/config\n");
                println!("Stop with Ctrl-C.");
            }
        });
        crate::server::serve(loaded, Overrides::default(), Some(tx), 1).await
    })
}
