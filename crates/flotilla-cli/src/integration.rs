//! `flotilla integration`: integrations (package policies) on policies.

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use serde_json::{Map, Value};

use flotilla_api::management::{CreatePackagePolicy, PackageRequest};

use crate::render::{view, Columns, View, DELETED_COLS};
use crate::{at, client, ClientOpts, PageArgs, PACKAGE_POLICIES};

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

const INTEGRATION_COLS: Columns = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("POLICY", "policy_id"),
    ("PACKAGE", "package.name"),
    ("VERSION", "package.version"),
    ("NAMESPACE", "namespace"),
];
const PACKAGE_COLS: Columns = &[
    ("NAME", "name"),
    ("VERSION", "version"),
    ("TITLE", "title"),
    ("DESCRIPTION", "description"),
];

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

pub(crate) async fn run(opts: &ClientOpts, cmd: IntegrationCmd) -> Result<View> {
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
            let inputs = inputs
                .map(|i| serde_json::from_str(&i))
                .transpose()
                .context("--inputs must be a JSON array of inputs")?;
            let body = CreatePackagePolicy {
                id: None,
                name: name.unwrap_or_else(|| format!("{package}-{policy}")),
                description: None,
                policy_id: policy,
                package: PackageRequest {
                    name: package,
                    version: None,
                },
                namespace,
                vars: var_map,
                inputs,
                cloud_connector_id: None,
            };
            view(c.post(PACKAGE_POLICIES, &body).await?, INTEGRATION_COLS)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
