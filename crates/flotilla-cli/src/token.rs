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
        /// Expire this long from now (`24h`, `7days`, `30m`).
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "expires_at")]
        expires_in: Option<std::time::Duration>,
        /// Expire at this time (RFC 3339, `2026-12-31T00:00:00Z`).
        #[arg(long)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        /// Enrol at most this many agents.
        #[arg(long)]
        max_uses: Option<u64>,
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
    ("EXPIRES", "expiration"),
    ("USES", "uses"),
    ("MAX USES", "max_uses"),
];
const TOKEN_CREATED_COLS: Columns = &[
    ("ID", "id"),
    ("POLICY", "policy_id"),
    ("TOKEN (shown once)", "api_key"),
];

pub(crate) async fn run(opts: &ClientOpts, cmd: TokenCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        TokenCmd::Create {
            policy,
            name,
            expires_in,
            expires_at,
            max_uses,
        } => {
            let expiration = match (expires_in, expires_at) {
                (Some(d), _) => Some(
                    chrono::Utc::now()
                        + chrono::Duration::from_std(d)
                            .map_err(|_| anyhow::anyhow!("--expires-in is too long"))?,
                ),
                (None, at) => at,
            };
            let body = CreateEnrollmentKey {
                policy_id: policy,
                name,
                expiration,
                max_uses,
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
