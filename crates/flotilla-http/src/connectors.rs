//! Cloud connectors: `/api/fleet/cloud_connectors[…]` (Kibana's bodies).

use axum::extract::State;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use flotilla_api::connectors::{CreateCloudConnector, UpdateCloudConnector, VerifyQueued};
use flotilla_api::management::{Deleted, Item, List};
use flotilla_domain::connector::CloudConnector;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Operator};
use crate::management::{deleted, item, list, page, PageQuery};
use crate::AppState;

type ApiResult<T> = Result<T, ApiError>;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_connectors, create_connector))
        .routes(routes!(get_connector, update_connector, delete_connector))
        .routes(routes!(verify_connector))
}

#[utoipa::path(get, path = "/api/fleet/cloud_connectors", tag = "cloud connectors", params(PageQuery),
    responses((status = 200, body = List<CloudConnector>), (status = 401, body = ErrorBody)))]
async fn list_connectors(
    _: Operator,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<CloudConnector>>> {
    let p = page(q.page, q.per_page)?;
    Ok(list(s.services.management().list_connectors(p).await?, p))
}

/// Create a connector. Secret variables (`external_id`,
/// `secret_access_key`, Azure's ids and secret) are sealed and only ever
/// shown as references afterwards.
#[utoipa::path(post, path = "/api/fleet/cloud_connectors", tag = "cloud connectors", request_body = CreateCloudConnector,
    responses((status = 200, body = Item<CloudConnector>), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_connector(
    _: Operator,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CreateCloudConnector>,
) -> ApiResult<Json<Item<CloudConnector>>> {
    Ok(item(s.services.management().create_connector(req).await?))
}

#[utoipa::path(get, path = "/api/fleet/cloud_connectors/{id}", params(("id" = String, Path, description = "The resource id")), tag = "cloud connectors",
    responses((status = 200, body = Item<CloudConnector>), (status = 404, body = ErrorBody)))]
async fn get_connector(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Item<CloudConnector>>> {
    Ok(item(s.services.management().get_connector(&id).await?))
}

#[utoipa::path(put, path = "/api/fleet/cloud_connectors/{id}", params(("id" = String, Path, description = "The resource id")), tag = "cloud connectors", request_body = UpdateCloudConnector,
    responses((status = 200, body = Item<CloudConnector>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_connector(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateCloudConnector>,
) -> ApiResult<Json<Item<CloudConnector>>> {
    Ok(item(
        s.services.management().update_connector(&id, req).await?,
    ))
}

/// Refused (409) while an integration uses it.
#[utoipa::path(delete, path = "/api/fleet/cloud_connectors/{id}", params(("id" = String, Path, description = "The resource id")), tag = "cloud connectors",
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_connector(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Deleted>> {
    s.services.management().delete_connector(&id).await?;
    Ok(deleted(id))
}

/// Verify again now (the connector must be in use).
#[utoipa::path(post, path = "/api/fleet/cloud_connectors/{id}/_verify", params(("id" = String, Path, description = "The resource id")), tag = "cloud connectors",
    responses((status = 200, body = VerifyQueued), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn verify_connector(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<VerifyQueued>> {
    Ok(Json(s.services.management().verify_connector(&id).await?))
}
