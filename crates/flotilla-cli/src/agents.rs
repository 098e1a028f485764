//! `flotilla agents`: enrolled agents and the actions sent to them.

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use flotilla_api::management::{
    ActionRequest, AgentSelection, BulkReassign, BulkSettings, BulkUnenroll, BulkUpdateTags,
    CreateAction, ReassignAgent, UnenrollAgent, UpdateAgent,
};
use flotilla_domain::action::ActionType;
use flotilla_domain::agent::AgentStatus;

use crate::render::{view, Columns, View};
use crate::{at, client, ClientOpts, PageArgs, AGENTS};

/// An agent's status, as `--status` takes it.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Online,
    Offline,
    Inactive,
    Error,
    Degraded,
    Enrolling,
    Unenrolling,
    Unenrolled,
}

impl StatusArg {
    fn status(self) -> AgentStatus {
        match self {
            StatusArg::Online => AgentStatus::Online,
            StatusArg::Offline => AgentStatus::Offline,
            StatusArg::Inactive => AgentStatus::Inactive,
            StatusArg::Error => AgentStatus::Error,
            StatusArg::Degraded => AgentStatus::Degraded,
            StatusArg::Enrolling => AgentStatus::Enrolling,
            StatusArg::Unenrolling => AgentStatus::Unenrolling,
            StatusArg::Unenrolled => AgentStatus::Unenrolled,
        }
    }
}

/// An agent's log level, as `--log-level` takes it.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
}

impl LogLevel {
    fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AgentsCmd {
    /// List agents.
    List {
        #[arg(long)]
        policy: Option<String>,
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        #[arg(long)]
        tag: Option<String>,
        /// Agents this enrollment token (its id) enrolled.
        #[arg(long)]
        token: Option<String>,
        /// A KQL query: `status:offline and policy_id:web and tags:prod`.
        #[arg(long)]
        kuery: Option<String>,
        /// Include unenrolled agents.
        #[arg(long)]
        all: bool,
        /// Order by: enrolled_at (default), last_checkin, hostname, status,
        /// policy_id, policy_revision, version.
        #[arg(long)]
        sort: Option<String>,
        /// Sort direction.
        #[arg(long, value_parser = ["asc", "desc"])]
        order: Option<String>,
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
        #[arg(long, value_enum)]
        log_level: LogLevel,
    },
    /// Replace an agent's tags.
    Tag {
        id: String,
        /// Comma-separated; empty clears.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
    },
    /// Move many agents to a policy; prints the action id (follow it with
    /// `flotilla actions show`).
    BulkReassign {
        #[command(flatten)]
        select: Selection,
        #[arg(long)]
        policy: String,
    },
    /// Unenrol many agents.
    BulkUnenroll {
        #[command(flatten)]
        select: Selection,
        /// At once, without waiting for the agents.
        #[arg(long)]
        revoke: bool,
    },
    /// Add and remove tags on many agents.
    BulkTags {
        #[command(flatten)]
        select: Selection,
        /// Tags to add, comma-separated.
        #[arg(long, value_delimiter = ',')]
        add: Vec<String>,
        /// Tags to remove, comma-separated.
        #[arg(long, value_delimiter = ',')]
        remove: Vec<String>,
    },
    /// Change many agents' log level (SETTINGS actions).
    BulkSettings {
        #[command(flatten)]
        select: Selection,
        #[arg(long, value_enum)]
        log_level: LogLevel,
    },
}

/// Which agents a bulk command takes: `--ids` or `--kuery`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Selection {
    /// Agent ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    ids: Vec<String>,
    /// A KQL query selecting the agents: `policy_id:web and tags:prod`.
    #[arg(long)]
    kuery: Option<String>,
    /// Follow the action's progress on stderr until every agent answered.
    #[arg(long, global = false)]
    wait: bool,
}

impl Selection {
    fn agents(&self) -> AgentSelection {
        match &self.kuery {
            Some(k) => AgentSelection::Kuery(k.clone()),
            None => {
                AgentSelection::Ids(self.ids.iter().filter(|i| !i.is_empty()).cloned().collect())
            }
        }
    }
}

const BULK_COLS: Columns = &[("ACTION", "actionId")];

const AGENT_COLS: Columns = &[
    ("ID", "id"),
    ("STATUS", "status"),
    ("POLICY", "policy_id"),
    ("REVISION", "policy_revision"),
    ("TAGS", "tags"),
    ("LAST CHECK-IN", "last_checkin"),
    ("TOKEN", "enrollment_api_key_id"),
];
/// One agent: also what failed (a policy change it could not apply, an
/// output key its cluster could not mint).
const AGENT_SHOW_COLS: Columns = &[
    ("ID", "id"),
    ("STATUS", "status"),
    ("POLICY", "policy_id"),
    ("REVISION", "policy_revision"),
    ("RUNS", "reported_policy_revision"),
    ("FAILED REVISION", "policy_change_failure.revision"),
    ("FAILURE", "policy_change_failure.message"),
    ("KEY ERROR", "output_key_error"),
    ("LAST CHECK-IN", "last_checkin"),
    ("ENROLLED WITH", "enrollment_api_key_id"),
    ("INPUTS", "inputs"),
];

/// The table shows each reported component (input) as
/// `id: STATUS (message)`; `--json` keeps `components` as reported.
fn with_inputs(mut v: Value) -> Value {
    let lines: Vec<Value> = v
        .pointer("/item/components")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let field = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
                    Value::String(format!(
                        "{}: {} ({})",
                        field("id"),
                        field("status"),
                        field("message")
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(item) = v.get_mut("item").and_then(Value::as_object_mut) {
        item.insert("inputs".into(), Value::Array(lines));
    }
    v
}
const ACTION_COLS: Columns = &[
    ("ID", "id"),
    ("TYPE", "type"),
    ("CREATED", "created_at"),
    ("DELIVERED", "delivered"),
    ("ACKED", "acked_at"),
    ("ERROR", "ack_error"),
];

pub(crate) async fn run(opts: &ClientOpts, cmd: AgentsCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        AgentsCmd::List {
            policy,
            status,
            tag,
            token,
            kuery,
            all,
            sort,
            order,
            page,
        } => {
            let mut q = page.query();
            if let Some(p) = policy {
                q.push(("policy_id", p));
            }
            if let Some(s) = status {
                q.push(("status", s.status().as_str().to_owned()));
            }
            if let Some(t) = tag {
                q.push(("tag", t));
            }
            if let Some(t) = token {
                q.push(("enrollment_api_key_id", t));
            }
            if let Some(k) = kuery {
                q.push(("kuery", k));
            }
            if all {
                q.push(("showInactive", "true".into()));
            }
            if let Some(f) = sort {
                q.push(("sortField", f));
            }
            if let Some(o) = order {
                q.push(("sortOrder", o));
            }
            view(c.get(AGENTS, &q).await?, AGENT_COLS)
        }
        AgentsCmd::Show { id } => view(
            with_inputs(c.get(&at(AGENTS, &id), &[]).await?),
            AGENT_SHOW_COLS,
        ),
        AgentsCmd::Unenroll { id, revoke } => view(
            c.post(
                &format!("{}/unenroll", at(AGENTS, &id)),
                &UnenrollAgent { revoke },
            )
            .await?,
            AGENT_COLS,
        ),
        AgentsCmd::Reassign { id, policy } => view(
            c.post(
                &format!("{}/reassign", at(AGENTS, &id)),
                &ReassignAgent { policy_id: policy },
            )
            .await?,
            AGENT_COLS,
        ),
        AgentsCmd::Actions { id, page } => view(
            c.get(&format!("{}/actions", at(AGENTS, &id)), &page.query())
                .await?,
            ACTION_COLS,
        ),
        AgentsCmd::Settings { id, log_level } => {
            let body = CreateAction {
                action: ActionRequest {
                    action_type: ActionType::Settings,
                    data: serde_json::json!({ "log_level": log_level.as_str() }),
                    expiration: None,
                },
            };
            view(
                c.post(&format!("{}/actions", at(AGENTS, &id)), &body)
                    .await?,
                ACTION_COLS,
            )
        }
        AgentsCmd::BulkReassign { select, policy } => {
            let body = BulkReassign {
                agents: select.agents(),
                policy_id: policy,
            };
            bulk(&c, "bulk_reassign", &body, select.wait).await?
        }
        AgentsCmd::BulkUnenroll { select, revoke } => {
            let body = BulkUnenroll {
                agents: select.agents(),
                revoke,
            };
            bulk(&c, "bulk_unenroll", &body, select.wait).await?
        }
        AgentsCmd::BulkTags {
            select,
            add,
            remove,
        } => {
            let body = BulkUpdateTags {
                agents: select.agents(),
                tags_to_add: add.into_iter().filter(|t| !t.is_empty()).collect(),
                tags_to_remove: remove.into_iter().filter(|t| !t.is_empty()).collect(),
            };
            bulk(&c, "bulk_update_agent_tags", &body, select.wait).await?
        }
        AgentsCmd::BulkSettings { select, log_level } => {
            let body = BulkSettings {
                agents: select.agents(),
                log_level: log_level.as_str().to_owned(),
            };
            bulk(&c, "bulk_settings", &body, select.wait).await?
        }
        AgentsCmd::Tag { id, tags } => {
            let tags: Vec<String> = tags.into_iter().filter(|t| !t.is_empty()).collect();
            view(
                c.put(&at(AGENTS, &id), &UpdateAgent { tags }).await?,
                AGENT_COLS,
            )
        }
    })
}

/// Post a bulk action; with `wait`, follow its progress on stderr.
async fn bulk<B: serde::Serialize>(
    c: &crate::Client,
    route: &str,
    body: &B,
    wait: bool,
) -> Result<View> {
    let created = c.post(&format!("{AGENTS}/{route}"), body).await?;
    if wait {
        if let Some(id) = created.get("actionId").and_then(Value::as_str) {
            crate::actions::follow(c, id).await?;
        }
    }
    Ok(view(created, BULK_COLS))
}
