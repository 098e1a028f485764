//! The event browser: one data stream's documents, newest first, within a
//! time range and matching a text, paged on the server through the
//! service behind `GET /api/fleet/data_streams/{name}/_search`; and the
//! live tail's JSON (`/data/{name}/tail`), polled by `assets/console.js`
//! with the session cookie. Without the script the page has a refresh
//! link.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use flotilla_store::{DocumentQuery, Page, StoredDocument};

use crate::auth::Session;
use crate::error::ConsoleError;
use crate::layout::{nonempty, page, page_number, pager, query, when, Nav};
use crate::{ConsoleState, BASE};

const PER_PAGE: u32 = 25;
/// The most one tail poll returns.
const TAIL_MAX: u32 = 100;
/// Longest search text accepted.
const MAX_TEXT: usize = 256;

/// The ranges offered: query value, label, length (`None`: all).
const RANGES: [(&str, &str, Option<i64>); 5] = [
    ("15m", "Last 15 minutes", Some(15)),
    ("1h", "Last hour", Some(60)),
    ("24h", "Last 24 hours", Some(24 * 60)),
    ("7d", "Last 7 days", Some(7 * 24 * 60)),
    ("all", "All time", None),
];

#[derive(Deserialize, Default)]
pub(crate) struct EventsQuery {
    range: Option<String>,
    q: Option<String>,
    page: Option<String>,
}

fn range_of(raw: Option<&str>) -> (&'static str, Option<i64>) {
    let raw = raw.unwrap_or("24h");
    RANGES
        .iter()
        .find(|(k, _, _)| *k == raw)
        .map(|(k, _, m)| (*k, *m))
        .unwrap_or(("24h", Some(24 * 60)))
}

fn text_of(q: &Option<String>) -> Result<Option<String>, ConsoleError> {
    let text = nonempty(q);
    if text.as_ref().is_some_and(|t| t.chars().count() > MAX_TEXT) {
        return Err(ConsoleError::Invalid(format!(
            "The search text is longer than {MAX_TEXT} characters."
        )));
    }
    Ok(text)
}

/// A line saying what an event is: its `message`, else its JSON, cut.
pub(crate) fn summary(source: &Value) -> String {
    let text = match source.get("message") {
        Some(Value::String(m)) => m.clone(),
        _ => source.to_string(),
    };
    let mut cut: String = text.chars().take(240).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

pub(crate) async fn browse(
    State(state): State<ConsoleState>,
    session: Session,
    Path(name): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Markup, ConsoleError> {
    let (range, minutes) = range_of(q.range.as_deref());
    let text = text_of(&q.q)?;
    let now = state.clock.now();
    let at = page_number(q.page.as_deref(), PER_PAGE);
    let found = state
        .services
        .management()
        .search_data_stream(
            &name,
            &DocumentQuery {
                from: minutes.map(|m| now - Duration::minutes(m)),
                to: None,
                text: text.clone(),
                matches: vec![],
                ascending: false,
            },
            at,
        )
        .await?;
    let text_value = text.as_deref().unwrap_or("");
    let filters = [("range", range), ("q", text_value)];
    // The tail starts after the newest event (the first of page 1; on
    // later pages, or with none, from now).
    let newest = found
        .items
        .first()
        .filter(|_| at.page == 1)
        .map(|d| d.timestamp)
        .unwrap_or(now);
    let tail_url = format!(
        "{BASE}/data/{name}/tail{}",
        query(&[
            ("after", &newest.timestamp_millis().to_string()),
            ("q", text_value)
        ])
    );
    let here = format!("{BASE}/data/{name}{}", query(&filters));
    let body = html! {
        p { a href={(BASE) "/data"} { "← All data streams" } }
        form .filters method="get" action={(BASE) "/data/" (name)} role="search" aria-label="Find events" {
            div .field {
                label for="e-range" { "Time range" }
                select #e-range name="range" {
                    @for (k, label, _) in RANGES {
                        option value=(k) selected[k == range] { (label) }
                    }
                }
            }
            div .field {
                label for="e-q" { "Text contains" }
                input #e-q type="search" name="q" value=(text_value) maxlength=(MAX_TEXT);
            }
            div .field .actions { button type="submit" { "Find" } }
        }
        div .toolbar {
            a .button .secondary href=(here) #e-refresh { "Refresh" }
            // The script turns this into a live tail; without it, the
            // refresh link above does the same by hand.
            button type="button" .secondary #e-tail hidden data-tail=(tail_url) aria-pressed="false" { "Live tail" }
            span #e-tail-status .muted role="status" aria-live="polite" {}
        }
        @if found.items.is_empty() && at.page == 1 {
            p .empty #e-empty { "No events in this range." }
        }
        div .table-wrap { table #e-events {
            caption .visually-hidden { "Events of " (name) ", newest first" }
            thead { tr { th scope="col" { "Time" } th scope="col" { "Event" } } }
            tbody { @for d in &found.items { (row(d)) } }
        } }
        (pager(&format!("/data/{name}"), &filters, at, &found))
    };
    Ok(page(&session, Nav::Data, &format!("Events · {name}"), body))
}

fn row(d: &StoredDocument) -> Markup {
    html! {
        tr {
            td .nowrap { (when(d.timestamp)) }
            td {
                details {
                    summary { (summary(&d.source)) }
                    pre { (serde_json::to_string_pretty(&d.source).unwrap_or_default()) }
                }
            }
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct TailQuery {
    after: Option<String>,
    q: Option<String>,
}

/// `GET /data/{name}/tail?after=<ms>&q=…`: events after `after`, oldest
/// first, at most [`TAIL_MAX`], and the cursor to ask with next.
pub(crate) async fn tail(
    State(state): State<ConsoleState>,
    _session: Session,
    Path(name): Path<String>,
    Query(q): Query<TailQuery>,
) -> Result<Response, ConsoleError> {
    let text = text_of(&q.q)?;
    let after = match q.after.as_deref().map(str::trim) {
        None | Some("") => state.clock.now(),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .ok_or_else(|| ConsoleError::Invalid("after: not a time in milliseconds".into()))?,
    };
    let found = state
        .services
        .management()
        .search_data_stream(
            &name,
            &DocumentQuery {
                from: Some(after + Duration::milliseconds(1)),
                to: None,
                text,
                matches: vec![],
                ascending: true,
            },
            Page {
                page: 1,
                per_page: TAIL_MAX,
            },
        )
        .await?;
    let cursor = found
        .items
        .last()
        .map(|d| d.timestamp)
        .unwrap_or(after)
        .timestamp_millis();
    let events: Vec<Value> = found
        .items
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "timestamp": d.timestamp.to_rfc3339(),
                "time": d.timestamp.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                "summary": summary(&d.source),
                "source": serde_json::to_string_pretty(&d.source).unwrap_or_default(),
            })
        })
        .collect();
    let body = json!({
        "events": events,
        "after": cursor.to_string(),
        "more": found.total > u64::from(TAIL_MAX),
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_prefer_the_message_and_are_cut() {
        assert_eq!(summary(&json!({"message": "hi", "x": 1})), "hi");
        assert_eq!(summary(&json!({"x": 1})), r#"{"x":1}"#);
        let long = "é".repeat(300);
        let s = summary(&json!({ "message": long }));
        assert_eq!(s.chars().count(), 241);
        assert!(s.ends_with('…'));
    }

    #[test]
    fn unknown_ranges_fall_back_to_a_day() {
        assert_eq!(range_of(Some("1h")), ("1h", Some(60)));
        assert_eq!(range_of(Some("junk")).0, "24h");
        assert_eq!(range_of(None).0, "24h");
    }
}
