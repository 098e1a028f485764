//! Bulk actions from the agents table, and actions' progress: the list
//! (`/app/actions`) and one action's agents with their outcomes
//! (`/app/actions/{id}`), both paged on the server.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;

use flotilla_api::management::{
    AgentSelection, BulkReassign, BulkSettings, BulkUnenroll, BulkUpdateTags,
};
use flotilla_domain::action::{ActionProgress, TargetOutcome};

use crate::auth::Session;
use crate::error::ConsoleError;
use crate::layout::{page, page_number, pager, when, when_opt, Nav};
use crate::{ConsoleState, BASE};

const PER_PAGE: u32 = 50;

/// The bulk form as posted: `ids` repeats (one per checked row), so it is
/// read pair by pair rather than through a struct.
#[derive(Default)]
struct BulkForm {
    csrf: String,
    ids: Vec<String>,
    /// `selected`, or `filter`: every agent the table's filter matches.
    scope: String,
    kuery: String,
    op: String,
    policy_id: String,
    tags: String,
    log_level: String,
}

impl BulkForm {
    fn parse(body: &[u8]) -> Self {
        let mut f = BulkForm::default();
        for (k, v) in form_urlencoded::parse(body) {
            let v = v.into_owned();
            match &*k {
                "csrf" => f.csrf = v,
                "ids" => f.ids.push(v),
                "scope" => f.scope = v,
                "kuery" => f.kuery = v,
                "op" => f.op = v,
                "policy_id" => f.policy_id = v,
                "tags" => f.tags = v,
                "log_level" => f.log_level = v,
                _ => {}
            }
        }
        f
    }

    fn selection(&self) -> Result<AgentSelection, ConsoleError> {
        if self.scope == "filter" {
            if self.kuery.trim().is_empty() {
                return Err(ConsoleError::Invalid(
                    "Filter the table first: a bulk action never takes the whole fleet by accident."
                        .into(),
                ));
            }
            return Ok(AgentSelection::Kuery(self.kuery.clone()));
        }
        if self.ids.is_empty() {
            return Err(ConsoleError::Invalid("Select at least one agent.".into()));
        }
        Ok(AgentSelection::Ids(self.ids.clone()))
    }

    fn tags(&self) -> Vec<String> {
        self.tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// `POST /app/agents/bulk`: start the action, then show its progress.
pub(crate) async fn bulk(
    State(state): State<ConsoleState>,
    session: Session,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let form = BulkForm::parse(&body);
    session.check_csrf(&form.csrf)?;
    let agents = form.selection()?;
    let m = state.services.management();
    let id = match form.op.as_str() {
        "reassign" => {
            m.bulk_reassign(BulkReassign {
                agents,
                policy_id: form.policy_id.clone(),
            })
            .await?
        }
        "unenroll" | "revoke" => {
            m.bulk_unenroll(BulkUnenroll {
                agents,
                revoke: form.op == "revoke",
            })
            .await?
        }
        "add_tags" | "remove_tags" => {
            let (add, remove) = if form.op == "add_tags" {
                (form.tags(), vec![])
            } else {
                (vec![], form.tags())
            };
            m.bulk_update_tags(BulkUpdateTags {
                agents,
                tags_to_add: add,
                tags_to_remove: remove,
            })
            .await?
        }
        "log_level" => {
            m.bulk_settings(BulkSettings {
                agents,
                log_level: form.log_level.clone(),
            })
            .await?
        }
        _ => return Err(ConsoleError::Invalid("Choose an action.".into())),
    };
    Ok(Redirect::to(&format!("{BASE}/actions/{id}")).into_response())
}

/// The bulk-action controls under the agents table (inside its form).
pub(crate) fn bulk_controls(
    session: &Session,
    policies: &[(String, String)],
    kuery: &str,
) -> Markup {
    html! {
        fieldset .bulk {
            legend { "Bulk action" }
            (crate::auth::csrf_field(session))
            input type="hidden" name="kuery" value=(kuery);
            div .field {
                label for="b-scope" { "Agents" }
                select #b-scope name="scope" {
                    option value="selected" { "The selected agents" }
                    @if !kuery.is_empty() {
                        option value="filter" { "Every agent matching the filter" }
                    }
                }
            }
            div .field {
                label for="b-op" { "Action" }
                select #b-op name="op" required {
                    option value="" { "Choose…" }
                    option value="reassign" { "Reassign to a policy" }
                    option value="unenroll" { "Unenrol (ask the agents)" }
                    option value="revoke" { "Unenrol at once (revoke)" }
                    option value="add_tags" { "Add tags" }
                    option value="remove_tags" { "Remove tags" }
                    option value="log_level" { "Set log level" }
                }
            }
            div .field {
                label for="b-policy" { "Policy (to reassign)" }
                select #b-policy name="policy_id" {
                    option value="" { "—" }
                    @for (id, name) in policies { option value=(id) { (name) } }
                }
            }
            div .field {
                label for="b-tags" { "Tags (comma-separated)" }
                input #b-tags type="text" name="tags";
            }
            div .field {
                label for="b-level" { "Log level" }
                select #b-level name="log_level" {
                    @for l in ["info", "debug", "warning", "error", "trace"] { option value=(l) { (l) } }
                }
            }
            div .field .actions {
                button type="submit" { "Apply" }
            }
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct PageQuery {
    page: Option<String>,
}

fn status_cell(p: &ActionProgress) -> Markup {
    let class = match p.status.as_str() {
        "COMPLETE" => "ok",
        "FAILED" | "EXPIRED" => "behind",
        _ => "muted",
    };
    html! { span class=(class) { (p.status.to_ascii_lowercase().replace('_', " ")) } }
}

/// `GET /app/actions`.
pub(crate) async fn list(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<PageQuery>,
) -> Result<Markup, ConsoleError> {
    let at = page_number(q.page.as_deref(), PER_PAGE);
    let actions = state.services.management().action_status(at).await?;
    let body = html! {
        @if actions.items.is_empty() {
            p .empty { "No actions yet. Select agents on the " a href={(BASE) "/agents"} { "agents page" } " to start one." }
        } @else {
            div .table-wrap { table {
                caption .visually-hidden { "Actions, newest first" }
                thead { tr {
                    th scope="col" { "Action" }
                    th scope="col" { "Created" }
                    th scope="col" { "Status" }
                    th scope="col" { "Agents" }
                    th scope="col" { "Delivered" }
                    th scope="col" { "Acknowledged" }
                    th scope="col" { "Failed" }
                    th scope="col" { "Pending" }
                } }
                tbody { @for p in &actions.items {
                    tr {
                        td { a href={(BASE) "/actions/" (p.action_id)} { (p.action_type.as_str()) } }
                        td { (when(p.creation_time)) }
                        td { (status_cell(p)) }
                        td { (p.nb_agents_action_created) }
                        td { (p.nb_agents_delivered) }
                        td { (p.nb_agents_ack) }
                        td { (p.nb_agents_failed) }
                        td { (p.nb_agents_pending) }
                    }
                } }
            } }
        }
        (pager("/actions", &[], at, &actions))
    };
    Ok(page(&session, Nav::Agents, "Actions", body))
}

/// `GET /app/actions/{id}`: the counts, then the agents a page at a time.
pub(crate) async fn detail(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Markup, ConsoleError> {
    let m = state.services.management();
    let p = m.get_action_status(&id).await?;
    let at = page_number(q.page.as_deref(), PER_PAGE);
    let agents = m.action_agents(&id, at).await?;
    let done = p.nb_agents_ack + p.nb_agents_failed;
    let body = html! {
        section aria-labelledby="h-progress" {
            h2 #h-progress { "Progress" }
            p {
                (status_cell(&p)) " · "
                label for="progress" { (done) " of " (p.nb_agents_action_created) " agents answered" } " "
                progress #progress max=(p.nb_agents_action_created.max(1)) value=(done) {}
            }
            dl .facts {
                dt { "Action" } dd { code { (p.action_id) } " " (p.action_type.as_str()) }
                dt { "Created" } dd { (when(p.creation_time)) }
                dt { "Delivered" } dd { (p.nb_agents_delivered) }
                dt { "Acknowledged" } dd { (p.nb_agents_ack) }
                dt { "Failed" } dd { (p.nb_agents_failed) }
                dt { "Pending" } dd { (p.nb_agents_pending) }
                @if let Some(t) = p.completion_time { dt { "Completed" } dd { (when(t)) } }
            }
            p .muted { "Reload the page to see newer progress." }
        }
        section aria-labelledby="h-targets" {
            h2 #h-targets { "Agents" }
            @if agents.items.is_empty() {
                p .empty { "No agents matched." }
            } @else {
                div .table-wrap { table {
                    thead { tr {
                        th scope="col" { "Agent" }
                        th scope="col" { "Outcome" }
                        th scope="col" { "Answered" }
                        th scope="col" { "Error" }
                    } }
                    tbody { @for t in &agents.items {
                        tr {
                            td { a href={(BASE) "/agents/" (t.agent_id)} { (t.agent_id) } }
                            td { @match t.outcome {
                                TargetOutcome::Acked => span .ok { "acknowledged" },
                                TargetOutcome::Failed => span .behind { "failed" },
                                TargetOutcome::Delivered => { "delivered" },
                                TargetOutcome::Pending => span .muted { "pending" },
                            } }
                            td { (when_opt(t.acked_at)) }
                            td { (t.error.as_deref().unwrap_or("")) }
                        }
                    } }
                } }
            }
            (pager(&format!("/actions/{id}"), &[], at, &agents))
        }
    };
    Ok(page(&session, Nav::Agents, "Action", body))
}
