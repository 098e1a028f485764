//! Extractors whose rejections are our JSON errors, and the operator
//! authentication extractor (so a handler cannot forget to authenticate).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use flotilla_domain::apikey::OperatorApiKey;

use crate::error::ApiError;
use crate::AppState;

/// A JSON body (`Content-Type: application/json` or `…+json`). Strings
/// holding NUL (`\u0000`) are refused up front, whatever the field: no
/// engine stores them alike (PostgreSQL refuses them in text).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a request with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| match r.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body is larger than the server accepts",
                ),
                _ => ApiError::bad_request("cannot read the request body"),
            })?;
        if json_has_nul(&bytes) {
            return Err(ApiError::bad_request(NUL_MESSAGE));
        }
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(v)| ApiJson(v))
            .map_err(ApiError::from)
    }
}

pub const NUL_MESSAGE: &str = "NUL characters (\\u0000) are not allowed in JSON strings";

fn is_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", sub)) => sub == "json" || sub.ends_with("+json"),
        _ => false,
    }
}

/// Whether a JSON text holds a NUL inside a string (or key). Raw control
/// characters are invalid JSON anyway, so NUL can only be the escape
/// `\u0000`; an escaped backslash followed by `u0000` is not one.
pub fn json_has_nul(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            0 => return true,
            b'\\' => {
                if json.get(i + 1) == Some(&b'u') && json.get(i + 2..i + 6) == Some(b"0000") {
                    return true;
                }
                // Skip the escaped character, so `\\` cannot start another escape.
                i += 2;
            }
            _ => i += 1,
        }
    }
    false
}

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// The `ApiKey` credential of a request, if well-formed.
pub fn api_key_credential(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("missing Authorization header; expected `ApiKey <key>`")
    })?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let (scheme, credential) = value.split_once(' ').ok_or_else(|| {
        ApiError::unauthorized("malformed Authorization header; expected `ApiKey <key>`")
    })?;
    if !scheme.eq_ignore_ascii_case("apikey") {
        return Err(ApiError::unauthorized(
            "unsupported authorization scheme; expected `ApiKey <key>`",
        ));
    }
    let credential = credential.trim();
    if credential.is_empty() || credential.len() > 1024 {
        return Err(ApiError::unauthorized("malformed API key"));
    }
    Ok(credential)
}

/// An authenticated operator.
pub struct Operator(pub OperatorApiKey);

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let credential = api_key_credential(parts)?;
        let key = state.services.management().authenticate(credential).await?;
        Ok(Operator(key))
    }
}

/// An authenticated operator with the credential they presented — for the
/// one use that needs it (granting a task's key on their behalf); it is
/// never stored or logged.
pub struct OperatorCredential(pub OperatorApiKey, pub secrecy::SecretString);

impl FromRequestParts<AppState> for OperatorCredential {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let credential = api_key_credential(parts)?;
        let key = state.services.management().authenticate(credential).await?;
        Ok(OperatorCredential(
            key,
            secrecy::SecretString::from(credential.to_owned()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::json_has_nul;

    #[test]
    fn finds_nul_escapes_only() {
        assert!(json_has_nul(br#"{"a":"x\u0000y"}"#));
        assert!(json_has_nul(br#"{"a\u0000":1}"#));
        assert!(json_has_nul(br#"["\\\u0000"]"#));
        assert!(
            !json_has_nul(br#"{"a":"\\u0000"}"#),
            "an escaped backslash, then text"
        );
        assert!(!json_has_nul(br#"{"a":"\u0001 \n"}"#));
        assert!(!json_has_nul(br#""\u00"#), "a truncated escape");
    }
}
