//! `flotilla token`: enrollment tokens.

use anyhow::Result;
use clap::Subcommand;

use flotilla_api::management::CreateEnrollmentKey;

use crate::render::{view, Columns, View};
use crate::{at, client, ClientOpts, PageArgs, TOKENS};

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

const TOKEN_COLS: Columns = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("POLICY", "policy_id"),
    ("ACTIVE", "active"),
    ("HINT", "hint"),
    ("CREATED", "created_at"),
];
const TOKEN_CREATED_COLS: Columns = &[
    ("ID", "id"),
    ("POLICY", "policy_id"),
    ("TOKEN (shown once)", "api_key"),
];

pub(crate) async fn run(opts: &ClientOpts, cmd: TokenCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        TokenCmd::Create { policy, name } => {
            let body = CreateEnrollmentKey {
                policy_id: policy,
                name,
            };
            view(c.post(TOKENS, &body).await?, TOKEN_CREATED_COLS)
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
