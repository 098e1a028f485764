//! The console's pages over a large fleet: N agents (18,000 by default,
//! what one instance holds) on SQLite in a temp dir, most checked in with
//! a few KB of metadata, some in error, on two policies with a rollout
//! half done; then each page is rendered by the console's router, in
//! process, `REPS` times, and its p50 / p99 / max time printed (wall
//! clock, release build). Asserts only that each page answers 200.
//!
//! `cargo bench -p flotilla-console --bench pages` (`CONSOLE_BENCH_AGENTS`
//! sets N, `CONSOLE_BENCH_REPS` the renders per page).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use chrono::Utc;
use http_body_util::BodyExt;
use secrecy::SecretString;
use serde_json::json;
use tower::ServiceExt;

use flotilla_console::{ConsoleSettings, ConsoleState, SESSION_COOKIE};
use flotilla_domain::policy::NewAgentPolicy;
use flotilla_service::crypto::Sealer;
use flotilla_service::{FleetSettings, Services};
use flotilla_store::{
    ApiKeyRecord, CheckinRecord, Enrolment, KeyKind, KeyUse, NewAgent, RunsPolicy,
};

const ADMIN_KEY: &str = "console-bench-admin-key-0123456789abcdef";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn metadata(i: usize) -> serde_json::Value {
    json!({
        "host": {"hostname": format!("host-{i:05}"), "name": format!("host-{i:05}"),
                 "architecture": "x86_64", "ip": ["10.0.0.1", "fe80::1"],
                 "mac": ["00:16:3e:00:00:01"]},
        "os": {"name": "Debian GNU/Linux", "version": "12", "kernel": "6.1.0-18-amd64",
               "family": "debian", "platform": "debian"},
        "elastic": {"agent": {"version": if i.is_multiple_of(10) { "8.15.0" } else { "9.1.0" },
                              "snapshot": false, "upgradeable": true,
                              "log_level": "info", "id": format!("agent-{i:05}")}},
        "padding": "x".repeat(2000),
    })
}

async fn seed(services: &Services, n: usize) {
    let store = &services.store;
    let now = Utc::now();
    for (id, name) in [("web", "Web servers"), ("db", "Databases")] {
        store
            .create_policy(
                &NewAgentPolicy {
                    id: id.into(),
                    name: name.into(),
                    namespace: "default".into(),
                    description: None,
                    output_id: None,
                    inactivity_timeout: 86400,
                },
                now,
            )
            .await
            .unwrap();
    }
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<Enrolment> = chunk
            .iter()
            .map(|&i| {
                let id = format!("agent-{i:05}");
                Enrolment {
                    agent: NewAgent {
                        id: id.clone(),
                        policy_id: if i.is_multiple_of(3) { "db" } else { "web" }.into(),
                        tags: if i.is_multiple_of(2) {
                            vec!["prod".into()]
                        } else {
                            vec![]
                        },
                        local_metadata: metadata(i),
                        enrolled_at: now - chrono::Duration::seconds((n - i) as i64),
                        access_api_key_id: Some(format!("acc-{id}")),
                        ..Default::default()
                    },
                    access_key: ApiKeyRecord {
                        id: format!("acc-{id}"),
                        name: format!("{id}:access"),
                        kind: KeyKind::Access,
                        agent_id: Some(id.clone()),
                        secret_hash: format!("hash-{id}"),
                        role_descriptors: json!({}),
                        metadata: json!({}),
                        created_at: now,
                        retire_pending: false,
                        invalidated_at: None,
                        owner: None,
                        expires_at: None,
                        remote_output: None,
                    },
                    replace: vec![],
                    key_use: KeyUse::None,
                }
            })
            .collect();
        for r in store.enroll_agents(&batch).await.unwrap() {
            r.unwrap();
        }
        // Nine in ten check in (one in fifty in error, with a failing
        // unit); half of those run the current revision.
        let checkins: Vec<CheckinRecord> = chunk
            .iter()
            .filter(|&&i| i % 10 != 9)
            .map(|&i| CheckinRecord {
                agent_id: format!("agent-{i:05}"),
                at: now - chrono::Duration::seconds((i % 600) as i64),
                status: if i.is_multiple_of(50) { "error" } else { "online" }.into(),
                message: "running".into(),
                local_metadata: None,
                components: Some(json!([{"id": "log-default", "type": "log",
                    "status": if i.is_multiple_of(50) { "FAILED" } else { "HEALTHY" }, "message": "",
                    "units": [{"id": "log-default-nginx", "type": "input",
                        "status": if i.is_multiple_of(50) { "FAILED" } else { "HEALTHY" },
                        "message": "open access.log: permission denied"}]}])),
                agent_version: Some(if i.is_multiple_of(10) { "8.15.0" } else { "9.1.0" }.into()),
                reported_policy: None,
            })
            .collect();
        store.record_checkins(&checkins).await.unwrap();
        let runs: Vec<RunsPolicy> = chunk
            .iter()
            .filter(|&&i| i.is_multiple_of(2))
            .map(|&i| RunsPolicy {
                agent_id: format!("agent-{i:05}"),
                policy_id: if i.is_multiple_of(3) { "db" } else { "web" }.into(),
                revision: 1,
            })
            .collect();
        store.agents_run_policies(&runs, now).await.unwrap();
    }
}

async fn get(app: &Router, path: &str, cookie: &str) -> (StatusCode, usize) {
    let req = Request::get(path)
        .header(header::HOST, "console.bench")
        .header(header::COOKIE, format!("{SESSION_COOKIE}={cookie}"))
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, body.len())
}

async fn sign_in(app: &Router) -> String {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("api_key", ADMIN_KEY)
        .finish();
    let req = Request::post("/app/sign-in")
        .header(header::HOST, "console.bench")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("origin", "http://console.bench")
        .header("sec-fetch-site", "same-origin")
        .body(Body::from(body))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = res.headers()[header::SET_COOKIE].to_str().unwrap();
    cookie
        .strip_prefix(&format!("{SESSION_COOKIE}="))
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let n = env_or("CONSOLE_BENCH_AGENTS", 18_000);
    let reps = env_or("CONSOLE_BENCH_REPS", 20).max(1);
    let dir = tempfile::tempdir().unwrap();
    let store = flotilla_store_sql::open(flotilla_store_sql::Location::DataDir(dir.path()))
        .await
        .unwrap();
    let services = Services::new(
        store,
        FleetSettings::default(),
        Sealer::from_secret(b"console-bench-console-bench-32by"),
    );
    services
        .management()
        .bootstrap(
            Some(&SecretString::from(ADMIN_KEY)),
            "http://127.0.0.1:8220",
        )
        .await
        .unwrap();
    let t = Instant::now();
    seed(&services, n).await;
    // The policy changes after the first half took revision 1: the rollout
    // of revision 2 starts at none.
    println!(
        "console pages: {n} agents seeded on SQLite in {:.1} s; {reps} renders a page",
        t.elapsed().as_secs_f64()
    );
    let state = ConsoleState::new(services.clone(), ConsoleSettings::default());
    let app = Router::new().nest(flotilla_console::BASE, flotilla_console::router(state));
    let cookie = sign_in(&app).await;
    let last_page = n.div_ceil(50);
    let pages = [
        "/app".to_owned(),
        "/app/agents".to_owned(),
        format!("/app/agents?page={last_page}"),
        "/app/agents?sort=hostname&order=desc".to_owned(),
        "/app/agents?sort=status&order=asc&page=100".to_owned(),
        "/app/agents?q=status%3Aerror+and+tags%3Aprod".to_owned(),
        "/app/agents?version=8.*&checkin=5m&sort=last_checkin".to_owned(),
        "/app/agents/agent-09000".to_owned(),
        "/app/policies".to_owned(),
        "/app/policies/web".to_owned(),
        "/app/tokens".to_owned(),
        "/app/actions".to_owned(),
    ];
    for path in &pages {
        let mut times = Vec::with_capacity(reps);
        let mut bytes = 0;
        for _ in 0..reps {
            let t = Instant::now();
            let (status, len) = get(&app, path, &cookie).await;
            times.push(t.elapsed());
            assert_eq!(status, StatusCode::OK, "{path}");
            bytes = len;
        }
        times.sort();
        let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!(
            "{path:<58} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  {:>6} KB",
            ms(p(0.5)),
            ms(p(0.99)),
            ms(*times.last().unwrap()),
            bytes / 1024
        );
    }
}
