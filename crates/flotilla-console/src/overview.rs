//! The overview: agents by status (counts and a chart), policies, recent
//! failures.

use axum::extract::State;
use maud::{html, Markup};

use chrono::{DateTime, Utc};
use serde_json::Value;

use flotilla_domain::agent::{Agent, AgentSort, AgentSortField, AgentStatus};
use flotilla_domain::connector::{PermissionStatus, VerificationStatus};
use flotilla_domain::status_history::{StatusGroup, StatusSample};
use flotilla_store::{AgentFilter, Page, PolicyFilter};

use crate::agents::{hostname, status_counts};
use crate::auth::Session;
use crate::error::ConsoleError;
use crate::layout::{page, status_badge, when, when_opt, Nav};
use crate::{ConsoleState, BASE};

/// Horizontal bars, one per status, as server-rendered SVG (no script,
/// no style attributes: the CSP allows neither inline).
pub(crate) fn status_chart(counts: &[(AgentStatus, u64)]) -> Markup {
    // Drawn at about the size it is shown (a card's width), so the text
    // keeps its size.
    const BAR: u64 = 24;
    const LABEL: u64 = 96;
    const WIDTH: u64 = 220;
    let max = counts.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let height = BAR * counts.len() as u64 + 4;
    let total: u64 = counts.iter().map(|(_, n)| *n).sum();
    html! {
        svg .chart viewBox={"0 0 " (WIDTH + LABEL + 50) " " (height)} role="img" aria-labelledby="chart-title" {
            title #chart-title { "Agents by status: " (total) " in all" }
            @for (i, (status, n)) in counts.iter().enumerate() {
                @let y = i as u64 * BAR;
                @let w = if *n == 0 { 0 } else { (n * WIDTH / max).max(2) };
                text x=(LABEL - 8) y=(y + 17) text-anchor="end" class="chart-label" { (status.as_str()) }
                rect x=(LABEL) y=(y + 3) width=(w) height=(BAR - 6) class={"bar status-" (status.as_str())} {}
                text x=(LABEL + w + 6) y=(y + 17) class="chart-label" { (n) }
            }
        }
    }
}

/// Agents by status group over time: one line per group (colour and dash
/// pattern both tell them apart), as server-rendered SVG, with a legend;
/// the table after it says the same in text.
pub(crate) fn history_chart(samples: &[StatusSample]) -> Markup {
    const W: i64 = 600;
    const H: i64 = 200;
    const LEFT: i64 = 48;
    const BOTTOM: i64 = 24;
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return html! {};
    };
    let t0 = first.at.timestamp_millis();
    let span = (last.at.timestamp_millis() - t0).max(1);
    let max = samples
        .iter()
        .flat_map(|x| StatusGroup::ALL.map(|g| x.get(g)))
        .max()
        .unwrap_or(0)
        .max(1) as i64;
    let x = |s: &StatusSample| {
        if samples.len() == 1 {
            LEFT + (W - LEFT) / 2
        } else {
            LEFT + (s.at.timestamp_millis() - t0) * (W - LEFT - 8) / span
        }
    };
    let y = |n: u64| (H - BOTTOM) - (n as i64) * (H - BOTTOM - 8) / max;
    html! {
        svg .chart .history viewBox={"0 0 " (W) " " (H + 24)} role="img" aria-labelledby="history-title" {
            title #history-title {
                "Agents by status from " (first.at.format("%Y-%m-%d %H:%M UTC"))
                " to " (last.at.format("%Y-%m-%d %H:%M UTC"))
            }
            line x1=(LEFT) y1=(H - BOTTOM) x2=(W) y2=(H - BOTTOM) class="axis" {}
            line x1=(LEFT) y1="8" x2=(LEFT) y2=(H - BOTTOM) class="axis" {}
            text x=(LEFT - 6) y="16" text-anchor="end" class="chart-label" { (max) }
            text x=(LEFT - 6) y=(H - BOTTOM) text-anchor="end" class="chart-label" { "0" }
            text x=(LEFT) y=(H - 4) class="chart-label" { (first.at.format("%H:%M")) }
            text x=(W) y=(H - 4) text-anchor="end" class="chart-label" { (last.at.format("%H:%M")) }
            @for g in StatusGroup::ALL {
                @let points = samples.iter().map(|s| format!("{},{}", x(s), y(s.get(g)))).collect::<Vec<_>>().join(" ");
                polyline points=(points) class={"line group-" (g.as_str())} {}
            }
            @for (i, g) in StatusGroup::ALL.iter().enumerate() {
                @let lx = LEFT + i as i64 * 110;
                line x1=(lx) y1=(H + 14) x2=(lx + 24) y2=(H + 14) class={"line group-" (g.as_str())} {}
                text x=(lx + 30) y=(H + 19) class="chart-label" { (g.as_str()) }
            }
        }
    }
}

/// At most `rows` samples, evenly spaced, the newest always among them
/// (the table beside the chart stays short over a day of samples).
fn thinned(samples: &[StatusSample], rows: usize) -> Vec<&StatusSample> {
    if samples.len() <= rows {
        return samples.iter().collect();
    }
    let step = samples.len().div_ceil(rows);
    let mut out: Vec<&StatusSample> = samples.iter().rev().step_by(step).collect();
    out.reverse();
    out
}

pub(crate) async fn page_handler(
    state: &ConsoleState,
    session: &Session,
) -> Result<Markup, ConsoleError> {
    let m = state.services.management();
    let counts = status_counts(&state.services, None).await?;
    // The last day's samples (at most a day at one a minute).
    let history = state.services.agent_status_history(None, None).await?;
    let total: u64 = counts.iter().map(|(_, n)| *n).sum();
    let policies = m
        .list_policies(
            &PolicyFilter::default(),
            Page {
                page: 1,
                per_page: 10,
            },
        )
        .await?;
    let mut failing = Vec::new();
    for status in [AgentStatus::Error, AgentStatus::Degraded] {
        let filter = AgentFilter {
            status: Some(status),
            ..Default::default()
        };
        failing.extend(
            m.list_agents(
                &filter,
                Page {
                    page: 1,
                    per_page: 5,
                },
            )
            .await?
            .items,
        );
    }
    let failures = recent_failures(state, &failing).await?;
    let body = html! {
        div .grid {
            section .card aria-labelledby="h-status" {
                h2 #h-status { "Agents by status" }
                (status_chart(&counts))
                ul .counts {
                    @for (s, n) in &counts {
                        li { a href={(BASE) "/agents?status=" (s.as_str())} { (status_badge(s.as_str())) " " (n) } }
                    }
                }
                p .muted { (total) " agents in all (unenrolled ones included)." }
            }
            section .card aria-labelledby="h-history" {
                h2 #h-history { "Status over time" }
                @if history.is_empty() {
                    p .muted { "No samples yet: the server counts agents by status every "
                        "task_manager.status_sample_interval (a minute by default)." }
                } @else {
                    (history_chart(&history))
                    details {
                        summary { "As a table" }
                        table {
                            caption .muted { "Agents by status, last 24 hours (" (history.len()) " samples; some shown)" }
                            thead { tr {
                                th scope="col" { "Time" }
                                @for g in StatusGroup::ALL { th scope="col" { (g.as_str()) } }
                            } }
                            tbody {
                                @for s in thinned(&history, 24) {
                                    tr {
                                        th scope="row" { (when(s.at)) }
                                        @for g in StatusGroup::ALL { td { (s.get(g)) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section .card aria-labelledby="h-policies" {
                h2 #h-policies { "Policies" }
                @if policies.items.is_empty() {
                    p .empty { "No policies yet. " a href={(BASE) "/policies/new"} { "Create one" } "." }
                } @else {
                    ul .plain {
                        @for p in &policies.items {
                            li { a href={(BASE) "/policies/" (p.id)} { (p.name) } " · revision " (p.revision) }
                        }
                    }
                    @if policies.total > policies.items.len() as u64 {
                        p { a href={(BASE) "/policies"} { "All " (policies.total) " policies" } }
                    }
                }
            }
            section .card .wide aria-labelledby="h-failures" {
                h2 #h-failures { "Recent failures" }
                (failures_view(&failing, &failures))
            }
        }
    };
    Ok(page(session, Nav::Overview, "Overview", body))
}

/// How many of each kind of failure the overview lists.
const FAILURES_SHOWN: u32 = 5;
/// Task runs looked at for errors (the newest).
const RUNS_READ: u32 = 200;
/// Connectors looked at for a failed verification.
const CONNECTORS_READ: u32 = 200;

/// The overview's failures other than agents reporting an error.
pub(crate) struct Failures {
    /// Agents whose last policy change failed, and how many in all.
    policy_changes: (Vec<Agent>, u64),
    /// Unhealthy inputs of the agents in error or degraded: agent, input
    /// (component or unit) id, its status and message.
    inputs: Vec<(String, String, String, String, String)>,
    /// Tasks that failed for good, then recent runs that failed: task id,
    /// type, when, error.
    tasks: Vec<(String, String, Option<DateTime<Utc>>, String)>,
    /// Connectors whose verification failed or found a permission missing.
    connectors: Vec<(String, String, String)>,
    /// Whether this instance runs the task manager (else no task list).
    task_manager: bool,
}

/// A component's or unit's status counts as unhealthy unless it is one
/// of these.
fn healthy(status: &str) -> bool {
    matches!(
        status.to_ascii_uppercase().as_str(),
        "HEALTHY" | "STARTING" | "CONFIGURING" | "STOPPING" | "STOPPED" | ""
    )
}

/// The unhealthy components and units an agent reported.
fn unhealthy_inputs(agent: &Agent) -> Vec<(String, String, String)> {
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let mut out = Vec::new();
    for c in agent
        .components
        .as_ref()
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let id = str_of(c, "id");
        if !healthy(&str_of(c, "status")) {
            out.push((id.clone(), str_of(c, "status"), str_of(c, "message")));
        }
        for u in c
            .get("units")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !healthy(&str_of(u, "status")) {
                out.push((
                    format!("{id} / {}", str_of(u, "id")),
                    str_of(u, "status"),
                    str_of(u, "message"),
                ));
            }
        }
    }
    out
}

pub(crate) async fn recent_failures(
    state: &ConsoleState,
    failing: &[Agent],
) -> Result<Failures, ConsoleError> {
    let m = state.services.management();
    let failed = m
        .list_agents(
            &AgentFilter {
                policy_change_failed: true,
                sort: Some(AgentSort {
                    field: AgentSortField::LastCheckin,
                    ascending: false,
                }),
                ..Default::default()
            },
            Page {
                page: 1,
                per_page: FAILURES_SHOWN,
            },
        )
        .await?;
    let mut inputs = Vec::new();
    for a in failing {
        for (input, status, message) in unhealthy_inputs(a) {
            inputs.push((a.id.clone(), label(a).to_owned(), input, status, message));
        }
    }
    inputs.truncate(FAILURES_SHOWN as usize * 2);
    let mut tasks = Vec::new();
    if let Some(tm) = state.tasks.as_ref() {
        let failed = tm
            .list(
                None,
                Some("failed"),
                Page {
                    page: 1,
                    per_page: FAILURES_SHOWN,
                },
            )
            .await?;
        for t in failed.items {
            tasks.push((
                t.id,
                t.task_type,
                t.last_run_at,
                t.last_error.unwrap_or_else(|| "failed".into()),
            ));
        }
        for r in tm.runs(None, RUNS_READ).await? {
            if tasks.len() >= FAILURES_SHOWN as usize * 2 {
                break;
            }
            let (Some(id), Some(error)) = (r["taskId"].as_str(), r["error"].as_str()) else {
                continue;
            };
            if tasks.iter().any(|(t, ..)| t == id) {
                continue;
            }
            let at = r["finishedAt"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            tasks.push((
                id.to_owned(),
                r["taskType"].as_str().unwrap_or("").to_owned(),
                at,
                error.to_owned(),
            ));
        }
    }
    let mut connectors = Vec::new();
    let all = m
        .list_connectors(Page {
            page: 1,
            per_page: CONNECTORS_READ,
        })
        .await?;
    for c in all.items {
        let missing: Vec<String> = c
            .verification_permissions
            .iter()
            .flat_map(|s| s.permissions.iter())
            .filter(|p| p.required && p.status != PermissionStatus::Verified)
            .map(|p| p.action.clone())
            .collect();
        let failed = c.verification_status == Some(VerificationStatus::Failed);
        if failed || !missing.is_empty() {
            let why = if missing.is_empty() {
                c.verification_message
                    .clone()
                    .unwrap_or_else(|| "verification failed".into())
            } else {
                format!("missing {}", missing.join(", "))
            };
            connectors.push((c.id, c.name, why));
        }
        if connectors.len() >= FAILURES_SHOWN as usize {
            break;
        }
    }
    Ok(Failures {
        policy_changes: (failed.items, failed.total),
        inputs,
        tasks,
        connectors,
        task_manager: state.tasks.is_some(),
    })
}

fn label(a: &Agent) -> &str {
    if hostname(a).is_empty() {
        &a.id
    } else {
        hostname(a)
    }
}

fn failures_view(failing: &[Agent], f: &Failures) -> Markup {
    html! {
        div .failures {
            section aria-labelledby="h-f-agents" #failing-agents {
                h3 #h-f-agents { "Agents reporting an error" }
                @if failing.is_empty() {
                    p .empty { "No agent reports an error." }
                } @else {
                    ul .plain { @for a in failing {
                        li {
                            a href={(BASE) "/agents/" (a.id)} { (label(a)) }
                            " " (status_badge(a.status.as_str()))
                            " " (a.last_checkin_message.as_deref().unwrap_or(""))
                            " · " (when_opt(a.last_checkin))
                        }
                    } }
                }
            }
            section aria-labelledby="h-f-policy" #failed-policy-changes {
                h3 #h-f-policy { "Failed policy changes" }
                @if f.policy_changes.0.is_empty() {
                    p .empty { "No agent failed to apply its policy." }
                } @else {
                    ul .plain { @for a in &f.policy_changes.0 {
                        li {
                            a href={(BASE) "/agents/" (a.id)} { (label(a)) }
                            " " span .behind { (a.policy_change_failure.as_ref().and_then(|v| v.get("message")).and_then(Value::as_str).unwrap_or("failed")) }
                        }
                    } }
                    @if f.policy_changes.1 > f.policy_changes.0.len() as u64 {
                        p .muted { (f.policy_changes.1) " agents in all." }
                    }
                }
            }
            section aria-labelledby="h-f-inputs" #unhealthy-inputs {
                h3 #h-f-inputs { "Unhealthy inputs" }
                @if f.inputs.is_empty() {
                    p .empty { "No input reports a problem." }
                } @else {
                    ul .plain { @for (id, host, input, status, message) in &f.inputs {
                        li {
                            a href={(BASE) "/agents/" (id)} { (host) } " · " code { (input) }
                            " " (status_badge(&status.to_ascii_lowercase())) " " (message)
                        }
                    } }
                }
            }
            section aria-labelledby="h-f-tasks" #failed-tasks {
                h3 #h-f-tasks { "Failed tasks" }
                @if !f.task_manager {
                    p .muted { "The task manager does not run on this instance." }
                } @else if f.tasks.is_empty() {
                    p .empty { "No task failed recently." }
                } @else {
                    ul .plain { @for (id, task_type, at, error) in &f.tasks {
                        li {
                            a href={(BASE) "/tasks?type=" (task_type)} { code { (task_type) } } " " code .muted { (id) }
                            " " span .behind { (error) } " · " (when_opt(*at))
                        }
                    } }
                }
            }
            section aria-labelledby="h-f-connectors" #failing-connectors {
                h3 #h-f-connectors { "Connectors failing verification" }
                @if f.connectors.is_empty() {
                    p .empty { "No connector fails verification." }
                } @else {
                    ul .plain { @for (id, name, why) in &f.connectors {
                        li { a href={(BASE) "/connectors#c-" (id)} { (name) } " " span .behind { (why) } }
                    } }
                }
            }
        }
    }
}

pub(crate) async fn page_route(
    State(state): State<ConsoleState>,
    session: Session,
) -> Result<Markup, ConsoleError> {
    page_handler(&state, &session).await
}
