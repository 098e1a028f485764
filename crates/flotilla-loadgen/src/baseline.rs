//! The baseline: the least a long-poll server can do over HTTP/1 with
//! hyper — accept a POST, hold it for the poll, answer a small JSON — run
//! as a child process (`flotilla loadgen baseline-server`) so its memory
//! and CPU are its own. It speaks just enough of the fleet API for the
//! same agents to run against it: an enrolment gets an id and key, a first
//! check-in (no ack token) gets one POLICY_CHANGE, later ones are held for
//! their `poll_timeout` (else `default_poll`), acks are answered at once,
//! and `/metrics` shows `flotilla_checkins_waiting`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};

#[derive(Default)]
struct State {
    waiting: AtomicI64,
    enrolled: AtomicU64,
}

/// Serves on `listen` until the process ends; prints `listening on ADDR`.
pub async fn serve(listen: &str, default_poll: Duration) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let state = Arc::new(State::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // Out of descriptors for a moment: wait, then accept again.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| handle(req, state.clone(), default_poll));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json_response(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    default_poll: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    if req.method() == Method::GET && path == "/metrics" {
        let text = format!(
            "flotilla_checkins_waiting {}\n",
            state.waiting.load(Relaxed)
        );
        return Ok(Response::new(Full::new(Bytes::from(text))));
    }
    if req.method() != Method::POST {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            json!({"statusCode": 404}),
        ));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                json!({"statusCode": 400}),
            ))
        }
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if path.ends_with("/enroll") {
        let n = state.enrolled.fetch_add(1, Relaxed);
        return Ok(json_response(
            StatusCode::OK,
            json!({"action": "created", "item": {"id": format!("baseline-{n}"), "access_api_key": "baseline-key", "policy_id": "baseline", "active": true}}),
        ));
    }
    if path.ends_with("/acks") {
        let n = body["events"].as_array().map_or(0, Vec::len);
        let items: Vec<Value> = (0..n)
            .map(|_| json!({"status": 200, "message": "OK"}))
            .collect();
        return Ok(json_response(
            StatusCode::OK,
            json!({"action": "acks", "errors": false, "items": items}),
        ));
    }
    if path.ends_with("/checkin") {
        let agent = path
            .trim_start_matches("/api/fleet/agents/")
            .trim_end_matches("/checkin")
            .to_owned();
        if body.get("ack_token").and_then(Value::as_str).is_none() {
            return Ok(json_response(
                StatusCode::OK,
                json!({"action": "checkin", "ack_token": "baseline-1", "actions": [{
                    "id": "policy:baseline:1", "agent_id": agent, "type": "POLICY_CHANGE",
                    "input_type": "", "data": {"policy": {"id": "baseline", "revision": 1, "inputs": []}},
                }]}),
            ));
        }
        let poll = body
            .get("poll_timeout")
            .and_then(Value::as_str)
            .and_then(|s| humantime::parse_duration(s).ok())
            .unwrap_or(default_poll);
        state.waiting.fetch_add(1, Relaxed);
        // Counted out even if the client goes away mid-wait (hyper drops
        // the future).
        let _guard = Waiting(state.clone());
        tokio::time::sleep(poll).await;
        return Ok(json_response(
            StatusCode::OK,
            json!({"action": "checkin", "ack_token": "baseline-1"}),
        ));
    }
    Ok(json_response(
        StatusCode::NOT_FOUND,
        json!({"statusCode": 404}),
    ))
}

struct Waiting(Arc<State>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Relaxed);
    }
}
