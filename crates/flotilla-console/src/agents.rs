//! Agents: the paged, filtered table and an agent's page.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use flotilla_domain::agent::{Agent, AgentSort, AgentSortField, AgentStatus};
use flotilla_service::Services;
use flotilla_store::{AgentFilter, Page, PolicyFilter};

use crate::auth::Session;
use crate::error::ConsoleError;
use crate::layout::{nonempty, page, page_number, pager, query, status_badge, when, when_opt, Nav};
use crate::{ConsoleState, BASE};

pub(crate) const PER_PAGE: u32 = 50;
/// Events on an agent's page.
const EVENTS_SHOWN: u32 = 10;
/// Policies offered in the filter's list (the rest by id in the URL).
const POLICY_CHOICES: u32 = 200;

#[derive(Deserialize, Default)]
pub(crate) struct AgentsQuery {
    status: Option<String>,
    policy: Option<String>,
    tag: Option<String>,
    version: Option<String>,
    hostname: Option<String>,
    checkin: Option<String>,
    /// A query in the agent query language, joined to the filters with `and`.
    q: Option<String>,
    sort: Option<String>,
    order: Option<String>,
    page: Option<String>,
}

/// The last check-in choices: value, label, the kuery term.
const CHECKINS: [(&str, &str, &str); 5] = [
    ("5m", "In the last 5 minutes", "last_checkin >= now-5m"),
    ("1h", "In the last hour", "last_checkin >= now-1h"),
    ("over1h", "Over an hour ago", "last_checkin < now-1h"),
    ("over1d", "Over a day ago", "last_checkin < now-1d"),
    ("never", "Never", "not last_checkin:*"),
];

/// The sortable columns: header, field.
const COLUMNS: [(&str, Option<AgentSortField>); 8] = [
    ("Host", Some(AgentSortField::Hostname)),
    ("Status", Some(AgentSortField::Status)),
    ("Policy", Some(AgentSortField::PolicyId)),
    ("Revision", Some(AgentSortField::PolicyRevision)),
    ("Version", Some(AgentSortField::Version)),
    ("Tags", None),
    ("Last check-in", Some(AgentSortField::LastCheckin)),
    ("Enrolled", Some(AgentSortField::EnrolledAt)),
];

/// How many agents have each status: one grouped count, never a read of
/// the fleet.
pub(crate) async fn status_counts(
    services: &Services,
    policy_id: Option<&str>,
) -> Result<Vec<(AgentStatus, u64)>, ConsoleError> {
    Ok(services.agent_status_counts(policy_id).await?)
}

/// The host name an agent reported, if any.
pub(crate) fn hostname(agent: &Agent) -> &str {
    agent
        .local_metadata
        .pointer("/host/hostname")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// A kuery value: a bare prefix (`web-*`) when it ends in `*` and is one
/// plain word, else the exact text quoted.
fn kuery_value(v: &str) -> String {
    let plain = |w: &str| {
        !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/'))
    };
    match v.strip_suffix('*') {
        Some(stem) if plain(stem) && !stem.contains(':') => format!("{stem}*"),
        _ => format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")),
    }
}

/// The filters that are not store fields, and the typed query, as one
/// kuery; empty when there are none.
fn extra_kuery(version: &str, hostname: &str, checkin: &str, q: &str) -> String {
    let mut terms = Vec::new();
    if !version.is_empty() {
        terms.push(format!("version:{}", kuery_value(version)));
    }
    if !hostname.is_empty() {
        terms.push(format!("hostname:{}", kuery_value(hostname)));
    }
    if let Some((_, _, term)) = CHECKINS.iter().find(|(k, _, _)| *k == checkin) {
        terms.push((*term).to_owned());
    }
    if !q.trim().is_empty() {
        terms.push(format!("({})", q.trim()));
    }
    terms.join(" and ")
}

/// The header of a sortable column: a link that sorts by it (the other
/// way when it already does), with `aria-sort` on the sorted one.
fn sort_header(
    label: &str,
    field: Option<AgentSortField>,
    sort: AgentSort,
    keep: &[(&str, &str)],
) -> Markup {
    let Some(field) = field else {
        return html! { th scope="col" { (label) } };
    };
    let sorted = sort.field == field;
    let next = if sorted {
        !sort.ascending
    } else {
        AgentSort::parse(field.as_str(), None)
            .map(|s| s.ascending)
            .unwrap_or(true)
    };
    let mut pairs = keep.to_vec();
    pairs.push(("sort", field.as_str()));
    pairs.push(("order", if next { "asc" } else { "desc" }));
    let aria = sorted.then_some(if sort.ascending {
        "ascending"
    } else {
        "descending"
    });
    html! {
        th scope="col" aria-sort=[aria] {
            a .sort href={(BASE) "/agents" (query(&pairs))}
                aria-label={"Sort by " (label) (if next { ", ascending" } else { ", descending" })} {
                (label)
                @if sorted { span aria-hidden="true" { (if sort.ascending { " ▲" } else { " ▼" }) } }
            }
        }
    }
}

pub(crate) async fn list(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<AgentsQuery>,
) -> Result<(StatusCode, Markup), ConsoleError> {
    let m = state.services.management();
    let status = nonempty(&q.status);
    let policy = nonempty(&q.policy);
    let tag = nonempty(&q.tag);
    let version = nonempty(&q.version).unwrap_or_default();
    let host = nonempty(&q.hostname).unwrap_or_default();
    let checkin = nonempty(&q.checkin)
        .filter(|c| CHECKINS.iter().any(|(k, _, _)| k == c))
        .unwrap_or_default();
    let typed = q.q.clone().unwrap_or_default();
    if typed.len() > flotilla_domain::kuery::MAX_QUERY_LEN {
        return Err(ConsoleError::Invalid(format!(
            "The query is longer than {} bytes.",
            flotilla_domain::kuery::MAX_QUERY_LEN
        )));
    }
    let sort = match nonempty(&q.sort) {
        Some(f) => AgentSort::parse(&f, nonempty(&q.order).as_deref())
            .map_err(|e| ConsoleError::Invalid(e.to_string()))?,
        None => AgentSort::default(),
    };
    let extra = extra_kuery(&version, &host, &checkin, &typed);
    // A query that does not parse: the page says why, with the query
    // still in its box, and no table.
    // The typed query is checked alone first, so an error's position is
    // in what the operator typed.
    let checked = if typed.trim().is_empty() {
        Ok(None)
    } else {
        m.parse_kuery(&typed)
    };
    let (kuery, query_error) = if extra.is_empty() {
        (None, None)
    } else {
        match checked.and_then(|_| m.parse_kuery(&extra)) {
            Ok(k) => (k, None),
            Err(flotilla_service::ServiceError::Invalid(e)) => (None, Some(e.message)),
            Err(e) => return Err(e.into()),
        }
    };
    let filter = AgentFilter {
        status: status.as_deref().and_then(AgentStatus::parse),
        policy_id: policy.clone(),
        tag: tag.clone(),
        kuery,
        sort: Some(sort),
        ..Default::default()
    };
    if status.is_some() && filter.status.is_none() {
        return Err(ConsoleError::Invalid("unknown status".into()));
    }
    let at = page_number(q.page.as_deref(), PER_PAGE);
    let agents = if query_error.is_some() {
        flotilla_store::Paged {
            items: Vec::new(),
            total: 0,
        }
    } else {
        m.list_agents(&filter, at).await?
    };
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
        ("version", version.as_str()),
        ("hostname", host.as_str()),
        ("checkin", checkin.as_str()),
        ("q", typed.as_str()),
    ];
    let sort_field = sort.field.as_str();
    let sort_order = if sort.ascending { "asc" } else { "desc" };
    let mut paging: Vec<(&str, &str)> = filters.to_vec();
    if nonempty(&q.sort).is_some() {
        paging.push(("sort", sort_field));
        paging.push(("order", sort_order));
    }
    // Both are `and`s of terms (the typed query in parentheses): joined
    // by one more.
    let bulk_kuery = [filter_kuery(&filters[..3]), extra.clone()]
        .into_iter()
        .filter(|k| !k.is_empty())
        .collect::<Vec<_>>()
        .join(" and ");
    let body = html! {
        form .filters method="get" action={(BASE) "/agents"} role="search" aria-label="Filter agents" {
            div .field .wide {
                label for="f-q" { "Search" }
                input #f-q type="search" name="q" value=(typed) maxlength="4096"
                    placeholder="status:offline and tags:prod"
                    aria-describedby="f-q-help" aria-invalid=[query_error.as_ref().map(|_| "true")];
                small #f-q-help .muted { "Fields: status, policy_id, tags, hostname, version, last_checkin (e.g. last_checkin < now-1h), enrolled_at, id; and, or, not, parentheses, prefix*." }
            }
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
            div .field {
                label for="f-version" { "Version" }
                input #f-version type="text" name="version" value=(version) placeholder="9.1.0 or 9.*";
            }
            div .field {
                label for="f-hostname" { "Host name" }
                input #f-hostname type="text" name="hostname" value=(host) placeholder="web-01 or web-*";
            }
            div .field {
                label for="f-checkin" { "Last check-in" }
                select #f-checkin name="checkin" {
                    option value="" { "Any time" }
                    @for (k, label, _) in CHECKINS {
                        option value=(k) selected[checkin == k] { (label) }
                    }
                }
            }
            @if nonempty(&q.sort).is_some() {
                input type="hidden" name="sort" value=(sort_field);
                input type="hidden" name="order" value=(sort_order);
            }
            div .field .actions {
                button type="submit" { "Filter" }
                a .button .secondary href={(BASE) "/agents"} { "Clear" }
            }
        }
        @if let Some(e) = &query_error {
            p .error role="alert" #query-error { "The search does not parse: " (e) }
        } @else if agents.items.is_empty() {
            p .empty { "No agents match." }
        } @else {
            form method="post" action={(BASE) "/agents/bulk"} aria-label="Bulk action on agents" {
            div .table-wrap {
                table #agents {
                    caption .visually-hidden { "Agents" }
                    thead { tr {
                        th scope="col" { span .visually-hidden { "Select" } }
                        @for (label, field) in COLUMNS {
                            (sort_header(label, field, sort, &filters))
                        }
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
                                td { (when(a.enrolled_at)) }
                            }
                        }
                    }
                }
            }
            (crate::actions::bulk_controls(&session, &policy_choices, &bulk_kuery))
            }
        }
        p { a href={(BASE) "/actions"} { "Actions and their progress" } }
        (pager("/agents", &paging, at, &agents))
    };
    let status = if query_error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok((status, page(&session, Nav::Agents, "Agents", body)))
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
    let events = m
        .agent_latest_events(
            &id,
            state.clock.now() - chrono::Duration::days(7),
            EVENTS_SHOWN,
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
        section aria-labelledby="h-events" {
            h2 #h-events { "Latest events" }
            @if events.is_empty() {
                p .empty { "No event in the last 7 days names this agent." }
            } @else {
                div .table-wrap { table #agent-events {
                    caption .muted { "The newest " (events.len()) " events whose agent.id is this agent's, in the last 7 days" }
                    thead { tr { th scope="col" { "Time" } th scope="col" { "Data stream" } th scope="col" { "Event" } } }
                    tbody { @for e in &events {
                        tr {
                            td { (when(e.timestamp)) }
                            td { a href={(BASE) "/data/" (e.data_stream)} { code { (e.data_stream) } } }
                            td { (crate::events::summary(&e.source)) }
                        }
                    } }
                } }
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
    fn the_extra_filters_and_the_typed_query_join_as_one_kuery() {
        let k = extra_kuery("9.*", "web-01", "over1h", "tags:prod or tags:dev");
        assert_eq!(
            k,
            r#"version:9.* and hostname:"web-01" and last_checkin < now-1h and (tags:prod or tags:dev)"#
        );
        assert!(flotilla_domain::kuery::parse(&k, chrono::Utc::now())
            .unwrap()
            .is_some());
        // Odd text is quoted, never query syntax.
        let k = extra_kuery("", "a\"b or x*", "", "");
        assert_eq!(k, r#"hostname:"a\"b or x*""#);
        assert!(flotilla_domain::kuery::parse(&k, chrono::Utc::now()).is_ok());
        assert_eq!(extra_kuery("", "", "bogus", "  "), "");
    }

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
