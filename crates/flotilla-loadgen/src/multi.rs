//! `--processes K`: the parent re-executes itself K times, each child with
//! a share of the agents, and aggregates their JSON summaries.

use crate::{LoadgenArgs, Summary};

pub async fn run(_args: &LoadgenArgs) -> anyhow::Result<Summary> {
    anyhow::bail!("--processes is not implemented yet")
}
