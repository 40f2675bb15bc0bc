//! End-to-end latency of the `nexus` binary: RPS, P50/P95/P99/P99.9 and errors
//! for seven scenarios, measured with a load generator written on hyper.
//!
//! ```sh
//! cargo bench -p nexus-benches --bench p99                      # all scenarios, 5 s each
//! cargo bench -p nexus-benches --bench p99 -- --duration 10 --connections 64
//! cargo bench -p nexus-benches --bench p99 -- --budget-p99-ms 5  # exit 1 if full-chain P99 is over 5 ms
//! ```
//!
//! Scenarios (each against the same in-process upstream on 127.0.0.1):
//! - `direct`: straight to the upstream, the floor;
//! - `bare_proxy`: through `nexus` with one route;
//! - `post_1k`: the same route, every request a POST with a 1 KiB body (`Content-Length`);
//! - `post_chunked`: the same, the body sent `Transfer-Encoding: chunked`;
//! - `full_chain`: through `nexus` with request id, metrics, a rate limit, a circuit breaker
//!   and HS256 JWT verification on the route;
//! - `c1000`: the full chain with 1,000 concurrent connections;
//! - `jwt_misses`: the full chain with 20,000 distinct tokens taken in turn, twice the
//!   verified-token cache: every request is verified (the miss-heavy case beside
//!   `full_chain`'s one token, which the cache serves).
//!
//! Two load models: closed loop (every connection sends its next request when the last
//! answer arrives, like `hey -c N`), and open loop (requests are due at a fixed rate and
//! latency counts from when each was due, so a stall is not hidden by the generator
//! slowing down: no coordinated omission). Results go to stdout and, as JSON, to
//! `target/p99-bench.json`. The gateway binary is `target/release/nexus` (built first
//! with `cargo build --release -p nexus-bin`), or `$NEXUS_BIN`.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const SECRET: &str = "p99-bench-secret-0123456789abcdef";

#[derive(Debug, Clone)]
struct Options {
    duration: Duration,
    connections: usize,
    /// Open-loop rate as a fraction of the closed-loop RPS measured first.
    open_fraction: f64,
    budget_p99_ms: Option<f64>,
    only: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        duration: Duration::from_secs(5),
        connections: 50,
        open_fraction: 0.7,
        budget_p99_ms: None,
        only: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--duration" => o.duration = Duration::from_secs_f64(value.parse().expect("--duration SECONDS")),
            "--connections" => o.connections = value.parse().expect("--connections N"),
            "--open-fraction" => o.open_fraction = value.parse().expect("--open-fraction 0..1"),
            "--budget-p99-ms" => o.budget_p99_ms = Some(value.parse().expect("--budget-p99-ms MS")),
            "--scenario" => o.only = Some(value),
            // `cargo bench` passes --bench; other flags are criterion's, not ours.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// The upstream: answers every request with a small body, over HTTP/1.1 keep-alive.
///
/// Its listen backlog is 4,096 (the peer bench's nginx upstream has the same). With
/// `TcpListener::bind`'s 128, the gateway's burst of upstream connections at the start of
/// `c1000` (800 dials within milliseconds) overflowed this listener's accept queue: the
/// dropped SYNs were sent again a second later, and those requests made a P99.9 of 1.1 s
/// that was the bench's own upstream, not the gateway (docs/load-test-report.md).
async fn upstream() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let listener = socket.listen(4096).expect("listen");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async {
                    // The body is read (as an application would), so the connection stays usable.
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello from upstream\n"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

struct Gateway {
    child: Child,
    addr: SocketAddr,
    _dir: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn nexus_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NEXUS_BIN") {
        return p.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "-p", "nexus-bin"])
        .current_dir(&root)
        .status()
        .expect("cargo build");
    assert!(status.success(), "cargo build --release -p nexus-bin failed");
    root.join("target/release/nexus")
}

/// Start `nexus` with `yaml` on free ports; wait for its "nexus started" line.
fn gateway(bin: &PathBuf, yaml: &str) -> Gateway {
    let dir = std::env::temp_dir().join(format!("nexus-p99-{}-{}", std::process::id(), yaml.len()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("nexus.yaml");
    std::fs::write(&path, yaml).expect("config");
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
        .env("NEXUS_LOG_LEVEL", "info")
        .env("P99_BENCH_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nexus");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("nexus exited before starting").expect("log line");
        if line.contains("nexus started") {
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log");
            break v["listen"].as_str().expect("listen").parse().expect("addr");
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Gateway { child, addr, _dir: dir }
}

fn bare_config(up: SocketAddr) -> String {
    format!(
        "upstreams:\n  app:\n    endpoints: [{{ url: \"http://{up}\" }}]\n\
         routes:\n  - name: app\n    paths: [{{ path: /, type: prefix }}]\n    upstream: app\n"
    )
}

fn full_config(up: SocketAddr) -> String {
    format!(
        "auth:\n  jwt:\n    main:\n      issuer: bench\n      audiences: [nexus]\n      algorithms: [HS256]\n\
         \x20     secret_env: P99_BENCH_SECRET\n      forward_claims: {{ sub: X-User-Id }}\n\
         rate_limits:\n  per-ip:\n    requests: 1000000000\n    per: 1s\n\
         upstreams:\n  app:\n    endpoints: [{{ url: \"http://{up}\" }}]\n\
         \x20   circuit_breaker: {{ failure_threshold: 5, success_threshold: 2, open_timeout: 10s }}\n\
         routes:\n  - name: app\n    paths: [{{ path: /, type: prefix }}]\n    upstream: app\n    auth: main\n    rate_limit: per-ip\n"
    )
}

/// `Authorization` values for `n` distinct tokens (`sub` differs).
fn tokens(n: usize) -> Tokens {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let all: Vec<http::HeaderValue> = (0..n)
        .map(|i| {
            let claims =
                serde_json::json!({"sub": format!("bench-user-{i}"), "iss": "bench", "aud": "nexus", "exp": 4_000_000_000u64});
            let token = jsonwebtoken::encode(&header, &claims, &key).expect("token");
            http::HeaderValue::try_from(format!("Bearer {token}")).expect("header value")
        })
        .collect();
    Arc::from(all)
}

/// The `Authorization` values a scenario sends, in turn.
type Tokens = Arc<[http::HeaderValue]>;

/// What a scenario's requests are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// `GET /bench`, no body.
    Get,
    /// `POST /bench` with 1 KiB framed by `Content-Length`.
    Post,
    /// `POST /bench` with 1 KiB sent chunked.
    Chunked,
}

/// A scenario's requests, and the `Authorization` values they carry.
type Requests = (Load, Option<Tokens>);

/// The POST scenarios' body.
static BODY: [u8; 1024] = [b'x'; 1024];

#[derive(Debug, Default)]
struct Sample {
    latencies_us: Vec<u32>,
    errors: u64,
}

/// One connection's loop. Closed loop: `interval` is None. Open loop: request k is due
/// at `start + offset + k * interval`, and its latency counts from then.
async fn connection(
    addr: SocketAddr,
    (load, auth): Requests,
    start: Instant,
    end: Instant,
    interval: Option<Duration>,
    offset: Duration,
    first_token: usize,
) -> Sample {
    let mut sample = Sample::default();
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        sample.errors += 1;
        return sample;
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        sample.errors += 1;
        return sample;
    };
    tokio::spawn(conn);
    let mut k: u32 = 0;
    loop {
        let due = match interval {
            Some(iv) => start + offset + iv * k,
            None => Instant::now(),
        };
        if due >= end {
            break;
        }
        if interval.is_some() {
            tokio::time::sleep_until(due).await;
        }
        k += 1;
        let mut req = match load {
            Load::Get => Request::get("/bench"),
            Load::Post => Request::post("/bench"),
            // hyper frames the body as the header says.
            Load::Chunked => Request::post("/bench").header("transfer-encoding", "chunked"),
        }
        .header("host", "bench.local");
        if let Some(t) = &auth {
            // Connections start at different tokens and take the next one each request.
            let i = (first_token + usize::try_from(k).unwrap_or(0)) % t.len();
            req = req.header("authorization", t[i].clone());
        }
        let body = match load {
            Load::Get => Either::Left(Empty::<Bytes>::new()),
            Load::Post | Load::Chunked => Either::Right(Full::new(Bytes::from_static(&BODY))),
        };
        let req = req.body(body).expect("request");
        if sender.ready().await.is_err() {
            sample.errors += 1;
            break;
        }
        match sender.send_request(req).await {
            Ok(res) if res.status() == StatusCode::OK => {
                let ok = res.into_body().collect().await.is_ok();
                let us = u32::try_from(due.elapsed().as_micros()).unwrap_or(u32::MAX);
                if ok {
                    sample.latencies_us.push(us);
                } else {
                    sample.errors += 1;
                }
            }
            _ => sample.errors += 1,
        }
    }
    sample
}

#[derive(Debug, serde::Serialize)]
struct Result_ {
    scenario: String,
    mode: &'static str,
    connections: usize,
    seconds: f64,
    requests: usize,
    errors: u64,
    rps: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

async fn run(
    scenario: &str,
    addr: SocketAddr,
    (load, auth): Requests,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
) -> Result_ {
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + duration;
    let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
    let mut tasks = Vec::with_capacity(connections);
    for i in 0..connections {
        // Spread the open-loop connections over one interval so requests are evenly due.
        let offset = interval
            .map_or(Duration::ZERO, |iv| iv * u32::try_from(i).unwrap_or(0) / u32::try_from(connections).unwrap_or(1));
        // Spread the connections over the tokens (each takes the next one per request).
        let first_token = auth.as_ref().map_or(0, |t| i * t.len() / connections.max(1));
        tasks.push(tokio::spawn(connection(addr, (load, auth.clone()), start, end, interval, offset, first_token)));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let s = t.await.expect("connection task");
        all.extend(s.latencies_us);
        errors += s.errors;
    }
    all.sort_unstable();
    let q = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        f64::from(all[i]) / 1000.0
    };
    Result_ {
        scenario: scenario.to_string(),
        mode: if rate.is_some() { "open" } else { "closed" },
        connections,
        seconds: duration.as_secs_f64(),
        requests: all.len(),
        errors,
        rps: all.len() as f64 / duration.as_secs_f64(),
        p50_ms: q(0.50),
        p95_ms: q(0.95),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        max_ms: all.last().map_or(f64::NAN, |m| f64::from(*m) / 1000.0),
    }
}

fn print(r: &Result_) {
    println!(
        "{:<12} {:<6} c={:<5} {:>9.0} rps  p50 {:>7.3}  p95 {:>7.3}  p99 {:>7.3}  p99.9 {:>7.3}  max {:>8.3} ms  errors {}",
        r.scenario, r.mode, r.connections, r.rps, r.p50_ms, r.p95_ms, r.p99_ms, r.p999_ms, r.max_ms, r.errors
    );
}

fn main() {
    let o = options();
    let bin = nexus_bin();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let results = rt.block_on(async {
        let up = upstream().await;
        let bare = gateway(&bin, &bare_config(up));
        let full = gateway(&bin, &full_config(up));
        let token = tokens(1);
        let many = tokens(20_000);
        let scenarios: Vec<(&str, SocketAddr, Requests, usize)> = vec![
            ("direct", up, (Load::Get, None), o.connections),
            ("bare_proxy", bare.addr, (Load::Get, None), o.connections),
            ("post_1k", bare.addr, (Load::Post, None), o.connections),
            ("post_chunked", bare.addr, (Load::Chunked, None), o.connections),
            ("full_chain", full.addr, (Load::Get, Some(Arc::clone(&token))), o.connections),
            ("c1000", full.addr, (Load::Get, Some(Arc::clone(&token))), 1000),
            ("jwt_misses", full.addr, (Load::Get, Some(many)), o.connections),
        ];
        println!("nexus p99 bench: {} s per run, upstream {up}", o.duration.as_secs_f64());
        let mut results = Vec::new();
        for (name, addr, load, conns) in scenarios {
            if o.only.as_deref().is_some_and(|s| s != name) {
                continue;
            }
            // Warm up pools and caches, then the closed loop, then the open loop at a
            // fraction of the closed-loop throughput.
            let _ = run(name, addr, load.clone(), conns.min(50), Duration::from_millis(500), None).await;
            let closed = run(name, addr, load.clone(), conns, o.duration, None).await;
            print(&closed);
            let rate = (closed.rps * o.open_fraction).max(100.0);
            let open = run(name, addr, load, conns, o.duration, Some(rate)).await;
            print(&open);
            results.push(closed);
            results.push(open);
        }
        drop((bare, full));
        results
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/p99-bench.json");
    let json = serde_json::json!({ "options": format!("{o:?}"), "results": results });
    std::fs::write(&out, serde_json::to_string_pretty(&json).expect("json")).expect("write results");
    println!("results: {}", out.display());
    if let Some(budget) = o.budget_p99_ms {
        let over: Vec<&Result_> =
            results.iter().filter(|r| r.scenario == "full_chain" && (r.p99_ms > budget || r.errors > 0)).collect();
        if !over.is_empty() {
            for r in over {
                eprintln!(
                    "over budget: full_chain {} p99 {:.3} ms > {budget} ms (errors {})",
                    r.mode, r.p99_ms, r.errors
                );
            }
            std::process::exit(1);
        }
        println!("full_chain P99 within the {budget} ms budget");
    }
}
