//! `flotilla connector`: cloud connectors, the credentials cloud
//! integrations collect with, and their permission verification.

use std::io::BufRead;

use anyhow::{anyhow, Context, Result};
use clap::{Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

use flotilla_api::connectors::{CreateCloudConnector, UpdateCloudConnector};
use flotilla_domain::connector::{AccountType, CloudProvider};

use crate::render::{view, Columns, View, DELETED_COLS};
use crate::{at, client, ClientOpts, PageArgs, CONNECTORS};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProviderArg {
    Aws,
    Azure,
    Gcp,
}

impl From<ProviderArg> for CloudProvider {
    fn from(p: ProviderArg) -> Self {
        match p {
            ProviderArg::Aws => CloudProvider::Aws,
            ProviderArg::Azure => CloudProvider::Azure,
            ProviderArg::Gcp => CloudProvider::Gcp,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AccountTypeArg {
    SingleAccount,
    OrganizationAccount,
}

impl From<AccountTypeArg> for AccountType {
    fn from(a: AccountTypeArg) -> Self {
        match a {
            AccountTypeArg::SingleAccount => AccountType::SingleAccount,
            AccountTypeArg::OrganizationAccount => AccountType::OrganizationAccount,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ConnectorCmd {
    /// Create a connector. Plain variables with --var; secrets with
    /// --secret NAME (one line of stdin each, in order) or NAME=@FILE —
    /// never on the command line.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        id: Option<String>,
        #[arg(long, value_enum)]
        provider: ProviderArg,
        #[arg(long, value_enum)]
        account_type: Option<AccountTypeArg>,
        /// NAME=VALUE, repeatable (e.g. role_arn=arn:aws:iam::…:role/x).
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
        /// NAME or NAME=@FILE, repeatable (e.g. external_id).
        #[arg(long = "secret", value_name = "NAME[=@FILE]")]
        secrets: Vec<String>,
    },
    /// List connectors.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show a connector and the latest result of each permission.
    Show { id: String },
    /// Change a connector's name or variables (NAME= removes one).
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum)]
        account_type: Option<AccountTypeArg>,
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
        #[arg(long = "secret", value_name = "NAME[=@FILE]")]
        secrets: Vec<String>,
    },
    /// Delete a connector (refused while an integration uses it).
    Delete { id: String },
    /// Verify the connector's permissions again now.
    Verify { id: String },
}

const CONNECTOR_COLS: Columns = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("PROVIDER", "cloudProvider"),
    ("INTEGRATIONS", "packagePolicyCount"),
    ("STATUS", "verification_status"),
    ("STARTED", "verification_started_at"),
    ("FAILED", "verification_failed_at"),
];

const DETAIL_COLS: Columns = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("PROVIDER", "cloudProvider"),
    ("STATUS", "verification_status"),
    ("STARTED", "verification_started_at"),
    ("MESSAGE", "verification_message"),
];

const PERMISSION_COLS: Columns = &[
    ("INTEGRATION", "package_policy_id"),
    ("TEMPLATE", "policy_template"),
    ("ACTION", "action"),
    ("STATUS", "status"),
    ("REQUIRED", "required"),
    ("ERROR", "error_code"),
    ("MESSAGE", "message"),
];

fn parse_vars(vars: &[String], secrets: &[String]) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for v in vars {
        let (k, val) = v
            .split_once('=')
            .ok_or_else(|| anyhow!("--var {v:?}: expected NAME=VALUE"))?;
        let secret = [CloudProvider::Aws, CloudProvider::Azure, CloudProvider::Gcp]
            .into_iter()
            .flat_map(flotilla_domain::connector::provider_vars)
            .any(|s| s.secret && s.name == k);
        if secret {
            return Err(anyhow!(
                "--var {k}: {k} is a secret; pass it with --secret {k} (stdin) or --secret {k}=@FILE, not on the command line"
            ));
        }
        out.insert(k.to_owned(), json!({"type": "text", "value": val}));
    }
    let mut stdin = std::io::stdin().lock();
    for s in secrets {
        let (name, value) = match s.split_once("=@") {
            Some((name, file)) => (
                name,
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read {file}"))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            None if s.contains('=') => {
                return Err(anyhow!(
                    "--secret {name}: pass the value on stdin or as NAME=@FILE, not on the command line",
                    name = s.split('=').next().unwrap_or_default()
                ))
            }
            None => {
                let mut line = String::new();
                stdin
                    .read_line(&mut line)
                    .context("cannot read a secret from stdin")?;
                if line.is_empty() {
                    return Err(anyhow!("--secret {s}: no line left on stdin for its value"));
                }
                (s.as_str(), line.trim_end_matches(['\r', '\n']).to_owned())
            }
        };
        out.insert(name.to_owned(), json!({"type": "password", "value": value}));
    }
    Ok(out)
}

/// One row per permission result, for the table under `show`.
fn permission_rows(connector: &Value) -> Value {
    let mut rows = Vec::new();
    for s in connector
        .get("verification_permissions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for p in s
            .get("permissions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mut row = p.clone();
            if let Some(o) = row.as_object_mut() {
                for k in ["package_policy_id", "policy_template"] {
                    o.insert(k.into(), s.get(k).cloned().unwrap_or(Value::Null));
                }
            }
            rows.push(row);
        }
    }
    json!({"items": rows})
}

pub(crate) async fn run(opts: &ClientOpts, cmd: ConnectorCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        ConnectorCmd::Create {
            name,
            id,
            provider,
            account_type,
            vars,
            secrets,
        } => {
            let body = CreateCloudConnector {
                id,
                name,
                cloud_provider: provider.into(),
                account_type: account_type.map(Into::into),
                vars: parse_vars(&vars, &secrets)?,
            };
            view(c.post(CONNECTORS, &body).await?, CONNECTOR_COLS)
        }
        ConnectorCmd::List { page } => {
            view(c.get(CONNECTORS, &page.query()).await?, CONNECTOR_COLS)
        }
        ConnectorCmd::Show { id } => {
            let got = c.get(&at(CONNECTORS, &id), &[]).await?;
            if opts.json {
                return Ok(view(got, &[]));
            }
            crate::render::render(&view(got.clone(), DETAIL_COLS), false);
            let item = got.get("item").cloned().unwrap_or(Value::Null);
            view(permission_rows(&item), PERMISSION_COLS)
        }
        ConnectorCmd::Update {
            id,
            name,
            account_type,
            vars,
            secrets,
        } => {
            let vars = parse_vars(&vars, &secrets)?;
            let body = UpdateCloudConnector {
                name,
                cloud_provider: None,
                account_type: account_type.map(Into::into),
                vars: (!vars.is_empty()).then_some(vars),
            };
            if body.name.is_none() && body.account_type.is_none() && body.vars.is_none() {
                return Err(anyhow!(
                    "nothing to change: pass at least one of --name, --account-type, --var, --secret"
                ));
            }
            view(c.put(&at(CONNECTORS, &id), &body).await?, CONNECTOR_COLS)
        }
        ConnectorCmd::Delete { id } => view(c.delete(&at(CONNECTORS, &id)).await?, DELETED_COLS),
        ConnectorCmd::Verify { id } => view(
            c.post(&format!("{}/_verify", at(CONNECTORS, &id)), &json!({}))
                .await?,
            &[("ID", "id"), ("QUEUED", "queued")],
        ),
    })
}
