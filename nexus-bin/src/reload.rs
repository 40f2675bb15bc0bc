//! Hot reload and rollback (SPEC §5, §8): re-read the file on SIGHUP, on
//! `POST /admin/reload` and when the file (or a Kubernetes ConfigMap's
//! `..data` symlink) changes; validate; build a new snapshot; swap it
//! atomically. In-flight requests finish on the snapshot they started with.
//! An invalid file changes nothing but `last_reload`.

use crate::config_file::{self, LoadedConfig};
use nexus_core::config::{ConfigError, ConfigErrors, Overrides};
use nexus_proxy::front::Front;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Good versions kept for rollback.
const HISTORY: usize = 10;

/// The outcome of one reload.
#[derive(Debug, Clone)]
pub(crate) enum Reload {
    /// A new version is serving.
    Applied(String),
    /// The file's content is the running one (or the pinned one): nothing to do.
    Unchanged,
    /// The file is invalid; the running config stays.
    Failed(ConfigErrors),
}

#[derive(Debug, Clone)]
struct LastReload {
    ok: bool,
    at: SystemTime,
    errors: Vec<String>,
}

#[derive(Debug)]
struct State {
    /// Good versions, newest (the running one) first.
    history: Vec<Arc<LoadedConfig>>,
    /// After a rollback: the file content version that must change before a reload applies.
    pinned_file: Option<String>,
    last: Option<LastReload>,
}

/// The config lifecycle of a running gateway.
#[derive(Debug)]
pub(crate) struct Reloader {
    front: Arc<Front>,
    overrides: Overrides,
    source: PathBuf,
    state: Mutex<State>,
    /// One reload at a time (file events, signals and API calls may race).
    serial: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub(crate) fn new(front: Arc<Front>, loaded: LoadedConfig, overrides: Overrides) -> Self {
        Self {
            front,
            overrides,
            source: loaded.source.clone(),
            state: Mutex::new(State { history: vec![Arc::new(loaded)], pinned_file: None, last: None }),
            serial: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn front(&self) -> &Arc<Front> {
        &self.front
    }

    /// The running config.
    pub(crate) fn current(&self) -> Arc<LoadedConfig> {
        Arc::clone(&self.lock().history[0])
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Re-read the file and apply it if it is new and valid.
    pub(crate) async fn reload(&self, trigger: &str) -> Reload {
        let _one = self.serial.lock().await;
        let previous = self.current().version.clone();
        let outcome = self.try_reload();
        if matches!(outcome, Reload::Unchanged) {
            // Certificate files are re-read even when the YAML is the same (SPEC §9).
            self.refresh_tls(trigger);
        }
        let mut st = self.lock();
        match &outcome {
            Reload::Applied(v) => {
                metrics::counter!(crate::telemetry::RELOADS, "result" => "ok").increment(1);
                crate::telemetry::config_version(v, Some(&previous));
                tracing::info!(%trigger, version = %v, "config reloaded");
                st.last = Some(LastReload { ok: true, at: SystemTime::now(), errors: Vec::new() });
            }
            Reload::Unchanged => tracing::debug!(%trigger, "config unchanged"),
            Reload::Failed(errors) => {
                metrics::counter!(crate::telemetry::RELOADS, "result" => "error").increment(1);
                for e in errors {
                    tracing::error!(%trigger, error = %e, "config reload rejected; the running config is kept");
                }
                st.last = Some(LastReload {
                    ok: false,
                    at: SystemTime::now(),
                    errors: errors.iter().map(ToString::to_string).collect(),
                });
            }
        }
        outcome
    }

    fn try_reload(&self) -> Reload {
        // A config built into the binary never changes: a reload finds it as it is.
        if self.source.as_os_str() == config_file::BUILT_IN {
            return Reload::Unchanged;
        }
        let bytes = match std::fs::read(&self.source) {
            Ok(b) => b,
            Err(e) => return Reload::Failed(one("", format!("cannot read {}: {e}", self.source.display()))),
        };
        let version = config_file::version_of(&bytes);
        {
            let mut st = self.lock();
            if st.history[0].version == version {
                return Reload::Unchanged;
            }
            match &st.pinned_file {
                Some(pinned) if *pinned == version => return Reload::Unchanged,
                Some(_) => st.pinned_file = None,
                None => {}
            }
        }
        let config = match config_file::parse(&bytes, &self.overrides) {
            Ok(c) => c,
            Err(e) => return Reload::Failed(e),
        };
        let running = self.current();
        let mut errors = Vec::new();
        for (key, old, new) in [
            ("server.listen", running.config.server.listen, config.server.listen),
            ("server.admin_listen", running.config.server.admin_listen, config.server.admin_listen),
        ] {
            if old != new {
                errors.push(ConfigError::new(
                    key,
                    format!("changed from {old} to {new}: a listener address needs a restart; nothing was applied"),
                ));
            }
        }
        // Listener settings are fixed when the listeners start; logging and the admin token
        // when the process starts. (A reload that changed them and said "ok" would lie.)
        let (old, new) = (&running.config.server, &config.server);
        let (was, now) = (&running.config, &config);
        for (key, changed) in [
            ("server.reuse_port", old.reuse_port != new.reuse_port),
            ("server.limits.header_read_timeout", old.limits.header_read_timeout != new.limits.header_read_timeout),
            ("server.limits.h2_idle_timeout", old.limits.h2_idle_timeout != new.limits.h2_idle_timeout),
            ("server.limits.max_header_bytes", old.limits.max_header_bytes != new.limits.max_header_bytes),
            ("logging.level", was.logging.level != now.logging.level),
            ("logging.format", was.logging.format != now.logging.format),
            ("admin.token_env", was.admin.token_env != now.admin.token_env),
            ("server.tls.listen", old.tls.as_ref().map(|t| t.listen) != new.tls.as_ref().map(|t| t.listen)),
        ] {
            if changed {
                errors.push(ConfigError::new(key, "changing it needs a restart; nothing was applied"));
            }
        }
        if !errors.is_empty() {
            return Reload::Failed(ConfigErrors(errors));
        }
        let loaded = LoadedConfig {
            config,
            version: version.clone(),
            source: self.source.clone(),
            loaded_at: SystemTime::now(),
        };
        if let Err(e) = self.install(&loaded) {
            return Reload::Failed(e);
        }
        let mut st = self.lock();
        st.history.insert(0, Arc::new(loaded));
        st.history.truncate(HISTORY);
        Reload::Applied(version)
    }

    fn install(&self, loaded: &LoadedConfig) -> Result<(), ConfigErrors> {
        self.front.install(&loaded.config)
    }

    /// Re-read the running config's certificate files; a pair that fails to load keeps
    /// the running one (logged, and counted in `nexus_tls_reloads_total{result="error"}`).
    fn refresh_tls(&self, trigger: &str) {
        self.front.refresh_tls(&self.current().config, trigger);
    }

    /// Go back to the previous good version and pin it until the file changes.
    pub(crate) async fn rollback(&self) -> Result<String, &'static str> {
        let _one = self.serial.lock().await;
        let previous = {
            let st = self.lock();
            match st.history.get(1) {
                Some(p) => Arc::clone(p),
                None => return Err("no earlier config version to roll back to"),
            }
        };
        self.install(&previous).map_err(|_| "the previous version no longer builds")?;
        let file_version = std::fs::read(&self.source).ok().map(|b| config_file::version_of(&b));
        let mut st = self.lock();
        let rolled_back = st.history.remove(0);
        crate::telemetry::config_version(&previous.version, Some(&rolled_back.version));
        st.pinned_file = Some(file_version.unwrap_or_default());
        tracing::warn!(version = %previous.version, "config rolled back; pinned until the file changes");
        Ok(previous.version.clone())
    }

    /// The `/admin/config` answer.
    pub(crate) fn describe(&self) -> Value {
        let st = self.lock();
        let cur = &st.history[0];
        json!({
            "version": cur.version,
            "loaded_at": rfc3339(cur.loaded_at),
            "source": cur.source.display().to_string(),
            "routes": cur.config.routes.len(),
            "upstreams": cur.config.upstreams.len(),
            "history": st.history.iter().map(|h| h.version.clone()).collect::<Vec<_>>(),
            "pinned": st.pinned_file.is_some(),
            "last_reload": st.last.as_ref().map(|l| json!({
                "result": if l.ok { "ok" } else { "error" },
                "at": rfc3339(l.at),
                "errors": l.errors,
            })),
        })
    }
}

fn one(path: &str, msg: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError::new(path, msg)])
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Reload on SIGHUP: the handler is installed now (so an early SIGHUP does not
/// kill the process); the returned future serves it.
pub(crate) fn on_sighup(reloader: Arc<Reloader>) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup()).ok()?;
        Some(async move {
            while hup.recv().await.is_some() {
                reloader.reload("SIGHUP").await;
            }
        })
    }
    #[cfg(not(unix))]
    {
        drop(reloader);
        None::<std::future::Ready<()>>
    }
}

/// Reload when the file changes. The directory is watched (not the file), so
/// editors that write a new file and rename it, and a ConfigMap's `..data`
/// symlink swap, are both seen; the content hash decides whether anything changed.
pub(crate) fn watch(reloader: Arc<Reloader>, path: &Path) -> Option<notify::RecommendedWatcher> {
    watch_files(reloader, &[path], "file change")
}

/// Re-read certificates when a TLS file of the config changes (`server.tls`, and the CA
/// files and client certificates of upstreams' `tls`; a Secret's `..data` symlink swap
/// included): the reload finds the YAML unchanged and re-reads the TLS files. The
/// directories are those of the config at start; after a reload that moves the files
/// elsewhere, SIGHUP and `POST /admin/reload` still re-read them. `None`: no TLS files.
pub(crate) fn watch_tls(
    reloader: Arc<Reloader>,
    config: &nexus_core::config::Config,
) -> Option<notify::RecommendedWatcher> {
    let mut files: Vec<&Path> = Vec::new();
    if let Some(tls) = &config.server.tls {
        for c in &tls.certificates {
            files.push(Path::new(&c.cert_file));
            files.push(Path::new(&c.key_file));
        }
        if let Some(auth) = &tls.client_auth {
            files.push(Path::new(&auth.ca_file));
        }
    }
    for tls in config.upstreams.values().filter_map(|u| u.tls.as_ref()) {
        let named = [&tls.ca_file, &tls.client_cert_file, &tls.client_key_file];
        files.extend(named.into_iter().flatten().map(Path::new));
    }
    if files.is_empty() {
        return None;
    }
    watch_files(reloader, &files, "TLS file change")
}

/// Watch the directories of `files` and reload (debounced) when one of them, or a
/// kubelet `..data` / `..<timestamp>` entry beside them, changes.
fn watch_files(reloader: Arc<Reloader>, files: &[&Path], trigger: &'static str) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dir_of = |p: &Path| p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let mut dirs: Vec<PathBuf> = files.iter().map(|f| dir_of(f)).collect();
    dirs.sort();
    dirs.dedup();
    let names: Vec<std::ffi::OsString> =
        files.iter().filter_map(|f| f.file_name()).map(std::ffi::OsStr::to_os_string).collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Only the watched files themselves, or kubelet's `..data` / `..<timestamp>` entries,
        // not every file in a shared directory (such as /tmp, or the gateway's own log).
        let relevant = |p: &PathBuf| {
            p.file_name().is_some_and(|f| names.iter().any(|n| n == f) || f.to_string_lossy().starts_with(".."))
        };
        if res.is_ok_and(|e| !e.kind.is_access() && e.paths.iter().any(relevant)) {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, %trigger, "cannot watch files; reload with SIGHUP or POST /admin/reload");
            return None;
        }
    };
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, %trigger, "cannot watch a directory");
            return None;
        }
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: an editor or a ConfigMap update is several events in a row. Wait for
            // 200 ms without events (at most 2 s), so a file truncated and then written is
            // read once, whole.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut more = false;
                while rx.try_recv().is_ok() {
                    more = true;
                }
                if !more || tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            reloader.reload(trigger).await;
        }
    });
    Some(watcher)
}
