//! `flotilla policy`: agent policies.

use anyhow::{anyhow, Result};
use clap::Subcommand;

use flotilla_api::management::{CreateAgentPolicy, UpdateAgentPolicy};

use crate::render::{view, Columns, View, DELETED_COLS};
use crate::{at, client, ClientOpts, PageArgs, POLICIES};

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

const POLICY_COLS: Columns = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("NAMESPACE", "namespace"),
    ("REVISION", "revision"),
    ("OUTPUT", "output_id"),
];

pub(crate) async fn run(opts: &ClientOpts, cmd: PolicyCmd) -> Result<View> {
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
            let body = CreateAgentPolicy {
                id,
                name,
                namespace,
                description,
                output_id: output,
                inactivity_timeout,
            };
            view(c.post(POLICIES, &body).await?, POLICY_COLS)
        }
        PolicyCmd::List { name, page } => {
            let mut q = page.query();
            if let Some(n) = name {
                q.push(("name", n));
            }
            view(c.get(POLICIES, &q).await?, POLICY_COLS)
        }
        PolicyCmd::Show { id, full } => {
            if full {
                // The full policy is a document, not a row: always JSON.
                let value = c.get(&format!("{}/full", at(POLICIES, &id)), &[]).await?;
                view(value, &[])
            } else {
                view(c.get(&at(POLICIES, &id), &[]).await?, POLICY_COLS)
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
            let body = UpdateAgentPolicy {
                name,
                namespace,
                description: description.map(Some),
                output_id: output.map(Some),
                inactivity_timeout,
            };
            if body.name.is_none()
                && body.namespace.is_none()
                && body.description.is_none()
                && body.output_id.is_none()
                && body.inactivity_timeout.is_none()
            {
                return Err(anyhow!("nothing to change: pass at least one of --name, --namespace, --description, --output, --inactivity-timeout"));
            }
            view(c.put(&at(POLICIES, &id), &body).await?, POLICY_COLS)
        }
        PolicyCmd::Delete { id } => view(c.delete(&at(POLICIES, &id)).await?, DELETED_COLS),
    })
}
