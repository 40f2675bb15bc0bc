//! Listeners, connections and the shutdown sequence.

use crate::config_file::LoadedConfig;
use crate::reload::{self, Reloader};
use nexus_core::config::{Config, Overrides};
use nexus_health::ReadinessGate;
use nexus_proxy::front::Front;
use nexus_proxy::http1::Server;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket};

/// Environment variable that sets the number of workers (default: the CPUs this
/// process may run on, honouring `taskset` and cgroup CPU quotas).
pub(crate) const WORKERS_ENV: &str = "NEXUS_WORKERS";

/// Build the workers' runtimes and serve until shut down.
///
/// Thread per core, like nginx's worker processes: each worker is one thread with a
/// single-threaded tokio runtime and its own accept loop on the shared listener, and a
/// connection stays on the worker that accepted it (its upstream connections too, see
/// `nexus_proxy`'s pool). No work stealing, no cross-thread wake-ups on the request path;
/// measured on one pinned core under `wrk -c1000` against tokio's multi-thread scheduler:
/// the same requests/s within noise, and a P99 of 53-70 ms instead of 182-221 ms
/// (docs/load-test-report.md). The main thread is worker 0 and also runs the admin
/// listener, reloads, health checks and signal handling.
pub(crate) fn run_blocking(loaded: LoadedConfig, overrides: Overrides) -> ExitCode {
    crate::logging::init(&loaded.config.logging);
    let workers = match worker_count(std::env::var(WORKERS_ENV).ok().as_deref()) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("nexus: {WORKERS_ENV}: {e}");
            return ExitCode::from(crate::cli::EXIT_BAD_CONFIG);
        }
    };
    let rt = match worker_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nexus: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(serve(loaded, overrides, None, workers))
}

/// The number of workers: `NEXUS_WORKERS` when set (1–1024); unset, empty, `0` or `auto`: the
/// available parallelism (`0` is what Kubernetes' downward API gives for an unset CPU request).
pub(crate) fn worker_count(env: Option<&str>) -> Result<usize, String> {
    match env.map(str::trim).filter(|v| !v.is_empty() && *v != "0" && !v.eq_ignore_ascii_case("auto")) {
        Some(v) => match v.parse::<usize>() {
            Ok(n @ 1..=1024) => Ok(n),
            _ => Err(format!("expected a number of workers from 1 to 1024 (or 0/auto), got {v:?}")),
        },
        None => Ok(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)),
    }
}

fn worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Start workers 1..`workers` on threads of their own, each accepting from a clone of
/// `listener` (the kernel hands each connection to one of them). A worker that cannot
/// start is logged and skipped: the others still serve.
fn spawn_workers(
    listener: &std::net::TcpListener,
    tls: Option<&std::net::TcpListener>,
    workers: usize,
    front: &Arc<Front>,
    config: &Config,
) {
    for i in 1..workers {
        let (listener, front, server) = match listener.try_clone() {
            Ok(l) => (l, Arc::clone(front), server(config)),
            Err(e) => {
                tracing::error!(worker = i, error = %e, "cannot share the listener with a worker");
                continue;
            }
        };
        let tls = match tls.map(std::net::TcpListener::try_clone).transpose() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(worker = i, error = %e, "cannot share the TLS listener with a worker");
                None
            }
        };
        let tls_server = self::server(config);
        let spawned = std::thread::Builder::new().name(format!("nexus-worker-{i}")).spawn(move || {
            let rt = match worker_runtime() {
                Ok(rt) => rt,
                Err(e) => return tracing::error!(worker = i, error = %e, "cannot start a worker's runtime"),
            };
            rt.block_on(async move {
                let tls_loop = match tls.map(TcpListener::from_std).transpose() {
                    Ok(l) => l.map(|l| tokio::spawn(Arc::clone(&front).accept_loop(l, tls_server, true))),
                    Err(e) => return tracing::error!(worker = i, error = %e, "cannot register the TLS listener"),
                };
                match TcpListener::from_std(listener) {
                    Ok(l) => front.accept_loop(l, server, false).await,
                    Err(e) => return tracing::error!(worker = i, error = %e, "cannot register the listener"),
                }
                if let Some(t) = tls_loop {
                    let _ = t.await;
                }
                // Listeners closed: keep driving this worker's open connections until
                // the main thread, which owns the grace period, ends the process.
                std::future::pending::<()>().await;
            });
        });
        if let Err(e) = spawned {
            tracing::error!(worker = i, error = %e, "cannot start a worker thread");
        }
    }
}

/// The listen backlog asked for: connections the kernel completes and queues before a
/// worker accepts them. The kernel caps it at `net.core.somaxconn` (4,096 by default since
/// Linux 5.4). A burst larger than the queue (clients reconnecting after a restart) has
/// its SYNs dropped and sent again a second later, so ask for what the kernel allows, as
/// the peer bench's nginx does (`backlog=4096`); Envoy's default is 1,024, nginx's 511.
const LISTEN_BACKLOG: u32 = 4096;

/// Bind a listener, with `SO_REUSEPORT` when asked.
pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serve a loaded config: main and admin listeners, then drain on a signal.
/// `ready` is told the bound addresses (for `nexus demo` and tests).
pub(crate) async fn serve(
    loaded: LoadedConfig,
    overrides: Overrides,
    ready: Option<tokio::sync::oneshot::Sender<(SocketAddr, SocketAddr)>>,
    workers: usize,
) -> ExitCode {
    let config = &loaded.config;
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nexus: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The recorder first: upstreams register their metric handles when the gateway is built.
    let metrics = crate::telemetry::install();
    crate::telemetry::config_version(&loaded.version, None);
    let gate = ReadinessGate::new();
    let front = match Front::new(config, gate.clone()) {
        Ok(s) => s,
        Err(e) => {
            for err in &e {
                eprintln!("  {err}");
            }
            return ExitCode::from(crate::cli::EXIT_BAD_CONFIG);
        }
    };
    let reuse = config.server.reuse_port;
    let (main, admin) = match (bind(config.server.listen, reuse), bind(config.server.admin_listen, reuse)) {
        (Ok(m), Ok(a)) => (m, a),
        (Err(e), _) => return bind_failed("listen", config.server.listen, &e),
        (_, Err(e)) => return bind_failed("admin_listen", config.server.admin_listen, &e),
    };
    let tls = match config.server.tls.as_ref().map(|t| bind(t.listen, reuse).map_err(|e| (t.listen, e))).transpose() {
        Ok(l) => l,
        Err((addr, e)) => return bind_failed("tls.listen", addr, &e),
    };
    let (main_addr, admin_addr) = (local(&main), local(&admin));
    let tls_addr = tls.as_ref().map(local);
    let (main, tls) = if workers > 1 {
        // Deregistered from this runtime, cloned for the other workers, then registered again.
        let shared_listeners = main.into_std().and_then(|l| {
            let t = tls.map(TcpListener::into_std).transpose()?;
            spawn_workers(&l, t.as_ref(), workers, &front, config);
            Ok((TcpListener::from_std(l)?, t.map(TcpListener::from_std).transpose()?))
        });
        match shared_listeners {
            Ok(l) => l,
            Err(e) => return bind_failed("listen", config.server.listen, &e),
        }
    } else {
        (main, tls)
    };

    let shutdown = front.shutdown().clone();
    let main_task = tokio::spawn(Arc::clone(&front).accept_loop(main, server(config), false));
    let tls_task = tls.map(|l| tokio::spawn(Arc::clone(&front).accept_loop(l, server(config), true)));
    let token = std::env::var(&config.admin.token_env).ok();
    let reloader = Arc::new(Reloader::new(Arc::clone(&front), loaded.clone(), overrides));
    let admin_state = crate::admin::AdminState::new(Arc::clone(&reloader), gate.clone(), token, metrics);
    let admin_task = tokio::spawn(crate::admin::serve(admin, admin_state, shutdown.subscribe()));
    let hup_task = reload::on_sighup(Arc::clone(&reloader)).map(tokio::spawn);
    // Kept alive until shutdown; dropping it stops the watch.
    let _watcher = loaded.source.exists().then(|| reload::watch(Arc::clone(&reloader), &loaded.source)).flatten();
    // Certificate files too (a Secret's `..data` symlink swap): SPEC §9.
    let _tls_watcher = reload::watch_tls(Arc::clone(&reloader), config);
    // Ready only once every listener is bound and the config is loaded; then announce it
    // (tests and scripts wait for this line, so it must not come before readiness).
    gate.set_ready();
    if let Some(addr) = tls_addr {
        tracing::info!(tls_listen = %addr, certificates = config.server.tls.as_ref().map_or(0, |t| t.certificates.len()),
            "TLS listener open");
    }
    tracing::info!(listen = %main_addr, admin_listen = %admin_addr, version = %loaded.version,
        routes = config.routes.len(), upstreams = config.upstreams.len(), workers, "nexus started");
    if let Some(tx) = ready {
        let _ = tx.send((main_addr, admin_addr));
    }

    // The shutdown timings are the running config's (a reload may have changed them).
    let code = shutdown_sequence(&reloader, &front, &mut signals).await;
    // Stopping: listeners close, connections finish what they have.
    shutdown.stop();
    let _ = main_task.await;
    if let Some(t) = tls_task {
        let _ = t.await;
    }
    let _ = admin_task.await;
    if let Some(t) = hup_task {
        t.abort();
    }
    if code != ExitCode::SUCCESS {
        return code;
    }
    let grace = reloader.current().config.server.shutdown.grace_period.as_std();
    let open = shutdown.tracker().active();
    tracing::info!(open, ?grace, "listeners closed; waiting for open connections");
    tokio::select! {
        finished = shutdown.tracker().wait_idle(grace) => {
            if finished {
                tracing::info!("all connections finished; exiting");
            } else {
                tracing::warn!(?grace, open = shutdown.tracker().active(), "grace period over; exiting with connections open");
            }
        }
        () = signals.recv() => {
            tracing::warn!("second signal; exiting at once");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn local(l: &TcpListener) -> SocketAddr {
    l.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn bind_failed(key: &str, addr: SocketAddr, e: &std::io::Error) -> ExitCode {
    tracing::error!(%addr, error = %e, "cannot bind server.{key}");
    eprintln!("nexus: cannot bind server.{key} {addr}: {e}");
    ExitCode::FAILURE
}

/// SIGTERM/SIGINT: readiness 503 at once, keep serving for `drain_delay`, then
/// return so listeners close. A second signal during the delay exits 1.
async fn shutdown_sequence(reloader: &Reloader, front: &Front, signals: &mut Signals) -> ExitCode {
    signals.recv().await;
    front.drain();
    let delay = reloader.current().config.server.shutdown.drain_delay.as_std();
    tracing::info!(?delay, "shutdown signal: readiness is now 503; draining");
    tokio::select! {
        () = tokio::time::sleep(delay) => ExitCode::SUCCESS,
        () = signals.recv() => {
            tracing::warn!("second signal; exiting at once");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT, registered before the listeners open so that an early
/// signal is handled (drained) rather than killing the process.
pub(crate) struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next SIGTERM or SIGINT.
    pub(crate) async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The connection server for `config`'s limits (a reload changes neither: they are the
/// listener's, taken when it starts).
fn server(config: &Config) -> Server {
    let limits = &config.server.limits;
    Server::new(limits.header_read_timeout.as_std(), limits.max_header_bytes.bytes())
        .with_h2_idle_timeout(limits.h2_idle_timeout.as_std())
}

#[cfg(test)]
mod tests {
    use super::worker_count;

    #[test]
    fn worker_count_takes_a_number_or_defaults_to_the_cpus() {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(worker_count(Some("3")), Ok(3));
        for auto in [None, Some(""), Some("0"), Some("auto"), Some(" AUTO ")] {
            assert_eq!(worker_count(auto), Ok(cpus), "{auto:?}");
        }
        for bad in ["-1", "1025", "two"] {
            assert!(worker_count(Some(bad)).unwrap_err().contains(bad));
        }
    }
}
