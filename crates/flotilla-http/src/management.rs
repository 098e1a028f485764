//! The management API: `/api/fleet/...` resources for operators, modelled
//! on Kibana's Fleet API (envelopes `{"item"}` and
//! `{"items", "total", "page", "perPage"}`).

use axum::extract::State;
use axum::Json;
use secrecy::ExposeSecret;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use flotilla_api::management::*;
use flotilla_domain::action::{Action, ActionProgress, ActionTarget, AgentActionStatus};
use flotilla_domain::agent::{Agent, AgentStatus};
use flotilla_domain::apikey::OperatorApiKey;
use flotilla_domain::enrollment::EnrollmentApiKey;
use flotilla_domain::full_policy::FullAgentPolicy;
use flotilla_domain::output::Output;
use flotilla_domain::package_policy::PackagePolicy;
use flotilla_domain::policy::AgentPolicy;
use flotilla_store::{
    AgentFilter, EnrollmentKeyFilter, PackagePolicyFilter, Page, Paged, PolicyFilter,
};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Operator};
use crate::AppState;

type ApiResult<T> = Result<T, ApiError>;

pub(crate) fn item<T>(item: T) -> Json<Item<T>> {
    Json(Item { item })
}

pub(crate) fn list<T>(paged: Paged<T>, page: Page) -> Json<List<T>> {
    Json(List {
        items: paged.items,
        total: paged.total,
        page: page.page,
        per_page: page.per_page,
    })
}

pub(crate) fn deleted(id: String) -> Json<Deleted> {
    Json(Deleted { id, success: true })
}

pub(crate) fn page(page: Option<u32>, per_page: Option<u32>) -> ApiResult<Page> {
    let page = page.unwrap_or(1);
    let per_page = per_page.unwrap_or(20);
    if page == 0 {
        return Err(ApiError::bad_request("[page]: must be at least 1"));
    }
    if per_page == 0 || per_page > Page::MAX_PER_PAGE {
        return Err(ApiError::bad_request(format!(
            "[perPage]: must be between 1 and {}",
            Page::MAX_PER_PAGE
        )));
    }
    Ok(Page { page, per_page })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    pub(crate) page: Option<u32>,
    #[serde(rename = "perPage")]
    #[param(rename = "perPage")]
    pub(crate) per_page: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PolicyQuery {
    page: Option<u32>,
    #[serde(rename = "perPage")]
    #[param(rename = "perPage")]
    per_page: Option<u32>,
    /// Case-insensitive substring of the name.
    name: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PackagePolicyQuery {
    page: Option<u32>,
    #[serde(rename = "perPage")]
    #[param(rename = "perPage")]
    per_page: Option<u32>,
    policy_id: Option<String>,
    package: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EnrollmentKeyQuery {
    page: Option<u32>,
    #[serde(rename = "perPage")]
    #[param(rename = "perPage")]
    per_page: Option<u32>,
    policy_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AgentQuery {
    page: Option<u32>,
    #[serde(rename = "perPage")]
    #[param(rename = "perPage")]
    per_page: Option<u32>,
    policy_id: Option<String>,
    status: Option<AgentStatus>,
    tag: Option<String>,
    /// Agents the enrollment key enrolled (`static:<hash prefix>` for a static
    /// token).
    enrollment_api_key_id: Option<String>,
    /// Include unenrolled agents.
    #[serde(rename = "showInactive")]
    #[param(rename = "showInactive")]
    show_inactive: Option<bool>,
    /// A KQL query over agent fields, as Kibana's Fleet API takes it:
    /// `status:offline and policy_id:web and tags:prod`, `hostname:web-*`,
    /// `last_checkin < now-5m`, `not version:9.*`, parentheses. Fields: id,
    /// status, policy_id, policy_revision, version, tags, hostname,
    /// enrollment_api_key_id, last_checkin, enrolled_at (also with Kibana's
    /// `fleet-agents.` prefix).
    kuery: Option<String>,
    /// What to order by: enrolled_at (the default), last_checkin, hostname,
    /// status, policy_id, policy_revision, version (Kibana's names, such as
    /// `local_metadata.host.hostname`, too). Agents without the field come
    /// last; ties in id order.
    #[serde(rename = "sortField")]
    #[param(rename = "sortField")]
    sort_field: Option<String>,
    /// `asc` or `desc` (default: newest first for times, A to Z otherwise).
    #[serde(rename = "sortOrder")]
    #[param(rename = "sortOrder")]
    sort_order: Option<String>,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_outputs, create_output))
        .routes(routes!(get_output, update_output, delete_output))
        .routes(routes!(list_policies, create_policy))
        .routes(routes!(get_policy, update_policy, delete_policy))
        .routes(routes!(get_full_policy))
        .routes(routes!(list_package_policies, create_package_policy))
        .routes(routes!(
            get_package_policy,
            update_package_policy,
            delete_package_policy
        ))
        .routes(routes!(list_packages))
        .routes(routes!(list_data_streams))
        .routes(routes!(search_data_stream))
        .routes(routes!(get_latest_package))
        .routes(routes!(get_package, delete_package))
        .merge(OpenApiRouter::new().routes(routes!(install_package)).layer(
            axum::extract::DefaultBodyLimit::max(MAX_PACKAGE_UPLOAD_BYTES),
        ))
        .routes(routes!(list_enrollment_keys, create_enrollment_key))
        .routes(routes!(get_enrollment_key, revoke_enrollment_key))
        .routes(routes!(list_agents))
        .routes(routes!(get_agent, update_agent))
        .routes(routes!(unenroll_agent))
        .routes(routes!(reassign_agent))
        .routes(routes!(list_agent_actions, create_agent_action))
        .routes(routes!(bulk_reassign))
        .routes(routes!(bulk_unenroll))
        .routes(routes!(bulk_update_agent_tags))
        .routes(routes!(bulk_settings))
        .routes(routes!(list_action_status))
        .routes(routes!(get_action_status))
        .routes(routes!(list_action_agents))
        .routes(routes!(agent_status_history))
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(revoke_api_key))
}

// --- outputs -------------------------------------------------------------------

#[utoipa::path(get, path = "/api/fleet/outputs", tag = "outputs", params(PageQuery),
    responses((status = 200, body = List<Output>), (status = 401, body = ErrorBody)))]
async fn list_outputs(
    _: Operator,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<Output>>> {
    let p = page(q.page, q.per_page)?;
    Ok(list(s.services.management().list_outputs(p).await?, p))
}

#[utoipa::path(post, path = "/api/fleet/outputs", tag = "outputs", request_body = CreateOutput,
    responses((status = 200, body = Item<Output>), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_output(
    _: Operator,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CreateOutput>,
) -> ApiResult<Json<Item<Output>>> {
    Ok(item(s.services.management().create_output(req).await?))
}

#[utoipa::path(get, path = "/api/fleet/outputs/{id}", params(("id" = String, Path, description = "The resource id")), tag = "outputs",
    responses((status = 200, body = Item<Output>), (status = 404, body = ErrorBody)))]
async fn get_output(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Item<Output>>> {
    Ok(item(s.services.management().get_output(&id).await?))
}

#[utoipa::path(put, path = "/api/fleet/outputs/{id}", params(("id" = String, Path, description = "The resource id")), tag = "outputs", request_body = UpdateOutput,
    responses((status = 200, body = Item<Output>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_output(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateOutput>,
) -> ApiResult<Json<Item<Output>>> {
    Ok(item(s.services.management().update_output(&id, req).await?))
}

#[utoipa::path(delete, path = "/api/fleet/outputs/{id}", params(("id" = String, Path, description = "The resource id")), tag = "outputs",
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_output(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Deleted>> {
    s.services.management().delete_output(&id).await?;
    Ok(deleted(id))
}

// --- agent policies ------------------------------------------------------------

#[utoipa::path(get, path = "/api/fleet/agent_policies", tag = "agent policies", params(PolicyQuery),
    responses((status = 200, body = List<AgentPolicy>)))]
async fn list_policies(
    _: Operator,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PolicyQuery>,
) -> ApiResult<Json<List<AgentPolicy>>> {
    let p = page(q.page, q.per_page)?;
    let filter = PolicyFilter { name: q.name };
    Ok(list(
        s.services.management().list_policies(&filter, p).await?,
        p,
    ))
}

#[utoipa::path(post, path = "/api/fleet/agent_policies", tag = "agent policies", request_body = CreateAgentPolicy,
    responses((status = 200, body = Item<AgentPolicy>), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_policy(
    _: Operator,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CreateAgentPolicy>,
) -> ApiResult<Json<Item<AgentPolicy>>> {
    Ok(item(s.services.management().create_policy(req).await?))
}

#[utoipa::path(get, path = "/api/fleet/agent_policies/{id}", params(("id" = String, Path, description = "The resource id")), tag = "agent policies",
    responses((status = 200, body = Item<AgentPolicy>), (status = 404, body = ErrorBody)))]
async fn get_policy(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Item<AgentPolicy>>> {
    Ok(item(s.services.management().get_policy(&id).await?))
}

#[utoipa::path(put, path = "/api/fleet/agent_policies/{id}", params(("id" = String, Path, description = "The resource id")), tag = "agent policies", request_body = UpdateAgentPolicy,
    responses((status = 200, body = Item<AgentPolicy>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_policy(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateAgentPolicy>,
) -> ApiResult<Json<Item<AgentPolicy>>> {
    Ok(item(s.services.management().update_policy(&id, req).await?))
}

#[utoipa::path(delete, path = "/api/fleet/agent_policies/{id}", params(("id" = String, Path, description = "The resource id")), tag = "agent policies",
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_policy(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Deleted>> {
    s.services.management().delete_policy(&id).await?;
    Ok(deleted(id))
}

#[utoipa::path(get, path = "/api/fleet/agent_policies/{id}/full", params(("id" = String, Path, description = "The resource id")), tag = "agent policies",
    responses((status = 200, body = Item<FullAgentPolicy>), (status = 404, body = ErrorBody)))]
async fn get_full_policy(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Item<FullAgentPolicy>>> {
    Ok(item(s.services.full_policy(&id).await?))
}

// --- integrations --------------------------------------------------------------

#[utoipa::path(get, path = "/api/fleet/package_policies", tag = "integrations", params(PackagePolicyQuery),
    responses((status = 200, body = List<PackagePolicy>)))]
async fn list_package_policies(
    _: Operator,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PackagePolicyQuery>,
) -> ApiResult<Json<List<PackagePolicy>>> {
    let p = page(q.page, q.per_page)?;
    let filter = PackagePolicyFilter {
        policy_id: q.policy_id,
        package_name: q.package,
    };
    Ok(list(
        s.services
            .management()
            .list_package_policies(&filter, p)
            .await?,
        p,
    ))
}

#[utoipa::path(post, path = "/api/fleet/package_policies", tag = "integrations", request_body = CreatePackagePolicy,
    responses((status = 200, body = Item<PackagePolicy>), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_package_policy(
    _: Operator,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CreatePackagePolicy>,
) -> ApiResult<Json<Item<PackagePolicy>>> {
    Ok(item(
        s.services.management().create_package_policy(req).await?,
    ))
}

#[utoipa::path(get, path = "/api/fleet/package_policies/{id}", params(("id" = String, Path, description = "The resource id")), tag = "integrations",
    responses((status = 200, body = Item<PackagePolicy>), (status = 404, body = ErrorBody)))]
async fn get_package_policy(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Item<PackagePolicy>>> {
    Ok(item(s.services.management().get_package_policy(&id).await?))
}

#[utoipa::path(put, path = "/api/fleet/package_policies/{id}", params(("id" = String, Path, description = "The resource id")), tag = "integrations", request_body = UpdatePackagePolicy,
    responses((status = 200, body = Item<PackagePolicy>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_package_policy(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdatePackagePolicy>,
) -> ApiResult<Json<Item<PackagePolicy>>> {
    Ok(item(
        s.services
            .management()
            .update_package_policy(&id, req)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/fleet/package_policies/{id}", params(("id" = String, Path, description = "The resource id")), tag = "integrations",
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)))]
async fn delete_package_policy(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Deleted>> {
    s.services.management().delete_package_policy(&id).await?;
    Ok(deleted(id))
}

/// The largest package upload accepted (zip or gzip'd tar).
pub const MAX_PACKAGE_UPLOAD_BYTES: usize = 64 << 20;

/// An installed package as listed.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct PackageListItem {
    pub name: String,
    pub version: String,
    pub title: String,
    #[serde(rename = "type")]
    pub package_type: String,
    /// Always `installed`: Flotilla lists what it has.
    pub status: &'static str,
    /// `builtin`, `upload` or `directory`.
    pub install_source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// An installed package: its manifest, policy templates, data streams and
/// variables.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct PackageView {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub info: flotilla_packages::package::PackageInfo,
    pub status: &'static str,
    pub install_source: String,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct InstallMeta {
    pub install_source: &'static str,
    pub name: String,
    pub version: String,
    /// The same name, version and content were installed already.
    pub already_installed: bool,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct InstallResult {
    pub item: PackageView,
    /// Kibana lists the installed assets here; Flotilla installs none.
    pub items: Vec<serde_json::Value>,
    #[serde(rename = "_meta")]
    pub meta: InstallMeta,
}

#[utoipa::path(get, path = "/api/fleet/epm/packages", tag = "packages",
    responses((status = 200, description = "Installed packages (built-in and installed)", body = Items<PackageListItem>)))]
async fn list_packages(
    _: Operator,
    State(s): State<AppState>,
) -> ApiResult<Json<Items<PackageListItem>>> {
    let items = s
        .services
        .management()
        .list_packages()
        .await?
        .into_iter()
        .map(|p| PackageListItem {
            name: p.name,
            version: p.version,
            title: p.title,
            package_type: p.package_type,
            status: "installed",
            install_source: p.source,
            installed_at: p.installed_at,
        })
        .collect();
    Ok(Json(Items { items }))
}

#[utoipa::path(post, path = "/api/fleet/epm/packages", tag = "packages",
    request_body(content = Vec<u8>, description = "A zip or gzip'd tar holding one `<name>-<version>/` folder",
        content_type = "application/zip"),
    responses((status = 200, body = InstallResult),
              (status = 400, description = "Not a package, or a bad one (the file and field are named)", body = ErrorBody),
              (status = 409, description = "That version is installed with other content, or built in", body = ErrorBody),
              (status = 413, body = ErrorBody)))]
async fn install_package(
    _: Operator,
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<InstallResult>> {
    let body = body.map_err(|e| {
        ApiError::new(
            e.status(),
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                format!(
                    "the package is larger than {} MiB",
                    MAX_PACKAGE_UPLOAD_BYTES >> 20
                )
            } else {
                format!("could not read the upload: {e}")
            },
        )
    })?;
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        return Err(ApiError::bad_request(
            "Flotilla installs packages by upload: send the package as a zip (Content-Type: application/zip) \
             or a gzip'd tar (application/gzip); there is no package registry to install from by name",
        ));
    }
    let (package, outcome) = s
        .services
        .management()
        .install_package_archive(&body)
        .await?;
    tracing::info!(package = %package.name(), version = %package.version(),
        new = outcome == flotilla_store::Installed::New, "package installed");
    Ok(Json(InstallResult {
        meta: InstallMeta {
            install_source: "upload",
            name: package.name().to_owned(),
            version: package.version().to_owned(),
            already_installed: outcome == flotilla_store::Installed::AlreadyInstalled,
        },
        item: PackageView {
            info: package.info(),
            status: "installed",
            install_source: "upload".into(),
        },
        items: vec![],
    }))
}

#[utoipa::path(get, path = "/api/fleet/epm/packages/{name}", tag = "packages",
    params(("name" = String, Path, description = "Package name")),
    responses((status = 200, description = "The newest installed version", body = Item<PackageView>), (status = 404, body = ErrorBody)))]
async fn get_latest_package(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Item<PackageView>>> {
    let (package, source) = s.services.management().get_package(&name, None).await?;
    Ok(item(PackageView {
        info: package.info(),
        status: "installed",
        install_source: source,
    }))
}

#[utoipa::path(get, path = "/api/fleet/epm/packages/{name}/{version}", tag = "packages",
    params(("name" = String, Path, description = "Package name"), ("version" = String, Path, description = "Package version")),
    responses((status = 200, body = Item<PackageView>), (status = 404, body = ErrorBody)))]
async fn get_package(
    _: Operator,
    State(s): State<AppState>,
    ApiPath((name, version)): ApiPath<(String, String)>,
) -> ApiResult<Json<Item<PackageView>>> {
    let (package, source) = s
        .services
        .management()
        .get_package(&name, Some(&version))
        .await?;
    Ok(item(PackageView {
        info: package.info(),
        status: "installed",
        install_source: source,
    }))
}

#[utoipa::path(delete, path = "/api/fleet/epm/packages/{name}/{version}", tag = "packages",
    params(("name" = String, Path, description = "Package name"), ("version" = String, Path, description = "Package version")),
    responses((status = 200, body = Items<serde_json::Value>),
              (status = 404, body = ErrorBody),
              (status = 409, description = "Used by integrations, or built in", body = ErrorBody)))]
async fn delete_package(
    _: Operator,
    State(s): State<AppState>,
    ApiPath((name, version)): ApiPath<(String, String)>,
) -> ApiResult<Json<Items<serde_json::Value>>> {
    s.services
        .management()
        .remove_package(&name, &version)
        .await?;
    Ok(Json(Items { items: vec![] }))
}

// --- data streams (the embedded output) -------------------------------------------

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct DataStreamView {
    pub name: String,
    #[serde(rename = "type")]
    pub stream_type: String,
    pub dataset: String,
    pub namespace: String,
    pub documents: u64,
    pub size_bytes: u64,
    pub last_event: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct DocumentView {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_index")]
    pub index: String,
    #[serde(rename = "@timestamp")]
    pub timestamp: chrono::DateTime<chrono::Utc>,
    #[serde(rename = "_source")]
    #[schema(value_type = Object)]
    pub source: serde_json::Value,
}

#[utoipa::path(get, path = "/api/fleet/data_streams", tag = "data",
    responses((status = 200, description = "The embedded output's data streams", body = Items<DataStreamView>)))]
async fn list_data_streams(
    _: Operator,
    State(s): State<AppState>,
) -> ApiResult<Json<Items<DataStreamView>>> {
    let items = s
        .services
        .management()
        .list_data_streams()
        .await?
        .into_iter()
        .map(|d| {
            let mut parts = d.name.splitn(3, '-');
            let (t, ds, ns) = (
                parts.next().unwrap_or_default().to_owned(),
                parts.next().unwrap_or_default().to_owned(),
                parts.next().unwrap_or_default().to_owned(),
            );
            DataStreamView {
                name: d.name,
                stream_type: t,
                dataset: ds,
                namespace: ns,
                documents: d.documents,
                size_bytes: d.size_bytes,
                last_event: d.last_event,
                created_at: d.created_at,
            }
        })
        .collect();
    Ok(Json(Items { items }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    page: Option<u32>,
    #[serde(rename = "perPage")]
    #[param(rename = "perPage")]
    per_page: Option<u32>,
    /// Inclusive lower bound on `@timestamp` (RFC 3339).
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// Exclusive upper bound on `@timestamp` (RFC 3339).
    to: Option<chrono::DateTime<chrono::Utc>>,
    /// Case-insensitive text anywhere in the document.
    q: Option<String>,
    /// `field=value` pairs, comma-separated (dotted fields are nested).
    #[serde(rename = "match")]
    #[param(rename = "match")]
    matches: Option<String>,
    /// `desc` (newest first, the default) or `asc`.
    sort: Option<String>,
}

#[utoipa::path(get, path = "/api/fleet/data_streams/{name}/_search", tag = "data",
    params(("name" = String, Path, description = "The data stream"), SearchQuery),
    responses((status = 200, body = List<DocumentView>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn search_data_stream(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Json<List<DocumentView>>> {
    let p = page(q.page, q.per_page)?;
    if p.per_page > 1000 {
        return Err(ApiError::bad_request(
            "[perPage]: a search page holds at most 1000 documents",
        ));
    }
    let mut matches = Vec::new();
    for pair in q
        .matches
        .iter()
        .flat_map(|m| m.split(','))
        .filter(|p| !p.is_empty())
    {
        let Some((field, value)) = pair.split_once('=') else {
            return Err(ApiError::bad_request(format!(
                "[match]: '{pair}' is not field=value"
            )));
        };
        if field.is_empty() || field.len() > 256 {
            return Err(ApiError::bad_request(
                "[match]: a field name is 1-256 characters",
            ));
        }
        matches.push((field.to_owned(), value.to_owned()));
    }
    let ascending = match q.sort.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "[sort]: '{other}' is not asc or desc"
            )))
        }
    };
    let query = flotilla_store::DocumentQuery {
        from: q.from,
        to: q.to,
        text: q.q,
        matches,
        ascending,
    };
    let found = s
        .services
        .management()
        .search_data_stream(&name, &query, p)
        .await?;
    Ok(list(
        Paged {
            total: found.total,
            items: found
                .items
                .into_iter()
                .map(|d| DocumentView {
                    id: d.id,
                    index: d.data_stream,
                    timestamp: d.timestamp,
                    source: d.source,
                })
                .collect(),
        },
        p,
    ))
}

// --- enrollment keys -----------------------------------------------------------

#[utoipa::path(get, path = "/api/fleet/enrollment_api_keys", tag = "enrollment keys", params(EnrollmentKeyQuery),
    responses((status = 200, body = List<EnrollmentApiKey>)))]
async fn list_enrollment_keys(
    _: Operator,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<EnrollmentKeyQuery>,
) -> ApiResult<Json<List<EnrollmentApiKey>>> {
    let p = page(q.page, q.per_page)?;
    let filter = EnrollmentKeyFilter {
        policy_id: q.policy_id,
    };
    Ok(list(
        s.services
            .management()
            .list_enrollment_keys(&filter, p)
            .await?,
        p,
    ))
}

#[utoipa::path(post, path = "/api/fleet/enrollment_api_keys", tag = "enrollment keys", request_body = CreateEnrollmentKey,
    responses((status = 200, body = Item<EnrollmentKeyWithToken>), (status = 400, body = ErrorBody)))]
async fn create_enrollment_key(
    _: Operator,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CreateEnrollmentKey>,
) -> ApiResult<Json<Item<EnrollmentKeyWithToken>>> {
    let (key, token) = s.services.management().create_enrollment_key(req).await?;
    Ok(item(EnrollmentKeyWithToken {
        key,
        api_key: token.expose_secret().to_owned(),
    }))
}

#[utoipa::path(get, path = "/api/fleet/enrollment_api_keys/{id}", params(("id" = String, Path, description = "The resource id")), tag = "enrollment keys",
    responses((status = 200, body = Item<EnrollmentApiKey>), (status = 404, body = ErrorBody)))]
async fn get_enrollment_key(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Item<EnrollmentApiKey>>> {
    Ok(item(s.services.management().get_enrollment_key(&id).await?))
}

/// Revokes the key: it can no longer enrol agents.
#[utoipa::path(delete, path = "/api/fleet/enrollment_api_keys/{id}", params(("id" = String, Path, description = "The resource id")), tag = "enrollment keys",
    responses((status = 200, body = Item<EnrollmentApiKey>), (status = 404, body = ErrorBody)))]
async fn revoke_enrollment_key(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Item<EnrollmentApiKey>>> {
    Ok(item(
        s.services.management().revoke_enrollment_key(&id).await?,
    ))
}

// --- agents --------------------------------------------------------------------

#[utoipa::path(get, path = "/api/fleet/agents", tag = "agents", params(AgentQuery),
    responses((status = 200, body = List<Agent>), (status = 400, body = ErrorBody)))]
async fn list_agents(
    _: Operator,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<AgentQuery>,
) -> ApiResult<Json<List<Agent>>> {
    let p = page(q.page, q.per_page)?;
    let kuery = match q.kuery.as_deref() {
        Some(k) => s.services.management().parse_kuery(k)?,
        None => None,
    };
    let sort = match (q.sort_field.as_deref(), q.sort_order.as_deref()) {
        (None, None) => None,
        (field, order) => Some(
            flotilla_domain::agent::AgentSort::parse(field.unwrap_or("enrolled_at"), order)
                .map_err(flotilla_service::ServiceError::Invalid)?,
        ),
    };
    let filter = AgentFilter {
        policy_id: q.policy_id,
        enrollment_api_key_id: q.enrollment_api_key_id,
        status: q.status,
        tag: q.tag,
        show_inactive: q.show_inactive.unwrap_or(false),
        kuery,
        policy_change_failed: false,
        sort,
    };
    Ok(list(
        s.services.management().list_agents(&filter, p).await?,
        p,
    ))
}

#[utoipa::path(get, path = "/api/fleet/agents/{id}", params(("id" = String, Path, description = "The resource id")), tag = "agents",
    responses((status = 200, body = Item<Agent>), (status = 404, body = ErrorBody)))]
async fn get_agent(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Item<Agent>>> {
    Ok(item(s.services.management().get_agent(&id).await?))
}

#[utoipa::path(put, path = "/api/fleet/agents/{id}", params(("id" = String, Path, description = "The resource id")), tag = "agents", request_body = UpdateAgent,
    responses((status = 200, body = Item<Agent>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_agent(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateAgent>,
) -> ApiResult<Json<Item<Agent>>> {
    Ok(item(s.services.management().update_agent(&id, req).await?))
}

#[utoipa::path(post, path = "/api/fleet/agents/{id}/unenroll", params(("id" = String, Path, description = "The resource id")), tag = "agents", request_body = Option<UnenrollAgent>,
    responses((status = 200, body = Item<Agent>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn unenroll_agent(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<Item<Agent>>> {
    let body = body
        .map_err(|r| ApiError::new(r.status(), "request body is larger than the server accepts"))?;
    // The body is optional: `{}` or nothing both mean "ask the agent".
    let req = if body.iter().all(u8::is_ascii_whitespace) {
        UnenrollAgent::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    Ok(item(
        s.services.management().unenroll_agent(&id, req).await?,
    ))
}

#[utoipa::path(post, path = "/api/fleet/agents/{id}/reassign", params(("id" = String, Path, description = "The resource id")), tag = "agents", request_body = ReassignAgent,
    responses((status = 200, body = Item<Agent>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn reassign_agent(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ReassignAgent>,
) -> ApiResult<Json<Item<Agent>>> {
    Ok(item(
        s.services.management().reassign_agent(&id, req).await?,
    ))
}

/// The agent's actions, newest first, with delivery and acknowledgement.
#[utoipa::path(get, path = "/api/fleet/agents/{id}/actions", tag = "agents", params(("id" = String, Path, description = "The resource id"), PageQuery),
    responses((status = 200, body = List<AgentActionStatus>), (status = 404, body = ErrorBody)))]
async fn list_agent_actions(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<AgentActionStatus>>> {
    let p = page(q.page, q.per_page)?;
    Ok(list(
        s.services.management().agent_actions(&id, p).await?,
        p,
    ))
}

/// Create an action for one agent: `SETTINGS` (log level), `UNENROLL` or
/// `POLICY_REASSIGN`, with an optional expiration.
#[utoipa::path(post, path = "/api/fleet/agents/{id}/actions", params(("id" = String, Path, description = "The resource id")), tag = "agents", request_body = CreateAction,
    responses((status = 200, body = Item<Action>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_agent_action(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CreateAction>,
) -> ApiResult<Json<Item<Action>>> {
    Ok(item(s.services.management().create_action(&id, req).await?))
}

// --- bulk actions ---------------------------------------------------------------

/// Move agents (a list of ids, or a `kuery` string) to a policy: each gets a
/// `POLICY_REASSIGN` action; follow it at `/api/fleet/agents/action_status`.
#[utoipa::path(post, path = "/api/fleet/agents/bulk_reassign", tag = "agents", request_body = BulkReassign,
    responses((status = 200, body = BulkActionCreated), (status = 400, body = ErrorBody)))]
async fn bulk_reassign(
    _: Operator,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<BulkReassign>,
) -> ApiResult<Json<BulkActionCreated>> {
    let action_id = s.services.management().bulk_reassign(req).await?;
    Ok(Json(BulkActionCreated { action_id }))
}

/// Unenrol agents: ask them (an `UNENROLL` action each), or with `revoke`
/// at once.
#[utoipa::path(post, path = "/api/fleet/agents/bulk_unenroll", tag = "agents", request_body = BulkUnenroll,
    responses((status = 200, body = BulkActionCreated), (status = 400, body = ErrorBody)))]
async fn bulk_unenroll(
    _: Operator,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<BulkUnenroll>,
) -> ApiResult<Json<BulkActionCreated>> {
    let action_id = s.services.management().bulk_unenroll(req).await?;
    Ok(Json(BulkActionCreated { action_id }))
}

/// Add and remove tags on agents (applied by the server; the action
/// records which agents it changed).
#[utoipa::path(post, path = "/api/fleet/agents/bulk_update_agent_tags", tag = "agents", request_body = BulkUpdateTags,
    responses((status = 200, body = BulkActionCreated), (status = 400, body = ErrorBody)))]
async fn bulk_update_agent_tags(
    _: Operator,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<BulkUpdateTags>,
) -> ApiResult<Json<BulkActionCreated>> {
    let action_id = s.services.management().bulk_update_tags(req).await?;
    Ok(Json(BulkActionCreated { action_id }))
}

/// Send agents a `SETTINGS` action (log level). Kibana has no bulk route
/// for it; this one takes the same `agents` selection as the others.
#[utoipa::path(post, path = "/api/fleet/agents/bulk_settings", tag = "agents", request_body = BulkSettings,
    responses((status = 200, body = BulkActionCreated), (status = 400, body = ErrorBody)))]
async fn bulk_settings(
    _: Operator,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<BulkSettings>,
) -> ApiResult<Json<BulkActionCreated>> {
    let action_id = s.services.management().bulk_settings(req).await?;
    Ok(Json(BulkActionCreated { action_id }))
}

/// Actions, newest first, with how many of their agents have had them
/// delivered, acknowledged, failed or are pending (Kibana's route).
#[utoipa::path(get, path = "/api/fleet/agents/action_status", tag = "agents", params(PageQuery),
    responses((status = 200, body = List<ActionProgress>), (status = 400, body = ErrorBody)))]
async fn list_action_status(
    _: Operator,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<ActionProgress>>> {
    let p = page(q.page, q.per_page)?;
    Ok(list(s.services.management().action_status(p).await?, p))
}

/// One action's progress.
#[utoipa::path(get, path = "/api/fleet/agents/action_status/{id}", tag = "agents", params(("id" = String, Path, description = "The action id")),
    responses((status = 200, body = Item<ActionProgress>), (status = 404, body = ErrorBody)))]
async fn get_action_status(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Item<ActionProgress>>> {
    Ok(item(s.services.management().get_action_status(&id).await?))
}

/// One action's agents, in id order, each with its outcome (a failed one
/// with the agent's error, or why the server refused it).
#[utoipa::path(get, path = "/api/fleet/agents/action_status/{id}/agents", tag = "agents", params(("id" = String, Path, description = "The action id"), PageQuery),
    responses((status = 200, body = List<ActionTarget>), (status = 404, body = ErrorBody)))]
async fn list_action_agents(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<ActionTarget>>> {
    let p = page(q.page, q.per_page)?;
    Ok(list(
        s.services.management().action_agents(&id, p).await?,
        p,
    ))
}

// --- agent status history ---------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// RFC 3339; default a day before `to`.
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// RFC 3339; default now.
    to: Option<chrono::DateTime<chrono::Utc>>,
}

/// Agents by status over time: one sample per interval (see
/// `task_manager.status_sample_interval`), oldest first, at most 1440.
/// Kibana has no such route, hence the `/api/flotilla/` namespace.
#[utoipa::path(get, path = "/api/flotilla/agent_status_history", tag = "agents", params(HistoryQuery),
    responses((status = 200, body = Items<flotilla_domain::status_history::StatusSample>), (status = 400, body = ErrorBody)))]
async fn agent_status_history(
    _: Operator,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<Items<flotilla_domain::status_history::StatusSample>>> {
    let items = s.services.agent_status_history(q.from, q.to).await?;
    Ok(Json(Items { items }))
}

// --- operator API keys -----------------------------------------------------------

#[utoipa::path(get, path = "/api/flotilla/api_keys", tag = "api keys", params(PageQuery),
    responses((status = 200, body = List<OperatorApiKey>)))]
async fn list_api_keys(
    _: Operator,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<OperatorApiKey>>> {
    let p = page(q.page, q.per_page)?;
    Ok(list(
        s.services.management().list_operator_keys(p).await?,
        p,
    ))
}

#[utoipa::path(post, path = "/api/flotilla/api_keys", tag = "api keys", request_body = CreateOperatorKey,
    responses((status = 200, body = Item<OperatorKeyWithSecret>), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_api_key(
    _: Operator,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CreateOperatorKey>,
) -> ApiResult<Json<Item<OperatorKeyWithSecret>>> {
    let (key, secret) = s.services.management().create_operator_key(req).await?;
    Ok(item(OperatorKeyWithSecret {
        key,
        api_key: secret.expose_secret().to_owned(),
    }))
}

#[utoipa::path(delete, path = "/api/flotilla/api_keys/{id}", params(("id" = String, Path, description = "The resource id")), tag = "api keys",
    responses((status = 200, body = Item<OperatorApiKey>), (status = 404, body = ErrorBody)))]
async fn revoke_api_key(
    Operator(me): Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Item<OperatorApiKey>>> {
    Ok(item(
        s.services
            .management()
            .revoke_operator_key(&me.id, &id)
            .await?,
    ))
}
