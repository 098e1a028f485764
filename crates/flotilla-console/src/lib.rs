//! Flotilla's operator console: server-rendered HTML pages at `/app`.
//!
//! Architecture invariant: the console calls services only (never the
//! store), keeps no session state in memory (sessions are rows in the
//! database, known by the SHA-256 of their id), puts no secret in a URL
//! and runs no inline script (its one script is an embedded file served
//! under a `script-src 'self'` policy). Pages are plain HTML forms; the
//! script only adds conveniences (copy buttons, the event browser's live
//! tail), so every page works
//! without it. Every table is paged on the server.

#![warn(unreachable_pub)]

mod actions;
mod agents;
mod assets;
mod auth;
mod connectors;
mod error;
mod events;
mod integrations;
mod layout;
mod multipart;
mod overview;
mod policies;
mod settings;
mod tasks;
mod tokens;
mod varform;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use flotilla_service::tasks::Clock;
use flotilla_service::Services;

pub use auth::SESSION_COOKIE;

/// Where the console is mounted; links and the cookie's `Path` use it.
pub const BASE: &str = "/app";

/// The console's settings (`console.*` in the server's configuration).
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// How long a session lasts after sign-in.
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure`: the console is reached over TLS
    /// (the server's `public_url` is `https://`, a proxy terminating TLS).
    pub secure_cookies: bool,
    /// The URL agents enrol at, for the enrolment command line; unset:
    /// the address the browser used.
    pub public_url: Option<String>,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            session_ttl: Duration::from_secs(8 * 3600),
            secure_cookies: false,
            public_url: None,
        }
    }
}

/// What the console's handlers share.
#[derive(Clone)]
pub struct ConsoleState {
    pub services: Services,
    pub settings: Arc<ConsoleSettings>,
    /// Session expiry is checked against this clock (tests move it).
    pub clock: Arc<dyn Clock>,
    /// This instance's task manager, for the Tasks page (`None`: it does
    /// not run here, and the page says so).
    pub tasks: Option<Arc<flotilla_service::tasks::TaskManager>>,
}

impl ConsoleState {
    pub fn new(services: Services, settings: ConsoleSettings) -> Self {
        ConsoleState {
            services,
            settings: Arc::new(settings),
            clock: Arc::new(flotilla_service::tasks::SystemClock),
            tasks: None,
        }
    }

    pub fn with_tasks(mut self, tasks: Option<Arc<flotilla_service::tasks::TaskManager>>) -> Self {
        self.tasks = tasks;
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// The console's routes, to be nested at [`BASE`]. Every page needs a
/// session but the sign-in page and the static assets.
pub fn router<S: Clone + Send + Sync + 'static>(state: ConsoleState) -> Router<S> {
    Router::new()
        .route("/", get(overview::page_route))
        .route("/sign-in", get(auth::sign_in_page).post(auth::sign_in))
        .route("/sign-out", post(auth::sign_out))
        .route("/agents", get(agents::list))
        .route("/agents/bulk", post(actions::bulk))
        .route("/agents/{id}", get(agents::detail))
        .route("/actions", get(actions::list))
        .route("/actions/{id}", get(actions::detail))
        .route("/policies", get(policies::list).post(policies::create))
        .route("/policies/new", get(policies::new_form))
        .route(
            "/policies/{id}",
            get(policies::detail).post(policies::update),
        )
        .route("/policies/{id}/edit", get(policies::edit_form))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}/revoke", post(tokens::revoke))
        .route("/integrations", get(integrations::list))
        .route(
            "/integrations/upload",
            post(integrations::upload).layer(axum::extract::DefaultBodyLimit::max(
                integrations::MAX_UPLOAD_BYTES + (64 << 10),
            )),
        )
        .route("/integrations/{name}", get(integrations::detail))
        .route(
            "/integrations/{name}/add",
            get(integrations::add_form).post(integrations::add),
        )
        .route("/data", get(settings::data))
        .route("/data/{name}", get(events::browse))
        .route("/data/{name}/tail", get(events::tail))
        .route("/settings", get(settings::settings))
        .route("/settings/outputs", post(settings::create_output))
        .route(
            "/settings/outputs/{id}",
            get(settings::output_detail).post(settings::update_output),
        )
        .route(
            "/settings/outputs/{id}/delete",
            post(settings::delete_output),
        )
        .route("/settings/keys", post(settings::create_key))
        .route("/settings/keys/{id}/revoke", post(settings::revoke_key))
        .route("/tasks", get(tasks::list))
        .route("/connectors", get(connectors::list))
        .route("/connectors/{id}/verify", post(connectors::verify))
        .route("/tasks/{id}/{verb}", post(tasks::act))
        .route("/assets/{name}", get(assets::serve))
        .fallback(error::not_found)
        .layer(middleware::from_fn(auth::same_origin_posts))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// Headers on every console response: no framing, no referrer, no
/// caching (pages show secrets once), scripts and styles only from here.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}
