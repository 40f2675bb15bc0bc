//! The command line of SPEC §2.

use crate::config_file::{self, LoadedConfig};
use clap::{Args, Parser, Subcommand};
use nexus_core::config::{Env, Overrides, ProcessEnv};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for an invalid config (sysexits EX_USAGE).
pub(crate) const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "nexus", version, about = "Nexus API gateway", long_about = None)]
struct Cli {
    /// Config file (YAML). Env NEXUS_CONFIG wins over this flag.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(flatten)]
    serve: ServeFlags,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The flags of a running gateway: taken by `nexus` and `nexus demo`, not by `validate` or
/// `explain`, which never listen or log (they would be accepted and ignored).
#[derive(Debug, Clone, Args)]
struct ServeFlags {
    /// Main listener address, e.g. 0.0.0.0:8080 (env NEXUS_LISTEN wins).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin listener address, e.g. 127.0.0.1:9090 (env NEXUS_ADMIN_LISTEN wins).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Log level or tracing filter (env NEXUS_LOG_LEVEL wins).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// json or text (env NEXUS_LOG_FORMAT wins).
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
}

impl ServeFlags {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            admin_listen: self.admin_listen.clone(),
            log_level: self.log_level.clone(),
            log_format: self.log_format.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config file: print "config OK (N routes, M upstreams)" or every error.
    Validate {
        /// Check the YAML alone, not the files it names (certificates, keys, JWKS): for
        /// rendering checks outside the machine or pod that holds them.
        #[arg(long)]
        skip_files: bool,
    },
    /// Show which route, upstream, auth and limit a request would get.
    Explain {
        /// HTTP method, e.g. GET.
        method: String,
        /// URL or path, e.g. http://api.example.com/api/v1/users or /api/v1/users.
        #[allow(rustdoc::bare_urls)] // Also clap's help text, which shows it as written.
        url: String,
        /// Request header "Name: value" (repeatable).
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
    },
    /// Gateway plus two demo upstreams (v1, v2) on loopback, to try at once.
    Demo {
        #[command(flatten)]
        serve: ServeFlags,
    },
}

impl Cli {
    /// The running gateway's flags: `nexus demo --listen X` or `nexus --listen X demo`
    /// (the subcommand's win).
    fn flag_overrides(&self) -> Overrides {
        let top = self.serve.overrides();
        match &self.command {
            Some(Command::Demo { serve }) => serve.overrides().over(top),
            _ => top,
        }
    }

    /// NEXUS_CONFIG > --config.
    fn config_path(&self, env: &dyn Env) -> Option<PathBuf> {
        env.var("NEXUS_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| self.config.clone())
    }
}

pub(crate) fn run() -> ExitCode {
    let cli = Cli::parse();
    let env = ProcessEnv;
    let overrides = Overrides::from_env(&env).over(cli.flag_overrides());
    match &cli.command {
        Some(Command::Validate { skip_files }) => {
            let Some(path) = cli.config_path(&env) else {
                eprintln!("nexus validate: --config PATH is required");
                return ExitCode::from(2);
            };
            let checked = config_file::load(&path, &Overrides::default()).and_then(|loaded| {
                if !*skip_files {
                    nexus_proxy::files::check(&loaded.config)?;
                }
                Ok(loaded)
            });
            match checked {
                Ok(loaded) => {
                    println!("config OK ({})", loaded.config.summary());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: invalid config", path.display());
                    for err in &e {
                        eprintln!("  {err}");
                    }
                    ExitCode::from(1)
                }
            }
        }
        Some(Command::Explain { method, url, headers }) => {
            let Some(path) = cli.config_path(&env) else {
                eprintln!("nexus explain: --config PATH is required");
                return ExitCode::from(2);
            };
            let loaded = match config_file::load(&path, &Overrides::default()) {
                Ok(l) => l,
                Err(e) => return bad_config(&path, &e),
            };
            match crate::admin::explain_cli(&loaded, method, url, headers) {
                Ok(answer) => {
                    println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("nexus explain: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Demo { .. }) => crate::demo::run(overrides),
        None => {
            let path = cli.config_path(&env).or_else(|| {
                let default = PathBuf::from("/etc/nexus/nexus.yaml");
                default.exists().then_some(default)
            });
            let Some(path) = path else {
                eprintln!("nexus: no config; pass --config PATH (or set NEXUS_CONFIG), or try `nexus demo`");
                return ExitCode::from(EXIT_BAD_CONFIG);
            };
            let loaded: LoadedConfig = match config_file::load(&path, &overrides) {
                Ok(l) => l,
                Err(e) => return bad_config(&path, &e),
            };
            crate::server::run_blocking(loaded, overrides)
        }
    }
}

fn bad_config(path: &std::path::Path, errors: &nexus_core::config::ConfigErrors) -> ExitCode {
    eprintln!("{}: invalid config", path.display());
    for err in errors {
        eprintln!("  {err}");
    }
    ExitCode::from(EXIT_BAD_CONFIG)
}
