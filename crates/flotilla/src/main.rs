//! The `flotilla` binary: a thin entry point. Only `main` chooses exit
//! codes; everything below returns errors.

mod config;
mod server;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Flotilla: enrol agents safely, give each exactly the configuration and
/// credentials it needs, and keep the fleet healthy.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the fleet server (management API and, later, the fleet API).
    Server(server::ServerArgs),
    /// Run an agent (not available yet).
    Agent,
    #[command(flatten)]
    Operator(flotilla_cli::Command),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Agent => Err(anyhow::anyhow!(
                "the agent is not available in this version yet"
            )),
            Command::Operator(cmd) => flotilla_cli::run(cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
