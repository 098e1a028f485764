//! Agents: the paged, filtered table and an agent's page.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use flotilla_domain::agent::{Agent, AgentStatus};
use flotilla_service::Services;
use flotilla_store::{AgentFilter, Page, PolicyFilter};

use crate::auth::Session;
use crate::error::ConsoleError;
use crate::layout::{nonempty, page, page_number, pager, status_badge, when, when_opt, Nav};
use crate::{ConsoleState, BASE};

pub(crate) const PER_PAGE: u32 = 50;
/// Policies offered in the filter's list (the rest by id in the URL).
const POLICY_CHOICES: u32 = 200;

#[derive(Deserialize, Default)]
pub(crate) struct AgentsQuery {
    status: Option<String>,
    policy: Option<String>,
    tag: Option<String>,
    page: Option<String>,
}

/// How many agents have each status: one counting query per status,
/// never a read of the fleet.
pub(crate) async fn status_counts(
    services: &Services,
    policy_id: Option<&str>,
) -> Result<Vec<(AgentStatus, u64)>, ConsoleError> {
    let mut counts = Vec::with_capacity(AgentStatus::ALL.len());
    for status in AgentStatus::ALL {
        let filter = AgentFilter {
            status: Some(status),
            policy_id: policy_id.map(str::to_owned),
            ..Default::default()
        };
        let n = services
            .management()
            .list_agents(
                &filter,
                Page {
                    page: 1,
                    per_page: 1,
                },
            )
            .await?
            .total;
        counts.push((status, n));
    }
    Ok(counts)
}

/// The host name an agent reported, if any.
pub(crate) fn hostname(agent: &Agent) -> &str {
    agent
        .local_metadata
        .pointer("/host/hostname")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub(crate) async fn list(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<AgentsQuery>,
) -> Result<Markup, ConsoleError> {
    let m = state.services.management();
    let status = nonempty(&q.status);
    let policy = nonempty(&q.policy);
    let tag = nonempty(&q.tag);
    let filter = AgentFilter {
        status: status.as_deref().and_then(AgentStatus::parse),
        policy_id: policy.clone(),
        tag: tag.clone(),
        ..Default::default()
    };
    if status.is_some() && filter.status.is_none() {
        return Err(ConsoleError::Invalid("unknown status".into()));
    }
    let at = page_number(q.page.as_deref(), PER_PAGE);
    let agents = m.list_agents(&filter, at).await?;
    let policies = m
        .list_policies(
            &PolicyFilter::default(),
            Page {
                page: 1,
                per_page: POLICY_CHOICES,
            },
        )
        .await?;
    let known: HashMap<&str, (&str, i64)> = policies
        .items
        .iter()
        .map(|p| (p.id.as_str(), (p.name.as_str(), p.revision)))
        .collect();
    let policy_choices: Vec<(String, String)> = policies
        .items
        .iter()
        .map(|p| (p.id.clone(), p.name.clone()))
        .collect();
    let filters = [
        ("status", status.as_deref().unwrap_or("")),
        ("policy", policy.as_deref().unwrap_or("")),
        ("tag", tag.as_deref().unwrap_or("")),
    ];
    let body = html! {
        form .filters method="get" action={(BASE) "/agents"} role="search" aria-label="Filter agents" {
            div .field {
                label for="f-status" { "Status" }
                select #f-status name="status" {
                    option value="" { "Any" }
                    @for s in AgentStatus::ALL {
                        option value=(s.as_str()) selected[status.as_deref() == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            div .field {
                label for="f-policy" { "Policy" }
                select #f-policy name="policy" {
                    option value="" { "Any" }
                    @for p in &policies.items {
                        option value=(p.id) selected[policy.as_deref() == Some(p.id.as_str())] { (p.name) }
                    }
                }
            }
            div .field {
                label for="f-tag" { "Tag" }
                input #f-tag type="text" name="tag" value=(tag.as_deref().unwrap_or(""));
            }
            // Seam: a `kuery` search box (hostname, version, last
            // check-in…) and sorting join these filters once the agent
            // query language is in the service.
            div .field .actions {
                button type="submit" { "Filter" }
                a .button .secondary href={(BASE) "/agents"} { "Clear" }
            }
        }
        @if agents.items.is_empty() {
            p .empty { "No agents match." }
        } @else {
            form method="post" action={(BASE) "/agents/bulk"} aria-label="Bulk action on agents" {
            div .table-wrap {
                table {
                    caption .visually-hidden { "Agents" }
                    thead { tr {
                        th scope="col" { span .visually-hidden { "Select" } }
                        th scope="col" { "Host" }
                        th scope="col" { "Status" }
                        th scope="col" { "Policy" }
                        th scope="col" { "Revision" }
                        th scope="col" { "Version" }
                        th scope="col" { "Tags" }
                        th scope="col" { "Last check-in" }
                    } }
                    tbody {
                        @for a in &agents.items {
                            @let label = if hostname(a).is_empty() { a.id.as_str() } else { hostname(a) };
                            tr {
                                td { input type="checkbox" name="ids" value=(a.id) aria-label={"Select " (label)}; }
                                td { a href={(BASE) "/agents/" (a.id)} { @if hostname(a).is_empty() { (a.id) } @else { (hostname(a)) } } }
                                td { (status_badge(a.status.as_str())) }
                                @let policy = known.get(a.policy_id.as_str());
                                td { a href={(BASE) "/policies/" (a.policy_id)} { (policy.map(|p| p.0).unwrap_or(&a.policy_id)) } }
                                td { (revision_cell(a.policy_revision, policy.map(|p| p.1))) }
                                td { (a.agent_version.as_deref().unwrap_or("")) }
                                td { @for t in &a.tags { span .tag { (t) } " " } }
                                td { (when_opt(a.last_checkin)) }
                            }
                        }
                    }
                }
            }
            (crate::actions::bulk_controls(&session, &policy_choices, &filter_kuery(&filters)))
            }
        }
        p { a href={(BASE) "/actions"} { "Actions and their progress" } }
        (pager("/agents", &filters, at, &agents))
    };
    Ok(page(&session, Nav::Agents, "Agents", body))
}

/// The table's filter as a kuery (for a bulk action over every agent it
/// matches); empty when nothing is filtered.
fn filter_kuery(filters: &[(&str, &str)]) -> String {
    let quote = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
    filters
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            let field = match *k {
                "policy" => "policy_id",
                "tag" => "tags",
                other => other,
            };
            format!("{field}:{}", quote(v))
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// The revision an agent runs against its policy's current one.
fn revision_cell(running: Option<i64>, current: Option<i64>) -> Markup {
    match (running, current) {
        (Some(r), Some(c)) if r >= c => html! { span .ok { (r) " (current)" } },
        (Some(r), Some(c)) => html! { span .behind { (r) " of " (c) } },
        (Some(r), None) => html! { (r) },
        (None, _) => html! { span .muted { "none yet" } },
    }
}

pub(crate) async fn detail(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Markup, ConsoleError> {
    let m = state.services.management();
    let agent = m.get_agent(&id).await?;
    let policy = m.get_policy(&agent.policy_id).await.ok();
    let actions = m
        .agent_actions(
            &id,
            Page {
                page: 1,
                per_page: 20,
            },
        )
        .await?;
    let title = if hostname(&agent).is_empty() {
        agent.id.clone()
    } else {
        hostname(&agent).to_owned()
    };
    let meta = |p: &str| {
        agent
            .local_metadata
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let body = html! {
        section aria-labelledby="h-meta" {
            h2 #h-meta { "Agent" }
            dl .facts {
                dt { "Id" } dd { code { (agent.id) } }
                dt { "Status" } dd { (status_badge(agent.status.as_str())) }
                @if let Some(msg) = agent.last_checkin_message.as_deref().filter(|m| !m.is_empty()) { dt { "Message" } dd { (msg) } }
                dt { "Version" } dd { (agent.agent_version.as_deref().unwrap_or("unknown")) }
                dt { "Host" } dd { (meta("/host/hostname")) }
                dt { "OS" } dd { (meta("/os/name")) " " (meta("/os/version")) }
                dt { "Tags" } dd { @for t in &agent.tags { span .tag { (t) } " " } }
                dt { "Enrolled" } dd { (when(agent.enrolled_at)) }
                dt { "Last check-in" } dd { (when_opt(agent.last_checkin)) }
                dt { "Policy" } dd {
                    a href={(BASE) "/policies/" (agent.policy_id)} { (policy.as_ref().map(|p| p.name.as_str()).unwrap_or(&agent.policy_id)) }
                }
                dt { "Revision" } dd { (revision_cell(agent.policy_revision, policy.as_ref().map(|p| p.revision))) }
                @if let Some(f) = &agent.policy_change_failure {
                    dt { "Last policy change" } dd .behind { "failed: " (f.get("message").and_then(Value::as_str).unwrap_or("")) }
                }
                @if let Some(e) = &agent.output_key_error { dt { "Output key" } dd .behind { (e) } }
            }
        }
        section aria-labelledby="h-components" {
            h2 #h-components { "Components and health" }
            @match agent.components.as_ref().and_then(Value::as_array) {
                Some(components) if !components.is_empty() => {
                    div .table-wrap { table {
                        thead { tr { th scope="col" { "Component" } th scope="col" { "Type" } th scope="col" { "Status" } th scope="col" { "Message" } } }
                        tbody { @for c in components {
                            tr {
                                td { (c.get("id").and_then(Value::as_str).unwrap_or("")) }
                                td { (c.get("type").and_then(Value::as_str).unwrap_or("")) }
                                td { (status_badge(&c.get("status").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase())) }
                                td { (c.get("message").and_then(Value::as_str).unwrap_or("")) }
                            }
                        } }
                    } }
                }
                _ => { p .empty { "The agent has reported no components." } }
            }
        }
        section aria-labelledby="h-actions" {
            h2 #h-actions { "Actions" }
            @if actions.items.is_empty() {
                p .empty { "No actions." }
            } @else {
                div .table-wrap { table {
                    thead { tr { th scope="col" { "Action" } th scope="col" { "Created" } th scope="col" { "Delivered" } th scope="col" { "Outcome" } } }
                    tbody { @for a in &actions.items {
                        tr {
                            td { (a.action.action_type.as_str()) }
                            td { (when(a.action.created_at)) }
                            td { @if a.delivered { "yes" } @else { "no" } }
                            td {
                                @if let Some(e) = &a.ack_error { span .behind { "failed: " (e) } }
                                @else if let Some(t) = a.acked_at { "acknowledged " (when(t)) }
                                @else { span .muted { "pending" } }
                            }
                        }
                    } }
                } }
                @if actions.total > actions.items.len() as u64 {
                    p .muted { "The latest " (actions.items.len()) " of " (actions.total) "." }
                }
            }
        }
        details {
            summary { "Metadata the agent reported" }
            pre { code { (serde_json::to_string_pretty(&agent.local_metadata).unwrap_or_default()) } }
        }
    };
    Ok(page(&session, Nav::Agents, &title, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_becomes_a_kuery_the_parser_takes() {
        let k = filter_kuery(&[("status", "online"), ("policy", "we\"b"), ("tag", "")]);
        assert_eq!(k, r#"status:"online" and policy_id:"we\"b""#);
        assert!(flotilla_domain::kuery::parse(&k, chrono::Utc::now())
            .unwrap()
            .is_some());
        assert_eq!(filter_kuery(&[("tag", "")]), "");
    }
}
