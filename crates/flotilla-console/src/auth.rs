//! Sign-in, sessions, CSRF and the same-origin check.
//!
//! Sign-in exchanges an operator API key (a form field, never a URL) for a
//! session: the service authenticates the key as the management API does
//! and stores the session (only the SHA-256 of its id); the browser gets
//! the id in an `HttpOnly; SameSite=Strict; Path=/app` cookie with a
//! `Max-Age`, `Secure` over TLS. A state-changing request must come from
//! this origin (`Sec-Fetch-Site` / `Origin`) and carry the session's CSRF
//! token in its form.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use secrecy::ExposeSecret;
use serde::Deserialize;

use flotilla_service::secrets::ct_eq;
use flotilla_service::ServiceError;
use flotilla_store::ConsoleSession;

use crate::error::ConsoleError;
use crate::layout::bare;
use crate::{ConsoleState, BASE};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "flotilla_session";

/// The signed-in operator of a request. Extracting it is the check: a
/// handler that takes a `Session` cannot serve a signed-out browser.
/// Signed out, a `GET` is sent to the sign-in page (303), anything else is
/// refused (401) — in neither case is any page content rendered.
pub(crate) struct Session {
    pub(crate) session: ConsoleSession,
    /// The cookie's id, for sign-out.
    id: String,
}

impl Session {
    pub(crate) fn csrf(&self) -> &str {
        &self.session.csrf_token
    }

    pub(crate) fn operator_name(&self) -> &str {
        &self.session.operator.name
    }

    /// A posted form's CSRF token must be this session's.
    pub(crate) fn check_csrf(&self, token: &str) -> Result<(), ConsoleError> {
        if ct_eq(token.as_bytes(), self.session.csrf_token.as_bytes()) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(
                "the form's CSRF token is missing or stale; reload the page",
            ))
        }
    }
}

impl FromRequestParts<ConsoleState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Self, Response> {
        let signed_out = || {
            if parts.method == Method::GET || parts.method == Method::HEAD {
                Redirect::to(&format!("{BASE}/sign-in")).into_response()
            } else {
                ConsoleError::SignedOut.into_response()
            }
        };
        let Some(id) = session_cookie(&parts.headers) else {
            return Err(signed_out());
        };
        let found = state
            .services
            .management()
            .console_session(&id, state.clock.now())
            .await
            .map_err(|e| ConsoleError::from(e).into_response())?;
        match found {
            Some(session) => Ok(Session { session, id }),
            None => Err(signed_out()),
        }
    }
}

/// The session id from the `Cookie` header(s). Parsed here rather than
/// with a cookie crate: one name, whose value is alphanumeric.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn set_cookie(state: &ConsoleState, value: &str, max_age: u64) -> String {
    let secure = if state.settings.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    format!("{SESSION_COOKIE}={value}; Path={BASE}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// State-changing requests must come from a page of this origin: a
/// browser's `Sec-Fetch-Site` must say `same-origin`, an `Origin` must be
/// this host, and one of the two must be there. A cross-site form post is
/// refused before any handler (or the sign-in) runs; the CSRF token is a
/// second, independent check on every signed-in form.
pub(crate) async fn same_origin_posts(req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && !same_origin(req.headers()) {
        return ConsoleError::Forbidden("cross-site requests are refused").into_response();
    }
    next.run(req).await
}

fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let fetch_site = text("sec-fetch-site");
    if fetch_site.is_some_and(|s| s != "same-origin") {
        return false;
    }
    // Under `Referrer-Policy: no-referrer` a browser sends `Origin: null`
    // with same-origin form posts; its `Sec-Fetch-Site` (a header no page
    // can set) then speaks for it.
    let origin = match text("origin") {
        None | Some("null") => return fetch_site.is_some(),
        Some(o) => o,
    };
    let Some(host) = text("host") else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
}

#[derive(Deserialize)]
pub(crate) struct SignInForm {
    #[serde(default)]
    api_key: String,
}

pub(crate) async fn sign_in_page() -> Markup {
    sign_in_view(None)
}

fn sign_in_view(error: Option<&str>) -> Markup {
    bare(
        "Sign in",
        html! {
            main #main .sign-in {
                h1 { "Flotilla" }
                p { "Sign in with an operator API key." }
                @if let Some(e) = error {
                    p .error role="alert" { (e) }
                }
                form method="post" action={(BASE) "/sign-in"} {
                    label for="api_key" { "Operator API key" }
                    input #api_key type="password" name="api_key" required autocomplete="off" autofocus;
                    button type="submit" { "Sign in" }
                }
                p .hint { "Keys are made with " code { "flotilla apikey create" } " or shown once when the server first starts." }
            }
        },
    )
}

pub(crate) async fn sign_in(
    State(state): State<ConsoleState>,
    Form(form): Form<SignInForm>,
) -> Response {
    let key = form.api_key.trim();
    if key.is_empty() || key.len() > 1024 {
        return (
            StatusCode::UNAUTHORIZED,
            sign_in_view(Some("Enter an operator API key.")),
        )
            .into_response();
    }
    let signed_in = state
        .services
        .management()
        .console_sign_in(key, state.settings.session_ttl, state.clock.now())
        .await;
    match signed_in {
        Ok(s) => {
            let cookie = set_cookie(
                &state,
                s.session_id.expose_secret(),
                state.settings.session_ttl.as_secs(),
            );
            let mut res = Redirect::to(BASE).into_response();
            if let Ok(v) = cookie.parse() {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Err(ServiceError::Unauthorized(_)) => (
            StatusCode::UNAUTHORIZED,
            sign_in_view(Some("That API key is unknown or revoked.")),
        )
            .into_response(),
        Err(e) => ConsoleError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn sign_out(
    State(state): State<ConsoleState>,
    session: Session,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    state
        .services
        .management()
        .console_sign_out(&session.id)
        .await?;
    let mut res = Redirect::to(&format!("{BASE}/sign-in")).into_response();
    if let Ok(v) = set_cookie(&state, "", 0).parse() {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(res)
}

/// The hidden CSRF field every signed-in form carries.
pub(crate) fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf()); }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_needs_a_browser_signal_that_matches() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(same_origin(&headers(&[
            ("origin", "http://127.0.0.1:8220"),
            ("host", "127.0.0.1:8220")
        ])));
        assert!(!same_origin(&headers(&[])), "no signal at all");
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!same_origin(&headers(&[
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:8220")
        ])));
        assert!(same_origin(&headers(&[
            ("sec-fetch-site", "same-origin"),
            ("origin", "null"),
            ("host", "127.0.0.1:8220")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "null"),
            ("host", "127.0.0.1:8220")
        ])));
        assert!(!same_origin(&headers(&[
            ("sec-fetch-site", "same-origin"),
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:8220")
        ])));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=b; flotilla_session=abc123; c=d")]);
        assert_eq!(session_cookie(&h).as_deref(), Some("abc123"));
        let h = headers(&[("cookie", "flotilla_session=ab;c")]);
        assert_eq!(session_cookie(&h).as_deref(), Some("ab"));
        let h = headers(&[("cookie", "flotilla_session=a%20b")]);
        assert_eq!(session_cookie(&h), None);
        assert_eq!(session_cookie(&headers(&[])), None);
    }
}
