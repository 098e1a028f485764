//! Installed packages (integrations one can add to a policy): the list,
//! install by upload, a package's page, and adding it to a policy through
//! a form generated from the package's variables (`varform`).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;

use flotilla_api::management::{CreatePackagePolicy, PackageRequest};
use flotilla_packages::Package;
use flotilla_service::ServiceError;
use flotilla_store::{PackagePolicyFilter, Page, Paged, PolicyFilter};

use crate::auth::{csrf_field, Session};
use crate::error::ConsoleError;
use crate::layout::{page, page_number, pager, when_opt, Nav};
use crate::multipart;
use crate::varform::{self, Layout};
use crate::{ConsoleState, BASE};

const PER_PAGE: u32 = 50;

/// The largest package upload the console takes (the API's limit).
pub(crate) const MAX_UPLOAD_BYTES: usize = 64 << 20;

#[derive(Deserialize, Default)]
pub(crate) struct PackagesQuery {
    page: Option<String>,
}

async fn list_view(
    state: &ConsoleState,
    session: &Session,
    q: &PackagesQuery,
    notice: Option<Markup>,
    error: Option<&str>,
) -> Result<Markup, ConsoleError> {
    // Installed packages are few (a registry's worth at most), listed by
    // the service in full; shown a page at a time.
    let all = state.services.management().list_packages().await?;
    let at = page_number(q.page.as_deref(), PER_PAGE);
    let start = (at.offset() as usize).min(all.len());
    let end = (start + PER_PAGE as usize).min(all.len());
    let shown = Paged {
        total: all.len() as u64,
        items: all[start..end].to_vec(),
    };
    let body = html! {
        @if let Some(n) = notice { (n) }
        @if let Some(e) = error { p .error role="alert" #upload-error { (e) } }
        section aria-labelledby="h-upload" {
            h2 #h-upload { "Install a package" }
            form .filters method="post" action={(BASE) "/integrations/upload"} enctype="multipart/form-data" {
                (csrf_field(session))
                div .field {
                    label for="u-file" { "Package archive (.zip or .tar.gz holding one " code { "<name>-<version>/" } " folder, at most " (MAX_UPLOAD_BYTES >> 20) " MiB)" }
                    input #u-file type="file" name="package" accept=".zip,.tar.gz,.tgz,application/zip,application/gzip";
                }
                div .field .actions { button type="submit" { "Upload and install" } }
            }
        }
        section aria-labelledby="h-installed" {
            h2 #h-installed { "Installed packages" }
            div .table-wrap { table {
                caption .visually-hidden { "Installed packages" }
                thead { tr {
                    th scope="col" { "Package" } th scope="col" { "Name" } th scope="col" { "Version" }
                    th scope="col" { "Type" } th scope="col" { "Source" } th scope="col" { "Installed" }
                } }
                tbody { @for p in &shown.items {
                    tr {
                        td { a href={(BASE) "/integrations/" (p.name) "?version=" (p.version)} { (p.title) } }
                        td { code { (p.name) } } td { (p.version) }
                        td { (p.package_type) } td { (p.source) } td { (when_opt(p.installed_at)) }
                    }
                } }
            } }
            (pager("/integrations", &[], at, &shown))
        }
    };
    Ok(page(session, Nav::Integrations, "Integrations", body))
}

pub(crate) async fn list(
    State(state): State<ConsoleState>,
    session: Session,
    Query(q): Query<PackagesQuery>,
) -> Result<Markup, ConsoleError> {
    list_view(&state, &session, &q, None, None).await
}

/// `POST /integrations/upload`: a multipart form with the CSRF token and
/// one file, installed through the service the API's upload uses.
pub(crate) async fn upload(
    State(state): State<ConsoleState>,
    session: Session,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ConsoleError> {
    let q = PackagesQuery::default();
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            // The CSRF token is in the body we did not read: refuse
            // before anything happens, with the reason.
            return Err(ConsoleError::TooLarge(format!(
                "The package is larger than {} MiB.",
                MAX_UPLOAD_BYTES >> 20
            )));
        }
        Err(_) => {
            return Err(ConsoleError::Invalid(
                "The upload could not be read.".into(),
            ))
        }
    };
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(multipart::boundary);
    let Some(boundary) = boundary else {
        return Err(ConsoleError::Invalid(
            "Send the package with the form (multipart/form-data).".into(),
        ));
    };
    let Some(parts) = multipart::parse(&body, &boundary) else {
        return Err(ConsoleError::Invalid(
            "The upload is not a well-formed form.".into(),
        ));
    };
    let csrf = parts
        .iter()
        .find(|p| p.name == "csrf" && p.filename.is_none())
        .map(|p| String::from_utf8_lossy(p.data).into_owned())
        .unwrap_or_default();
    session.check_csrf(&csrf)?;
    let file = parts
        .iter()
        .find(|p| p.name == "package")
        .filter(|f| !f.data.is_empty());
    let outcome = match file {
        None => Err((
            StatusCode::BAD_REQUEST,
            "Choose a package archive to upload.".to_owned(),
        )),
        Some(file) => match state
            .services
            .management()
            .install_package_archive(file.data)
            .await
        {
            Ok((package, _)) => {
                let (name, version) = (package.name(), package.version());
                Ok(html! {
                    p .notice role="status" #upload-done {
                        "Installed " a href={(BASE) "/integrations/" (name) "?version=" (version)} { (package.manifest.title) " " (version) } "."
                    }
                })
            }
            Err(ServiceError::Invalid(v)) => Err((
                StatusCode::BAD_REQUEST,
                format!("That is not an installable package: {}", v.message),
            )),
            Err(ServiceError::Conflict(m)) => {
                Err((StatusCode::CONFLICT, format!("Not installed: {m}")))
            }
            Err(e) => return Err(e.into()),
        },
    };
    match outcome {
        Ok(notice) => Ok(list_view(&state, &session, &q, Some(notice), None)
            .await?
            .into_response()),
        Err((status, message)) => {
            let page = list_view(&state, &session, &q, None, Some(&message)).await?;
            Ok((status, page).into_response())
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct PackageQuery {
    version: Option<String>,
    page: Option<String>,
}

async fn package_of(
    state: &ConsoleState,
    name: &str,
    version: Option<&str>,
) -> Result<(std::sync::Arc<Package>, String), ConsoleError> {
    let version = version.map(str::trim).filter(|v| !v.is_empty());
    Ok(state
        .services
        .management()
        .get_package(name, version)
        .await?)
}

/// A package's page: what it is, its policy templates with their inputs
/// and data streams, and the integrations made from it.
pub(crate) async fn detail(
    State(state): State<ConsoleState>,
    session: Session,
    Path(name): Path<String>,
    Query(q): Query<PackageQuery>,
) -> Result<Markup, ConsoleError> {
    let (package, source) = package_of(&state, &name, q.version.as_deref()).await?;
    let m = &package.manifest;
    let at = page_number(q.page.as_deref(), 20);
    let used = state
        .services
        .management()
        .list_package_policies(
            &PackagePolicyFilter {
                policy_id: None,
                package_name: Some(m.name.clone()),
            },
            at,
        )
        .await?;
    let add = format!("{BASE}/integrations/{}/add?version={}", m.name, m.version);
    let body = html! {
        dl .facts {
            dt { "Name" } dd { code { (m.name) } }
            dt { "Version" } dd { (m.version) }
            dt { "Type" } dd { (format!("{:?}", package.info().package_type).to_lowercase()) }
            dt { "Source" } dd { (source) }
            @if let Some(d) = &m.description { dt { "Description" } dd { (d) } }
        }
        p { a .button href=(add) { "Add to a policy" } }
        section aria-labelledby="h-templates" {
            h2 #h-templates { "Policy templates" }
            @for t in &m.policy_templates {
                section .template {
                    h3 { (t.title) " " code { (t.name) } }
                    @if let Some(d) = &t.description { p .muted { (d) } }
                    @if package.is_input_package() {
                        p { "Input " code { (t.input.as_deref().unwrap_or("")) } }
                    } @else {
                        div .table-wrap { table {
                            caption .visually-hidden { "Inputs of " (t.title) }
                            thead { tr {
                                th scope="col" { "Input" } th scope="col" { "Type" } th scope="col" { "Data streams" }
                            } }
                            tbody { @for i in &t.inputs {
                                tr {
                                    td { (i.title) } td { code { (i.input_type) } }
                                    td { @for ds in package.template_data_streams(t).filter(|ds| ds.stream(&i.input_type).is_some()) {
                                        code { (ds.manifest.stream_type) "-" (ds.dataset) } " "
                                    } }
                                }
                            } }
                        } }
                    }
                }
            }
        }
        section aria-labelledby="h-used" {
            h2 #h-used { "Integrations made from it" }
            @if used.items.is_empty() {
                p .empty { "None yet." }
            } @else {
                ul { @for i in &used.items {
                    li { a href={(BASE) "/policies/" (i.policy_id)} { (i.name) } " (" (i.package.version) ")" }
                } }
                (pager(&format!("/integrations/{}", m.name), &[("version", &m.version)], at, &used))
            }
        }
    };
    Ok(page(&session, Nav::Integrations, &m.title, body))
}

#[derive(Deserialize, Default)]
pub(crate) struct AddQuery {
    version: Option<String>,
    policy: Option<String>,
}

/// The generated form, with the values and errors of a refused
/// submission (`None`: the package's defaults).
async fn add_view(
    state: &ConsoleState,
    session: &Session,
    package: &Package,
    submitted: Option<&varform::Submitted>,
    chosen_policy: Option<&str>,
    error: Option<&str>,
) -> Result<Markup, ConsoleError> {
    let m = &package.manifest;
    let policies = state
        .services
        .management()
        .list_policies(
            &PolicyFilter::default(),
            Page {
                page: 1,
                per_page: 200,
            },
        )
        .await?;
    let layout = Layout::of(package);
    let text = |k: &str| submitted.and_then(|s| s.text(k)).unwrap_or_default();
    let default_name = format!("{}-1", m.name);
    let name = submitted
        .and_then(|s| s.text("name"))
        .unwrap_or(default_name);
    let chosen = submitted
        .and_then(|s| s.text("policy_id"))
        .or_else(|| chosen_policy.map(str::to_owned));
    let field_error = |k: &str| submitted.and_then(|s| s.errors.get(k).cloned());
    let action = format!("{BASE}/integrations/{}/add?version={}", m.name, m.version);
    let body = html! {
        p .muted { (m.title) " " (m.version) ". Fields marked " strong { "(required)" } " must be filled in; secret values are stored encrypted and never shown again." }
        @if let Some(e) = error { p .error role="alert" #form-error { (e) } }
        @if policies.items.is_empty() {
            p { "Create a " a href={(BASE) "/policies/new"} { "policy" } " first." }
        } @else {
            form .stacked method="post" action=(action) novalidate {
                (csrf_field(session))
                fieldset {
                    legend { "Integration" }
                    div .field {
                        label for="a-name" { "Name " span .req { "(required)" } }
                        input #a-name type="text" name="name" value=(name) maxlength="256" aria-required="true";
                        @if let Some(e) = field_error("name") { p .field-error #a-name-err { (e) } }
                    }
                    div .field {
                        label for="a-description" { "Description" }
                        input #a-description type="text" name="description" value=(text("description")) maxlength="1024";
                    }
                    div .field {
                        label for="a-policy" { "Agent policy " span .req { "(required)" } }
                        select #a-policy name="policy_id" aria-required="true" {
                            @for p in &policies.items {
                                option value=(p.id) selected[chosen.as_deref() == Some(p.id.as_str())] { (p.name) }
                            }
                        }
                        @if let Some(e) = field_error("policy_id") { p .field-error { (e) } }
                    }
                    div .field {
                        label for="a-namespace" { "Namespace (optional; the policy's by default)" }
                        input #a-namespace type="text" name="namespace" value=(text("namespace")) maxlength="100";
                        @if let Some(e) = field_error("namespace") { p .field-error { (e) } }
                    }
                }
                (layout.render(submitted))
                div .actions { button type="submit" #a-submit { "Add integration" } }
            }
        }
    };
    Ok(page(
        session,
        Nav::Integrations,
        &format!("Add {} to a policy", m.title),
        body,
    ))
}

pub(crate) async fn add_form(
    State(state): State<ConsoleState>,
    session: Session,
    Path(name): Path<String>,
    Query(q): Query<AddQuery>,
) -> Result<Markup, ConsoleError> {
    let (package, _) = package_of(&state, &name, q.version.as_deref()).await?;
    add_view(&state, &session, &package, None, q.policy.as_deref(), None).await
}

/// `POST /integrations/{name}/add`: the generated form's values checked
/// (required fields, numbers, options) and sent as Kibana's simplified
/// body to the service the API's `POST /api/fleet/package_policies` uses.
pub(crate) async fn add(
    State(state): State<ConsoleState>,
    session: Session,
    Path(name): Path<String>,
    Query(q): Query<AddQuery>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let csrf = pairs
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    session.check_csrf(csrf)?;
    let (package, _) = package_of(&state, &name, q.version.as_deref()).await?;
    let layout = Layout::of(&package);
    let mut submitted = varform::Submitted::new(pairs);
    let body = layout.read(&mut submitted);
    let policy_id = submitted.text("policy_id").unwrap_or_default();
    let pp_name = submitted.text("name").unwrap_or_default();
    if pp_name.is_empty() {
        submitted.errors.insert("name".into(), "is required".into());
    }
    if policy_id.is_empty() {
        submitted
            .errors
            .insert("policy_id".into(), "choose a policy".into());
    }
    let refused = |submitted: varform::Submitted, status: StatusCode, message: String| {
        let state = state.clone();
        let package = package.clone();
        async move {
            let page = add_view(
                &state,
                &session,
                &package,
                Some(&submitted),
                None,
                Some(&message),
            )
            .await?;
            Ok::<_, ConsoleError>((status, page).into_response())
        }
    };
    if !submitted.errors.is_empty() {
        let n = submitted.errors.len();
        return refused(
            submitted,
            StatusCode::BAD_REQUEST,
            format!(
                "{n} field{} need{} attention.",
                if n == 1 { "" } else { "s" },
                if n == 1 { "s" } else { "" }
            ),
        )
        .await;
    }
    let req = CreatePackagePolicy {
        id: None,
        name: pp_name,
        description: submitted.text("description").filter(|d| !d.is_empty()),
        policy_id: policy_id.clone(),
        package: PackageRequest {
            name: package.name().to_owned(),
            version: Some(package.version().to_owned()),
        },
        namespace: submitted.text("namespace").filter(|n| !n.is_empty()),
        vars: Some(body.vars),
        inputs: Some(serde_json::Value::Object(body.inputs)),
        cloud_connector_id: None,
        enabled: None,
        force: None,
    };
    match state.services.management().create_package_policy(req).await {
        Ok(created) => {
            Ok(Redirect::to(&format!("{BASE}/policies/{}", created.policy_id)).into_response())
        }
        Err(ServiceError::Invalid(v)) => {
            let message = format!("Not added: {} {}", v.field, v.message);
            // Put the message beside its field when it names one.
            let key = layout.key_for_path(&v.field).or(match v.field.as_str() {
                "name" | "namespace" | "policy_id" | "description" => Some(v.field.clone()),
                _ => None,
            });
            if let Some(k) = key {
                submitted.errors.insert(k, v.message.clone());
            }
            refused(submitted, StatusCode::BAD_REQUEST, message).await
        }
        Err(ServiceError::Conflict(m)) => {
            refused(submitted, StatusCode::CONFLICT, format!("Not added: {m}")).await
        }
        Err(ServiceError::NotFound(what)) => {
            refused(
                submitted,
                StatusCode::BAD_REQUEST,
                format!("Not added: {what} not found"),
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}
