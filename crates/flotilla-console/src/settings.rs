//! Settings (outputs: add, edit, remove; operator keys: create, shown
//! once, and revoke) and Data (the embedded output's data streams), paged
//! on the server.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use flotilla_api::management::{CreateOperatorKey, CreateOutput, OutputSecrets, UpdateOutput};
use flotilla_domain::apikey::OperatorApiKey;
use flotilla_domain::output::{Output, OutputType};
use flotilla_service::ServiceError;
use flotilla_store::Paged;

use crate::auth::{csrf_field, Session};
use crate::error::ConsoleError;
use crate::layout::{page, page_number, pager, pager_with, when, when_opt, Nav};
use crate::{ConsoleState, BASE};

const PER_PAGE: u32 = 20;

#[derive(Deserialize, Default)]
pub(crate) struct SettingsQuery {
    outputs: Option<String>,
    keys: Option<String>,
}

/// The output form as posted (add and edit).
#[derive(Deserialize, Default, Clone)]
pub(crate) struct OutputForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    output_type: String,
    /// One host a line.
    #[serde(default)]
    hosts: String,
    /// A checkbox: present when ticked.
    #[serde(default)]
    is_default: Option<String>,
    /// The cluster credential (Elasticsearch): write-only, never shown.
    #[serde(default)]
    api_key: String,
    /// Edit only: drop the cluster credential.
    #[serde(default)]
    clear_credential: Option<String>,
}

impl OutputForm {
    fn of(o: &Output) -> Self {
        OutputForm {
            name: o.name.clone(),
            output_type: o.output_type.as_str().to_owned(),
            hosts: o.hosts.join("\n"),
            is_default: o.is_default.then(|| "on".to_owned()),
            ..Default::default()
        }
    }

    fn hosts(&self) -> Vec<String> {
        self.hosts
            .lines()
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn output_type(&self) -> Result<OutputType, String> {
        OutputType::parse(self.output_type.trim())
            .ok_or_else(|| format!("“{}” is not an output type", self.output_type.trim()))
    }

    fn secrets(&self) -> Option<OutputSecrets> {
        let key = self.api_key.trim();
        (!key.is_empty()).then(|| OutputSecrets {
            api_key: Some(key.to_owned()),
            service_token: None,
        })
    }
}

/// The fields of the output form; `id` prefixes the element ids.
fn output_fields(id: &str, values: &OutputForm, editing: Option<&Output>) -> Markup {
    let f = |name: &str| format!("{id}-{name}");
    html! {
        div .field {
            label for=(f("name")) { "Name" }
            input id=(f("name")) type="text" name="name" required maxlength="256" value=(values.name);
        }
        div .field {
            label for=(f("type")) { "Type" }
            select id=(f("type")) name="type" {
                @for t in [OutputType::Elasticsearch, OutputType::Logstash, OutputType::Kafka] {
                    option value=(t.as_str()) selected[values.output_type == t.as_str()] { (t.as_str()) }
                }
            }
        }
        div .field {
            label for=(f("hosts")) { "Hosts" }
            textarea id=(f("hosts")) name="hosts" rows="3" required aria-describedby=(f("hosts-hint")) { (values.hosts) }
            small id=(f("hosts-hint")) { "One a line: URLs for Elasticsearch (https://es:9200), host:port for Logstash and Kafka." }
        }
        div .field .check {
            input id=(f("default")) type="checkbox" name="is_default" value="on" checked[values.is_default.is_some()];
            label for=(f("default")) { "Default output (policies without one send here)" }
        }
        div .field {
            label for=(f("api-key")) { "Cluster API key (optional, Elasticsearch)" }
            input id=(f("api-key")) type="password" name="api_key" autocomplete="off" maxlength="4096" aria-describedby=(f("api-key-hint"));
            small id=(f("api-key-hint")) {
                "base64(id:secret) of a key allowed to manage API keys there: agents' keys are then made in that cluster. Never shown again"
                @if editing.is_some_and(|o| o.remote_key_management) { "; one is set — empty keeps it" }
                "."
            }
        }
        @if editing.is_some_and(|o| o.remote_key_management) {
            div .field .check {
                input id=(f("clear")) type="checkbox" name="clear_credential" value="on";
                label for=(f("clear")) { "Remove the cluster credential (Flotilla's own key service makes agents' keys again)" }
            }
        }
    }
}

/// An operator key just made: shown on this one response, never again.
struct CreatedKey {
    key: OperatorApiKey,
    token: SecretString,
}

async fn view(
    state: &ConsoleState,
    session: &Session,
    q: &SettingsQuery,
    created: Option<&CreatedKey>,
    error: Option<&str>,
    new_output: Option<&OutputForm>,
) -> Result<Markup, ConsoleError> {
    let m = state.services.management();
    let outputs_at = page_number(q.outputs.as_deref(), PER_PAGE);
    let keys_at = page_number(q.keys.as_deref(), PER_PAGE);
    let outputs = m.list_outputs(outputs_at).await?;
    let keys = m.list_operator_keys(keys_at).await?;
    let blank = OutputForm {
        output_type: OutputType::Elasticsearch.as_str().to_owned(),
        ..Default::default()
    };
    let body = html! {
        @if let Some(e) = error { p .error role="alert" { (e) } }
        @if let Some(c) = created {
            section .created aria-labelledby="h-created" role="status" {
                h2 #h-created { "Operator key “" (c.key.name) "” created" }
                p { strong { "Copy it now: it is shown only this once." } }
                div .secret {
                    code #key-secret { (c.token.expose_secret()) }
                    button type="button" .secondary data-copy="key-secret" { "Copy key" }
                }
                p .muted { "Use it with " code { "flotilla --api-key" } ", as " code { "Authorization: ApiKey …" } " on the API, or to sign in here." }
            }
        }
        section aria-labelledby="h-outputs" {
            h2 #h-outputs { "Outputs" }
            div .table-wrap { table #outputs {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Type" } th scope="col" { "Hosts" }
                    th scope="col" { "Default" } th scope="col" { "Agents' keys" } th scope="col" { "Updated" }
                } }
                tbody { @for o in &outputs.items {
                    tr {
                        td { a href={(BASE) "/settings/outputs/" (o.id)} { (o.name) } } td { (o.output_type.as_str()) }
                        td { @for h in &o.hosts { code { (h) } " " } }
                        td { @if o.is_default { "yes" } }
                        td { @if o.remote_key_management { "made in the cluster" } @else { span .muted { "Flotilla" } } }
                        td { (when(o.updated_at)) }
                    }
                } }
            } }
            (pager_with("/settings", &[], "outputs", outputs_at, &outputs))
            details open[new_output.is_some()] {
                summary { "Add an output" }
                form .stack #add-output method="post" action={(BASE) "/settings/outputs"} {
                    (csrf_field(session))
                    (output_fields("o", new_output.unwrap_or(&blank), None))
                    div .actions { button type="submit" { "Add output" } }
                }
            }
        }
        section aria-labelledby="h-keys" {
            h2 #h-keys { "Operator API keys" }
            p .muted { "Revoking a key ends its console sessions at once; the key you signed in with cannot revoke itself." }
            div .table-wrap { table #keys {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Starts with" } th scope="col" { "Created" } th scope="col" { "State" }
                    th scope="col" { span .visually-hidden { "Actions" } }
                } }
                tbody { @for k in &keys.items {
                    @let this = k.id == session.session.operator.id;
                    tr {
                        td { (k.name) @if this { " " span .tag { "this session" } } }
                        td { code { (k.hint) "…" } }
                        td { (when(k.created_at)) }
                        td { @if k.active { "active" } @else { span .muted { "revoked" } } }
                        td {
                            @if k.active && !this {
                                form .inline method="post" action={(BASE) "/settings/keys/" (k.id) "/revoke"} {
                                    (csrf_field(session))
                                    button type="submit" .danger aria-label={"Revoke key " (k.name)} { "Revoke" }
                                }
                            }
                        }
                    }
                } }
            } }
            (pager_with("/settings", &[], "keys", keys_at, &keys))
            form .filters method="post" action={(BASE) "/settings/keys"} {
                (csrf_field(session))
                div .field {
                    label for="k-name" { "New key's name" }
                    input #k-name type="text" name="name" required maxlength="256";
                }
                div .field .actions { button type="submit" { "Create key" } }
            }
        }
    };
    Ok(page(session, Nav::Settings, "Settings", body))
}

pub(crate) async fn settings(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<SettingsQuery>,
) -> Result<Markup, ConsoleError> {
    view(&state, &session, &q, None, None, None).await
}

/// A refusal the operator can fix, shown on the page it came from.
fn refusal(e: &ServiceError) -> Option<StatusCode> {
    match e {
        ServiceError::Invalid(_) => Some(StatusCode::BAD_REQUEST),
        ServiceError::Conflict(_) => Some(StatusCode::CONFLICT),
        _ => None,
    }
}

pub(crate) async fn create_output(
    State(state): State<ConsoleState>,
    session: Session,
    Form(form): Form<OutputForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    let q = SettingsQuery::default();
    let output_type = match form.output_type() {
        Ok(t) => t,
        Err(e) => {
            let page = view(&state, &session, &q, None, Some(&e), Some(&form)).await?;
            return Ok((StatusCode::BAD_REQUEST, page).into_response());
        }
    };
    let req = CreateOutput {
        id: None,
        name: form.name.trim().to_owned(),
        output_type,
        hosts: form.hosts(),
        is_default: form.is_default.is_some(),
        secrets: form.secrets(),
    };
    match state.services.management().create_output(req).await {
        Ok(_) => Ok(Redirect::to(&format!("{BASE}/settings")).into_response()),
        Err(e) => match refusal(&e) {
            Some(status) => {
                // The credential is not echoed back into the form.
                let kept = OutputForm {
                    api_key: String::new(),
                    ..form
                };
                let page = view(
                    &state,
                    &session,
                    &q,
                    None,
                    Some(&e.to_string()),
                    Some(&kept),
                )
                .await?;
                Ok((status, page).into_response())
            }
            None => Err(e.into()),
        },
    }
}

fn output_page(
    session: &Session,
    output: &Output,
    values: &OutputForm,
    error: Option<&str>,
) -> Markup {
    let body = html! {
        @if let Some(e) = error { p .error role="alert" { (e) } }
        p .muted { "Policies sending here give their agents the new settings with their next revision." }
        form .stack #edit-output method="post" action={(BASE) "/settings/outputs/" (output.id)} {
            (csrf_field(session))
            (output_fields("o", values, Some(output)))
            div .actions {
                button type="submit" { "Save changes" }
                a .button .secondary href={(BASE) "/settings"} { "Cancel" }
            }
        }
        section aria-labelledby="h-remove" {
            h2 #h-remove { "Remove" }
            p .muted { "Refused while a policy sends here or while it is the default." }
            form .inline method="post" action={(BASE) "/settings/outputs/" (output.id) "/delete"} {
                (csrf_field(session))
                button type="submit" .danger { "Remove output " (output.name) }
            }
        }
    };
    page(
        session,
        Nav::Settings,
        &format!("Output {}", output.name),
        body,
    )
}

pub(crate) async fn output_detail(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Markup, ConsoleError> {
    let output = state.services.management().get_output(&id).await?;
    Ok(output_page(
        &session,
        &output,
        &OutputForm::of(&output),
        None,
    ))
}

pub(crate) async fn update_output(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<OutputForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    let m = state.services.management();
    let current = m.get_output(&id).await?;
    let kept = OutputForm {
        api_key: String::new(),
        ..form.clone()
    };
    let output_type = match form.output_type() {
        Ok(t) => t,
        Err(e) => {
            let page = output_page(&session, &current, &kept, Some(&e));
            return Ok((StatusCode::BAD_REQUEST, page).into_response());
        }
    };
    let name = form.name.trim().to_owned();
    let hosts = form.hosts();
    let is_default = form.is_default.is_some();
    let secrets = match (form.secrets(), form.clear_credential.is_some()) {
        (Some(s), _) => Some(Some(s)),
        (None, true) => Some(None),
        (None, false) => None,
    };
    // Only what changed: an unchanged form changes nothing.
    let req = UpdateOutput {
        name: Some(name).filter(|n| *n != current.name),
        output_type: Some(output_type).filter(|t| *t != current.output_type),
        hosts: Some(hosts).filter(|h| *h != current.hosts),
        is_default: Some(is_default).filter(|d| *d != current.is_default),
        secrets,
    };
    if req.name.is_none()
        && req.output_type.is_none()
        && req.hosts.is_none()
        && req.is_default.is_none()
        && req.secrets.is_none()
    {
        return Ok(Redirect::to(&format!("{BASE}/settings")).into_response());
    }
    match m.update_output(&id, req).await {
        Ok(_) => Ok(Redirect::to(&format!("{BASE}/settings")).into_response()),
        Err(e) => match refusal(&e) {
            Some(status) => {
                let page = output_page(&session, &current, &kept, Some(&e.to_string()));
                Ok((status, page).into_response())
            }
            None => Err(e.into()),
        },
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn delete_output(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    let m = state.services.management();
    let current = m.get_output(&id).await?;
    match m.delete_output(&id).await {
        Ok(()) => Ok(Redirect::to(&format!("{BASE}/settings")).into_response()),
        Err(e) => match refusal(&e) {
            Some(status) => {
                let page = output_page(
                    &session,
                    &current,
                    &OutputForm::of(&current),
                    Some(&e.to_string()),
                );
                Ok((status, page).into_response())
            }
            None => Err(e.into()),
        },
    }
}

#[derive(Deserialize)]
pub(crate) struct KeyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

pub(crate) async fn create_key(
    State(state): State<ConsoleState>,
    session: Session,
    Form(form): Form<KeyForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    let q = SettingsQuery::default();
    let req = CreateOperatorKey {
        name: form.name.trim().to_owned(),
    };
    match state.services.management().create_operator_key(req).await {
        // Answered here, not redirected: the secret must not travel in a
        // URL, and no-store keeps it out of the cache.
        Ok((key, token)) => {
            let created = CreatedKey { key, token };
            Ok(view(&state, &session, &q, Some(&created), None, None)
                .await?
                .into_response())
        }
        Err(e) => match refusal(&e) {
            Some(status) => {
                let page = view(&state, &session, &q, None, Some(&e.to_string()), None).await?;
                Ok((status, page).into_response())
            }
            None => Err(e.into()),
        },
    }
}

pub(crate) async fn revoke_key(
    State(state): State<ConsoleState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    let caller = session.session.operator.id.clone();
    match state
        .services
        .management()
        .revoke_operator_key(&caller, &id)
        .await
    {
        Ok(_) => Ok(Redirect::to(&format!("{BASE}/settings")).into_response()),
        Err(e) => match refusal(&e) {
            Some(status) => {
                let q = SettingsQuery::default();
                let page = view(&state, &session, &q, None, Some(&e.to_string()), None).await?;
                Ok((status, page).into_response())
            }
            None => Err(e.into()),
        },
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct DataQuery {
    page: Option<String>,
}

pub(crate) async fn data(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<DataQuery>,
) -> Result<Markup, ConsoleError> {
    // Data streams are one row each in the store (not documents), listed
    // by the service in full; shown a page at a time.
    let all = state.services.management().list_data_streams().await?;
    let at = page_number(q.page.as_deref(), PER_PAGE);
    let start = (at.offset() as usize).min(all.len());
    let end = (start + PER_PAGE as usize).min(all.len());
    let shown = Paged {
        total: all.len() as u64,
        items: all[start..end].to_vec(),
    };
    let body = html! {
        p .muted { "Data streams of the embedded output; open one to browse its events." }
        @if shown.items.is_empty() {
            p .empty { "No data yet: agents write here once a policy's integrations collect something." }
        } @else {
            div .table-wrap { table {
                caption .visually-hidden { "Data streams" }
                thead { tr {
                    th scope="col" { "Data stream" } th scope="col" { "Documents" } th scope="col" { "Size" }
                    th scope="col" { "Last event" } th scope="col" { "Created" }
                } }
                tbody { @for d in &shown.items {
                    tr {
                        td { a href={(crate::BASE) "/data/" (d.name)} { code { (d.name) } } } td { (d.documents) } td { (d.size_bytes / 1024) " KiB" }
                        td { (when_opt(d.last_event)) } td { (when(d.created_at)) }
                    }
                } }
            } }
        }
        (pager("/data", &[], at, &shown))
    };
    Ok(page(&session, Nav::Data, "Data", body))
}
