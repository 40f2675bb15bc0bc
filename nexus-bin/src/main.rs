//! `nexus`: the Nexus API gateway binary. Load config, init tracing, build,
//! serve, drain; exit 64 on bad config.

use mimalloc::MiMalloc;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

mod admin;
mod cli;
mod config_file;
mod demo;
mod logging;
mod reload;
mod server;
mod telemetry;

fn main() -> ExitCode {
    cli::run()
}
