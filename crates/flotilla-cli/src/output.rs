//! `flotilla output`: where agents send data.

use anyhow::{anyhow, Result};
use clap::{Subcommand, ValueEnum};

use flotilla_api::management::{CreateOutput, UpdateOutput};
use flotilla_domain::output::OutputType;

use crate::render::{view, Columns, View, DELETED_COLS};
use crate::{at, client, ClientOpts, PageArgs, OUTPUTS};

/// An output's type, as `--type` takes it.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputTypeArg {
    Elasticsearch,
    Logstash,
    Kafka,
}

impl From<OutputTypeArg> for OutputType {
    fn from(t: OutputTypeArg) -> Self {
        match t {
            OutputTypeArg::Elasticsearch => OutputType::Elasticsearch,
            OutputTypeArg::Logstash => OutputType::Logstash,
            OutputTypeArg::Kafka => OutputType::Kafka,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum OutputCmd {
    /// Create an output.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        id: Option<String>,
        #[arg(long = "type", value_enum, default_value = "elasticsearch")]
        output_type: OutputTypeArg,
        /// Repeatable.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Make it the default output.
        #[arg(long)]
        default: bool,
        /// An existing Elasticsearch cluster: a file holding the API key
        /// (`base64(id:secret)`, allowed to manage API keys there) that
        /// agents' keys are minted with in that cluster.
        #[arg(long, value_name = "FILE")]
        cluster_api_key_file: Option<std::path::PathBuf>,
    },
    /// List outputs.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one output.
    Show { id: String },
    /// Change an output.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long)]
        default: bool,
    },
    /// Delete an output.
    Delete { id: String },
}

const OUTPUT_COLS: Columns = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("TYPE", "type"),
    ("HOSTS", "hosts"),
    ("DEFAULT", "is_default"),
    ("REMOTE KEYS", "remote_key_management"),
];

pub(crate) async fn run(opts: &ClientOpts, cmd: OutputCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        OutputCmd::Create {
            name,
            id,
            output_type,
            hosts,
            default,
            cluster_api_key_file,
        } => {
            let secrets = cluster_api_key_file
                .map(|f| {
                    std::fs::read_to_string(&f)
                        .map(|k| flotilla_api::management::OutputSecrets {
                            api_key: Some(k.trim().to_owned()),
                            service_token: None,
                        })
                        .map_err(|e| anyhow!("cannot read {}: {e}", f.display()))
                })
                .transpose()?;
            let body = CreateOutput {
                id,
                name,
                output_type: output_type.into(),
                hosts,
                is_default: default,
                secrets,
            };
            view(c.post(OUTPUTS, &body).await?, OUTPUT_COLS)
        }
        OutputCmd::List { page } => view(c.get(OUTPUTS, &page.query()).await?, OUTPUT_COLS),
        OutputCmd::Show { id } => view(c.get(&at(OUTPUTS, &id), &[]).await?, OUTPUT_COLS),
        OutputCmd::Update {
            id,
            name,
            hosts,
            default,
        } => {
            let body = UpdateOutput {
                name,
                output_type: None,
                hosts: (!hosts.is_empty()).then_some(hosts),
                is_default: default.then_some(true),
                secrets: None,
            };
            if body.name.is_none() && body.hosts.is_none() && body.is_default.is_none() {
                return Err(anyhow!(
                    "nothing to change: pass at least one of --name, --host, --default"
                ));
            }
            view(c.put(&at(OUTPUTS, &id), &body).await?, OUTPUT_COLS)
        }
        OutputCmd::Delete { id } => view(c.delete(&at(OUTPUTS, &id)).await?, DELETED_COLS),
    })
}
