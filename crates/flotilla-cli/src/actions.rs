//! `flotilla actions`: actions sent to agents and their progress
//! (delivered, acknowledged, failed, pending per agent).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use crate::render::{view, Columns, View};
use crate::{at, client, Client, ClientOpts, PageArgs, ACTION_STATUS};

#[derive(Debug, Subcommand)]
pub enum ActionsCmd {
    /// Actions, newest first, with their progress.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// One action's progress and its agents' outcomes (a page of them).
    Show {
        id: String,
        #[command(flatten)]
        page: PageArgs,
        /// Follow the progress on stderr until every agent answered.
        #[arg(long)]
        wait: bool,
    },
}

const PROGRESS_COLS: Columns = &[
    ("ID", "actionId"),
    ("TYPE", "type"),
    ("STATUS", "status"),
    ("AGENTS", "nbAgentsActionCreated"),
    ("DELIVERED", "nbAgentsDelivered"),
    ("ACKED", "nbAgentsAck"),
    ("FAILED", "nbAgentsFailed"),
    ("PENDING", "nbAgentsPending"),
    ("CREATED", "creationTime"),
];

const TARGET_COLS: Columns = &[
    ("AGENT", "agent_id"),
    ("OUTCOME", "outcome"),
    ("ACKED", "acked_at"),
    ("ERROR", "error"),
];

pub(crate) async fn run(opts: &ClientOpts, cmd: ActionsCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        ActionsCmd::List { page } => {
            view(c.get(ACTION_STATUS, &page.query()).await?, PROGRESS_COLS)
        }
        ActionsCmd::Show { id, page, wait } => {
            if wait {
                follow(&c, &id).await?;
            }
            let progress = c.get(&at(ACTION_STATUS, &id), &[]).await?;
            let agents = c
                .get(&format!("{}/agents", at(ACTION_STATUS, &id)), &page.query())
                .await?;
            if opts.json {
                view(
                    serde_json::json!({"action": progress["item"], "agents": agents}),
                    &[],
                )
            } else {
                crate::render::render(&view(progress, PROGRESS_COLS), false);
                view(agents, TARGET_COLS)
            }
        }
    })
}

/// Poll the action until every agent answered (or it expired), a line of
/// progress on stderr each time it changes.
pub(crate) async fn follow(c: &Client, id: &str) -> Result<()> {
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let p = c.get(&at(ACTION_STATUS, id), &[]).await?;
        let item = &p["item"];
        let n = |k: &str| item.get(k).and_then(Value::as_u64).unwrap_or(0);
        let status = item.get("status").and_then(Value::as_str).unwrap_or("");
        let line = format!(
            "{status}: {} agents, {} delivered, {} acked, {} failed, {} pending",
            n("nbAgentsActionCreated"),
            n("nbAgentsDelivered"),
            n("nbAgentsAck"),
            n("nbAgentsFailed"),
            n("nbAgentsPending"),
        );
        if line != last {
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            last = line;
        }
        if status != "IN_PROGRESS" {
            if tty {
                eprintln!();
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
