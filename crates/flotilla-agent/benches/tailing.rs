//! File tailing throughput: the agent's `logfile` input reads N lines and
//! ships them through `_bulk` to a minimal sink — this same program re-run
//! as a child process (an axum `_bulk` that answers 201 per new `_id`, 409
//! per repeated one), so the CPU time measured is the agent's alone.
//!
//! `cargo bench -p flotilla-agent --bench tailing` (`BENCH_LINES`, default
//! 200000). Prints events/s and CPU ms per 1,000 events.

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_agent::inputs::{Context, Supervisor};
use serde_json::{json, Value};

fn cpu_time() -> Duration {
    // SAFETY: `usage` is a zeroed out-parameter that getrusage fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

async fn sink() {
    let ids: Arc<Mutex<HashSet<String>>> = Arc::default();
    let bulk_ids = ids.clone();
    let app = axum::Router::new()
        .route(
            "/_bulk",
            axum::routing::post(move |body: axum::body::Bytes| {
                let ids = bulk_ids.clone();
                async move {
                    let mut items = Vec::new();
                    let mut seen = ids.lock().unwrap();
                    for meta in body.split(|&b| b == b'\n').step_by(2) {
                        let Ok(meta) = serde_json::from_slice::<Value>(meta) else {
                            continue;
                        };
                        let id = meta["create"]["_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        let status = if seen.insert(id) { 201 } else { 409 };
                        items.push(json!({"create": {"status": status}}));
                    }
                    axum::Json(json!({"errors": false, "items": items}))
                }
            }),
        )
        .route(
            "/count",
            axum::routing::get(move || {
                let n = ids.lock().unwrap().len();
                async move { n.to_string() }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var("BENCH_SINK").is_ok() {
        return rt.block_on(sink());
    }
    let lines: usize = std::env::var("BENCH_LINES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("BENCH_SINK", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut addr = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut addr,
    )
    .unwrap();
    let url = format!("http://{}", addr.trim());

    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("bench.log");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
    for i in 0..lines {
        writeln!(f, "2026-12-02T12:00:00.000Z INFO request {i} served in 12ms path=/api/v1/items status=200 bytes=5120").unwrap();
    }
    f.flush().unwrap();
    drop(f);

    let policy = json!({
        "inputs": [{"id": "bench", "type": "logfile", "data_stream": {"namespace": "bench"},
                    "streams": [{"id": "bench-1", "data_stream": {"dataset": "bench"}, "paths": [log]}]}],
        "outputs": {"default": {"type": "elasticsearch", "hosts": [url], "api_key": "bench:key"}},
    });
    let http = reqwest::Client::new();
    let (wall, cpu) = rt.block_on(async {
        let supervisor = Supervisor::new(Context {
            state_dir: tmp.path().to_owned(),
            agent_id: "bench".into(),
            host_name: "bench".into(),
        });
        let (cpu0, t0) = (cpu_time(), Instant::now());
        supervisor.reconcile(&policy);
        loop {
            let n: usize = http
                .get(format!("{url}/count"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .parse()
                .unwrap();
            if n >= lines {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = (t0.elapsed(), cpu_time() - cpu0);
        supervisor.stop_all();
        out
    });
    let _ = child.kill();
    let _ = child.wait();
    let per_s = lines as f64 / wall.as_secs_f64();
    let cpu_per_k = cpu.as_secs_f64() * 1000.0 / (lines as f64 / 1000.0);
    println!(
        "logfile → _bulk (in-process sink, child process): {lines} events in {:.2?}: {per_s:.0} events/s, {cpu_per_k:.2} ms CPU per 1,000 events (agent process, incl. checkpoint writes)",
        wall
    );
}
