//! The operator CLI: `flotilla <noun> <verb>`, a client of the management
//! API. Data goes to stdout (tables, or JSON with `--json`); errors are one
//! line on stderr and a non-zero exit, chosen by `main`.

#![warn(unreachable_pub)]

mod actions;
mod agents;
mod apikey;
mod client;
mod connector;
mod data;
mod integration;
mod output;
mod package;
mod policy;
mod render;
mod task;
mod token;

use anyhow::Result;
use clap::{Args, Subcommand};

pub use actions::ActionsCmd;
pub use agents::AgentsCmd;
pub use apikey::ApikeyCmd;
pub use client::Client;
pub use connector::ConnectorCmd;
pub use data::DataCmd;
pub use integration::IntegrationCmd;
pub use output::OutputCmd;
pub use package::PackageCmd;
pub use policy::PolicyCmd;
pub use task::TaskCmd;
pub use token::TokenCmd;

/// Where the server is and how to authenticate; on every operator command.
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// The server's URL.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_URL",
        default_value = "http://127.0.0.1:8220"
    )]
    pub url: String,
    /// An operator API key.
    #[arg(long, global = true, env = "FLOTILLA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PageArgs {
    #[arg(long, default_value_t = 1)]
    pub page: u32,
    #[arg(long, default_value_t = 20)]
    pub per_page: u32,
}

impl PageArgs {
    fn query(&self) -> Vec<(&'static str, String)> {
        vec![
            ("page", self.page.to_string()),
            ("perPage", self.per_page.to_string()),
        ]
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Agent policies.
    Policy(Noun<PolicyCmd>),
    /// Integrations (package policies) on agent policies.
    Integration(Noun<IntegrationCmd>),
    /// Installed packages (Elastic's package format).
    Package(Noun<PackageCmd>),
    /// The embedded output's data streams: list, search, tail.
    Data(Noun<DataCmd>),
    /// Enrollment tokens.
    Token(Noun<TokenCmd>),
    /// Enrolled agents.
    Agents(Noun<AgentsCmd>),
    /// Actions sent to agents (bulk ones too) and their progress.
    Actions(Noun<ActionsCmd>),
    /// Outputs: where agents send data.
    Output(Noun<OutputCmd>),
    /// Cloud connectors: cloud accounts' credentials and their permission checks.
    Connector(Noun<ConnectorCmd>),
    /// Operator API keys.
    Apikey(Noun<ApikeyCmd>),
    /// Background tasks: list, schedule, run, enable, disable, delete.
    Task(Noun<TaskCmd>),
}

#[derive(Debug, Args)]
pub struct Noun<T: Subcommand> {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub verb: T,
}

/// Run an operator command.
pub async fn run(command: Command) -> Result<()> {
    let (opts, view) = match command {
        Command::Policy(n) => (n.opts.clone(), policy::run(&n.opts, n.verb).await?),
        Command::Integration(n) => (n.opts.clone(), integration::run(&n.opts, n.verb).await?),
        Command::Package(n) => (n.opts.clone(), package::run(&n.opts, n.verb).await?),
        Command::Data(n) => (n.opts.clone(), data::run(&n.opts, n.verb).await?),
        Command::Token(n) => (n.opts.clone(), token::run(&n.opts, n.verb).await?),
        Command::Agents(n) => (n.opts.clone(), agents::run(&n.opts, n.verb).await?),
        Command::Actions(n) => (n.opts.clone(), actions::run(&n.opts, n.verb).await?),
        Command::Output(n) => (n.opts.clone(), output::run(&n.opts, n.verb).await?),
        Command::Connector(n) => (n.opts.clone(), connector::run(&n.opts, n.verb).await?),
        Command::Apikey(n) => (n.opts.clone(), apikey::run(&n.opts, n.verb).await?),
        Command::Task(n) => (n.opts.clone(), task::run(&n.opts, n.verb).await?),
    };
    render::render(&view, opts.json);
    Ok(())
}

fn client(opts: &ClientOpts) -> Result<Client> {
    Client::new(&opts.url, opts.api_key.clone())
}

/// `/path/{id}` with the id percent-encoded.
fn at(base: &str, id: &str) -> String {
    let encoded: String = id
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{base}/{encoded}")
}

const POLICIES: &str = "/api/fleet/agent_policies";
const PACKAGE_POLICIES: &str = "/api/fleet/package_policies";
const TOKENS: &str = "/api/fleet/enrollment_api_keys";
const AGENTS: &str = "/api/fleet/agents";
const ACTION_STATUS: &str = "/api/fleet/agents/action_status";
const OUTPUTS: &str = "/api/fleet/outputs";
const CONNECTORS: &str = "/api/fleet/cloud_connectors";
const APIKEYS: &str = "/api/flotilla/api_keys";
const TASKS: &str = "/api/task_manager";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_percent_encoded_in_paths() {
        assert_eq!(at("/x", "a b/c"), "/x/a%20b%2Fc");
    }
}
