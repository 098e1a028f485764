//! The Elasticsearch-compatible surface of the embedded output: `GET|HEAD
//! /`, `_bulk`, and the security API's keys (`/_security/api_key…`).
//! Requests and answers are Elasticsearch-shaped, errors too, and every
//! answer says `X-Elastic-Product: Elasticsearch` (the official clients
//! refuse a server without it).

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use flotilla_service::fleet::FleetErrorKind;
use flotilla_service::keys::{CreateKey, KeyError};

use super::security::{authenticated_principal, es_error};
use super::{read_body, FleetApiError};
use crate::AppState;

/// What `GET /` reports as the Elasticsearch version (the official 9.x
/// clients check the major).
pub(super) const COMPATIBLE_VERSION: &str = "9.1.0";

/// `X-Elastic-Product: Elasticsearch` on every answer of these routes.
pub(super) async fn product_header(response: Response) -> Response {
    let mut response = response;
    response.headers_mut().insert(
        "x-elastic-product",
        HeaderValue::from_static("Elasticsearch"),
    );
    response
}

pub(super) async fn root(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authenticated_principal(&s, &headers).await {
        return r;
    }
    if method == Method::HEAD {
        return StatusCode::OK.into_response();
    }
    Json(json!({
        "name": "flotilla",
        "cluster_name": "flotilla",
        "cluster_uuid": "flotilla-embedded-output",
        "version": {
            "number": COMPATIBLE_VERSION,
            "build_flavor": "default",
            "build_type": "flotilla",
            "lucene_version": "n/a",
            "minimum_wire_compatibility_version": "8.18.0",
            "minimum_index_compatibility_version": "8.0.0",
        },
        "tagline": "You Know, for Search",
    }))
    .into_response()
}

fn body_error(e: FleetApiError, limit: usize) -> Response {
    if e.0.kind == FleetErrorKind::PayloadTooLarge {
        let mut r = es_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "content_too_long_exception",
            &format!("the request body exceeds {limit} bytes"),
        );
        r.headers_mut()
            .insert("connection", HeaderValue::from_static("close"));
        return r;
    }
    es_error(StatusCode::BAD_REQUEST, "parse_exception", &e.0.message)
}

/// `POST /_bulk` and `POST /{index}/_bulk`: authenticated first, then the
/// body read under the bulk limit.
pub(super) async fn bulk(s: State<AppState>, req: Request, limit: usize) -> Response {
    bulk_into(s, None, req, limit).await
}

pub(super) async fn bulk_index(
    s: State<AppState>,
    Path(index): Path<String>,
    req: Request,
    limit: usize,
) -> Response {
    bulk_into(s, Some(index), req, limit).await
}

async fn bulk_into(
    State(s): State<AppState>,
    index: Option<String>,
    req: Request,
    limit: usize,
) -> Response {
    let principal = match authenticated_principal(&s, req.headers()).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let body = match read_body(req, limit).await {
        Ok((_, body)) => body,
        Err(e) => return body_error(e, limit),
    };
    let perms = principal.permissions();
    match s
        .services
        .bulk(&principal.id(), perms.as_ref(), &body, index.as_deref())
        .await
    {
        Ok(outcome) => Json(outcome.to_json()).into_response(),
        Err(flotilla_service::ServiceError::Invalid(v)) => es_error(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            &v.message,
        ),
        Err(e) => {
            tracing::error!(error = %e, "bulk ingest failed");
            es_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable_shards_exception",
                "the documents could not be stored; retry",
            )
        }
    }
}

fn key_error(e: KeyError) -> Response {
    match e {
        KeyError::Invalid(reason) => es_error(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            &reason,
        ),
        KeyError::Forbidden(reason) => {
            es_error(StatusCode::FORBIDDEN, "security_exception", &reason)
        }
        KeyError::Unauthenticated(reason) => {
            es_error(StatusCode::UNAUTHORIZED, "security_exception", &reason)
        }
        KeyError::Unavailable => es_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the key service is unavailable; retry",
        ),
    }
}

/// A small JSON body of type `T` (key requests), or the Elasticsearch
/// error to answer. The error names where the body is wrong, never what it
/// holds (it may hold a credential).
async fn typed_body<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, Response> {
    let value = json_body(req).await?;
    serde_json::from_value(value).map_err(|e| {
        let what = e.to_string();
        let field = what
            .split_once("field `")
            .and_then(|(_, rest)| rest.split_once('`'))
            .map(|(f, _)| format!(" (field `{f}`)"))
            .unwrap_or_default();
        es_error(
            StatusCode::BAD_REQUEST,
            "x_content_parse_exception",
            &format!("the request body is not a valid request: a field is missing or has the wrong type{field}"),
        )
    })
}

/// A small JSON body (key requests), or the Elasticsearch error to answer.
async fn json_body(req: Request) -> Result<Value, Response> {
    const LIMIT: usize = 256 * 1024;
    let body = match read_body(req, LIMIT).await {
        Ok((_, body)) => body,
        Err(e) => return Err(body_error(e, LIMIT)),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body).map_err(|e| {
        es_error(
            StatusCode::BAD_REQUEST,
            "x_content_parse_exception",
            &format!("invalid request body: {e}"),
        )
    })
}

/// `POST|PUT /_security/api_key`.
pub(super) async fn create_api_key(State(s): State<AppState>, req: Request) -> Response {
    let principal = match authenticated_principal(&s, req.headers()).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let request: CreateKey = match typed_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match s
        .services
        .keys()
        .create_user_key(&principal, request, &s.services.settings.ceiling, false)
        .await
    {
        Ok(created) => Json(created).into_response(),
        Err(e) => key_error(e),
    }
}

#[derive(Deserialize)]
struct GrantRequest {
    grant_type: String,
    #[serde(default)]
    access_token: Option<String>,
    api_key: CreateKey,
}

/// `POST /_security/api_key/grant`: a key on behalf of a user who
/// authenticated with an API key (`grant_type: access_token`, or
/// `api_key`, with that key as `access_token`).
pub(super) async fn grant_api_key(State(s): State<AppState>, req: Request) -> Response {
    let caller = match authenticated_principal(&s, req.headers()).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let grant: GrantRequest = match typed_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !matches!(grant.grant_type.as_str(), "access_token" | "api_key") {
        return es_error(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            &format!("grant_type [{}] is not supported: the user authenticates with an API key (access_token)", grant.grant_type),
        );
    }
    if !caller.has_cluster(&["grant_api_key", "manage_api_key", "manage_security", "all"]) {
        return es_error(
            StatusCode::FORBIDDEN,
            "security_exception",
            &format!(
                "action [cluster:admin/xpack/security/api_key/grant] is unauthorized for [{}]",
                caller.id()
            ),
        );
    }
    let Some(token) = grant.access_token else {
        return es_error(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            "access_token is required",
        );
    };
    let user = match s.services.keys().principal_for(&token).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return es_error(
                StatusCode::UNAUTHORIZED,
                "security_exception",
                "unable to authenticate the user to grant a key for",
            )
        }
        Err(_) => return key_error(KeyError::Unavailable),
    };
    match s
        .services
        .keys()
        .create_user_key(&user, grant.api_key, &s.services.settings.ceiling, true)
        .await
    {
        Ok(created) => Json(created).into_response(),
        Err(e) => key_error(e),
    }
}

#[derive(Deserialize, Default)]
pub(super) struct KeyQuery {
    id: Option<String>,
    name: Option<String>,
    #[serde(default)]
    owner: Option<bool>,
    #[serde(default)]
    active_only: Option<bool>,
}

/// `GET /_security/api_key?id=&name=&owner=true`: keys, never secrets.
pub(super) async fn get_api_keys(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<KeyQuery>,
) -> Response {
    let principal = match authenticated_principal(&s, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match s
        .services
        .keys()
        .list_user_keys(
            &principal,
            q.id,
            q.name,
            q.owner.unwrap_or(false),
            q.active_only.unwrap_or(false),
        )
        .await
    {
        Ok(keys) => Json(json!({ "api_keys": keys })).into_response(),
        Err(e) => key_error(e),
    }
}

/// `DELETE /_security/api_key` with `{"ids": […]}` or `{"name": …}`.
pub(super) async fn invalidate_api_keys(State(s): State<AppState>, req: Request) -> Response {
    let principal = match authenticated_principal(&s, req.headers()).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let body = match json_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ids: Vec<String> = match body.get("ids") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => vec![],
    };
    let name = body.get("name").and_then(Value::as_str).map(str::to_owned);
    let owner = body.get("owner").and_then(Value::as_bool).unwrap_or(false);
    if ids.is_empty() && name.is_none() && !owner {
        return es_error(
            StatusCode::BAD_REQUEST,
            "action_request_validation_exception",
            "Validation Failed: 1: One of [api key id(s), api key name, username, realm name] must be specified if [owner] flag is false;",
        );
    }
    match s
        .services
        .keys()
        .invalidate_user_keys(&principal, ids, name, owner)
        .await
    {
        Ok(report) => Json(report).into_response(),
        Err(e) => key_error(e),
    }
}
