//! Enrollment tokens: list, create (the secret shown once, with the
//! enrolment command line), revoke.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use flotilla_api::management::CreateEnrollmentKey;
use flotilla_domain::enrollment::EnrollmentApiKey;
use flotilla_service::ServiceError;
use flotilla_store::{EnrollmentKeyFilter, Page, PolicyFilter};

use crate::auth::{csrf_field, Session};
use crate::error::ConsoleError;
use crate::layout::{nonempty, page, page_number, pager, when, Nav};
use crate::{ConsoleState, BASE};

const PER_PAGE: u32 = 20;

#[derive(Deserialize, Default)]
pub(crate) struct TokensQuery {
    policy: Option<String>,
    page: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    policy_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires_in: String,
    #[serde(default)]
    max_uses: String,
}

/// A lifetime as the form takes it: a whole number and a unit (`30m`,
/// `12h`, `7d`); empty: none.
fn parse_expires_in(raw: &str) -> Result<Option<chrono::Duration>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let bad = || format!("“{raw}” is not a lifetime: write a number and m, h or d (30m, 12h, 7d)");
    let (n, unit) = raw.split_at(raw.len() - raw.chars().last().map_or(0, char::len_utf8));
    let n: i64 = n.trim().parse().map_err(|_| bad())?;
    if !(1..=36_500 * 24 * 60).contains(&n) {
        return Err(bad());
    }
    match unit {
        "m" => Ok(Some(chrono::Duration::minutes(n))),
        "h" => Ok(Some(chrono::Duration::hours(n))),
        "d" => Ok(Some(chrono::Duration::days(n))),
        _ => Err(bad()),
    }
    .and_then(|d| match d {
        Some(d) if d > chrono::Duration::days(36_500) => Err(bad()),
        d => Ok(d),
    })
}

fn parse_max_uses(raw: &str) -> Result<Option<u64>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    match raw.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(format!("“{raw}” is not a number of agents (1 or more)")),
    }
}

/// A token just made: shown on this one response, never again.
struct Created {
    key: EnrollmentApiKey,
    token: SecretString,
    url: String,
}

async fn view(
    state: &ConsoleState,
    session: &Session,
    q: &TokensQuery,
    created: Option<&Created>,
    error: Option<&str>,
) -> Result<Markup, ConsoleError> {
    let m = state.services.management();
    let policy = nonempty(&q.policy);
    let at = page_number(q.page.as_deref(), PER_PAGE);
    let tokens = m
        .list_enrollment_keys(
            &EnrollmentKeyFilter {
                policy_id: policy.clone(),
            },
            at,
        )
        .await?;
    let policies = m
        .list_policies(
            &PolicyFilter::default(),
            Page {
                page: 1,
                per_page: 200,
            },
        )
        .await?;
    let filters = [("policy", policy.as_deref().unwrap_or(""))];
    let body = html! {
        @if let Some(c) = created {
            section .created aria-labelledby="h-created" role="status" {
                h2 #h-created { "Token “" (c.key.name) "” created" }
                p { strong { "Copy it now: it is shown only this once." } }
                div .secret {
                    code #token-secret { (c.token.expose_secret()) }
                    button type="button" .secondary data-copy="token-secret" { "Copy token" }
                }
                p { "Enrol an agent with:" }
                div .secret {
                    code #enroll-command { "flotilla agent enroll --url " (c.url) " --enrollment-token " (c.token.expose_secret()) }
                    button type="button" .secondary data-copy="enroll-command" { "Copy command" }
                }
            }
        }
        @if let Some(e) = error { p .error role="alert" { (e) } }
        section aria-labelledby="h-create" {
            h2 #h-create { "Create a token" }
            @if policies.items.is_empty() {
                p { "Create a " a href={(BASE) "/policies/new"} { "policy" } " first: a token enrols agents into one." }
            } @else {
                form .filters method="post" action={(BASE) "/tokens"} {
                    (csrf_field(session))
                    div .field {
                        label for="t-policy" { "Policy" }
                        select #t-policy name="policy_id" required {
                            @for p in &policies.items {
                                option value=(p.id) selected[policy.as_deref() == Some(p.id.as_str())] { (p.name) }
                            }
                        }
                    }
                    div .field {
                        label for="t-name" { "Name (optional)" }
                        input #t-name type="text" name="name" maxlength="256";
                    }
                    div .field {
                        label for="t-expires" { "Expires in (optional)" }
                        input #t-expires type="text" name="expires_in" maxlength="16" placeholder="7d" aria-describedby="t-expires-hint";
                        span .hint #t-expires-hint { "30m, 12h, 7d; empty: never" }
                    }
                    div .field {
                        label for="t-uses" { "Agents it may enrol (optional)" }
                        input #t-uses type="number" min="1" step="1" name="max_uses" aria-describedby="t-uses-hint";
                        span .hint #t-uses-hint { "empty: any number" }
                    }
                    div .field .actions { button type="submit" { "Create token" } }
                }
            }
        }
        section aria-labelledby="h-list" {
            h2 #h-list { "Tokens" }
            @if tokens.items.is_empty() {
                p .empty { "No enrollment tokens." }
            } @else {
                div .table-wrap { table {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Policy" } th scope="col" { "Starts with" }
                        th scope="col" { "Created" } th scope="col" { "Expires" } th scope="col" { "Uses" }
                        th scope="col" { "State" } th scope="col" { span .visually-hidden { "Actions" } }
                    } }
                    tbody { @for t in &tokens.items {
                        tr {
                            td { (t.name) }
                            td { a href={(BASE) "/policies/" (t.policy_id)} { (policies.items.iter().find(|p| p.id == t.policy_id).map(|p| p.name.as_str()).unwrap_or(&t.policy_id)) } }
                            td { code { (t.hint) "…" } }
                            td { (when(t.created_at)) }
                            td { @if let Some(e) = t.expiration { (when(e)) } @else { span .muted { "never" } } }
                            td { (t.uses) @if let Some(m) = t.max_uses { " of " (m) } }
                            td { @if t.active { "active" } @else { span .muted { "revoked" } } }
                            td {
                                @if t.active {
                                    form .inline method="post" action={(BASE) "/tokens/" (t.id) "/revoke"} {
                                        (csrf_field(session))
                                        button type="submit" .danger aria-label={"Revoke token " (t.name)} { "Revoke" }
                                    }
                                }
                            }
                        }
                    } }
                } }
            }
            (pager("/tokens", &filters, at, &tokens))
        }
    };
    Ok(page(session, Nav::Tokens, "Enrollment tokens", body))
}

pub(crate) async fn list(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<TokensQuery>,
) -> Result<Markup, ConsoleError> {
    view(&state, &session, &q, None, None).await
}

/// The URL agents enrol at: the configured public URL, else the address
/// this browser used.
fn enroll_url(state: &ConsoleState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.settings.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:8220");
    let scheme = if state.settings.secure_cookies {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

pub(crate) async fn create(
    State(state): State<ConsoleState>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<CreateForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    let name = Some(form.name.trim().to_owned()).filter(|n| !n.is_empty());
    let q = TokensQuery {
        policy: Some(form.policy_id.trim().to_owned()),
        page: None,
    };
    let limits = parse_expires_in(&form.expires_in)
        .map_err(|e| format!("Expires in: {e}"))
        .and_then(|e| {
            parse_max_uses(&form.max_uses)
                .map(|m| (e, m))
                .map_err(|e| format!("Agents it may enrol: {e}"))
        });
    let (expires_in, max_uses) = match limits {
        Ok(l) => l,
        Err(e) => {
            let page = view(&state, &session, &q, None, Some(&e)).await?;
            return Ok((StatusCode::BAD_REQUEST, page).into_response());
        }
    };
    let req = CreateEnrollmentKey {
        policy_id: form.policy_id.trim().to_owned(),
        name,
        // The service checks the expiry against its own clock.
        expiration: expires_in.map(|d| chrono::Utc::now() + d),
        max_uses,
    };
    match state.services.management().create_enrollment_key(req).await {
        Ok((key, token)) => {
            let created = Created {
                key,
                token,
                url: enroll_url(&state, &headers),
            };
            // Answered here, not redirected: the secret must not travel
            // in a URL, and no-store keeps it out of the cache.
            Ok(view(&state, &session, &q, Some(&created), None)
                .await?
                .into_response())
        }
        Err(e @ (ServiceError::Invalid(_) | ServiceError::Conflict(_))) => {
            let page = view(&state, &session, &q, None, Some(&e.to_string())).await?;
            Ok((StatusCode::BAD_REQUEST, page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub(crate) struct RevokeForm {
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn revoke(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<RevokeForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    let key = state
        .services
        .management()
        .revoke_enrollment_key(&id)
        .await?;
    Ok(Redirect::to(&format!("{BASE}/tokens?policy={}", key.policy_id)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_and_use_limits_are_read_strictly() {
        assert_eq!(parse_expires_in(" ").unwrap(), None);
        assert_eq!(
            parse_expires_in("30m").unwrap(),
            Some(chrono::Duration::minutes(30))
        );
        assert_eq!(
            parse_expires_in("7d").unwrap(),
            Some(chrono::Duration::days(7))
        );
        for bad in ["d", "7", "7w", "-1h", "0h", "1é", "99999999999d"] {
            assert!(parse_expires_in(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_max_uses("").unwrap(), None);
        assert_eq!(parse_max_uses("3").unwrap(), Some(3));
        for bad in ["0", "-1", "x", "1.5"] {
            assert!(parse_max_uses(bad).is_err(), "{bad}");
        }
    }
}
