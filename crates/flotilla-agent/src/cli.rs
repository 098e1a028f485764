//! `flotilla agent enroll|run|status`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::run::{enroll, read_status, run, RunOptions};
use crate::state::StateDir;

#[derive(Debug, Args, Clone)]
pub struct StateArgs {
    /// Where the agent keeps its identity and state.
    #[arg(
        long,
        env = "FLOTILLA_AGENT_STATE_DIR",
        default_value = "./flotilla-agent"
    )]
    pub state_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Enrol with the fleet server.
    Enroll {
        #[arg(long, env = "FLOTILLA_URL")]
        url: String,
        #[arg(long, env = "FLOTILLA_ENROLLMENT_TOKEN", hide_env_values = true)]
        enrollment_token: String,
        /// Repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Run: the last good policy first, then check in and follow the server
    /// (enrolling on first start when --url and --enrollment-token are given).
    Run {
        #[arg(long, env = "FLOTILLA_URL")]
        url: Option<String>,
        #[arg(long, env = "FLOTILLA_ENROLLMENT_TOKEN", hide_env_values = true)]
        enrollment_token: Option<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Stop after this many check-ins (for tests and one-shot runs).
        #[arg(long, hide = true)]
        max_checkins: Option<u64>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// The local view, also while the server is unreachable.
    Status {
        #[command(flatten)]
        state: StateArgs,
    },
}

type Reload =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

static LOG_LEVEL: std::sync::OnceLock<Reload> = std::sync::OnceLock::new();

/// Log to stderr at `RUST_LOG` (default `info`); a SETTINGS action may
/// change the level later ([`set_log_level`]).
pub fn init_tracing() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init();
    if installed.is_ok() {
        let _ = LOG_LEVEL.set(handle);
    }
}

/// The levels a SETTINGS action may set (Elastic Agent's names).
pub fn set_log_level(level: &str) -> Result<(), String> {
    let directive = match level {
        "error" | "warning" | "warn" | "info" | "debug" | "trace" => {
            level.replace("warning", "warn")
        }
        other => {
            return Err(format!(
                "log level {other:?} is not one of error, warning, info, debug, trace"
            ))
        }
    };
    let handle = LOG_LEVEL
        .get()
        .ok_or("the agent's logging is not reloadable")?;
    handle
        .modify(|f| *f = tracing_subscriber::EnvFilter::new(&directive))
        .map_err(|e| format!("cannot change the log level: {e}"))
}

pub async fn run_cli(cmd: AgentCmd) -> Result<()> {
    match cmd {
        AgentCmd::Enroll {
            url,
            enrollment_token,
            tags,
            state,
        } => {
            let dir = StateDir::open(&state.state_dir)?;
            let identity = enroll(&dir, &url, &enrollment_token, &tags).await?;
            println!("enrolled as agent {}", identity.agent_id);
            Ok(())
        }
        AgentCmd::Run {
            url,
            enrollment_token,
            tags,
            max_checkins,
            state,
        } => {
            run(RunOptions {
                state_dir: state.state_dir,
                url,
                enrollment_token,
                tags,
                max_checkins,
            })
            .await
        }
        AgentCmd::Status { state } => {
            let status = read_status(&state.state_dir)?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_log_levels_are_checked() {
        assert!(set_log_level("loud").unwrap_err().contains("not one of"));
        init_tracing();
        assert_eq!(set_log_level("debug"), Ok(()));
        assert_eq!(set_log_level("warning"), Ok(()));
        assert!(tracing::enabled!(tracing::Level::WARN));
        assert!(!tracing::enabled!(tracing::Level::INFO));
    }
}
