//! Extractors whose rejections are our JSON errors, and the operator
//! authentication extractor (so a handler cannot forget to authenticate).

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use flotilla_domain::apikey::OperatorApiKey;

use crate::error::ApiError;
use crate::AppState;

#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

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
