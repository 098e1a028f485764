//! Agent policies: list, create, and a policy's page (its integrations,
//! the full policy as agents receive it, its permissions block).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use chrono::{DateTime, Utc};
use flotilla_api::management::CreateAgentPolicy;
use flotilla_api::management::UpdateAgentPolicy;
use flotilla_service::ServiceError;
use flotilla_store::{
    EnrollmentKeyFilter, PackagePolicyFilter, Page, PolicyFilter, Rollout, RolloutHistory,
};

use crate::agents::status_counts;
use crate::auth::{csrf_field, Session};
use crate::error::ConsoleError;
use crate::layout::{nonempty, page, page_number, pager, status_badge, when, Nav};
use crate::{ConsoleState, BASE};

const PER_PAGE: u32 = 20;

#[derive(Deserialize, Default)]
pub(crate) struct PoliciesQuery {
    name: Option<String>,
    page: Option<String>,
}

/// A policy's rollout as a bar and words: agents on the current revision
/// against all its agents.
pub(crate) fn rollout_view(revision: i64, r: Rollout) -> Markup {
    let percent = (r.on_revision * 100).checked_div(r.agents).unwrap_or(100);
    html! {
        @if r.agents == 0 {
            span .muted { "no agents" }
        } @else {
            span .rollout {
                progress value=(r.on_revision) max=(r.agents) aria-label={"Agents on revision " (revision)} {}
                " " span .percent { (percent) " %" } " · " (r.on_revision) " of " (r.agents)
            }
        }
    }
}

pub(crate) async fn list(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<PoliciesQuery>,
) -> Result<Markup, ConsoleError> {
    let name = nonempty(&q.name);
    let at = page_number(q.page.as_deref(), PER_PAGE);
    let policies = state
        .services
        .management()
        .list_policies(&PolicyFilter { name: name.clone() }, at)
        .await?;
    let mut rollouts = Vec::with_capacity(policies.items.len());
    for p in &policies.items {
        rollouts.push(state.services.management().policy_rollout(&p.id).await?.1);
    }
    let filters = [("name", name.as_deref().unwrap_or(""))];
    let body = html! {
        div .toolbar {
            form .filters method="get" action={(BASE) "/policies"} role="search" aria-label="Find policies" {
                div .field {
                    label for="f-name" { "Name contains" }
                    input #f-name type="search" name="name" value=(name.as_deref().unwrap_or(""));
                }
                div .field .actions { button type="submit" { "Find" } }
            }
            a .button href={(BASE) "/policies/new"} { "Create policy" }
        }
        @if policies.items.is_empty() {
            p .empty { "No policies yet." }
        } @else {
            div .table-wrap { table {
                caption .visually-hidden { "Agent policies" }
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Namespace" } th scope="col" { "Revision" }
                    th scope="col" { "Agents on the current revision" } th scope="col" { "Updated" }
                } }
                tbody { @for (p, r) in policies.items.iter().zip(&rollouts) {
                    tr {
                        td { a href={(BASE) "/policies/" (p.id)} { (p.name) } }
                        td { (p.namespace) }
                        td { (p.revision) }
                        td { a href={(BASE) "/agents?policy=" (p.id)} { (rollout_view(p.revision, *r)) } }
                        td { (when(p.updated_at)) }
                    }
                } }
            } }
        }
        (pager("/policies", &filters, at, &policies))
    };
    Ok(page(&session, Nav::Policies, "Policies", body))
}

#[derive(Deserialize, Default)]
pub(crate) struct PolicyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    inactivity_timeout: String,
}

/// Which form: a new policy, or an existing one's edit.
enum FormKind<'a> {
    Create,
    Edit { id: &'a str, name: &'a str },
}

fn form_view(
    session: &Session,
    kind: FormKind<'_>,
    values: &PolicyForm,
    error: Option<&str>,
) -> Markup {
    let (action, title, submit, cancel) = match &kind {
        FormKind::Create => (
            format!("{BASE}/policies"),
            "Create a policy".to_owned(),
            "Create policy",
            format!("{BASE}/policies"),
        ),
        FormKind::Edit { id, name } => (
            format!("{BASE}/policies/{id}"),
            format!("Edit {name}"),
            "Save changes",
            format!("{BASE}/policies/{id}"),
        ),
    };
    let body = html! {
        @if let Some(e) = error { p .error role="alert" { (e) } }
        @if matches!(kind, FormKind::Edit { .. }) {
            p .muted { "Saving makes a new revision, which every agent on the policy receives." }
        }
        form .stack method="post" action=(action) {
            (csrf_field(session))
            div .field {
                label for="p-name" { "Name" }
                input #p-name type="text" name="name" required value=(values.name) maxlength="256";
            }
            div .field {
                label for="p-namespace" { "Namespace" }
                input #p-namespace type="text" name="namespace" value=(values.namespace) placeholder="default" aria-describedby="p-namespace-hint";
                small #p-namespace-hint { "Where the policy's data goes: lower case, no spaces. Empty: default." }
            }
            div .field {
                label for="p-description" { "Description" }
                textarea #p-description name="description" rows="3" { (values.description) }
            }
            div .field {
                label for="p-inactivity" { "Inactivity timeout (seconds)" }
                input #p-inactivity type="number" min="1" name="inactivity_timeout" value=(values.inactivity_timeout) placeholder="1209600";
            }
            div .actions { button type="submit" { (submit) } a .button .secondary href=(cancel) { "Cancel" } }
        }
    };
    page(session, Nav::Policies, &title, body)
}

pub(crate) async fn new_form(session: Session) -> Markup {
    form_view(&session, FormKind::Create, &PolicyForm::default(), None)
}

pub(crate) async fn edit_form(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Markup, ConsoleError> {
    let p = state.services.management().get_policy(&id).await?;
    let values = PolicyForm {
        csrf: String::new(),
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        description: p.description.clone().unwrap_or_default(),
        inactivity_timeout: p.inactivity_timeout.to_string(),
    };
    Ok(form_view(
        &session,
        FormKind::Edit {
            id: &p.id,
            name: &p.name,
        },
        &values,
        None,
    ))
}

pub(crate) async fn update(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<PolicyForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    let m = state.services.management();
    let current = m.get_policy(&id).await?;
    let kind = FormKind::Edit {
        id: &current.id,
        name: &current.name,
    };
    let timeout = match form.inactivity_timeout.trim().parse::<u64>() {
        Ok(n) => n,
        Err(_) => {
            let view = form_view(
                &session,
                kind,
                &form,
                Some("The inactivity timeout must be a whole number of seconds."),
            );
            return Ok((StatusCode::BAD_REQUEST, view).into_response());
        }
    };
    let description = Some(form.description.trim().to_owned()).filter(|d| !d.is_empty());
    // Only what changed, so an unchanged form makes no new revision.
    let req = UpdateAgentPolicy {
        name: Some(form.name.trim().to_owned()).filter(|n| *n != current.name),
        namespace: Some(form.namespace.trim().to_owned()).filter(|n| *n != current.namespace),
        description: Some(description).filter(|d| *d != current.description),
        output_id: None,
        inactivity_timeout: Some(timeout).filter(|t| *t != current.inactivity_timeout),
    };
    if req.name.is_none()
        && req.namespace.is_none()
        && req.description.is_none()
        && req.inactivity_timeout.is_none()
    {
        return Ok(Redirect::to(&format!("{BASE}/policies/{id}")).into_response());
    }
    match m.update_policy(&id, req).await {
        Ok(p) => Ok(Redirect::to(&format!("{BASE}/policies/{}", p.id)).into_response()),
        Err(e @ (ServiceError::Invalid(_) | ServiceError::Conflict(_))) => {
            let view = form_view(&session, kind, &form, Some(&e.to_string()));
            Ok((StatusCode::BAD_REQUEST, view).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn create(
    State(state): State<ConsoleState>,
    session: Session,
    Form(form): Form<PolicyForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    let timeout = match form.inactivity_timeout.trim() {
        "" => None,
        t => match t.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                let view = form_view(
                    &session,
                    FormKind::Create,
                    &form,
                    Some("The inactivity timeout must be a whole number of seconds."),
                );
                return Ok((StatusCode::BAD_REQUEST, view).into_response());
            }
        },
    };
    let text = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let req = CreateAgentPolicy {
        id: None,
        name: form.name.trim().to_owned(),
        namespace: text(&form.namespace),
        description: text(&form.description),
        output_id: None,
        inactivity_timeout: timeout,
    };
    match state.services.management().create_policy(req).await {
        Ok(p) => Ok(Redirect::to(&format!("{BASE}/policies/{}", p.id)).into_response()),
        Err(e @ (ServiceError::Invalid(_) | ServiceError::Conflict(_))) => {
            let view = form_view(&session, FormKind::Create, &form, Some(&e.to_string()));
            Ok((StatusCode::BAD_REQUEST, view).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// Buckets in the rollout chart.
const ROLLOUT_BUCKETS: u32 = 60;

/// Agents on the policy's current revision over time since it changed
/// (a step line up to the fleet's size, as server-rendered SVG), the same
/// as a short table, and the agents by the revision they run.
fn rollout_history_view(
    revision: i64,
    since: DateTime<Utc>,
    agents: u64,
    h: &RolloutHistory,
) -> Markup {
    const W: i64 = 600;
    const H: i64 = 160;
    const LEFT: i64 = 48;
    const BOTTOM: i64 = 24;
    // Cumulative arrivals: (time, agents on the revision by then).
    let mut points: Vec<(DateTime<Utc>, u64)> = Vec::with_capacity(h.reached.len() + 2);
    let mut total = 0;
    if h.reached.first().is_none_or(|(t, _)| *t > since) {
        points.push((since, 0));
    }
    for (t, n) in &h.reached {
        total += n;
        points.push((*t, total));
    }
    if let Some(last) = h.last_reached {
        if points.last().is_some_and(|(t, _)| *t < last) {
            points.push((last, total));
        }
    }
    let t0 = since.timestamp_millis();
    let span = (points
        .last()
        .map(|(t, _)| t.timestamp_millis())
        .unwrap_or(t0)
        - t0)
        .max(1);
    let max = agents.max(total).max(1) as i64;
    let x = |t: &DateTime<Utc>| {
        LEFT + (t.timestamp_millis() - t0).clamp(0, span) * (W - LEFT - 8) / span
    };
    let y = |n: u64| (H - BOTTOM) - (n as i64) * (H - BOTTOM - 8) / max;
    // A step line: flat until each bucket, then up.
    let mut line = Vec::with_capacity(points.len() * 2);
    let mut prev: Option<u64> = None;
    for (t, n) in &points {
        if let Some(p) = prev {
            line.push(format!("{},{}", x(t), y(p)));
        }
        line.push(format!("{},{}", x(t), y(*n)));
        prev = Some(*n);
    }
    let percent = |n: u64| (n * 100).checked_div(agents).unwrap_or(100);
    let took = h
        .last_reached
        .map(|l| (l - since).num_milliseconds().max(0) as f64 / 1000.0);
    html! {
        @if h.reached.is_empty() {
            p .muted { "No agent runs revision " (revision) " yet." }
        } @else {
            svg .chart .history #rollout-chart viewBox={"0 0 " (W) " " (H + 8)} role="img" aria-labelledby="rollout-title" {
                title #rollout-title {
                    "Agents on revision " (revision) " since it was made: " (total) " of " (agents)
                    @if let Some(s) = took { ", the last " (format!("{s:.1}")) " s after the change" }
                }
                line x1=(LEFT) y1=(H - BOTTOM) x2=(W) y2=(H - BOTTOM) class="axis" {}
                line x1=(LEFT) y1="8" x2=(LEFT) y2=(H - BOTTOM) class="axis" {}
                line x1=(LEFT) y1=(y(agents)) x2=(W) y2=(y(agents)) class="target" {}
                text x=(LEFT - 6) y=(y(agents) + 4) text-anchor="end" class="chart-label" { (agents) }
                text x=(LEFT - 6) y=(H - BOTTOM) text-anchor="end" class="chart-label" { "0" }
                text x=(LEFT) y=(H - 4) class="chart-label" { (since.format("%H:%M:%S")) }
                @if let Some((t, _)) = points.last() {
                    text x=(W) y=(H - 4) text-anchor="end" class="chart-label" { (t.format("%H:%M:%S")) }
                }
                polyline points=(line.join(" ")) class="line group-online" {}
            }
            details {
                summary { "As a table" }
                table #rollout-table {
                    caption .muted { "Agents on revision " (revision) " over time" }
                    thead { tr { th scope="col" { "By" } th scope="col" { "Agents" } th scope="col" { "Of the policy's" } } }
                    tbody { @for (t, n) in points.iter().rev().take(24).collect::<Vec<_>>().into_iter().rev() {
                        tr { th scope="row" { (when(*t)) } td { (n) } td { (percent(*n)) " %" } }
                    } }
                }
            }
        }
        div .table-wrap { table #rollout-by-revision {
            caption { "Agents by the revision they run" }
            thead { tr { th scope="col" { "Revision" } th scope="col" { "Agents" } } }
            tbody {
                @for (r, n) in &h.by_revision {
                    tr {
                        th scope="row" {
                            @match r {
                                Some(r) if *r >= revision => { (r) " (current)" }
                                Some(r) => { (r) }
                                None => { span .muted { "none yet" } }
                            }
                        }
                        td { (n) " (" (percent(*n)) " %)" }
                    }
                }
                @if h.by_revision.is_empty() { tr { td colspan="2" .muted { "No agents on this policy." } } }
            }
        } }
    }
}

pub(crate) async fn detail(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Markup, ConsoleError> {
    let m = state.services.management();
    let (policy, rollout) = m.policy_rollout(&id).await?;
    let (_, history) = m.policy_rollout_history(&id, ROLLOUT_BUCKETS).await?;
    let integrations = m
        .list_package_policies(
            &PackagePolicyFilter {
                policy_id: Some(id.clone()),
                ..Default::default()
            },
            Page {
                page: 1,
                per_page: 100,
            },
        )
        .await?;
    let tokens = m
        .list_enrollment_keys(
            &EnrollmentKeyFilter {
                policy_id: Some(id.clone()),
            },
            Page {
                page: 1,
                per_page: 1,
            },
        )
        .await?;
    let counts = status_counts(&state.services, Some(&id)).await?;
    let full = state.services.full_policy(&id).await?;
    let permissions = serde_json::to_string_pretty(&full.output_permissions).unwrap_or_default();
    let document = serde_json::to_string_pretty(&full).unwrap_or_default();
    let body = html! {
        section aria-labelledby="h-summary" {
            h2 #h-summary { "Summary" }
            dl .facts {
                dt { "Id" } dd { code { (policy.id) } }
                dt { "Namespace" } dd { (policy.namespace) }
                @if let Some(d) = &policy.description { dt { "Description" } dd { (d) } }
                dt { "Revision" } dd { (policy.revision) }
                dt { "Updated" } dd { (when(policy.updated_at)) }
                dt { "Inactivity timeout" } dd { (policy.inactivity_timeout) " s" }
                dt { "Enrollment tokens" } dd { a href={(BASE) "/tokens?policy=" (policy.id)} { (tokens.total) } }
            }
        }
        div .toolbar {
            a .button href={(BASE) "/policies/" (policy.id) "/edit"} { "Edit policy" }
        }
        section aria-labelledby="h-rollout" {
            h2 #h-rollout { "Rollout of revision " (policy.revision) }
            p #rollout { (rollout_view(policy.revision, rollout)) }
            @if rollout.agents > rollout.on_revision {
                p .muted { (rollout.agents - rollout.on_revision) " agents still run an older revision: they receive this one at their next check-in." }
            }
            (rollout_history_view(policy.revision, policy.updated_at, rollout.agents, &history))
        }
        section aria-labelledby="h-agents" {
            h2 #h-agents { "Agents" }
            ul .counts {
                @for (s, n) in &counts {
                    @if *n > 0 {
                        li { a href={(BASE) "/agents?policy=" (policy.id) "&status=" (s.as_str())} { (status_badge(s.as_str())) " " (n) } }
                    }
                }
                @if counts.iter().all(|(_, n)| *n == 0) { li .muted { "No agents on this policy." } }
            }
        }
        section aria-labelledby="h-integrations" {
            h2 #h-integrations { "Integrations" }
            @if integrations.items.is_empty() {
                p .empty { "No integrations on this policy." }
            } @else {
                div .table-wrap { table {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Package" } th scope="col" { "Namespace" } th scope="col" { "Updated" } } }
                    tbody { @for i in &integrations.items {
                        tr {
                            td { (i.name) }
                            td { (i.package.title.as_deref().unwrap_or(&i.package.name)) " " (i.package.version) }
                            td { (i.namespace.as_deref().unwrap_or(&policy.namespace)) }
                            td { (when(i.updated_at)) }
                        }
                    } }
                } }
            }
        }
        section aria-labelledby="h-permissions" {
            h2 #h-permissions { "Permissions" }
            p .muted { "What each agent's output key may do, per output." }
            pre { code { (permissions) } }
        }
        details {
            summary { "The full policy as agents receive it (secrets as references)" }
            pre { code { (document) } }
        }
    };
    Ok(page(&session, Nav::Policies, &policy.name, body))
}
