//! The operator CLI: `flotilla <noun> <verb>`, a client of the management
//! API. Data goes to stdout (tables, or JSON with `--json`); errors are one
//! line on stderr and a non-zero exit, chosen by `main`.

mod client;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde_json::{json, Map, Value};

pub use client::Client;

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
    /// Enrollment tokens.
    Token(Noun<TokenCmd>),
    /// Enrolled agents.
    Agents(Noun<AgentsCmd>),
    /// Outputs: where agents send data.
    Output(Noun<OutputCmd>),
    /// Operator API keys.
    Apikey(Noun<ApikeyCmd>),
}

#[derive(Debug, Args)]
pub struct Noun<T: Subcommand> {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub verb: T,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Create an agent policy.
    Create {
        #[arg(long)]
        name: String,
        /// A chosen id (default: generated).
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Output id (default: the default output).
        #[arg(long)]
        output: Option<String>,
        /// Seconds without check-in before an agent is inactive.
        #[arg(long)]
        inactivity_timeout: Option<u64>,
    },
    /// List agent policies.
    List {
        /// Only policies whose name contains this.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one policy; `--full` shows it as agents receive it.
    Show {
        id: String,
        #[arg(long)]
        full: bool,
    },
    /// Change a policy.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        output: Option<String>,
        #[arg(long)]
        inactivity_timeout: Option<u64>,
    },
    /// Delete a policy with its integrations and enrollment tokens.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub enum IntegrationCmd {
    /// Add an integration to a policy.
    Add {
        #[arg(long)]
        policy: String,
        /// Catalogue package: system, nginx, log…
        #[arg(long)]
        package: String,
        /// Name (default: <package>-<policy>).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        /// A variable, `key=value`; the value is parsed as JSON when it can be
        /// (`paths=["/var/log/app.log"]`), else taken as a string. Repeatable.
        #[arg(long = "var", value_name = "KEY=VALUE")]
        vars: Vec<String>,
        /// Inputs as a JSON array (default: the integration's defaults).
        #[arg(long)]
        inputs: Option<String>,
    },
    /// List integrations.
    List {
        #[arg(long)]
        policy: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one integration.
    Show { id: String },
    /// Remove an integration from its policy.
    Remove { id: String },
    /// List the integrations the catalogue offers.
    Packages,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create an enrollment token for a policy (shown once).
    Create {
        #[arg(long)]
        policy: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// List enrollment tokens (secrets are never shown again).
    List {
        #[arg(long)]
        policy: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Revoke a token: it can no longer enrol agents.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCmd {
    /// List agents.
    List {
        #[arg(long)]
        policy: Option<String>,
        /// online, offline, inactive, error, degraded, enrolling, unenrolling, unenrolled
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// Include unenrolled agents.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one agent.
    Show { id: String },
    /// Unenrol an agent.
    Unenroll {
        id: String,
        /// At once, without waiting for the agent.
        #[arg(long)]
        revoke: bool,
    },
    /// Move an agent to another policy.
    Reassign {
        id: String,
        #[arg(long)]
        policy: String,
    },
    /// An agent's actions and whether it received and acknowledged them.
    Actions {
        id: String,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Change an agent's log level (a SETTINGS action).
    Settings {
        id: String,
        /// trace, debug, info, warning or error.
        #[arg(long)]
        log_level: String,
    },
    /// Replace an agent's tags.
    Tag {
        id: String,
        /// Comma-separated; empty clears.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutputCmd {
    /// Create an output.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        id: Option<String>,
        /// elasticsearch, logstash or kafka.
        #[arg(long = "type", default_value = "elasticsearch")]
        output_type: String,
        /// Repeatable.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Make it the default output.
        #[arg(long)]
        default: bool,
    },
    /// List outputs.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one output.
    Show { id: String },
    /// Change an output.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long)]
        default: bool,
    },
    /// Delete an output.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCmd {
    /// Create an operator API key (shown once).
    Create {
        #[arg(long)]
        name: String,
    },
    /// List operator API keys.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Revoke an operator API key.
    Revoke { id: String },
}

/// A view of the result: which fields to show as columns.
struct View {
    value: Value,
    columns: &'static [(&'static str, &'static str)],
}

const POLICY_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("NAMESPACE", "namespace"),
    ("REVISION", "revision"),
    ("OUTPUT", "output_id"),
];
const INTEGRATION_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("POLICY", "policy_id"),
    ("PACKAGE", "package.name"),
    ("VERSION", "package.version"),
    ("NAMESPACE", "namespace"),
];
const PACKAGE_COLS: &[(&str, &str)] = &[
    ("NAME", "name"),
    ("VERSION", "version"),
    ("TITLE", "title"),
    ("DESCRIPTION", "description"),
];
const TOKEN_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("POLICY", "policy_id"),
    ("ACTIVE", "active"),
    ("HINT", "hint"),
    ("CREATED", "created_at"),
];
const TOKEN_CREATED_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("POLICY", "policy_id"),
    ("TOKEN (shown once)", "api_key"),
];
const AGENT_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("STATUS", "status"),
    ("POLICY", "policy_id"),
    ("REVISION", "policy_revision"),
    ("TAGS", "tags"),
    ("LAST CHECK-IN", "last_checkin"),
];
const ACTION_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("TYPE", "type"),
    ("CREATED", "created_at"),
    ("DELIVERED", "delivered"),
    ("ACKED", "acked_at"),
    ("ERROR", "ack_error"),
];
const OUTPUT_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("TYPE", "type"),
    ("HOSTS", "hosts"),
    ("DEFAULT", "is_default"),
];
const APIKEY_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("ACTIVE", "active"),
    ("HINT", "hint"),
    ("CREATED", "created_at"),
];
const APIKEY_CREATED_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("API KEY (shown once)", "api_key"),
];
const DELETED_COLS: &[(&str, &str)] = &[("DELETED", "id")];

/// Run an operator command.
pub async fn run(command: Command) -> Result<()> {
    let (opts, view) = match command {
        Command::Policy(n) => (n.opts.clone(), policy(&n.opts, n.verb).await?),
        Command::Integration(n) => (n.opts.clone(), integration(&n.opts, n.verb).await?),
        Command::Token(n) => (n.opts.clone(), token(&n.opts, n.verb).await?),
        Command::Agents(n) => (n.opts.clone(), agents(&n.opts, n.verb).await?),
        Command::Output(n) => (n.opts.clone(), output(&n.opts, n.verb).await?),
        Command::Apikey(n) => (n.opts.clone(), apikey(&n.opts, n.verb).await?),
    };
    render(&view, opts.json);
    Ok(())
}

fn client(opts: &ClientOpts) -> Result<Client> {
    Client::new(&opts.url, opts.api_key.clone())
}

fn view(value: Value, columns: &'static [(&'static str, &'static str)]) -> View {
    View { value, columns }
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

fn insert_some(map: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), v.into());
    }
}

const POLICIES: &str = "/api/fleet/agent_policies";
const PACKAGE_POLICIES: &str = "/api/fleet/package_policies";
const TOKENS: &str = "/api/fleet/enrollment_api_keys";
const AGENTS: &str = "/api/fleet/agents";
const OUTPUTS: &str = "/api/fleet/outputs";
const APIKEYS: &str = "/api/flotilla/api_keys";

async fn policy(opts: &ClientOpts, cmd: PolicyCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        PolicyCmd::Create {
            name,
            id,
            namespace,
            description,
            output,
            inactivity_timeout,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), name.into());
            insert_some(&mut body, "id", id);
            insert_some(&mut body, "namespace", namespace);
            insert_some(&mut body, "description", description);
            insert_some(&mut body, "output_id", output);
            insert_some(&mut body, "inactivity_timeout", inactivity_timeout);
            view(c.post(POLICIES, &Value::Object(body)).await?, POLICY_COLS)
        }
        PolicyCmd::List { name, page } => {
            let mut q = page.query();
            if let Some(n) = name {
                q.push(("name", n));
            }
            view(c.get(POLICIES, &q).await?, POLICY_COLS)
        }
        PolicyCmd::Show { id, full } => {
            let path = if full {
                format!("{}/full", at(POLICIES, &id))
            } else {
                at(POLICIES, &id)
            };
            let value = c.get(&path, &[]).await?;
            // The full policy is a document, not a row: always JSON.
            if full {
                View {
                    value,
                    columns: &[],
                }
            } else {
                view(value, POLICY_COLS)
            }
        }
        PolicyCmd::Update {
            id,
            name,
            namespace,
            description,
            output,
            inactivity_timeout,
        } => {
            let mut body = Map::new();
            insert_some(&mut body, "name", name);
            insert_some(&mut body, "namespace", namespace);
            insert_some(&mut body, "description", description);
            insert_some(&mut body, "output_id", output);
            insert_some(&mut body, "inactivity_timeout", inactivity_timeout);
            if body.is_empty() {
                return Err(anyhow!("nothing to change: pass at least one of --name, --namespace, --description, --output, --inactivity-timeout"));
            }
            view(
                c.put(&at(POLICIES, &id), &Value::Object(body)).await?,
                POLICY_COLS,
            )
        }
        PolicyCmd::Delete { id } => view(c.delete(&at(POLICIES, &id)).await?, DELETED_COLS),
    })
}

fn parse_var(s: &str) -> Result<(String, Value)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("--var must be KEY=VALUE (got '{s}')"))?;
    if k.is_empty() {
        return Err(anyhow!("--var must be KEY=VALUE (got '{s}')"));
    }
    let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
    Ok((k.to_owned(), value))
}

async fn integration(opts: &ClientOpts, cmd: IntegrationCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        IntegrationCmd::Add {
            policy,
            package,
            name,
            namespace,
            vars,
            inputs,
        } => {
            let mut var_map = Map::new();
            for v in &vars {
                let (k, v) = parse_var(v)?;
                var_map.insert(k, v);
            }
            let mut body = Map::new();
            body.insert(
                "name".into(),
                name.unwrap_or_else(|| format!("{package}-{policy}")).into(),
            );
            body.insert("policy_id".into(), policy.into());
            body.insert("package".into(), json!({ "name": package }));
            body.insert("vars".into(), Value::Object(var_map));
            insert_some(&mut body, "namespace", namespace);
            if let Some(inputs) = inputs {
                let parsed: Value =
                    serde_json::from_str(&inputs).context("--inputs must be a JSON array")?;
                body.insert("inputs".into(), parsed);
            }
            view(
                c.post(PACKAGE_POLICIES, &Value::Object(body)).await?,
                INTEGRATION_COLS,
            )
        }
        IntegrationCmd::List { policy, page } => {
            let mut q = page.query();
            if let Some(p) = policy {
                q.push(("policy_id", p));
            }
            view(c.get(PACKAGE_POLICIES, &q).await?, INTEGRATION_COLS)
        }
        IntegrationCmd::Show { id } => view(
            c.get(&at(PACKAGE_POLICIES, &id), &[]).await?,
            INTEGRATION_COLS,
        ),
        IntegrationCmd::Remove { id } => {
            view(c.delete(&at(PACKAGE_POLICIES, &id)).await?, DELETED_COLS)
        }
        IntegrationCmd::Packages => {
            view(c.get("/api/fleet/epm/packages", &[]).await?, PACKAGE_COLS)
        }
    })
}

async fn token(opts: &ClientOpts, cmd: TokenCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        TokenCmd::Create { policy, name } => {
            let mut body = Map::new();
            body.insert("policy_id".into(), policy.into());
            insert_some(&mut body, "name", name);
            view(
                c.post(TOKENS, &Value::Object(body)).await?,
                TOKEN_CREATED_COLS,
            )
        }
        TokenCmd::List { policy, page } => {
            let mut q = page.query();
            if let Some(p) = policy {
                q.push(("policy_id", p));
            }
            view(c.get(TOKENS, &q).await?, TOKEN_COLS)
        }
        TokenCmd::Revoke { id } => view(c.delete(&at(TOKENS, &id)).await?, TOKEN_COLS),
    })
}

async fn agents(opts: &ClientOpts, cmd: AgentsCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        AgentsCmd::List {
            policy,
            status,
            tag,
            all,
            page,
        } => {
            let mut q = page.query();
            if let Some(p) = policy {
                q.push(("policy_id", p));
            }
            if let Some(s) = status {
                q.push(("status", s));
            }
            if let Some(t) = tag {
                q.push(("tag", t));
            }
            if all {
                q.push(("showInactive", "true".into()));
            }
            view(c.get(AGENTS, &q).await?, AGENT_COLS)
        }
        AgentsCmd::Show { id } => view(c.get(&at(AGENTS, &id), &[]).await?, AGENT_COLS),
        AgentsCmd::Unenroll { id, revoke } => view(
            c.post(
                &format!("{}/unenroll", at(AGENTS, &id)),
                &json!({ "revoke": revoke }),
            )
            .await?,
            AGENT_COLS,
        ),
        AgentsCmd::Reassign { id, policy } => view(
            c.post(
                &format!("{}/reassign", at(AGENTS, &id)),
                &json!({ "policy_id": policy }),
            )
            .await?,
            AGENT_COLS,
        ),
        AgentsCmd::Actions { id, page } => view(
            c.get(&format!("{}/actions", at(AGENTS, &id)), &page.query())
                .await?,
            ACTION_COLS,
        ),
        AgentsCmd::Settings { id, log_level } => view(
            c.post(
                &format!("{}/actions", at(AGENTS, &id)),
                &json!({ "action": { "type": "SETTINGS", "data": { "log_level": log_level } } }),
            )
            .await?,
            ACTION_COLS,
        ),
        AgentsCmd::Tag { id, tags } => {
            let tags: Vec<String> = tags.into_iter().filter(|t| !t.is_empty()).collect();
            view(
                c.put(&at(AGENTS, &id), &json!({ "tags": tags })).await?,
                AGENT_COLS,
            )
        }
    })
}

async fn output(opts: &ClientOpts, cmd: OutputCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        OutputCmd::Create {
            name,
            id,
            output_type,
            hosts,
            default,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), name.into());
            body.insert("type".into(), output_type.into());
            body.insert("hosts".into(), hosts.into());
            body.insert("is_default".into(), default.into());
            insert_some(&mut body, "id", id);
            view(c.post(OUTPUTS, &Value::Object(body)).await?, OUTPUT_COLS)
        }
        OutputCmd::List { page } => view(c.get(OUTPUTS, &page.query()).await?, OUTPUT_COLS),
        OutputCmd::Show { id } => view(c.get(&at(OUTPUTS, &id), &[]).await?, OUTPUT_COLS),
        OutputCmd::Update {
            id,
            name,
            hosts,
            default,
        } => {
            let mut body = Map::new();
            insert_some(&mut body, "name", name);
            if !hosts.is_empty() {
                body.insert("hosts".into(), hosts.into());
            }
            if default {
                body.insert("is_default".into(), true.into());
            }
            if body.is_empty() {
                return Err(anyhow!(
                    "nothing to change: pass at least one of --name, --host, --default"
                ));
            }
            view(
                c.put(&at(OUTPUTS, &id), &Value::Object(body)).await?,
                OUTPUT_COLS,
            )
        }
        OutputCmd::Delete { id } => view(c.delete(&at(OUTPUTS, &id)).await?, DELETED_COLS),
    })
}

async fn apikey(opts: &ClientOpts, cmd: ApikeyCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        ApikeyCmd::Create { name } => view(
            c.post(APIKEYS, &json!({ "name": name })).await?,
            APIKEY_CREATED_COLS,
        ),
        ApikeyCmd::List { page } => view(c.get(APIKEYS, &page.query()).await?, APIKEY_COLS),
        ApikeyCmd::Revoke { id } => view(c.delete(&at(APIKEYS, &id)).await?, APIKEY_COLS),
    })
}

/// The rows of a response: `items` of a list, `item` of one, or the body.
fn rows(value: &Value) -> Vec<&Value> {
    if let Some(items) = value.get("items").and_then(Value::as_array) {
        items.iter().collect()
    } else if let Some(item) = value.get("item") {
        vec![item]
    } else {
        vec![value]
    }
}

fn cell(row: &Value, path: &str) -> String {
    let mut cur = row;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// Print to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|_| out.flush());
}

fn render(view: &View, json: bool) {
    if json || view.columns.is_empty() {
        let out = match view.value.get("item") {
            Some(item) if view.value.get("items").is_none() => item,
            _ => &view.value,
        };
        emit(&serde_json::to_string_pretty(out).unwrap_or_default());
        return;
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(view.columns.iter().map(|(h, _)| *h));
    for row in rows(&view.value) {
        table.add_row(view.columns.iter().map(|(_, path)| cell(row, path)));
    }
    emit(&table.to_string());
    if let (Some(total), Some(items)) = (
        view.value.get("total"),
        view.value.get("items").and_then(Value::as_array),
    ) {
        let page = view.value.get("page").and_then(Value::as_u64).unwrap_or(1);
        eprintln!("{} of {} (page {page})", items.len(), total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_parse_as_json_or_string() {
        assert_eq!(
            parse_var("paths=[\"/a\"]").unwrap(),
            ("paths".into(), json!(["/a"]))
        );
        assert_eq!(
            parse_var("dataset=myapp").unwrap(),
            ("dataset".into(), json!("myapp"))
        );
        assert!(parse_var("novalue").is_err());
        assert!(parse_var("=x").is_err());
    }

    #[test]
    fn cells_follow_paths_and_join_lists() {
        let row = json!({"package": {"name": "nginx"}, "hosts": ["a", "b"], "n": null});
        assert_eq!(cell(&row, "package.name"), "nginx");
        assert_eq!(cell(&row, "hosts"), "a, b");
        assert_eq!(cell(&row, "n"), "");
        assert_eq!(cell(&row, "missing.x"), "");
    }

    #[test]
    fn ids_are_percent_encoded_in_paths() {
        assert_eq!(at("/x", "a b/c"), "/x/a%20b%2Fc");
    }
}
