//! Errors as console pages: a status and a short message, never internal
//! details (those are logged).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use flotilla_service::ServiceError;

use crate::layout::bare;
use crate::BASE;

#[derive(Debug)]
pub(crate) enum ConsoleError {
    /// No live session on a state-changing request.
    SignedOut,
    Forbidden(&'static str),
    NotFound(String),
    Invalid(String),
    Conflict(String),
    TooLarge(String),
    Unavailable(String),
    Internal,
}

impl From<ServiceError> for ConsoleError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(v) => ConsoleError::Invalid(v.to_string()),
            ServiceError::NotFound(what) => ConsoleError::NotFound(format!("{what} not found")),
            ServiceError::Conflict(m) => ConsoleError::Conflict(m),
            ServiceError::Unauthorized(_) => ConsoleError::SignedOut,
            ServiceError::Unavailable(m) => ConsoleError::Unavailable(m),
            ServiceError::Internal(e) => {
                tracing::error!(error = %e, "console request failed");
                ConsoleError::Internal
            }
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ConsoleError::SignedOut => (StatusCode::UNAUTHORIZED, "You are signed out.".to_owned()),
            ConsoleError::Forbidden(m) => (StatusCode::FORBIDDEN, m.to_owned()),
            ConsoleError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ConsoleError::Invalid(m) => (StatusCode::BAD_REQUEST, m),
            ConsoleError::Conflict(m) => (StatusCode::CONFLICT, m),
            ConsoleError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ConsoleError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ConsoleError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong; the server log has the details.".to_owned(),
            ),
        };
        let page = bare(
            status.canonical_reason().unwrap_or("Error"),
            html! {
                main #main .sign-in {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p role="alert" { (message) }
                    p { a href=(BASE) { "Back to the console" } }
                }
            },
        );
        (status, page).into_response()
    }
}

/// Unknown console paths: the same 404 page signed in or out (it shows
/// nothing but the path was not found).
pub(crate) async fn not_found() -> ConsoleError {
    ConsoleError::NotFound("No such page.".into())
}
