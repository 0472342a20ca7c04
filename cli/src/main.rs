//! `chapar`: the command-line tool for senders and recipients.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error. With `--json`, every
//! command prints exactly one JSON object on stdout, errors included.
#![forbid(unsafe_code)]

mod args;
mod commands;
mod demo;
mod net;
mod progress;
mod receive;
mod send;
mod store_commands;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::args::Cli;

fn main() -> ExitCode {
    chapar_mesh::keep_large_buffers_out_of_the_heap();
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let json = cli.json;
    match commands::run(cli.command) {
        Ok(report) => {
            let mut stdout = std::io::stdout().lock();
            let printed = if json {
                writeln!(stdout, "{}", report.json)
            } else {
                write!(stdout, "{}", report.stdout)
            };
            if !json && !report.stderr.is_empty() {
                eprint!("{}", report.stderr);
            }
            // A closed pipe (`chapar … | head`) is not a failure.
            // A command whose finding is a failure (fsck finding damage)
            // reports `"ok": false` and exits 1.
            let failed = report.json.get("ok") == Some(&serde_json::Value::Bool(false));
            match printed {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => ExitCode::FAILURE,
                _ if failed => ExitCode::FAILURE,
                _ => ExitCode::SUCCESS,
            }
        }
        Err(err) => {
            let kind = match (
                err.downcast_ref::<chapar_bundle::BundleError>(),
                err.downcast_ref::<chapar_store::StoreError>(),
            ) {
                (Some(e), _) => e.kind(),
                (_, Some(e)) => e.kind(),
                _ => "error",
            };
            let message = describe(&err);
            eprintln!("chapar: error: {message}");
            if json {
                let obj = serde_json::json!({ "ok": false, "error": message, "kind": kind });
                println!("{obj}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping causes its message already states.
fn describe(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    message
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHAPAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
