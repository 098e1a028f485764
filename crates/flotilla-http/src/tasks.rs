//! The task manager's API: `/api/task_manager/…` for operators.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use flotilla_api::management::{Item, List};
use flotilla_api::tasks::{ScheduleTaskRequest, Task, TaskBulkResults, TaskIds};
use flotilla_service::tasks::TaskManager;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Operator, OperatorCredential};
use crate::management::{item, list, page};
use crate::AppState;

type ApiResult<T> = Result<T, ApiError>;

fn manager(s: &AppState) -> ApiResult<&Arc<TaskManager>> {
    s.tasks.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the task manager is not running on this instance",
        )
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TaskQuery {
    page: Option<u32>,
    #[serde(rename = "perPage")]
    #[param(rename = "perPage")]
    per_page: Option<u32>,
    /// Only tasks of this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    task_type: Option<String>,
    /// `idle`, `running` or `failed`.
    status: Option<String>,
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tasks, schedule_task))
        .routes(routes!(get_task, delete_task))
        .routes(routes!(run_soon))
        .routes(routes!(bulk_delete))
        .routes(routes!(bulk_enable))
        .routes(routes!(bulk_disable))
        .routes(routes!(health))
        .routes(routes!(list_runs))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct RunsQuery {
    /// One task's runs.
    task_id: Option<String>,
    /// At most this many (default 100, at most 10000).
    limit: Option<u32>,
}

/// The audit trail: one line per run (who ran it, when it was due, when it
/// started and finished, and how it ended), newest first.
#[utoipa::path(get, path = "/api/task_manager/runs", tag = "task manager", params(RunsQuery),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody)))]
async fn list_runs(
    _: Operator,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<RunsQuery>,
) -> ApiResult<Json<Value>> {
    let runs = manager(&s)?
        .runs(q.task_id.as_deref(), q.limit.unwrap_or(100))
        .await?;
    Ok(Json(serde_json::json!({ "items": runs })))
}

#[utoipa::path(get, path = "/api/task_manager/tasks", tag = "task manager", params(TaskQuery),
    responses((status = 200, body = List<Task>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_tasks(
    _: Operator,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<TaskQuery>,
) -> ApiResult<Json<List<Task>>> {
    let p = page(q.page, q.per_page)?;
    let got = manager(&s)?
        .list(q.task_type, q.status.as_deref(), p)
        .await?;
    Ok(list(got, p))
}

/// Schedule a task. The same `id` and type again answers the existing task
/// (its interval updated). A user-scoped type grants an API key on the
/// caller's behalf, used as the task's identity when it runs.
#[utoipa::path(post, path = "/api/task_manager/tasks", tag = "task manager", request_body = ScheduleTaskRequest,
    responses((status = 200, body = Item<Task>), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn schedule_task(
    OperatorCredential(op, credential): OperatorCredential,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<ScheduleTaskRequest>,
) -> ApiResult<Json<Item<Task>>> {
    let (task, _) = manager(&s)?.schedule(Some((&op, &credential)), req).await?;
    Ok(item(task))
}

#[utoipa::path(get, path = "/api/task_manager/tasks/{id}", params(("id" = String, Path, description = "The task id")), tag = "task manager",
    responses((status = 200, body = Item<Task>), (status = 404, body = ErrorBody)))]
async fn get_task(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Item<Task>>> {
    Ok(item(manager(&s)?.get(&id).await?))
}

#[utoipa::path(delete, path = "/api/task_manager/tasks/{id}", params(("id" = String, Path, description = "The task id")), tag = "task manager",
    responses((status = 200, body = TaskBulkResults), (status = 404, body = ErrorBody)))]
async fn delete_task(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TaskBulkResults>> {
    let r = manager(&s)?.delete(std::slice::from_ref(&id)).await?;
    if r.results.iter().all(|r| !r.success) {
        return Err(ApiError::not_found(format!("task '{id}' not found")));
    }
    Ok(Json(r))
}

#[utoipa::path(post, path = "/api/task_manager/tasks/{id}/_run_soon", params(("id" = String, Path, description = "The task id")), tag = "task manager",
    responses((status = 200, body = Item<Task>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn run_soon(
    _: Operator,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Item<Task>>> {
    Ok(item(manager(&s)?.run_soon(&id).await?))
}

/// Delete many tasks; every key they held is queued for invalidation, the
/// keys of tasks that cannot be read included.
#[utoipa::path(post, path = "/api/task_manager/tasks/_bulk_delete", tag = "task manager", request_body = TaskIds,
    responses((status = 200, body = TaskBulkResults), (status = 400, body = ErrorBody)))]
async fn bulk_delete(
    _: Operator,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<TaskIds>,
) -> ApiResult<Json<TaskBulkResults>> {
    Ok(Json(manager(&s)?.delete(&req.ids).await?))
}

#[utoipa::path(post, path = "/api/task_manager/tasks/_bulk_enable", tag = "task manager", request_body = TaskIds,
    responses((status = 200, body = TaskBulkResults), (status = 400, body = ErrorBody)))]
async fn bulk_enable(
    _: Operator,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<TaskIds>,
) -> ApiResult<Json<TaskBulkResults>> {
    Ok(Json(manager(&s)?.set_enabled(&req.ids, true).await?))
}

#[utoipa::path(post, path = "/api/task_manager/tasks/_bulk_disable", tag = "task manager", request_body = TaskIds,
    responses((status = 200, body = TaskBulkResults), (status = 400, body = ErrorBody)))]
async fn bulk_disable(
    _: Operator,
    State(s): State<AppState>,
    ApiJson(req): ApiJson<TaskIds>,
) -> ApiResult<Json<TaskBulkResults>> {
    Ok(Json(manager(&s)?.set_enabled(&req.ids, false).await?))
}

/// This instance's view: configuration, workload by type and status,
/// overdue tasks, drift (p50/p99), load, runs and failures per minute.
#[utoipa::path(get, path = "/api/task_manager/_health", tag = "task manager",
    responses((status = 200, body = Object), (status = 401, body = ErrorBody)))]
async fn health(_: Operator, State(s): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(manager(&s)?.health().await?))
}
