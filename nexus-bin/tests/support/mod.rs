//! A small fluent harness for end-to-end tests (after linkerd's
//! `app/integration`): a real upstream and the real `nexus` binary, both on
//! 127.0.0.1 with ports chosen by the OS. Every wait is bounded.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod certs;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The gateway's side of the upstream connection (distinct per connection).
    pub peer: SocketAddr,
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub version: http::Version,
    /// Over TLS: the SNI the gateway sent (`Some("")` without one) and whether it
    /// presented a client certificate. `None`: plain TCP.
    pub tls: Option<(String, bool)>,
}

/// A running test upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Served over TLS.
    pub https: bool,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the upstream saw no request")
    }

    /// Every request seen, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many distinct connections the requests came on.
    pub fn connections(&self) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter().map(|s| s.peer).collect::<std::collections::HashSet<_>>().len()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// An upstream named `name` that answers:
/// - `/slow/<ms>`: waits, then 200;
/// - `/big/<bytes>`: streams that many bytes in 64 KiB chunks;
/// - `/upload`: reads the whole body, answers its length;
/// - `/status/<code>`: that status;
/// - `/ws`: a WebSocket echo;
/// - anything else: 200 with body `<name> <path>` and hop-by-hop headers that the gateway must drop.
pub async fn upstream(name: &'static str) -> Upstream {
    serve_upstream(name, None).await
}

/// [`upstream`] over TLS with `config` (see [`certs::server_config`]); its URL is `https://`.
pub async fn tls_upstream(name: &'static str, config: Arc<rustls::ServerConfig>) -> Upstream {
    let mut up = serve_upstream(name, Some(tokio_rustls::TlsAcceptor::from(config))).await;
    up.https = true;
    up
}

async fn serve_upstream(name: &'static str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = Upstream { addr, seen: Arc::clone(&seen), https: false };
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else { continue };
            let seen = Arc::clone(&seen);
            let tls = tls.clone();
            tokio::spawn(async move {
                let serve = |io, session: Option<(String, bool)>| {
                    let svc = service_fn(move |req| {
                        let seen = Arc::clone(&seen);
                        let session = session.clone();
                        async move { Ok::<_, Infallible>(answer(name, peer, session, req, &seen).await) }
                    });
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(io), svc)
                        .into_owned()
                };
                match tls {
                    None => drop(serve(Box::new(stream) as Box<dyn Io>, None).await),
                    Some(acceptor) => {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await
                        else {
                            return;
                        };
                        let (_, session) = stream.get_ref();
                        let about = (
                            session.server_name().unwrap_or_default().to_string(),
                            session.peer_certificates().is_some_and(|c| !c.is_empty()),
                        );
                        drop(serve(Box::new(stream) as Box<dyn Io>, Some(about)).await);
                    }
                }
            });
        }
    });
    up
}

/// A connection a test upstream serves: TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

async fn answer(
    name: &str,
    peer: SocketAddr,
    tls: Option<(String, bool)>,
    mut req: Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
) -> Response<Body> {
    seen.lock().unwrap().push(Seen {
        peer,
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        headers: req.headers().clone(),
        version: req.version(),
        tls,
    });
    let path = req.uri().path().to_string();
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        return Response::new(full("slow done"));
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let total: u64 = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(total, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(chunk.len() as u64);
                Some((Ok::<_, std::io::Error>(Frame::data(chunk.slice(..n as usize))), left - n))
            }
        });
        return Response::new(BodyExt::boxed(StreamBody::new(stream)));
    }
    if path == "/upload" {
        let mut body = req.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => return Response::builder().status(499).body(full("aborted")).unwrap(),
            }
        }
        return Response::new(full(n.to_string()));
    }
    if path == "/echo" {
        // The body as it arrived, with the framing the gateway chose.
        let framing = ["content-length", "transfer-encoding"]
            .iter()
            .filter_map(|h| req.headers().get(*h).map(|v| format!("{h}={}", v.to_str().unwrap_or("?"))))
            .collect::<Vec<_>>()
            .join(",");
        return match req.into_body().collect().await {
            Ok(body) => Response::builder().header("x-framing", framing).body(full(body.to_bytes())).unwrap(),
            Err(_) => Response::builder().status(499).body(full("aborted")).unwrap(),
        };
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        return Response::builder().status(status).body(full(format!("{name} status"))).unwrap();
    }
    if path == "/ws" {
        let key = req.headers().get("sec-websocket-key").cloned();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use futures_util::{SinkExt, StreamExt};
            let Ok(upgraded) = on_upgrade.await else { return };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.unwrap().as_bytes());
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(full(""))
            .unwrap();
    }
    Response::builder()
        .header("x-upstream", name)
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must not reach the client")
        .header("keep-alive", "timeout=5")
        .body(full(format!("{name} {path}")))
        .unwrap()
}

/// A running `nexus` process. Killed on drop.
pub struct Gateway {
    child: Child,
    /// The config file the gateway was started with (rewrite it to test reloads).
    pub config_path: std::path::PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// What the process wrote to stdout: access-log lines.
    pub access: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Wait (bounded) for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let step = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        while waited < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(step).await;
            waited += step;
        }
        panic!("nexus did not exit within {limit:?}");
    }

    /// Replace the config file's content.
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, yaml).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn nexus_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nexus")
}

/// Start `nexus` with this YAML config on ports the OS picks; waits (at most 20 s) until it is listening.
pub fn gateway(yaml: &str) -> Gateway {
    gateway_with(yaml, &[])
}

/// Like [`gateway`], with extra environment variables.
pub fn gateway_with(yaml: &str, env: &[(&str, &str)]) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nexus.yaml");
    std::fs::write(&path, yaml).unwrap();
    start(dir, path, env)
}

/// Start `nexus` on an existing config file inside `dir`.
pub fn start(dir: tempfile::TempDir, path: std::path::PathBuf, env: &[(&str, &str)]) -> Gateway {
    start_at(dir, path, env, "127.0.0.1:0", "127.0.0.1:0")
}

/// Like [`gateway`], on given listener addresses (to share them with `reuse_port`).
/// Start `nexus` with this config, expecting it to refuse it: exit 64; returns stderr.
pub fn refused_at_start(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nexus.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(nexus_bin()).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn gateway_at(yaml: &str, listen: &str, admin: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nexus.yaml");
    std::fs::write(&path, yaml).unwrap();
    start_at(dir, path, &[], listen, admin)
}

fn start_at(
    dir: tempfile::TempDir,
    path: std::path::PathBuf,
    env: &[(&str, &str)],
    listen: &str,
    admin: &str,
) -> Gateway {
    let mut child = Command::new(nexus_bin())
        .arg("--config")
        .arg(&path)
        .args(["--listen", listen, "--admin-listen", admin, "--log-format", "json"])
        .env_remove("NEXUS_CONFIG")
        .env_remove("NEXUS_LISTEN")
        .env_remove("NEXUS_ADMIN_LISTEN")
        .env("NEXUS_LOG_LEVEL", "info")
        .env_remove("NEXUS_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // stdout is the access log's (one JSON line per request, when on).
    let stdout = child.stdout.take().unwrap();
    let access = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&access);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = Arc::clone(&logs);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("nexus started") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let _ =
                    tx.send((v["listen"].as_str().map(str::to_string), v["admin_listen"].as_str().map(str::to_string)));
            }
            sink.lock().unwrap().push(line);
        }
    });
    let (listen, admin) = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("nexus did not start; logs:\n{}", logs.lock().unwrap().join("\n"))
    });
    Gateway {
        child,
        config_path: path,
        addr: listen.unwrap().parse().unwrap(),
        admin: admin.unwrap().parse().unwrap(),
        logs,
        access,
        _dir: dir,
    }
}

/// A YAML config with one upstream per `(name, url)` and these route lines appended.
pub fn config(upstreams: &[(&str, String)], routes: &str) -> String {
    let mut y = String::from("server:\n  shutdown: { drain_delay: 0s, grace_period: 2s }\nupstreams:\n");
    for (name, url) in upstreams {
        y.push_str(&format!("  {name}:\n    endpoints: [{{ url: \"{url}\" }}]\n"));
    }
    y.push_str("routes:\n");
    y.push_str(routes);
    y
}

/// A plain HTTP/1.1 client.
pub fn client() -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// Send a request; return status, headers and the whole body as text. Bounded to 30 s.
pub async fn send(req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let fut = async {
        let res = client().request(req).await.expect("request failed");
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.expect("body failed").to_bytes();
        (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(30), fut).await.expect("request timed out")
}

pub async fn get(url: &str) -> (StatusCode, http::HeaderMap, String) {
    send(Request::get(url).body(full("")).unwrap()).await
}

pub fn body(s: impl Into<Bytes>) -> Body {
    full(s)
}

/// Write raw bytes on a fresh connection; read until the peer closes (at most 10 s).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A free TCP port on 127.0.0.1 with nothing listening (bound, then released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// POST with an optional bearer token; status and body as JSON.
pub async fn post_json(url: &str, token: Option<&str>) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    let mut req = Request::post(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (status, headers, text) = send(req.body(full("")).unwrap()).await;
    (status, headers, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

pub async fn get_json(url: &str) -> serde_json::Value {
    let (status, _, text) = get(url).await;
    assert!(status.is_success(), "{url}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

/// Poll `check` every 50 ms until it holds, at most `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A client loop: GETs on a keep-alive pool until `stop`, retrying a request once
/// when its connection failed before any response (as browsers and Envoy do for
/// idempotent requests). Returns (ok, failed, retried).
pub async fn client_loop(url: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> (u64, u64, u64) {
    let client = client();
    let (mut ok, mut failed, mut retried) = (0, 0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
        let mut attempt = 0;
        loop {
            let req = Request::get(&url).body(body("")).unwrap();
            match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                Ok(Ok(res)) if res.status() == StatusCode::OK => {
                    let _ = http_body_util::BodyExt::collect(res.into_body()).await;
                    ok += 1;
                    break;
                }
                Ok(Err(e)) if attempt == 0 && (e.is_connect() || failed_before_response(&e)) => {
                    attempt += 1;
                    retried += 1;
                }
                other => {
                    // Say why, so a failure in CI can be understood from its log.
                    let why = match other {
                        Ok(Ok(res)) => format!("status {}", res.status()),
                        Ok(Err(e)) => format!("error {e:?}"),
                        Err(_) => "no answer within 5 s".to_string(),
                    };
                    eprintln!("client loop: request failed: {why}");
                    failed += 1;
                    break;
                }
            }
        }
    }
    (ok, failed, retried)
}

/// Whether a client error happened before any response (connect refused/reset, connection closed early).
fn failed_before_response(e: &hyper_util::client::legacy::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Wait for client loops and add up their (ok, failed, retried).
pub async fn join_loops(loops: Vec<tokio::task::JoinHandle<(u64, u64, u64)>>) -> (u64, u64, u64) {
    let mut total = (0, 0, 0);
    for l in loops {
        let (o, f, r) = l.await.unwrap();
        total = (total.0 + o, total.1 + f, total.2 + r);
    }
    total
}
