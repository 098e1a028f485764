//! Installed packages (integrations one can add to a policy).

use axum::extract::{Query, State};
use maud::{html, Markup};
use serde::Deserialize;

use flotilla_store::Paged;

use crate::auth::Session;
use crate::error::ConsoleError;
use crate::layout::{page, page_number, pager, when_opt, Nav};
use crate::ConsoleState;

const PER_PAGE: u32 = 50;

#[derive(Deserialize, Default)]
pub(crate) struct PackagesQuery {
    page: Option<String>,
}

pub(crate) async fn list(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<PackagesQuery>,
) -> Result<Markup, ConsoleError> {
    // Installed packages are few (a registry's worth at most), listed by
    // the service in full; shown a page at a time.
    let all = state.services.management().list_packages().await?;
    let at = page_number(q.page.as_deref(), PER_PAGE);
    let start = (at.offset() as usize).min(all.len());
    let end = (start + PER_PAGE as usize).min(all.len());
    let shown = Paged {
        total: all.len() as u64,
        items: all[start..end].to_vec(),
    };
    let body = html! {
        div .table-wrap { table {
            caption .visually-hidden { "Installed packages" }
            thead { tr {
                th scope="col" { "Package" } th scope="col" { "Name" } th scope="col" { "Version" }
                th scope="col" { "Type" } th scope="col" { "Source" } th scope="col" { "Installed" }
            } }
            tbody { @for p in &shown.items {
                tr {
                    td { (p.title) } td { code { (p.name) } } td { (p.version) }
                    td { (p.package_type) } td { (p.source) } td { (when_opt(p.installed_at)) }
                }
            } }
        } }
        (pager("/integrations", &[], at, &shown))
    };
    Ok(page(&session, Nav::Integrations, "Integrations", body))
}
