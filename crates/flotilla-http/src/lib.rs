//! Flotilla's HTTP layer.
//!
//! Architecture invariant: this is the only crate that knows axum, tower
//! and HTTP status codes. Handlers are thin: extract, call a service, wrap
//! the result in the API's envelope. Errors go through [`error::ApiError`].

#![warn(unreachable_pub)]

mod connectors;
pub mod error;
pub mod extract;
pub mod fleet;
pub mod management;
mod metrics;
mod serve;
mod tasks;

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{BoxError, Json, Router};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use flotilla_service::Services;

use crate::error::ApiError;

/// Limits applied to every request.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    /// `_bulk` bodies (after decompression).
    pub max_bulk_bytes: usize,
    pub request_timeout: Duration,
    /// Operators' requests at once.
    pub max_concurrent_requests: usize,
    /// Agents' requests at once, long polls apart (they have their own
    /// cap): a fleet acking a change at once must not meet operators' cap.
    pub max_concurrent_fleet_requests: usize,
    /// The fleet routes' rate limits, concurrency caps and check-in reserve.
    pub fleet_routes: fleet::FleetRouteLimits,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 1024 * 1024,
            max_bulk_bytes: 100 << 20,
            request_timeout: Duration::from_secs(60),
            max_concurrent_requests: 1024,
            max_concurrent_fleet_requests: 20_000,
            fleet_routes: fleet::FleetRouteLimits::for_agents(20_000),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub services: Services,
    /// Becomes `true` when the server starts shutting down; long polls
    /// return at once.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Long polls served at once, one per agent.
    pub long_polls: Arc<fleet::LongPolls>,
    /// This instance's task manager (`/api/task_manager`).
    pub tasks: Option<Arc<flotilla_service::tasks::TaskManager>>,
    /// The operator console's settings (`/app`).
    pub console: flotilla_console::ConsoleSettings,
}

impl AppState {
    pub fn new(services: Services, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        let long_polls = Arc::new(fleet::LongPolls::new(services.settings.max_long_polls));
        AppState {
            services,
            shutdown,
            long_polls,
            tasks: None,
            console: Default::default(),
        }
    }

    pub fn with_console(mut self, console: flotilla_console::ConsoleSettings) -> Self {
        self.console = console;
        self
    }

    pub fn with_tasks(mut self, tasks: Arc<flotilla_service::tasks::TaskManager>) -> Self {
        self.tasks = Some(tasks);
        self
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Flotilla management API",
        description = "Outputs, agent policies, integrations, enrollment keys, agents and operator API keys. \
                       Authenticate with `Authorization: ApiKey <key>`."
    ),
    modifiers(&SecurityAddon)
)]
struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "ApiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`ApiKey <key>`",
            ))),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "ApiKey",
            Vec::<String>::new(),
        )]);
    }
}

/// The OpenAPI document of the management API, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .merge(management::router())
        .merge(tasks::router())
        .merge(connectors::router())
        .into_openapi()
}

/// The whole application: every route and the middleware stack.
pub fn app(state: AppState, limits: &HttpLimits) -> Router {
    app_with_clock(state, limits, Arc::new(fleet::SystemClock::default()))
}

/// [`app`] with the fleet limiter on a given clock.
pub fn app_with_clock(
    state: AppState,
    limits: &HttpLimits,
    clock: Arc<dyn fleet::Clock>,
) -> Router {
    let limiter = fleet::FleetLimiter::new(limits.fleet_routes, clock);
    let (api, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(management::router())
        .merge(tasks::router())
        .merge(connectors::router())
        .split_for_parts();
    let openapi_json = serde_json::to_value(&openapi).expect("the OpenAPI document serialises");
    let request_id = HeaderName::from_static("x-request-id");
    let max = limits.max_body_bytes;
    let fleet_limits = fleet::FleetLimits {
        enroll: max.min(512 * 1024),
        checkin: max,
        ack: max.saturating_mul(2),
        audit: 1024,
        bulk: limits.max_bulk_bytes,
    };

    // Ordinary requests: bounded in time, and in number by one semaphore
    // shared by every route (a layer on a router is cloned per route, so a
    // per-service limit would multiply by the number of routes).
    let in_flight = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_requests));
    // The operator console: its pages call the same services, inside the
    // same bounds as operators' API requests (not the fleet routes').
    let console = flotilla_console::router(
        flotilla_console::ConsoleState::new(state.services.clone(), state.console.clone())
            .with_tasks(state.tasks.clone()),
    );
    let bounded = Router::new()
        .merge(api)
        .nest(flotilla_console::BASE, console)
        .route(
            "/app/",
            get(|| async { axum::response::Redirect::to(flotilla_console::BASE) }),
        )
        .route(
            "/api/fleet/openapi.json",
            get(move || async move { Json(openapi_json.clone()) }),
        )
        .layer(DefaultBodyLimit::max(max))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::with_semaphore(
                    in_flight.clone(),
                ))
                .timeout(limits.request_timeout),
        );

    // Agent requests: bounded the same way but by their own semaphore
    // (sized for the fleet, so a change acked by every agent at once is not
    // refused, and agents never take operators' slots), refused in the
    // fleet protocol's terms.
    let fleet_in_flight = Arc::new(tokio::sync::Semaphore::new(
        limits.max_concurrent_fleet_requests,
    ));
    let fleet_bounded = fleet::router(fleet_limits, limiter.clone()).layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(fleet::overloaded))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(fleet_in_flight))
            .timeout(limits.request_timeout),
    );

    // Probes: outside the request limit, so an overloaded server still
    // answers its health check and its metrics (bounded in time only).
    let probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::render))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .timeout(limits.request_timeout),
        );

    Router::new()
        .merge(bounded)
        .merge(fleet_bounded)
        .merge(probes)
        // Long polls: their own cap and deadline (see fleet::checkin_router).
        .merge(fleet::checkin_router(fleet_limits, limiter))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let path = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default();
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    tracing::info_span!("http", method = %req.method(), path, request_id = id)
                }))
                .layer(middleware::from_fn(metrics::track))
                .layer(middleware::from_fn(refuse_nul))
                .layer(middleware::from_fn(content_encoding))
                // gzip request bodies on every route; limits apply to what
                // they decompress to.
                .layer(tower_http::decompression::RequestDecompressionLayer::new().gzip(true))
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::internal().into_response()
                })),
        )
        .with_state(state)
}

async fn overloaded(err: BoxError) -> ApiError {
    if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the request timed out")
    } else if err.is::<tower::load_shed::error::Overloaded>() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is overloaded; retry later",
        )
    } else {
        tracing::error!(error = %err, "unhandled middleware error");
        ApiError::internal()
    }
}

/// NUL can be neither an id nor a filter (PostgreSQL refuses it in text):
/// refuse it up front instead of failing deep in a query.
async fn refuse_nul(req: Request, next: middleware::Next) -> axum::response::Response {
    let uri = req.uri();
    let has_nul = |s: &str| {
        s.as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"%00"))
    };
    if has_nul(uri.path()) || uri.query().is_some_and(has_nul) {
        return ApiError::bad_request("NUL characters are not allowed in paths or query strings")
            .into_response();
    }
    next.run(req).await
}

/// Request bodies may be plain or gzip (`gzip`, `x-gzip`, any case);
/// anything else — other codings, or gzip applied twice — is refused with
/// 415 and the contract's JSON body (tower-http would answer it empty).
async fn content_encoding(mut req: Request, next: middleware::Next) -> axum::response::Response {
    use axum::http::header::CONTENT_ENCODING;
    let mut codings = Vec::new();
    let mut readable = true;
    for value in req.headers().get_all(CONTENT_ENCODING) {
        match value.to_str() {
            Ok(v) => codings.extend(
                v.split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .filter(|c| !c.is_empty() && c != "identity"),
            ),
            Err(_) => readable = false,
        }
    }
    match (readable, codings.as_slice()) {
        (true, []) => {
            req.headers_mut().remove(CONTENT_ENCODING);
        }
        (true, [one]) if one == "gzip" || one == "x-gzip" => {
            req.headers_mut().insert(
                CONTENT_ENCODING,
                axum::http::HeaderValue::from_static("gzip"),
            );
        }
        _ => {
            let message = "unsupported Content-Encoding; request bodies may be sent plain or gzip";
            if req.uri().path().starts_with("/_security/") {
                return fleet::es_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "illegal_argument_exception",
                    message,
                );
            }
            return ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message).into_response();
        }
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

async fn healthz(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let engine = s
        .services
        .management()
        .storage_health()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage unreachable"))?;
    Ok(Json(serde_json::json!({"status": "ok", "storage": engine})))
}

pub use serve::{serve, ConnLimits};
