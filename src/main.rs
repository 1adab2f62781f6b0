//! The `pdserve` binary: parses the command line, sets up logging (`RUST_LOG`,
//! default `warn`, to stderr) and runs one subcommand.
//!
//! Invariant: a failing command prints exactly one line, `error: <cause chain>`,
//! to stderr and exits with status 1; panics (bugs) print one line too, without
//! a backtrace.

mod bench_actors;
mod bench_engine;
mod bench_kv;
mod bench_load;
mod cli;
mod cli_serving;
mod generate;
mod serving;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = matches!(
        cli.command,
        Command::Serve(_) | Command::Worker(_) | Command::Frontend(_)
    );
    init_logging(server);
    install_panic_hook();
    let result = match &cli.command {
        Command::Generate(args) => generate::run(args),
        Command::BenchEngine(args) => bench_engine::run(args),
        Command::BenchActors(args) => bench_actors::run(args),
        Command::BenchKv(args) => bench_kv::run(args),
        Command::Bench(args) => bench_load::run(args),
        Command::Serve(args) => serving::run_serve(args),
        Command::Worker(args) => serving::run_worker(args),
        Command::Frontend(args) => serving::run_frontend(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::from(1)
        }
    }
}

fn init_logging(server: bool) {
    use tracing_subscriber::EnvFilter;
    // Servers log their own lifecycle at info; everything else only warns.
    let default = if server {
        "warn,pdserve=info,pdserve_actors=info,pdserve_cluster=info,pdserve_gateway=info"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Replaces the default panic report (message + backtrace hint) with one line.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error (a bug): {}{at}", one_line_str(&msg));
    }));
}

/// The error and its causes on one line, `a: b: c`, skipping a cause whose text
/// its parent already shows (errors that print their source themselves).
fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = one_line_str(&cause.to_string());
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn one_line_str(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn error_chain_is_one_line_without_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let engine = pdserve_engine::EngineError::io("/x/m.gguf", io);
        let err = anyhow::Error::new(engine);
        // Io's Display already includes its source: not repeated.
        assert_eq!(one_line(&err), "/x/m.gguf: No such file");
        let err: anyhow::Result<()> = Err(anyhow::anyhow!("inner\nreason")).context("outer");
        assert_eq!(one_line(&err.unwrap_err()), "outer: inner reason");
    }
}
