//! `flotilla task`: the task manager's tasks.

use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use flotilla_api::tasks::{ScheduleTaskRequest, TaskIds, TaskSchedule};

use crate::render::{view, Columns, View};
use crate::{at, client, ClientOpts, PageArgs, TASKS};

#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// List tasks.
    List {
        /// Only tasks of this type.
        #[arg(long = "type")]
        task_type: Option<String>,
        /// Only tasks in this status.
        #[arg(long, value_parser = ["idle", "running", "failed"])]
        status: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one task.
    Show { id: String },
    /// Schedule a task (the same id again keeps the existing task).
    Schedule {
        /// The task type (`flotilla task list` shows the scheduled ones).
        #[arg(long = "type")]
        task_type: String,
        /// A caller-chosen id makes scheduling idempotent.
        #[arg(long)]
        id: Option<String>,
        /// Parameters, a JSON object.
        #[arg(long)]
        params: Option<String>,
        /// Run every interval (`30s`, `5m`, `1h`); once otherwise.
        #[arg(long)]
        every: Option<String>,
        /// Scheduled but not run until enabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Run tasks as soon as possible.
    Run {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Enable tasks.
    Enable {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Disable tasks: they are not run until enabled.
    Disable {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Delete tasks (their API keys are invalidated after the removal delay).
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// The task manager's health on the instance answering.
    Health,
}

const TASK_COLS: Columns = &[
    ("ID", "id"),
    ("TYPE", "taskType"),
    ("STATUS", "status"),
    ("ENABLED", "enabled"),
    ("EVERY", "schedule.interval"),
    ("RUN AT", "runAt"),
    ("ATTEMPTS", "attempts"),
    ("RUNS", "runs"),
    ("LAST ERROR", "lastError"),
];
const TASK_SHOW_COLS: Columns = &[
    ("ID", "id"),
    ("TYPE", "taskType"),
    ("STATUS", "status"),
    ("ENABLED", "enabled"),
    ("EVERY", "schedule.interval"),
    ("RUN AT", "runAt"),
    ("ATTEMPTS", "attempts"),
    ("RUNS", "runs"),
    ("LAST RUN", "lastRunAt"),
    ("LAST RUN MS", "lastRunDurationMs"),
    ("OWNER", "ownerId"),
    ("USER", "userScope.userName"),
    ("LAST ERROR", "lastError"),
];
const RESULT_COLS: Columns = &[("ID", "id"), ("SUCCESS", "success")];

/// A bulk answer as rows, or an error naming what failed.
fn bulk(answer: Value, verb: &str) -> Result<View> {
    let results = answer
        .get("results")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r["success"] != json!(true))
        .map(|r| {
            format!(
                "{}: {}",
                r["id"].as_str().unwrap_or_default(),
                r["error"].as_str().unwrap_or("failed")
            )
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} tasks could not be {verb} ({}); the others were",
            failed.len(),
            results.len(),
            failed.join("; ")
        );
    }
    Ok(view(json!({ "items": results }), RESULT_COLS))
}

pub(crate) async fn run(opts: &ClientOpts, cmd: TaskCmd) -> Result<View> {
    let c = client(opts)?;
    let tasks = format!("{TASKS}/tasks");
    Ok(match cmd {
        TaskCmd::List {
            task_type,
            status,
            page,
        } => {
            let mut q = page.query();
            if let Some(t) = task_type {
                q.push(("type", t));
            }
            if let Some(s) = status {
                q.push(("status", s));
            }
            view(c.get(&tasks, &q).await?, TASK_COLS)
        }
        TaskCmd::Show { id } => view(c.get(&at(&tasks, &id), &[]).await?, TASK_SHOW_COLS),
        TaskCmd::Schedule {
            task_type,
            id,
            params,
            every,
            disabled,
        } => {
            let params = match params {
                None => None,
                Some(p) => Some(
                    serde_json::from_str::<Value>(&p)
                        .map_err(|e| anyhow::anyhow!("--params is not JSON: {e}"))?,
                ),
            };
            let body = ScheduleTaskRequest {
                id,
                task_type,
                params,
                state: None,
                schedule: every.map(|interval| TaskSchedule { interval }),
                run_at: None,
                enabled: disabled.then_some(false),
            };
            view(c.post(&tasks, &body).await?, TASK_SHOW_COLS)
        }
        TaskCmd::Run { ids } => {
            let mut results = Vec::new();
            for id in &ids {
                match c
                    .post(&format!("{}/_run_soon", at(&tasks, id)), &json!({}))
                    .await
                {
                    Ok(_) => results.push(json!({"id": id, "success": true})),
                    Err(e) => {
                        results.push(json!({"id": id, "success": false, "error": e.to_string()}))
                    }
                }
            }
            bulk(json!({ "results": results }), "run")?
        }
        TaskCmd::Enable { ids } => bulk(
            c.post(&format!("{tasks}/_bulk_enable"), &TaskIds { ids })
                .await?,
            "enabled",
        )?,
        TaskCmd::Disable { ids } => bulk(
            c.post(&format!("{tasks}/_bulk_disable"), &TaskIds { ids })
                .await?,
            "disabled",
        )?,
        TaskCmd::Delete { ids } => bulk(
            c.post(&format!("{tasks}/_bulk_delete"), &TaskIds { ids })
                .await?,
            "deleted",
        )?,
        TaskCmd::Health => view(c.get(&format!("{TASKS}/_health"), &[]).await?, &[]),
    })
}
