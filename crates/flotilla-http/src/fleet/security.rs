//! The Elasticsearch-shaped key endpoints (`/_security/_authenticate`,
//! `/_security/user/_has_privileges`), answering in Elasticsearch's error
//! shape on purpose: Elasticsearch clients read those.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use flotilla_service::fleet::FleetErrorKind;
use flotilla_service::keys::{HasPrivilegesRequest, KeyRejection, KeyService};

use super::{credential, read_body, FleetApiError};
use crate::AppState;

fn security_error(status: StatusCode, reason: &str) -> Response {
    es_error(status, "security_exception", reason)
}

async fn authenticated_key(
    s: &AppState,
    headers: &HeaderMap,
) -> Result<flotilla_store::ApiKeyRecord, Response> {
    let Ok(cred) = credential(headers) else {
        return Err(security_error(
            StatusCode::UNAUTHORIZED,
            "missing authentication credentials",
        ));
    };
    match s.services.keys().authenticate(&cred).await {
        Ok(Ok(key)) => Ok(key),
        Ok(Err(KeyRejection::Invalidated)) => Err(security_error(
            StatusCode::UNAUTHORIZED,
            "unable to authenticate: the API key is invalidated",
        )),
        Ok(Err(_)) => Err(security_error(
            StatusCode::UNAUTHORIZED,
            "unable to authenticate with provided credentials",
        )),
        Err(_) => Err(security_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "authentication unavailable",
        )),
    }
}

/// The principal of an Elasticsearch-API request: an API key, or an
/// operator key (operators manage keys through the security API too).
pub(super) async fn authenticated_principal(
    s: &AppState,
    headers: &HeaderMap,
) -> Result<flotilla_service::keys::Principal, Response> {
    let Ok(cred) = credential(headers) else {
        return Err(security_error(
            StatusCode::UNAUTHORIZED,
            "missing authentication credentials",
        ));
    };
    match s.services.keys().principal_for(&cred).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(security_error(
            StatusCode::UNAUTHORIZED,
            "unable to authenticate with provided credentials",
        )),
        Err(_) => Err(security_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "authentication unavailable",
        )),
    }
}

pub(super) async fn authenticate(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match authenticated_key(&s, &headers).await {
        Ok(key) => Json(json!({
            "username": key.name,
            "roles": [],
            "full_name": null,
            "email": null,
            "metadata": key.metadata,
            "enabled": true,
            "authentication_realm": {"name": "_es_api_key", "type": "_es_api_key"},
            "lookup_realm": {"name": "_es_api_key", "type": "_es_api_key"},
            "authentication_type": "api_key",
            "api_key": {"id": key.id, "name": key.name},
        }))
        .into_response(),
        Err(r) => r,
    }
}

/// An Elasticsearch-shaped error (`/_security/*` answers these on purpose:
/// Elasticsearch clients read them).
pub(crate) fn es_error(status: StatusCode, kind: &str, reason: &str) -> Response {
    let body = json!({
        "error": {
            "root_cause": [{"type": kind, "reason": reason}],
            "type": kind,
            "reason": reason,
        },
        "status": status.as_u16(),
    });
    (status, Json(body)).into_response()
}

/// `_has_privileges` bodies are small lists of names.
pub const HAS_PRIVILEGES_BODY_LIMIT: usize = 64 * 1024;

/// Authenticated first; the body is read only then, under a small limit;
/// the key service caps the checks and answers.
pub(super) async fn has_privileges(State(s): State<AppState>, req: Request) -> Response {
    let key = match authenticated_key(&s, req.headers()).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    let body = match read_body(req, HAS_PRIVILEGES_BODY_LIMIT).await {
        Ok((_, body)) => body,
        Err(FleetApiError(e)) if e.kind == FleetErrorKind::PayloadTooLarge => {
            let mut r = es_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "content_too_long_exception",
                &format!("the request body exceeds {HAS_PRIVILEGES_BODY_LIMIT} bytes"),
            );
            r.headers_mut()
                .insert("connection", HeaderValue::from_static("close"));
            return r;
        }
        Err(FleetApiError(e)) => {
            return es_error(StatusCode::BAD_REQUEST, "parse_exception", &e.message)
        }
    };
    let request: HasPrivilegesRequest = if body.iter().all(u8::is_ascii_whitespace) {
        HasPrivilegesRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return es_error(
                    StatusCode::BAD_REQUEST,
                    "x_content_parse_exception",
                    &format!("invalid request body: {e}"),
                )
            }
        }
    };
    match KeyService::has_privileges_report(&key, &request) {
        Ok(report) => Json(report).into_response(),
        Err(too_many) => es_error(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            &too_many.to_string(),
        ),
    }
}
