//! Settings (outputs, operator keys) and Data (the embedded output's data
//! streams): read-only lists, paged on the server.

use axum::extract::{Query, State};
use maud::{html, Markup};
use serde::Deserialize;

use flotilla_store::Paged;

use crate::auth::Session;
use crate::error::ConsoleError;
use crate::layout::{page, page_number, pager, pager_with, when, when_opt, Nav};
use crate::ConsoleState;

const PER_PAGE: u32 = 20;

#[derive(Deserialize, Default)]
pub(crate) struct SettingsQuery {
    outputs: Option<String>,
    keys: Option<String>,
}

pub(crate) async fn settings(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<SettingsQuery>,
) -> Result<Markup, ConsoleError> {
    let m = state.services.management();
    let outputs_at = page_number(q.outputs.as_deref(), PER_PAGE);
    let keys_at = page_number(q.keys.as_deref(), PER_PAGE);
    let outputs = m.list_outputs(outputs_at).await?;
    let keys = m.list_operator_keys(keys_at).await?;
    let body = html! {
        section aria-labelledby="h-outputs" {
            h2 #h-outputs { "Outputs" }
            div .table-wrap { table {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Type" } th scope="col" { "Hosts" }
                    th scope="col" { "Default" } th scope="col" { "Updated" }
                } }
                tbody { @for o in &outputs.items {
                    tr {
                        td { (o.name) } td { (o.output_type.as_str()) }
                        td { @for h in &o.hosts { code { (h) } " " } }
                        td { @if o.is_default { "yes" } }
                        td { (when(o.updated_at)) }
                    }
                } }
            } }
            (pager_with("/settings", &[], "outputs", outputs_at, &outputs))
        }
        section aria-labelledby="h-keys" {
            h2 #h-keys { "Operator API keys" }
            p .muted { "Made and revoked with " code { "flotilla apikey" } "; revoking a key ends its console sessions." }
            div .table-wrap { table {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Starts with" } th scope="col" { "Created" } th scope="col" { "State" }
                } }
                tbody { @for k in &keys.items {
                    tr {
                        td { (k.name) @if k.id == session.session.operator.id { " " span .tag { "this session" } } }
                        td { code { (k.hint) "…" } }
                        td { (when(k.created_at)) }
                        td { @if k.active { "active" } @else { span .muted { "revoked" } } }
                    }
                } }
            } }
            (pager_with("/settings", &[], "keys", keys_at, &keys))
        }
    };
    Ok(page(&session, Nav::Settings, "Settings", body))
}

#[derive(Deserialize, Default)]
pub(crate) struct DataQuery {
    page: Option<String>,
}

pub(crate) async fn data(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<DataQuery>,
) -> Result<Markup, ConsoleError> {
    // Data streams are one row each in the store (not documents), listed
    // by the service in full; shown a page at a time.
    let all = state.services.management().list_data_streams().await?;
    let at = page_number(q.page.as_deref(), PER_PAGE);
    let start = (at.offset() as usize).min(all.len());
    let end = (start + PER_PAGE as usize).min(all.len());
    let shown = Paged {
        total: all.len() as u64,
        items: all[start..end].to_vec(),
    };
    let body = html! {
        p .muted { "Data streams of the embedded output; open one to browse its events." }
        @if shown.items.is_empty() {
            p .empty { "No data yet: agents write here once a policy's integrations collect something." }
        } @else {
            div .table-wrap { table {
                caption .visually-hidden { "Data streams" }
                thead { tr {
                    th scope="col" { "Data stream" } th scope="col" { "Documents" } th scope="col" { "Size" }
                    th scope="col" { "Last event" } th scope="col" { "Created" }
                } }
                tbody { @for d in &shown.items {
                    tr {
                        td { a href={(crate::BASE) "/data/" (d.name)} { code { (d.name) } } } td { (d.documents) } td { (d.size_bytes / 1024) " KiB" }
                        td { (when_opt(d.last_event)) } td { (when(d.created_at)) }
                    }
                } }
            } }
        }
        (pager("/data", &[], at, &shown))
    };
    Ok(page(&session, Nav::Data, "Data", body))
}
