//! The overview: agents by status (counts and a chart), policies, recent
//! failures.

use axum::extract::State;
use maud::{html, Markup};

use flotilla_domain::agent::AgentStatus;
use flotilla_store::{AgentFilter, Page, PolicyFilter};

use crate::agents::{hostname, status_counts};
use crate::auth::Session;
use crate::error::ConsoleError;
use crate::layout::{page, status_badge, when_opt, Nav};
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

pub(crate) async fn page_handler(
    state: &ConsoleState,
    session: &Session,
) -> Result<Markup, ConsoleError> {
    let m = state.services.management();
    let counts = status_counts(&state.services, None).await?;
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
                // Seam: filled from the agent status history once the
                // service records it.
                p .muted { "The chart over time appears once the server records agents' status history." }
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
