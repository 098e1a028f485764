//! The task manager through the real binary: the API and CLI, exactly-once
//! execution across two instances on one PostgreSQL database with one of
//! them killed, and the key life cycle of user-scoped tasks with a second
//! Flotilla server as the secondary key provider.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

fn with_test_types(b: Builder) -> Builder {
    b.env("FLOTILLA_TASK_MANAGER__TEST_TASK_TYPES", "true")
}

/// Poll `f` until it yields, or fail after `secs`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn operators_schedule_run_and_remove_tasks_through_the_api_and_cli() {
    let s = with_test_types(Server::builder()).start().unwrap();
    // The built-in maintenance is scheduled on the same machinery.
    let (st, builtin) = s
        .get("/api/task_manager/tasks?type=task_manager:invalidate_api_keys")
        .await;
    assert_eq!(st, 200);
    assert_eq!(builtin["total"], 1);
    assert_eq!(builtin["items"][0]["schedule"]["interval"], "5m");

    let out = s.cli(&[
        "task",
        "schedule",
        "--type",
        "test:noop",
        "--id",
        "counter",
        "--every",
        "1h",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It runs at once (scheduling wakes the claimer), then every hour.
    let t = eventually(10, "the first run", || async {
        let (_, t) = s.get("/api/task_manager/tasks/counter").await;
        (t["item"]["runs"] == 1).then(|| t["item"].clone())
    })
    .await;
    assert_eq!(t["state"], json!({"runs": 1}));
    assert_eq!(t["status"], "idle");
    // Run it again now, through the CLI.
    let out = s.cli(&["task", "run", "counter"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(10, "the second run", || async {
        let (_, t) = s.get("/api/task_manager/tasks/counter").await;
        (t["item"]["state"]["runs"] == 2).then_some(())
    })
    .await;
    let out = s.cli(&["task", "disable", "counter"]);
    assert!(out.status.success());
    let (_, t) = s.get("/api/task_manager/tasks/counter").await;
    assert_eq!(t["item"]["enabled"], false);
    // Several ids at once; one unknown: a one-line error, non-zero exit.
    s.cli(&[
        "task",
        "schedule",
        "--type",
        "test:noop",
        "--id",
        "other",
        "--every",
        "1h",
        "--disabled",
    ]);
    let out = s.cli(&["task", "enable", "counter", "other", "ghost"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ghost") && err.lines().count() == 1, "{err}");
    let out = s.cli(&["task", "delete", "counter", "other"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (st, _) = s.get("/api/task_manager/tasks/counter").await;
    assert_eq!(st, 404);
    // The audit trail keeps the runs of deleted tasks.
    let (_, runs) = s.get("/api/task_manager/runs?task_id=counter").await;
    let outcomes: Vec<&Value> = runs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["outcome"])
        .collect();
    assert_eq!(outcomes, [&json!("succeeded"), &json!("succeeded")]);

    // A one-shot failing task: retried with backoff, its error shown.
    let (st, _) = s
        .post(
            "/api/task_manager/tasks",
            json!({"id": "flaky", "taskType": "test:fail", "params": {"times": 5}}),
        )
        .await;
    assert_eq!(st, 200);
    let t = eventually(10, "the first failure", || async {
        let (_, t) = s.get("/api/task_manager/tasks/flaky").await;
        (t["item"]["attempts"] == 1 && t["item"]["status"] == "idle").then(|| t["item"].clone())
    })
    .await;
    assert_eq!(t["lastError"], "failing attempt 1");

    // Bad input: the contract's error body.
    for (body, field) in [
        (json!({"taskType": "no:such"}), "taskType"),
        (json!({"taskType": "task_manager:prune_runs"}), "taskType"),
        (
            json!({"taskType": "test:noop", "schedule": {"interval": "0s"}}),
            "schedule.interval",
        ),
        (json!({"taskType": "test:noop", "id": "a b"}), "id"),
        (json!({"taskType": "test:noop", "bogus": 1}), "bogus"),
    ] {
        let r = s.post("/api/task_manager/tasks", body).await;
        assert_error(&r, 400, field);
    }
    let r = s
        .post("/api/task_manager/tasks/ghost/_run_soon", json!({}))
        .await;
    assert_error(&r, 404, "ghost");
    let r = s
        .post("/api/task_manager/tasks/_bulk_delete", json!({"ids": []}))
        .await;
    assert_error(&r, 400, "ids");
    let (st, _) = s
        .call_with_key(
            reqwest::Method::GET,
            "/api/task_manager/tasks",
            None,
            Some("wrong"),
        )
        .await;
    assert_eq!(st, 401);

    // Health: workload by type, drift, runs per minute; and /metrics.
    let (st, h) = s.get("/api/task_manager/_health").await;
    assert_eq!(st, 200);
    assert!(
        h["stats"]["workload"]["task_types"]["test:fail"]["count"] == 1,
        "{h}"
    );
    assert!(
        h["stats"]["runtime"]["runs_per_minute"].as_u64().unwrap() >= 3,
        "{h}"
    );
    assert!(h["stats"]["runtime"]["drift_ms"]["p99"].is_number());
    assert_eq!(h["stats"]["configuration"]["capacity"]["as_cost"], 20);
    let (_, metrics) = s.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(metrics.contains("flotilla_task_runs_total"), "{metrics}");
}

/// 1,000 one-shot tasks, two instances on one PostgreSQL database, one of
/// them killed (SIGKILL) while it runs some: every task completes exactly
/// once, and no task ever has two runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_exactly_once_across_instances_when_one_is_killed() {
    let Some(cluster) = flotilla_testkit::postgres() else {
        return;
    };
    let url = cluster.create_database();
    let start = || {
        with_test_types(
            Server::builder()
                .engine(Engine::Postgres)
                .database_url(&url),
        )
        .env("FLOTILLA_TASK_MANAGER__LEASE", "3s")
        .env("FLOTILLA_TASK_MANAGER__CAPACITY", "8")
        .start()
        .unwrap()
    };
    let a = start();
    let b = start();
    let n = 1000;
    // Created disabled, then enabled in one call, so both instances race
    // for the whole set.
    for i in 0..n {
        let (st, body) = a
            .post(
                "/api/task_manager/tasks",
                json!({"id": format!("job-{i:04}"), "taskType": "test:sleep",
                       "params": {"ms": 100}, "enabled": false}),
            )
            .await;
        assert_eq!(st, 200, "{body}");
    }
    let ids: Vec<String> = (0..n).map(|i| format!("job-{i:04}")).collect();
    let (st, _) = b
        .post("/api/task_manager/tasks/_bulk_enable", json!({"ids": ids}))
        .await;
    assert_eq!(st, 200);
    // Kill A once it has runs in flight.
    let a_id = eventually(30, "instance A to run tasks", || async {
        let (_, t) = b
            .get("/api/task_manager/tasks?type=test:sleep&status=running&perPage=100")
            .await;
        let owners: Vec<String> = t["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["ownerId"].as_str().map(str::to_owned))
            .collect();
        let (_, ha) = a.get("/api/task_manager/_health").await;
        let me = ha["id"].as_str().unwrap_or_default().to_owned();
        owners.contains(&me).then_some(me)
    })
    .await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &a.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // B takes over A's runs once their leases pass, and finishes the rest.
    eventually(120, "every task to complete", || async {
        let (_, t) = b
            .get("/api/task_manager/tasks?type=test:sleep&perPage=1")
            .await;
        (t["total"] == 0).then_some(())
    })
    .await;
    let (_, runs) = b.get("/api/task_manager/runs?limit=10000").await;
    let runs: Vec<&Value> = runs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["taskType"] == "test:sleep")
        .collect();
    let mut succeeded: HashMap<&str, usize> = HashMap::new();
    let mut by_task: HashMap<&str, Vec<&Value>> = HashMap::new();
    for r in &runs {
        let id = r["taskId"].as_str().unwrap();
        by_task.entry(id).or_default().push(r);
        if r["outcome"] == "succeeded" {
            *succeeded.entry(id).or_default() += 1;
        }
    }
    assert_eq!(succeeded.len(), n, "every task succeeded");
    assert!(succeeded.values().all(|c| *c == 1), "each exactly once");
    let unfinished: Vec<&&Value> = runs.iter().filter(|r| r["finishedAt"].is_null()).collect();
    assert!(!unfinished.is_empty(), "A was killed while running tasks");
    assert!(
        unfinished.iter().all(|r| r["ownerId"] == a_id.as_str()),
        "only the killed instance left runs unfinished"
    );
    // A task taken over was started again only after its first run's
    // lease could have run out (never two runs at once).
    for (id, rs) in &by_task {
        if rs.len() > 1 {
            let mut starts: Vec<chrono::DateTime<chrono::Utc>> = rs
                .iter()
                .map(|r| r["startedAt"].as_str().unwrap().parse().unwrap())
                .collect();
            starts.sort();
            for w in starts.windows(2) {
                assert!(
                    (w[1] - w[0]).num_milliseconds() >= 3000,
                    "{id} started twice within its lease"
                );
            }
        }
    }
    println!(
        "exactly-once: {n} tasks, {} runs ({} left unfinished by the killed instance)",
        runs.len(),
        unfinished.len()
    );
    b.stop();
}

/// A user-scoped task on a server whose secondary key provider is another
/// Flotilla server: both keys granted, the secondary one used, both
/// invalidated with their provider after the removal delay — also those of
/// a task whose sealed keys were damaged, deleted in the same bulk delete;
/// a server that grants no secondary keys falls back to the primary one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_scoped_task_keys_live_and_die_with_both_providers() {
    let Some(cluster) = flotilla_testkit::postgres() else {
        return;
    };
    let url = cluster.create_database();
    let secondary = Server::builder().start().unwrap();
    let primary = with_test_types(
        Server::builder()
            .engine(Engine::Postgres)
            .database_url(&url),
    )
    .env("FLOTILLA_TASK_MANAGER__GRANT_SECONDARY_API_KEYS", "true")
    .env("FLOTILLA_TASK_MANAGER__API_KEY_TYPE", "secondary")
    .env(
        "FLOTILLA_TASK_MANAGER__SECONDARY__HOSTS",
        &format!("[{}]", secondary.url),
    )
    // The operators' key on the provider may grant keys there.
    .env("FLOTILLA_TASK_MANAGER__SECONDARY__API_KEY", ADMIN_KEY)
    .env("FLOTILLA_TASK_MANAGER__REMOVAL_DELAY", "1s")
    .env("FLOTILLA_TASK_MANAGER__INVALIDATE_INTERVAL", "1s")
    .start()
    .unwrap();
    let (st, t) = primary
        .post(
            "/api/task_manager/tasks",
            json!({"id": "mine", "taskType": "test:whoami"}),
        )
        .await;
    assert_eq!(st, 200, "{t}");
    let scope = t["item"]["userScope"].clone();
    let primary_key = scope["apiKeyId"].as_str().unwrap().to_owned();
    let secondary_key = scope["secondaryApiKeyId"].as_str().unwrap().to_owned();
    assert!(!t.to_string().contains("sealed"), "{t}");
    // The run used the secondary key, and it works on the provider.
    let state = eventually(15, "the task to run", || async {
        let (_, t) = primary.get("/api/task_manager/tasks/mine").await;
        (t["item"]["runs"] == 1).then(|| t["item"]["state"].clone())
    })
    .await;
    assert_eq!(state["provider"], "secondary");
    assert_eq!(state["key_id"], secondary_key.as_str());
    assert_eq!(state["verified"], secondary_key.as_str());
    assert!(key_valid(&secondary, &secondary_key).await);
    assert!(key_valid(&primary, &primary_key).await);

    // Bulk delete it with another one: every key is queued and, after the
    // removal delay, invalidated with the provider that issued it.
    let (_, other) = primary
        .post(
            "/api/task_manager/tasks",
            json!({"id": "other", "taskType": "test:whoami", "enabled": false}),
        )
        .await;
    let other_primary = other["item"]["userScope"]["apiKeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_secondary = other["item"]["userScope"]["secondaryApiKeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    // Its sealed keys are damaged: it can no longer be read as a user.
    cluster.execute(
        &url,
        "UPDATE tasks SET api_key = 'damaged', secondary_api_key = 'damaged' WHERE id = 'other'",
    );
    let (st, _) = primary.get("/api/task_manager/tasks/other").await;
    assert_eq!(st, 200, "shown without its keys");
    let (st, r) = primary
        .post(
            "/api/task_manager/tasks/_bulk_delete",
            json!({"ids": ["mine", "other", "ghost"]}),
        )
        .await;
    assert_eq!(st, 200);
    let ok: Vec<&Value> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["success"])
        .collect();
    assert_eq!(ok, [&json!(true), &json!(true), &json!(false)]);
    for (server, id) in [
        (&secondary, secondary_key.clone()),
        (&secondary, other_secondary.clone()),
        (&primary, other_primary.clone()),
        (&primary, primary_key.clone()),
    ] {
        eventually(20, "the key to be invalidated", || async {
            (!key_valid(server, &id).await).then_some(())
        })
        .await;
    }

    // A server that grants no secondary keys, configured to use them:
    // its tasks run with the primary key.
    let fallback = with_test_types(Server::builder())
        .env("FLOTILLA_TASK_MANAGER__API_KEY_TYPE", "secondary")
        .env(
            "FLOTILLA_TASK_MANAGER__SECONDARY__HOSTS",
            &format!("[{}]", secondary.url),
        )
        .env("FLOTILLA_TASK_MANAGER__SECONDARY__API_KEY", ADMIN_KEY)
        .start()
        .unwrap();
    let (_, t) = fallback
        .post(
            "/api/task_manager/tasks",
            json!({"id": "fb", "taskType": "test:whoami"}),
        )
        .await;
    assert!(t["item"]["userScope"]["secondaryApiKeyId"].is_null(), "{t}");
    let state = eventually(15, "the fallback run", || async {
        let (_, t) = fallback.get("/api/task_manager/tasks/fb").await;
        (t["item"]["runs"] == 1).then(|| t["item"]["state"].clone())
    })
    .await;
    assert_eq!(state["provider"], "primary");
}

async fn key_valid(server: &Server, id: &str) -> bool {
    let (_, k) = server.get(&format!("/_security/api_key?id={id}")).await;
    k["api_keys"][0]["invalidated"] == false
}
