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
        /// An installed package: system, nginx, log… (`flotilla package list`).
        #[arg(long)]
        package: String,
        /// The package version (default: the newest installed).
        #[arg(long = "package-version")]
        package_version: Option<String>,
        /// Name (default: <package>-<policy>).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        /// A variable, `key=value`; the value is parsed as JSON when it can be
        /// (`paths=["/var/log/app.log"]`), else taken as a string. Repeatable.
        #[arg(long = "var", value_name = "KEY=VALUE")]
        vars: Vec<String>,
        /// Inputs as JSON, in Kibana's full form (a list) or its simplified
        /// form (`{"<template>-<input>": {"enabled", "vars", "streams"}}`);
        /// default: the package's defaults.
        #[arg(long)]
        inputs: Option<String>,
        /// The cloud connector whose credentials it collects with
        /// (`flotilla connector list`).
        #[arg(long = "cloud-connector", value_name = "ID")]
        cloud_connector: Option<String>,
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
}

const INTEGRATION_COLS: Columns = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("POLICY", "policy_id"),
    ("PACKAGE", "package.name"),
    ("VERSION", "package.version"),
    ("NAMESPACE", "namespace"),
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
            package_version,
            name,
            namespace,
            vars,
            inputs,
            cloud_connector,
        } => {
            let mut var_map = Map::new();
            for v in &vars {
                let (k, v) = parse_var(v)?;
                var_map.insert(k, v);
            }
            let inputs = inputs
                .map(|i| serde_json::from_str(&i))
                .transpose()
                .context(
                "--inputs must be JSON: a list of inputs, or an object keyed <template>-<input>",
            )?;
            let body = CreatePackagePolicy {
                id: None,
                name: name.unwrap_or_else(|| format!("{package}-{policy}")),
                description: None,
                policy_id: policy,
                package: PackageRequest {
                    name: package,
                    version: package_version,
                },
                namespace,
                vars: (!var_map.is_empty()).then_some(var_map),
                inputs,
                cloud_connector_id: cloud_connector,
                enabled: None,
                force: None,
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
