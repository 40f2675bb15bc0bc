//! Structured logs with `tracing`: JSON or text, level from config/flags/env.

use nexus_core::config::{LogFormat, LoggingConfig};
use tracing_subscriber::EnvFilter;

/// Install the global subscriber (once; later calls are ignored).
pub(crate) fn init(cfg: &LoggingConfig) {
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|e| {
        eprintln!("nexus: invalid log level {:?} ({e}); using info", cfg.level);
        EnvFilter::new("info")
    });
    // Colours only for a terminal: a redirected log (a file, journald, a pipe) gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
