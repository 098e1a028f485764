//! `flotilla apikey`: operator API keys.

use anyhow::Result;
use clap::Subcommand;

use flotilla_api::management::CreateOperatorKey;

use crate::render::{view, Columns, View};
use crate::{at, client, ClientOpts, PageArgs, APIKEYS};

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

const APIKEY_COLS: Columns = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("ACTIVE", "active"),
    ("HINT", "hint"),
    ("CREATED", "created_at"),
];
const APIKEY_CREATED_COLS: Columns = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("API KEY (shown once)", "api_key"),
];

pub(crate) async fn run(opts: &ClientOpts, cmd: ApikeyCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        ApikeyCmd::Create { name } => view(
            c.post(APIKEYS, &CreateOperatorKey { name }).await?,
            APIKEY_CREATED_COLS,
        ),
        ApikeyCmd::List { page } => view(c.get(APIKEYS, &page.query()).await?, APIKEY_COLS),
        ApikeyCmd::Revoke { id } => view(c.delete(&at(APIKEYS, &id)).await?, APIKEY_COLS),
    })
}
