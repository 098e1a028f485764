//! Cloud connectors: each one's verification (status, when, and per
//! integration the permissions that are missing), paged, and "verify
//! now" (a CSRF-checked form calling the service behind the API's
//! `POST /api/fleet/cloud_connectors/{id}/_verify`). Secrets are never
//! shown: the page renders no variable values at all.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use flotilla_domain::connector::{CloudConnector, PermissionStatus};
use flotilla_service::ServiceError;

use crate::auth::{csrf_field, Session};
use crate::error::ConsoleError;
use crate::layout::{page, page_number, pager, status_badge, when, when_opt, Nav};
use crate::{ConsoleState, BASE};

const PER_PAGE: u32 = 20;

#[derive(Deserialize, Default)]
pub(crate) struct ConnectorsQuery {
    page: Option<String>,
    /// Set by our redirect after "verify now".
    queued: Option<String>,
}

fn missing(c: &CloudConnector) -> Markup {
    html! {
        @if c.verification_permissions.is_empty() {
            span .muted { "no results yet" }
        } @else {
            ul .plain { @for s in &c.verification_permissions {
                @let bad: Vec<_> = s.permissions.iter()
                    .filter(|p| p.required && p.status != PermissionStatus::Verified)
                    .collect();
                li {
                    code { (s.package_name) } " · " (s.policy_template) ": "
                    @if bad.is_empty() {
                        "all required permissions granted"
                    } @else {
                        (bad.len()) " missing: "
                        @for (i, p) in bad.iter().enumerate() {
                            @if i > 0 { ", " }
                            code { (p.action) }
                            @if let Some(m) = &p.message { " (" (m) ")" }
                        }
                    }
                }
            } }
        }
    }
}

pub(crate) async fn list(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<ConnectorsQuery>,
) -> Result<Markup, ConsoleError> {
    let at = page_number(q.page.as_deref(), PER_PAGE);
    let connectors = state.services.management().list_connectors(at).await?;
    let body = html! {
        @if let Some(id) = q.queued.as_deref() {
            p .notice role="status" #verify-queued { "Verification of " code { (id) } " asked for; the status below changes when the verifier has reported." }
        }
        p .muted { "Made and changed with " code { "flotilla connector" } " or the API; secrets are never shown." }
        @if connectors.items.is_empty() {
            p .empty { "No cloud connectors." }
        } @else {
            div .table-wrap { table #connectors {
                caption .visually-hidden { "Cloud connectors" }
                thead { tr {
                    th scope="col" { "Connector" } th scope="col" { "Cloud" } th scope="col" { "Integrations" }
                    th scope="col" { "Verification" } th scope="col" { "When" } th scope="col" { "Missing permissions" }
                    th scope="col" { span .visually-hidden { "Actions" } }
                } }
                tbody { @for c in &connectors.items {
                    tr id={"c-" (c.id)} {
                        td { (c.name) br; code .muted { (c.id) } }
                        td { (c.cloud_provider.as_str()) }
                        td { (c.package_policy_count) }
                        td {
                            @match c.verification_status {
                                Some(s) => (status_badge(s.as_str())),
                                None => span .muted { "not verified" },
                            }
                            @if let Some(m) = &c.verification_message { br; span .muted { (m) } }
                        }
                        td {
                            @if let Some(t) = c.verification_failed_at { "failed " (when(t)) }
                            @else { (when_opt(c.verification_started_at)) }
                        }
                        td { (missing(c)) }
                        td {
                            form .inline method="post" action={(BASE) "/connectors/" (c.id) "/verify"} {
                                (csrf_field(&session))
                                button type="submit" .secondary aria-label={"Verify " (c.name) " now"} { "Verify now" }
                            }
                        }
                    }
                } }
            } }
        }
        (pager("/connectors", &[], at, &connectors))
    };
    Ok(page(&session, Nav::Connectors, "Cloud connectors", body))
}

#[derive(Deserialize, Default)]
pub(crate) struct VerifyForm {
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn verify(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<VerifyForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    match state.services.management().verify_connector(&id).await {
        Ok(q) => Ok(Redirect::to(&format!(
            "{BASE}/connectors{}",
            crate::layout::query(&[("queued", &q.id)])
        ))
        .into_response()),
        Err(ServiceError::Conflict(m)) => Err(ConsoleError::Conflict(m)),
        Err(e) => Err(e.into()),
    }
}
