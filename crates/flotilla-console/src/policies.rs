//! Agent policies: list, create, and a policy's page (its integrations,
//! the full policy as agents receive it, its permissions block).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use flotilla_api::management::CreateAgentPolicy;
use flotilla_service::ServiceError;
use flotilla_store::{AgentFilter, EnrollmentKeyFilter, PackagePolicyFilter, Page, PolicyFilter};

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

/// Agents on a policy: a counting query.
async fn agent_count(state: &ConsoleState, policy_id: &str) -> Result<u64, ConsoleError> {
    let filter = AgentFilter {
        policy_id: Some(policy_id.to_owned()),
        ..Default::default()
    };
    Ok(state
        .services
        .management()
        .list_agents(
            &filter,
            Page {
                page: 1,
                per_page: 1,
            },
        )
        .await?
        .total)
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
    let mut counts = Vec::with_capacity(policies.items.len());
    for p in &policies.items {
        counts.push(agent_count(&state, &p.id).await?);
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
                    th scope="col" { "Agents" } th scope="col" { "Updated" }
                } }
                tbody { @for (p, n) in policies.items.iter().zip(&counts) {
                    tr {
                        td { a href={(BASE) "/policies/" (p.id)} { (p.name) } }
                        td { (p.namespace) }
                        td { (p.revision) }
                        td { a href={(BASE) "/agents?policy=" (p.id)} { (n) } }
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

fn form_view(session: &Session, values: &PolicyForm, error: Option<&str>) -> Markup {
    let body = html! {
        @if let Some(e) = error { p .error role="alert" { (e) } }
        form .stack method="post" action={(BASE) "/policies"} {
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
            div .actions { button type="submit" { "Create policy" } a .button .secondary href={(BASE) "/policies"} { "Cancel" } }
        }
    };
    page(session, Nav::Policies, "Create a policy", body)
}

pub(crate) async fn new_form(session: Session) -> Markup {
    form_view(&session, &PolicyForm::default(), None)
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
            let view = form_view(&session, &form, Some(&e.to_string()));
            Ok((StatusCode::BAD_REQUEST, view).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn detail(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Markup, ConsoleError> {
    let m = state.services.management();
    let policy = m.get_policy(&id).await?;
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
            // Seam: the rollout of the last change (agents on the current
            // revision against all) comes with a revision count in the
            // service; the agents table shows each agent's revision.
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
