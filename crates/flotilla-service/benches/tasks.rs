//! Task manager throughput: N one-shot `test:noop` tasks scheduled, then
//! one or two task managers (instances: on PostgreSQL each with its own
//! connection pool and LISTEN connection, as separate processes would be)
//! claim and run them with the production poll loop. Prints runs per
//! second and per minute, and claim latency (start − due: p50/p99).
//!
//! `cargo bench -p flotilla-service --bench tasks` (release; prints
//! figures, asserts nothing). `TASK_BENCH_N` sets the tasks per scenario.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::tasks::ScheduleTaskRequest;
use flotilla_service::crypto::Sealer;
use flotilla_service::tasks::builtin::{self, Maintenance};
use flotilla_service::tasks::keys::KeyStrategy;
use flotilla_service::tasks::{ManagerConfig, SystemClock, TaskManager};
use flotilla_service::{FleetSettings, Services};
use flotilla_store::{KeyProvider, Page, Store, TaskFilter};

fn manager(store: Arc<dyn Store>, name: &str) -> Arc<TaskManager> {
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
        Arc::new(SystemClock),
        ManagerConfig {
            instance_id: name.to_owned(),
            ..Default::default()
        },
        strategy,
    )
}

async fn scenario(engine: &str, stores: Vec<Arc<dyn Store>>, n: usize) {
    let managers: Vec<Arc<TaskManager>> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| manager(s.clone(), &format!("bench-{i}")))
        .collect();
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
                    run_at: None,
                    enabled: Some(false),
                },
            )
            .await
            .unwrap();
    }
    let ids: Vec<String> = (0..n)
        .map(|i| format!("bench-{engine}-{}-{i}", stores.len()))
        .collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    for chunk in ids.chunks(10_000) {
        managers[0].set_enabled(chunk, true).await.unwrap();
    }
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

#[tokio::main]
async fn main() {
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
