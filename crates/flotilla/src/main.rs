//! The `flotilla` binary: a thin entry point. Only `main` chooses exit
//! codes; everything below returns errors.

mod config;
mod server;
mod verifier_agent;

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
    /// Run the server: the management API and the agents' fleet API.
    Server(server::ServerArgs),
    /// The agent: enrol, run, status.
    #[command(subcommand)]
    Agent(flotilla_agent::cli::AgentCmd),
    /// Simulate agents against a running server and measure it:
    /// enroll, hold, fanout, churn, baseline.
    Loadgen(flotilla_loadgen::LoadgenArgs),
    #[command(flatten)]
    Operator(flotilla_cli::Command),
}

/// mimalloc instead of glibc's malloc: a fan-out's profile put about a
/// quarter of the server's CPU in glibc's `malloc`/`free` (consolidating
/// and unlinking chunks across the runtime's threads).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version are printed as clap renders them; a usage error
        // is one line, like every other error.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
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
            Command::Agent(cmd) => {
                flotilla_agent::cli::init_tracing();
                flotilla_agent::cli::run_cli(cmd).await
            }
            Command::Loadgen(args) => flotilla_loadgen::run(args).await,
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

/// A clap usage error on one line: its first line, with the possible values
/// (or the usage) it lists after, minus the "try --help" footer.
fn one_line(rendered: &str) -> String {
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut out = lines
        .next()
        .unwrap_or("error: invalid arguments")
        .to_owned();
    for l in lines {
        if l.starts_with("For more information") {
            continue;
        }
        out.push(' ');
        out.push_str(l);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn usage_errors_fold_to_one_line() {
        let rendered = "error: invalid value 'loud' for '--log-level <LOG_LEVEL>'\n  [possible values: trace, debug]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            super::one_line(rendered),
            "error: invalid value 'loud' for '--log-level <LOG_LEVEL>' [possible values: trace, debug]"
        );
    }
}
