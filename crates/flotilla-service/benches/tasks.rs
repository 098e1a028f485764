//! Task manager throughput: N one-shot `test:noop` tasks scheduled, then
//! one or two task managers (instances: on PostgreSQL each with its own
//! connection pool and LISTEN connection, as separate processes would be)
//! claim and run them with the production poll loop. Prints runs per
//! second and per minute, and claim latency (start − due: p50/p99, all
//! tasks due at the instant they are released — a burst).
//!
//! `cargo bench -p flotilla-service --bench tasks` (release; prints
//! figures, asserts nothing). `TASK_BENCH_N` sets the tasks per scenario.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::tasks::ScheduleTaskRequest;
use flotilla_service::crypto::Sealer;
use flotilla_service::tasks::builtin::{self, Maintenance};
use flotilla_service::tasks::keys::KeyStrategy;
use flotilla_service::tasks::{Clock, ManagerConfig, TaskManager};
use flotilla_service::{FleetSettings, Services};
use flotilla_store::{KeyProvider, Page, Store, TaskFilter};

/// Wall time shifted by an offset set when the tasks are released, so they
/// fall due at that instant.
struct Shifted(AtomicI64);

impl Clock for Shifted {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + chrono::Duration::milliseconds(self.0.load(Ordering::Relaxed))
    }
}

fn manager(store: Arc<dyn Store>, name: &str, clock: Arc<Shifted>) -> Arc<TaskManager> {
    let services = Services::new(
        store,
        FleetSettings::default(),
        Sealer::from_secret(b"bench-bench-bench-bench-bench-32"),
    );
    let strategy = Arc::new(KeyStrategy {
        grant_secondary: false,
        use_key: KeyProvider::Primary,
        secondary: None,
    });
    let m = Maintenance {
        test_types: true,
        ..Default::default()
    };
    TaskManager::new(
        services,
        builtin::registry(&m, strategy.clone()),
        clock,
        ManagerConfig {
            instance_id: name.to_owned(),
            poll_interval: Duration::from_millis(
                std::env::var("TASK_BENCH_POLL_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(500),
            ),
            ..Default::default()
        },
        strategy,
    )
}

async fn scenario(engine: &str, stores: Vec<Arc<dyn Store>>, n: usize) {
    let clock = Arc::new(Shifted(AtomicI64::new(0)));
    let managers: Vec<Arc<TaskManager>> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| manager(s.clone(), &format!("bench-{i}"), clock.clone()))
        .collect();
    // Due an hour from now on the unshifted clock; released by shifting.
    let due = chrono::Utc::now() + chrono::Duration::hours(1);
    for i in 0..n {
        managers[0]
            .schedule(
                None,
                ScheduleTaskRequest {
                    id: Some(format!("bench-{engine}-{}-{i}", stores.len())),
                    task_type: "test:noop".into(),
                    params: None,
                    state: None,
                    schedule: None,
                    run_at: Some(due),
                    enabled: Some(true),
                },
            )
            .await
            .unwrap();
    }
    let ids: Vec<String> = (0..0)
        .map(|i| format!("bench-{engine}-{}-{i}", stores.len()))
        .collect();
    let _ = ids;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    clock.0.store(
        (due - chrono::Utc::now()).num_milliseconds(),
        Ordering::Relaxed,
    );
    let runners: Vec<_> = managers
        .iter()
        .map(|m| tokio::spawn(m.clone().run(stop_rx.clone(), Duration::from_secs(5))))
        .collect();
    let store = stores[0].clone();
    loop {
        let left = store
            .list_tasks(
                &TaskFilter {
                    task_type: Some("test:noop".into()),
                    status: None,
                },
                Page {
                    page: 1,
                    per_page: 1,
                },
            )
            .await
            .unwrap()
            .total;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for m in &managers {
        let h = m.health().await.unwrap();
        p50.push(
            h["stats"]["runtime"]["drift_ms"]["p50"]
                .as_i64()
                .unwrap_or(0),
        );
        p99.push(
            h["stats"]["runtime"]["drift_ms"]["p99"]
                .as_i64()
                .unwrap_or(0),
        );
    }
    let _ = stop_tx.send(true);
    for r in runners {
        let _ = r.await;
    }
    println!(
        "tasks {engine}, {} instance(s): {n} runs in {secs:.2} s: {:.0} runs/s ({:.0} per minute; Kibana's figure: ~1,200 per minute per node); claim latency p50 {:?} ms, p99 {:?} ms (last 1,000 runs per instance)",
        stores.len(),
        n as f64 / secs,
        n as f64 / secs * 60.0,
        p50,
        p99,
    );
}

async fn micro(engine: &str, store: Arc<dyn Store>) {
    use flotilla_store::{ClaimRequest, NewTask, RunOutcome};
    let now = chrono::Utc::now();
    for i in 0..200 {
        store
            .schedule_task(
                &NewTask {
                    id: format!("m{i}"),
                    task_type: "test:noop".into(),
                    params: serde_json::json!({}),
                    state: serde_json::json!({}),
                    interval_ms: None,
                    run_at: now,
                    enabled: true,
                    cost: 1,
                    user: None,
                },
                now,
            )
            .await
            .unwrap();
    }
    let t = Instant::now();
    let mut claimed = Vec::new();
    for _ in 0..10 {
        claimed.extend(
            store
                .claim_tasks(&ClaimRequest {
                    owner: "m".into(),
                    types: vec!["test:noop".into(), "a".into(), "b".into()],
                    per_type: vec![("a".into(), 1), ("b".into(), 1)],
                    limit: 20,
                    capacity: 20,
                    now,
                    lease_until: now + chrono::Duration::seconds(30),
                })
                .await
                .unwrap(),
        );
    }
    let claim = t.elapsed();
    let t = Instant::now();
    for c in &claimed {
        store
            .finish_task_run(
                &c.id,
                c.claim_token.as_deref().unwrap(),
                &RunOutcome::Delete,
                now,
                1,
            )
            .await
            .unwrap();
    }
    println!(
        "micro {engine}: 10 claims of 20 in {:?} ({:?} each); {} finishes in {:?} ({:?} each)",
        claim,
        claim / 10,
        claimed.len(),
        t.elapsed(),
        t.elapsed() / claimed.len().max(1) as u32
    );
}

#[tokio::main]
async fn main() {
    if std::env::var("TASK_BENCH_MICRO").is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = flotilla_store_sql::open(flotilla_store_sql::Location::DataDir(dir.path()))
            .await
            .unwrap();
        micro("sqlite", sqlite).await;
        if let Some(cluster) = flotilla_testkit::postgres() {
            let url = cluster.create_database();
            micro(
                "postgres",
                Arc::new(flotilla_store_sql::PgStore::connect(&url).await.unwrap()),
            )
            .await;
        }
        return;
    }
    let n: usize = std::env::var("TASK_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let dir = tempfile::tempdir().unwrap();
    let sqlite = flotilla_store_sql::open(flotilla_store_sql::Location::DataDir(dir.path()))
        .await
        .unwrap();
    scenario("sqlite", vec![sqlite.clone()], n).await;
    // One SQLite file has one writer process: two managers share it.
    scenario("sqlite", vec![sqlite.clone(), sqlite], n).await;
    match flotilla_testkit::postgres() {
        Some(cluster) => {
            let url = cluster.create_database();
            let a: Arc<dyn Store> =
                Arc::new(flotilla_store_sql::PgStore::connect(&url).await.unwrap());
            scenario("postgres", vec![a.clone()], n).await;
            let b: Arc<dyn Store> =
                Arc::new(flotilla_store_sql::PgStore::connect(&url).await.unwrap());
            scenario("postgres", vec![a, b], n).await;
        }
        None => println!("tasks postgres: skipped (PostgreSQL is not installed)"),
    }
}
