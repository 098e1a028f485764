//! The task manager: this instance's health (the service behind
//! `/api/task_manager/_health`) and the tasks, paged, with run now,
//! enable and disable (CSRF-checked forms).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{csrf_field, Session};
use crate::error::ConsoleError;
use crate::layout::{nonempty, page, page_number, pager, query, status_badge, when, when_opt, Nav};
use crate::{ConsoleState, BASE};

const PER_PAGE: u32 = 25;

#[derive(Deserialize, Default)]
pub(crate) struct TasksQuery {
    #[serde(rename = "type")]
    task_type: Option<String>,
    status: Option<String>,
    page: Option<String>,
    /// What the last action did, to say so (set by our redirects).
    done: Option<String>,
}

fn manager(
    state: &ConsoleState,
) -> Result<&std::sync::Arc<flotilla_service::tasks::TaskManager>, ConsoleError> {
    state.tasks.as_ref().ok_or_else(|| {
        ConsoleError::Unavailable("The task manager does not run on this instance.".into())
    })
}

fn num(v: &Value, path: &[&str]) -> String {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    match at {
        Value::Null => "—".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) async fn list(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<TasksQuery>,
) -> Result<Markup, ConsoleError> {
    let Some(tm) = state.tasks.as_ref() else {
        let body = html! {
            p .empty { "The task manager does not run on this instance." }
        };
        return Ok(page(&session, Nav::Tasks, "Tasks", body));
    };
    let task_type = nonempty(&q.task_type);
    let status =
        nonempty(&q.status).filter(|s| matches!(s.as_str(), "idle" | "running" | "failed"));
    let at = page_number(q.page.as_deref(), PER_PAGE);
    let health = tm.health().await?;
    let tasks = tm.list(task_type.clone(), status.as_deref(), at).await?;
    let filters = [
        ("type", task_type.as_deref().unwrap_or("")),
        ("status", status.as_deref().unwrap_or("")),
    ];
    let back = format!("{BASE}/tasks{}", query(&filters));
    let stats = &health["stats"];
    let by_type = stats["workload"]["task_types"].as_object();
    let body = html! {
        @if let Some(done) = q.done.as_deref() {
            p .notice role="status" #task-done { (match done {
                "run" => "Asked to run as soon as possible.",
                "enabled" => "Enabled.",
                "disabled" => "Disabled.",
                _ => "Done.",
            }) }
        }
        section aria-labelledby="h-health" {
            h2 #h-health { "Health of this instance" }
            dl .facts #task-health {
                dt { "Status" } dd { (status_badge(&num(&health, &["status"]).to_lowercase())) }
                dt { "Instance" } dd { code { (num(&health, &["id"])) } }
                dt { "Tasks" } dd { (num(stats, &["workload", "count"])) " (" (num(stats, &["workload", "overdue"])) " overdue)" }
                dt { "Drift p50 / p99" } dd { (num(stats, &["runtime", "drift_ms", "p50"])) " ms / " (num(stats, &["runtime", "drift_ms", "p99"])) " ms" }
                dt { "Load" } dd { (num(stats, &["runtime", "load", "running"])) " running, " (num(stats, &["runtime", "load", "utilisation_percent"])) " % of capacity" }
                dt { "Claims" } dd { (num(stats, &["configuration", "claim_strategy"])) ", every " (num(stats, &["configuration", "poll_interval_ms"])) " ms" }
            }
            @if let Some(types) = by_type {
                div .table-wrap { table {
                    caption .visually-hidden { "Tasks by type" }
                    thead { tr { th scope="col" { "Type" } th scope="col" { "Tasks" } th scope="col" { "Overdue" } } }
                    tbody { @for (t, v) in types.iter().take(100) {
                        tr { td { a href={(BASE) "/tasks" (query(&[("type", t)]))} { code { (t) } } } td { (num(v, &["count"])) } td { (num(v, &["overdue"])) } }
                    } }
                } }
            }
        }
        section aria-labelledby="h-tasks" {
            h2 #h-tasks { "Tasks" }
            form .filters method="get" action={(BASE) "/tasks"} role="search" aria-label="Find tasks" {
                div .field {
                    label for="k-type" { "Type" }
                    input #k-type type="search" name="type" value=(task_type.as_deref().unwrap_or("")) maxlength="256";
                }
                div .field {
                    label for="k-status" { "Status" }
                    select #k-status name="status" {
                        option value="" { "Any" }
                        @for s in ["idle", "running", "failed"] {
                            option value=(s) selected[status.as_deref() == Some(s)] { (s) }
                        }
                    }
                }
                div .field .actions { button type="submit" { "Find" } }
            }
            @if tasks.items.is_empty() {
                p .empty { "No tasks match." }
            } @else {
                div .table-wrap { table #tasks {
                    caption .visually-hidden { "Tasks" }
                    thead { tr {
                        th scope="col" { "Task" } th scope="col" { "Type" } th scope="col" { "Status" }
                        th scope="col" { "Next run" } th scope="col" { "Last run" } th scope="col" { "Runs" }
                        th scope="col" { span .visually-hidden { "Actions" } }
                    } }
                    tbody { @for t in &tasks.items {
                        tr {
                            td { code { (t.id) } }
                            td { code { (t.task_type) } }
                            td {
                                (status_badge(&t.status))
                                @if !t.enabled { " " span .tag { "disabled" } }
                                @if let Some(e) = &t.last_error { br; span .muted { (e.chars().take(200).collect::<String>()) } }
                            }
                            td { (when(t.run_at)) }
                            td { (when_opt(t.last_run_at)) }
                            td { (t.runs) }
                            td .actions {
                                form .inline method="post" action={(BASE) "/tasks/" (t.id) "/run"} {
                                    (csrf_field(&session))
                                    input type="hidden" name="back" value=(back);
                                    button type="submit" .secondary aria-label={"Run " (t.id) " now"} { "Run now" }
                                }
                                @let (verb, label) = if t.enabled { ("disable", "Disable") } else { ("enable", "Enable") };
                                form .inline method="post" action={(BASE) "/tasks/" (t.id) "/" (verb)} {
                                    (csrf_field(&session))
                                    input type="hidden" name="back" value=(back);
                                    button type="submit" .secondary aria-label={(label) " " (t.id)} { (label) }
                                }
                            }
                        }
                    } }
                } }
            }
            (pager("/tasks", &filters, at, &tasks))
        }
    };
    Ok(page(&session, Nav::Tasks, "Tasks", body))
}

#[derive(Deserialize, Default)]
pub(crate) struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    back: String,
}

/// Back to the list the form was on (only a console tasks URL), saying
/// what was done.
fn back_to(back: &str, done: &str) -> Redirect {
    let base = format!("{BASE}/tasks");
    let back = if back == base || back.starts_with(&format!("{base}?")) {
        back.to_owned()
    } else {
        base
    };
    let sep = if back.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{back}{sep}done={done}"))
}

pub(crate) async fn act(
    State(state): State<ConsoleState>,
    session: Session,
    Path((id, verb)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    let tm = manager(&state)?;
    let done = match verb.as_str() {
        "run" => {
            tm.run_soon(&id).await?;
            "run"
        }
        "enable" | "disable" => {
            let enable = verb == "enable";
            let r = tm.set_enabled(std::slice::from_ref(&id), enable).await?;
            if r.results.iter().any(|x| !x.success) {
                return Err(ConsoleError::NotFound(format!("task {id} not found")));
            }
            if enable {
                "enabled"
            } else {
                "disabled"
            }
        }
        _ => return Err(ConsoleError::NotFound("No such page.".into())),
    };
    Ok(back_to(&form.back, done).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_on_the_tasks_page() {
        let to = |b: &str| {
            back_to(b, "run")
                .into_response()
                .headers()
                .get("location")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            to("/app/tasks?status=failed"),
            "/app/tasks?status=failed&done=run"
        );
        assert_eq!(to("https://evil.example/"), "/app/tasks?done=run");
        assert_eq!(to("/app/tasksx"), "/app/tasks?done=run");
    }
}
