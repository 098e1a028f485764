//! `flotilla loadgen`: simulated agents against a running fleet server,
//! over the real fleet API, and what they measure — enrolments per second,
//! memory per held long poll, how fast a policy change reaches the whole
//! fleet, check-ins per second, and the same against a minimal long-poll
//! server for comparison.
//!
//! The agents enrol with a token, check in (long poll), ack each action a
//! check-in returns, back off on 429/503 honouring `Retry-After`, and loop,
//! as Elastic agents do.

mod agent;
mod baseline;
mod bench;
mod client;
mod ips;
mod multi;
mod overload;
mod retry;
mod scenarios;
pub mod stats;
pub mod summary;
mod sys;

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

pub use ips::parse_source_ips;
pub use retry::{backoff, parse_retry_after};
pub use summary::{Figure, Summary};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// N enrolments at --concurrency: enrolments/s, p50/p99, rate per tenth.
    Enroll,
    /// N agents waiting in long polls: server RSS per agent, idle CPU.
    Hold,
    /// N waiting agents, then an integration added to their policy: time
    /// until 50/99/100 % received the new revision, and until all acked.
    Fanout,
    /// Short polls (the server's default poll; start it short): check-ins/s.
    Churn,
    /// hold + churn against a minimal hyper long-poll server (and against
    /// the server at --url when --server-pid is given): ratios.
    Baseline,
    /// N agents against a server sized for fewer (e.g. N/2): admitted and
    /// refused (Retry-After honoured) for --duration, whether admitted
    /// agents kept being served, healthz failures; then as many admitted
    /// agents leave as were kept out: time until all the rest are served.
    Overload,
    /// N agents waiting drop their connections and reconnect at once: time
    /// until all wait again, refusals, errors.
    Storm,
    /// The baseline server itself (run by `baseline`).
    #[value(hide = true)]
    BaselineServer,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Enroll => "enroll",
            Scenario::Hold => "hold",
            Scenario::Fanout => "fanout",
            Scenario::Churn => "churn",
            Scenario::Baseline => "baseline",
            Scenario::Overload => "overload",
            Scenario::Storm => "storm",
            Scenario::BaselineServer => "baseline-server",
        }
    }
}

/// A `--source-ips` value.
#[derive(Debug, Clone)]
pub struct SourceIps(pub Vec<IpAddr>);

fn source_ips(s: &str) -> Result<SourceIps, String> {
    parse_source_ips(s).map(SourceIps)
}

#[derive(Debug, Clone, Args)]
pub struct LoadgenArgs {
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// The server's base URL; with --processes, several separated by
    /// commas (instances sharing one database: the processes are spread
    /// over them, the run's policy is made on the first).
    #[arg(long, default_value = "http://127.0.0.1:8220")]
    pub url: String,
    /// Operator key: creates the run's policy and enrollment token, and
    /// (fanout) adds the integration.
    #[arg(long, env = "FLOTILLA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Agents to simulate.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Enrolments in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// The long poll the agents ask for (`poll_timeout`); the server holds
    /// max(1m, min(T - 2m, 1h)). Default 10m; churn sends none, so the
    /// server's `fleet.poll_timeout` applies.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub poll_timeout: Option<Duration>,
    /// Local addresses to bind client sockets to, e.g.
    /// `127.0.0.1-127.0.0.16` (one HTTP client per address).
    #[arg(long, value_parser = source_ips)]
    pub source_ips: Option<SourceIps>,
    /// The summary as one JSON object (default: one line of figures).
    #[arg(long)]
    pub json: bool,
    /// Size of each agent's `local_metadata`.
    #[arg(long, default_value_t = 4096)]
    pub metadata_bytes: usize,
    /// The server's process id, for its RSS and CPU time (hold, baseline).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// How long churn counts check-ins, and hold measures idle CPU.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// The longest wait for the fleet to enrol, to be waiting, or (fanout)
    /// to have acked.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300s")]
    pub timeout: Duration,
    /// Enrol with this token instead of creating a policy and a token.
    #[arg(long)]
    pub enrollment_token: Option<String>,
    /// The policy the token enrols in (needed with --enrollment-token for
    /// fanout).
    #[arg(long)]
    pub policy_id: Option<String>,
    /// The package fanout adds an integration of.
    #[arg(long, default_value = "system")]
    pub package: String,
    /// The user agent the simulated agents send.
    #[arg(long, default_value = "Elastic Agent 9.1.0")]
    pub user_agent: String,
    /// Spread the agents over this many processes (each a share; the
    /// summaries are aggregated).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Internal (multi-process runs): wait on stdin for `go` before the
    /// measured step, after printing `ready`.
    #[arg(long, hide = true)]
    pub child: bool,
    /// Internal: waiting long polls to expect on the server in all.
    #[arg(long, hide = true)]
    pub expect_waiting: Option<usize>,
    /// baseline-server: the address to listen on.
    #[arg(long, hide = true, default_value = "127.0.0.1:0")]
    pub listen: String,
}

impl LoadgenArgs {
    /// The `--url`s.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn ips(&self) -> Vec<IpAddr> {
        self.source_ips.clone().map(|s| s.0).unwrap_or_default()
    }
}

/// Runs a scenario; the summary line goes to stdout.
pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let limit = sys::raise_fd_limit();
    if args.scenario == Scenario::BaselineServer {
        let poll = args.poll_timeout.unwrap_or(Duration::from_secs(1));
        return baseline::serve(&args.listen, poll).await;
    }
    if args.agents == 0 {
        anyhow::bail!("--agents must be at least 1");
    }
    let urls = args.urls();
    if urls.is_empty() {
        anyhow::bail!("--url must name a server");
    }
    if urls.len() > 1 && args.processes < urls.len() {
        anyhow::bail!(
            "{} servers in --url need --processes {} or more (a process talks to one)",
            urls.len(),
            urls.len()
        );
    }
    if args.processes > 1 {
        let summary = multi::run(&args).await?;
        print_summary(&summary, args.json);
        return Ok(());
    }
    if let Some(line) = sys::fd_shortfall(limit, args.agents as u64) {
        eprintln!("{line}");
    }
    let summary = scenarios::run(&args).await?;
    print_summary(&summary, args.json);
    Ok(())
}

fn print_summary(summary: &Summary, json: bool) {
    if json {
        println!("{}", summary.json());
    } else {
        println!("{}", summary.human_line());
    }
}
