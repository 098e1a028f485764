//! Ingest throughput of the embedded output: `_bulk` bodies of 500 events
//! of about 1 KiB through `Services::bulk` (parsing, per-item
//! authorisation, one transaction per request), on SQLite and on a
//! throwaway PostgreSQL; and what authorising one item costs.
//!
//! `cargo bench -p flotilla-service --bench ingest` (release build; prints
//! figures, asserts nothing). `INGEST_REQUESTS` sets the requests per engine.

use std::sync::Arc;
use std::time::Instant;

use flotilla_domain::permissions::{IndexPermission, Permissions, RoleDescriptor};
use flotilla_service::crypto::Sealer;
use flotilla_service::{FleetSettings, Services};

const EVENTS_PER_REQUEST: usize = 500;

fn perms() -> Permissions {
    Permissions(
        [(
            "pp".to_string(),
            RoleDescriptor {
                cluster: vec![],
                indices: Some(vec![
                    IndexPermission {
                        names: vec!["logs-nginx.access-prod".into()],
                        privileges: vec!["auto_configure".into(), "create_doc".into()],
                    },
                    IndexPermission {
                        names: vec!["logs-nginx.error-prod".into()],
                        privileges: vec!["auto_configure".into(), "create_doc".into()],
                    },
                ]),
            },
        )]
        .into(),
    )
}

fn body(request: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(EVENTS_PER_REQUEST * 1100);
    let filler = "x".repeat(900);
    for i in 0..EVENTS_PER_REQUEST {
        out.extend_from_slice(b"{\"create\":{\"_index\":\"logs-nginx.access-prod\"}}\n");
        out.extend_from_slice(
            format!(
                "{{\"message\":\"GET /index.html 200 {request}-{i} {filler}\",\"host\":{{\"name\":\"web-{}\"}},\"event\":{{\"dataset\":\"nginx.access\"}}}}\n",
                i % 8
            )
            .as_bytes(),
        );
    }
    out
}

async fn run(engine: &str, store: Arc<dyn flotilla_store::Store>, requests: usize) {
    let services = Services::new(
        store,
        FleetSettings::default(),
        Sealer::from_secret(b"bench-bench-bench-bench-bench-32"),
    );
    let perms = perms();
    let bodies: Vec<Vec<u8>> = (0..requests).map(body).collect();
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    // One warm-up request creates the data stream.
    services
        .bulk("bench", Some(&perms), &body(usize::MAX), None)
        .await
        .unwrap();
    let started = Instant::now();
    for b in &bodies {
        let out = services.bulk("bench", Some(&perms), b, None).await.unwrap();
        assert!(!out.errors());
    }
    let secs = started.elapsed().as_secs_f64();
    let docs = requests * EVENTS_PER_REQUEST;
    println!(
        "ingest {engine}: {docs} events of ~1 KiB in {requests} _bulk requests of {EVENTS_PER_REQUEST}: {:.0} events/s, {:.1} MiB/s, {:.1} ms per request",
        docs as f64 / secs,
        bytes as f64 / secs / (1 << 20) as f64,
        secs * 1000.0 / requests as f64
    );
}

fn authorisation_cost() {
    let perms = perms();
    let names = [
        "logs-nginx.access-prod",
        "logs-nginx.error-prod",
        "logs-other-prod",
    ];
    let n = 2_000_000;
    let started = Instant::now();
    let mut allowed = 0usize;
    for i in 0..n {
        let name = names[i % names.len()];
        if ["create_doc", "create", "index", "write", "all"]
            .iter()
            .any(|p| perms.allows(name, p))
        {
            allowed += 1;
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "authorisation: {ns:.0} ns per item (a key with 2 index entries; {allowed} of {n} allowed)"
    );
}

#[tokio::main]
async fn main() {
    let requests: usize = std::env::var("INGEST_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    authorisation_cost();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = flotilla_store_sql::open(flotilla_store_sql::Location::DataDir(dir.path()))
        .await
        .unwrap();
    run("sqlite", sqlite, requests).await;
    match flotilla_testkit::postgres() {
        Some(cluster) => {
            let url = cluster.create_database();
            let pg = Arc::new(flotilla_store_sql::PgStore::connect(&url).await.unwrap());
            run("postgres", pg, requests).await;
        }
        None => println!("ingest postgres: skipped (PostgreSQL is not installed)"),
    }
}
