//! `flotilla package`: installed packages (Elastic's package format).

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;

use crate::render::{view, Columns, View};
use crate::{at, client, ClientOpts};

const PACKAGES: &str = "/api/fleet/epm/packages";

#[derive(Debug, Subcommand)]
pub enum PackageCmd {
    /// Install a package: a zip, a gzip'd tar, or a package folder (named
    /// `<name>-<version>`, packed and uploaded).
    Install { path: PathBuf },
    /// List installed packages (built-in and installed).
    List,
    /// Show a package: its policy templates, data streams and variables.
    Show {
        name: String,
        /// Default: the newest installed version.
        #[arg(value_name = "VERSION")]
        package_version: Option<String>,
    },
    /// Remove an installed version (refused while integrations use it).
    Remove {
        name: String,
        #[arg(value_name = "VERSION")]
        package_version: String,
    },
}

const LIST_COLS: Columns = &[
    ("NAME", "name"),
    ("VERSION", "version"),
    ("TYPE", "type"),
    ("TITLE", "title"),
    ("SOURCE", "install_source"),
];
const SHOW_COLS: Columns = &[
    ("NAME", "name"),
    ("VERSION", "version"),
    ("TYPE", "type"),
    ("TITLE", "title"),
    ("SOURCE", "install_source"),
    ("FORMAT", "format_version"),
];
const INSTALL_COLS: Columns = &[
    ("NAME", "_meta.name"),
    ("VERSION", "_meta.version"),
    ("ALREADY INSTALLED", "_meta.already_installed"),
];

/// The upload body and its content type.
fn archive_of(path: &PathBuf) -> Result<(&'static str, Vec<u8>)> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        let bytes = flotilla_packages::archive::zip_dir(path)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        return Ok(("application/zip", bytes));
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let content_type = match bytes.as_slice() {
        [0x1f, 0x8b, ..] => "application/gzip",
        [0x50, 0x4b, 0x03, 0x04, ..] => "application/zip",
        _ => {
            return Err(anyhow!(
                "{} is neither a zip, a gzip'd tar nor a package folder",
                path.display()
            ))
        }
    };
    Ok((content_type, bytes))
}

pub(crate) async fn run(opts: &ClientOpts, cmd: PackageCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        PackageCmd::Install { path } => {
            let (content_type, bytes) = archive_of(&path)?;
            view(
                c.post_bytes(PACKAGES, content_type, bytes).await?,
                INSTALL_COLS,
            )
        }
        PackageCmd::List => view(c.get(PACKAGES, &[]).await?, LIST_COLS),
        PackageCmd::Show {
            name,
            package_version,
        } => {
            let path = match package_version {
                Some(v) => format!("{}/{}", at(PACKAGES, &name), urlencode(&v)),
                None => at(PACKAGES, &name),
            };
            view(c.get(&path, &[]).await?, SHOW_COLS)
        }
        PackageCmd::Remove {
            name,
            package_version: version,
        } => {
            let path = format!("{}/{}", at(PACKAGES, &name), urlencode(&version));
            c.delete(&path).await?;
            view(
                serde_json::json!({"name": name, "version": version, "removed": true}),
                &[
                    ("NAME", "name"),
                    ("VERSION", "version"),
                    ("REMOVED", "removed"),
                ],
            )
        }
    })
}

fn urlencode(s: &str) -> String {
    at("", s).trim_start_matches('/').to_owned()
}
