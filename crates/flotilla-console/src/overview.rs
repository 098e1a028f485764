//! The overview: agents by status (counts and a chart), policies, recent
//! failures.

use axum::extract::State;
use maud::{html, Markup};

use flotilla_domain::agent::AgentStatus;
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
            section .card aria-labelledby="h-failures" {
                h2 #h-failures { "Recent failures" }
                @if failing.is_empty() {
                    p .empty { "No agent reports an error." }
                } @else {
                    ul .plain {
                        @for a in &failing {
                            li {
                                a href={(BASE) "/agents/" (a.id)} { @if hostname(a).is_empty() { (a.id) } @else { (hostname(a)) } }
                                " " (status_badge(a.status.as_str()))
                                " " (a.last_checkin_message.as_deref().unwrap_or(""))
                                " · " (when_opt(a.last_checkin))
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(session, Nav::Overview, "Overview", body))
}

pub(crate) async fn page_route(
    State(state): State<ConsoleState>,
    session: Session,
) -> Result<Markup, ConsoleError> {
    page_handler(&state, &session).await
}
