//! The agent-facing fleet API, wire-compatible with Elastic's fleet-server
//! (`shared/reference/fleet-server-openapi.yml`), and the Elasticsearch-
//! shaped key endpoints (`/_security/...`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::{self, AUTHORIZATION, USER_AGENT};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use flotilla_api::fleet::{AckItem, AckResponse};
use flotilla_service::fleet::{AckOutcome, FleetError, FleetErrorKind};

use crate::AppState;

mod es;
mod limiter;
mod long_polls;
mod security;

pub use limiter::{
    Clock, FleetLimiter, FleetRouteLimits, ManualClock, Reason, Refusal, RouteLimit, SystemClock,
};

pub use long_polls::{LongPollSlot, LongPolls};
pub(crate) use security::es_error;
pub use security::HAS_PRIVILEGES_BODY_LIMIT;
use security::{authenticate, has_privileges};

pub const API_VERSION_HEADER: &str = "elastic-api-version";
pub const SUPPORTED_API_VERSION: &str = "2023-06-01";

/// A fleet API error: `{statusCode, error, message}` with the reference
/// implementation's `error` tokens.
pub struct FleetApiError(pub FleetError);

impl From<FleetError> for FleetApiError {
    fn from(e: FleetError) -> Self {
        FleetApiError(e)
    }
}

fn kind_status(kind: FleetErrorKind) -> (StatusCode, &'static str) {
    use FleetErrorKind::*;
    match kind {
        BadRequest => (StatusCode::BAD_REQUEST, "BadRequest"),
        InvalidUserAgent => (StatusCode::BAD_REQUEST, "InvalidUserAgent"),
        UnsupportedVersion => (StatusCode::BAD_REQUEST, "UnsupportedVersion"),
        MalformedHeader => (StatusCode::BAD_REQUEST, "ErrMalformedHeader"),
        MalformedToken => (StatusCode::BAD_REQUEST, "ErrMalformedToken"),
        NoAuthHeader => (StatusCode::UNAUTHORIZED, "ErrNoAuthHeader"),
        InvalidToken => (StatusCode::UNAUTHORIZED, "ErrInvalidToken"),
        Unauthorized => (StatusCode::UNAUTHORIZED, "ErrUnauthorized"),
        // 401 as Elastic answers any refused enrollment key, with a token
        // of their own so a client can tell why without reading messages.
        EnrollmentKeyExpired => (StatusCode::UNAUTHORIZED, "ErrEnrollmentKeyExpired"),
        EnrollmentKeySpent => (StatusCode::UNAUTHORIZED, "ErrEnrollmentKeySpent"),
        KeyNotEnabled => (StatusCode::UNAUTHORIZED, "Unauthorized"),
        AgentInactive => (StatusCode::UNAUTHORIZED, "ErrAgentInactive"),
        AgentIdentity => (StatusCode::FORBIDDEN, "ErrAgentIdentity"),
        AgentNotReplaceable => (StatusCode::FORBIDDEN, "AgentNotReplaceable"),
        AddressRefused => (StatusCode::FORBIDDEN, "ErrAddressNotAllowed"),
        AgentNotFound => (StatusCode::NOT_FOUND, "AgentNotFound"),
        PolicyNotFound => (StatusCode::SERVICE_UNAVAILABLE, "ErrPolicyNotFound"),
        AuditReasonConflict => (StatusCode::CONFLICT, "ErrAuditReasonConflict"),
        MaxLimit => (StatusCode::TOO_MANY_REQUESTS, "MaxLimit"),
        EnrollDuplicate => (StatusCode::TOO_MANY_REQUESTS, "EnrollDuplicate"),
        PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "ErrPayloadSizeTooLarge"),
        Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        Internal => (StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError"),
    }
}

fn error_response(status: StatusCode, token: &str, message: &str) -> Response {
    let body = json!({"statusCode": status.as_u16(), "error": token, "message": message});
    (status, [("x-content-type-options", "nosniff")], Json(body)).into_response()
}

impl IntoResponse for FleetApiError {
    fn into_response(self) -> Response {
        let (status, token) = kind_status(self.0.kind);
        let mut response = error_response(status, token, &self.0.message);
        if self.0.kind == FleetErrorKind::PayloadTooLarge {
            // The rest of the body is never read: don't let clients reuse
            // the connection.
            response
                .headers_mut()
                .insert("connection", HeaderValue::from_static("close"));
        }
        if matches!(
            self.0.kind,
            FleetErrorKind::PolicyNotFound
                | FleetErrorKind::Unavailable
                | FleetErrorKind::MaxLimit
                | FleetErrorKind::EnrollDuplicate
        ) {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("30"));
        }
        response
    }
}

type FleetResult<T> = Result<T, FleetApiError>;

/// A request shed by the limiter: 429 `RateLimit` (over the route's rate)
/// or `MaxLimit` (at its concurrency cap), `Retry-After` from the limit.
fn refused(r: Refusal) -> Response {
    let (token, message) = match r.reason {
        Reason::Rate => ("RateLimit", "exceeded the rate limit"),
        Reason::Concurrency => ("MaxLimit", "exceeded the max limit"),
    };
    let mut response = error_response(StatusCode::TOO_MANY_REQUESTS, token, message);
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from(r.retry_after_secs));
    response
}

fn fleet_err(kind: FleetErrorKind, message: &str) -> FleetApiError {
    FleetApiError(FleetError::new(kind, message))
}

/// Parse a JSON body; errors in the contract's shape.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> FleetResult<T> {
    if crate::extract::json_has_nul(body) {
        return Err(fleet_err(
            FleetErrorKind::BadRequest,
            &format!("Bad request: {}", crate::extract::NUL_MESSAGE),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| fleet_err(FleetErrorKind::BadRequest, &format!("Bad request: {e}")))
}

const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Buffer the body under `limit` (after any decompression).
async fn read_body(req: Request, limit: usize) -> FleetResult<(axum::http::request::Parts, Bytes)> {
    let (parts, body) = req.into_parts();
    // A client that trickles its body does not hold a slot for long.
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, limit));
    let Ok(read) = read.await else {
        return Err(fleet_err(
            FleetErrorKind::BadRequest,
            "Bad request: the request body arrived too slowly",
        ));
    };
    match read {
        Ok(bytes) => Ok((parts, bytes)),
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                Err(fleet_err(
                    FleetErrorKind::PayloadTooLarge,
                    "the request body exceeds the maximum allowed size",
                ))
            } else {
                Err(fleet_err(
                    FleetErrorKind::BadRequest,
                    "Bad request: cannot read the request body",
                ))
            }
        }
    }
}

/// `Authorization: ApiKey <credential>`.
fn credential(headers: &HeaderMap) -> FleetResult<String> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(fleet_err(
            FleetErrorKind::NoAuthHeader,
            "no authorization header",
        ));
    };
    if values.next().is_some() {
        return Err(fleet_err(
            FleetErrorKind::MalformedHeader,
            "malformed authorization header",
        ));
    }
    let value = value.to_str().map_err(|_| {
        fleet_err(
            FleetErrorKind::MalformedHeader,
            "malformed authorization header",
        )
    })?;
    let cred = value
        .strip_prefix("ApiKey ")
        .ok_or_else(|| {
            fleet_err(
                FleetErrorKind::MalformedHeader,
                "malformed authorization header",
            )
        })?
        .trim();
    if cred.is_empty() || cred.len() > 2048 {
        return Err(fleet_err(FleetErrorKind::MalformedToken, "malformed token"));
    }
    Ok(cred.to_owned())
}

fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers.get(USER_AGENT).and_then(|v| v.to_str().ok())
}

/// Validate `Elastic-Api-Version` and echo it (or the default).
async fn api_version(req: Request, next: Next) -> Response {
    let requested = req
        .headers()
        .get(API_VERSION_HEADER)
        .map(|v| v.to_str().unwrap_or("?").to_owned());
    let default = HeaderValue::from_static(SUPPORTED_API_VERSION);
    let echo = match requested {
        None => default,
        Some(v) => {
            let well_formed = v.len() == 10
                && v.bytes().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                });
            if !well_formed {
                let mut r = error_response(
                    StatusCode::BAD_REQUEST,
                    "ErrInvalidAPIVersionFormat",
                    &format!("received \"{v}\", expected a valid date string formatted as YYYY-MM-DD. invalid version format"),
                );
                r.headers_mut().insert(API_VERSION_HEADER, default);
                return r;
            }
            if v != SUPPORTED_API_VERSION {
                let mut r = error_response(
                    StatusCode::BAD_REQUEST,
                    "ErrUnsupportedAPIVersion",
                    &format!("received \"{v}\", is not supported. supported versions are: [{SUPPORTED_API_VERSION}] version is not supported"),
                );
                r.headers_mut().insert(API_VERSION_HEADER, default);
                return r;
            }
            HeaderValue::from_str(&v).unwrap_or(default)
        }
    };
    let mut response = next.run(req).await;
    response.headers_mut().insert(API_VERSION_HEADER, echo);
    response
}

/// Middleware refusals (timeout, load shedding) with the fleet tokens.
pub async fn overloaded(err: axum::BoxError) -> Response {
    if err.is::<tower::timeout::error::Elapsed>() {
        error_response(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeout",
            "timeout on request",
        )
    } else if err.is::<tower::load_shed::error::Overloaded>() {
        let mut r = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "MaxLimit",
            "exceeded the max limit",
        );
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("5"));
        r
    } else {
        tracing::error!(error = %err, "unhandled middleware error");
        error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "internal error",
        )
    }
}

/// The `{id}` of an agent route; a malformed one (not UTF-8 once
/// percent-decoded) is the protocol's 400, not axum's plain-text rejection.
pub struct AgentPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for AgentPath {
    type Rejection = FleetApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| AgentPath(id))
            .map_err(|_| {
                fleet_err(
                    FleetErrorKind::BadRequest,
                    "Bad request: the agent id in the path is not valid UTF-8",
                )
            })
    }
}

/// Body limits per route (bytes, after decompression).
#[derive(Clone, Copy)]
pub struct FleetLimits {
    pub enroll: usize,
    pub checkin: usize,
    pub ack: usize,
    pub audit: usize,
    pub bulk: usize,
}

/// The Elasticsearch-compatible routes: every answer carries
/// `X-Elastic-Product: Elasticsearch`.
fn es_router(limits: FleetLimits) -> Router<AppState> {
    use axum::routing::{any, delete as delete_route};
    Router::new()
        .route("/", get(es::root).head(es::root))
        .route(
            "/_bulk",
            any(move |s: State<AppState>, r: Request| es::bulk(s, r, limits.bulk)),
        )
        .route(
            "/{index}/_bulk",
            any(
                move |s: State<AppState>, p: axum::extract::Path<String>, r: Request| {
                    es::bulk_index(s, p, r, limits.bulk)
                },
            ),
        )
        .route("/_security/_authenticate", get(authenticate))
        .route(
            "/_security/user/_has_privileges",
            post(has_privileges).get(has_privileges),
        )
        .route(
            "/_security/api_key",
            post(es::create_api_key)
                .put(es::create_api_key)
                .get(es::get_api_keys)
                .merge(delete_route(es::invalidate_api_keys)),
        )
        .route("/_security/api_key/grant", post(es::grant_api_key))
        .layer(middleware::map_response(es::product_header))
}

/// Routes with ordinary request durations.
pub fn router(limits: FleetLimits, limiter: Arc<FleetLimiter>) -> Router<AppState> {
    let (on_enroll, on_ack) = (limiter.clone(), limiter);
    Router::new()
        .route("/api/status", get(status))
        .route(
            "/api/fleet/agents/enroll",
            post(move |s: State<AppState>, r: Request| {
                let limiter = on_enroll.clone();
                async move {
                    match limiter.admit_enroll() {
                        Ok(_slot) => enroll(s, r, limits.enroll).await.into_response(),
                        Err(refusal) => refused(refusal),
                    }
                }
            }),
        )
        .route(
            "/api/fleet/agents/{id}/acks",
            post(move |s: State<AppState>, p: AgentPath, r: Request| {
                let limiter = on_ack.clone();
                async move {
                    match limiter.admit_ack() {
                        Ok(_slot) => acks(s, p, r, limits.ack).await.into_response(),
                        Err(refusal) => refused(refusal),
                    }
                }
            }),
        )
        .route(
            "/api/fleet/agents/{id}/audit/unenroll",
            post(move |s: State<AppState>, p: AgentPath, r: Request| {
                audit_unenroll(s, p, r, limits.audit)
            }),
        )
        .merge(es_router(limits))
        .layer(middleware::from_fn(api_version))
}

/// The long-poll route: no request timeout (it has its own deadline), its
/// own concurrency cap, gzip both ways.
pub fn checkin_router(limits: FleetLimits, limiter: Arc<FleetLimiter>) -> Router<AppState> {
    Router::new()
        .route(
            "/api/fleet/agents/{id}/checkin",
            post(move |s: State<AppState>, p: AgentPath, r: Request| {
                let limiter = limiter.clone();
                async move {
                    // Before authenticating: shedding must be cheap.
                    match limiter.admit_checkin(&p.0) {
                        Ok(slot) => checkin(s, p, r, limits.checkin, slot).await.into_response(),
                        Err(refusal) => refused(refusal),
                    }
                }
            }),
        )
        .layer(tower_http::compression::CompressionLayer::new().gzip(true))
        .layer(middleware::from_fn(api_version))
}

fn into_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, Json(body)).into_response()
}

async fn status(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let stopping = *s.shutdown.borrow();
    let healthy = !stopping && s.services.management().storage_health().await.is_ok();
    let state = if stopping {
        "STOPPING"
    } else if healthy {
        "HEALTHY"
    } else {
        "DEGRADED"
    };
    let mut body = json!({"name": "fleet-server", "status": state});
    if let Ok(cred) = credential(&headers) {
        if s.services.fleet().is_valid_key(&cred).await {
            body["version"] = json!({
                "number": s.services.settings.server_version,
                "build_hash": env!("CARGO_PKG_VERSION"),
                "build_time": "",
            });
        }
    }
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    into_response(code, &body)
}

/// Authenticate an agent's request, then read and parse its body (never
/// the other way round). Also returns the user agent.
async fn authed_request<T: DeserializeOwned>(
    s: &AppState,
    id: &str,
    req: Request,
    limit: usize,
) -> FleetResult<(flotilla_service::fleet::AuthedAgent, Option<String>, T)> {
    authed_request_as(s, id, req, limit, false).await
}

/// [`authed_request`]; for a check-in (`for_checkin`), what it reads first
/// is read with the authentication.
async fn authed_request_as<T: DeserializeOwned>(
    s: &AppState,
    id: &str,
    req: Request,
    limit: usize,
    for_checkin: bool,
) -> FleetResult<(flotilla_service::fleet::AuthedAgent, Option<String>, T)> {
    let cred = credential(req.headers())?;
    let fleet = s.services.fleet();
    let authed = if for_checkin {
        fleet.authenticate_agent_for_checkin(&cred, id).await?
    } else {
        fleet.authenticate_agent(&cred, id).await?
    };
    let ua = user_agent(req.headers()).map(str::to_owned);
    let (_, body) = read_body(req, limit).await?;
    Ok((authed, ua, parse_body(&body)?))
}

async fn enroll(State(s): State<AppState>, req: Request, limit: usize) -> FleetResult<Response> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let cred = credential(req.headers())?;
    let grant = s.services.fleet().enrollment_grant(&cred, peer).await?;
    let ua = user_agent(req.headers()).map(str::to_owned);
    let (_, body) = read_body(req, limit).await?;
    let body = parse_body(&body)?;
    let resp = s
        .services
        .fleet()
        .enroll(grant, ua.as_deref(), body)
        .await?;
    Ok(into_response(StatusCode::OK, &resp))
}

async fn checkin(
    State(s): State<AppState>,
    AgentPath(id): AgentPath,
    req: Request,
    limit: usize,
    mut limited: limiter::CheckinSlot,
) -> FleetResult<Response> {
    let (authed, ua, body) = authed_request_as(&s, &id, req, limit, true).await?;
    // Proven: the slot may be kept for this agent's next poll.
    limited.authenticated();
    let Some(slot) = s.long_polls.enter(&id).await else {
        return Err(fleet_err(
            FleetErrorKind::MaxLimit,
            "exceeded the max limit",
        ));
    };
    let mut shutdown = s.shutdown.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown.wait_for(|stopping| *stopping) => {}
            _ = slot.replaced() => {}
        }
    };
    let resp = s
        .services
        .fleet()
        .checkin(authed, ua.as_deref(), body, stop)
        .await?;
    // The answer's pieces share its policy revision's bytes (see
    // `flotilla_service::fleet::CheckinResponse`): streamed, not joined.
    let chunks = resp.into_chunks();
    let body = axum::body::Body::from_stream(futures_util::stream::iter(
        chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
    ));
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

async fn acks(
    State(s): State<AppState>,
    AgentPath(id): AgentPath,
    req: Request,
    limit: usize,
) -> FleetResult<Response> {
    let (authed, _, body) = authed_request(&s, &id, req, limit).await?;
    let outcomes = s.services.fleet().ack(authed, body).await?;
    let items: Vec<AckItem> = outcomes
        .iter()
        .map(|o| {
            let status = ack_status(*o);
            AckItem {
                status: status.as_u16(),
                message: status.canonical_reason().unwrap_or("").to_owned(),
            }
        })
        .collect();
    // The response's status is the highest of its items'.
    let status = outcomes
        .iter()
        .map(|o| ack_status(*o))
        .max()
        .unwrap_or(StatusCode::OK);
    let body = AckResponse {
        action: "acks",
        errors: items.iter().any(|i| i.status != 200),
        items,
    };
    Ok(into_response(status, &body))
}

fn ack_status(outcome: AckOutcome) -> StatusCode {
    match outcome {
        AckOutcome::Acked => StatusCode::OK,
        AckOutcome::Refused => StatusCode::BAD_REQUEST,
        AckOutcome::UnknownAction => StatusCode::NOT_FOUND,
        AckOutcome::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn audit_unenroll(
    State(s): State<AppState>,
    AgentPath(id): AgentPath,
    req: Request,
    limit: usize,
) -> FleetResult<Response> {
    let (authed, _, body) = authed_request(&s, &id, req, limit).await?;
    s.services.fleet().audit_unenroll(authed, body).await?;
    Ok(StatusCode::OK.into_response())
}
