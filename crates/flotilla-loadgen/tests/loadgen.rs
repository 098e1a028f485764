//! `flotilla loadgen` against the real server binary: 200 agents enrol,
//! then 200 more are held and a policy change reaches and is acked by all.
//!
//! The binary is `target/debug/flotilla` (or `$FLOTILLA_BIN`); building it
//! is the caller's job: `cargo build -p flotilla` first.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const ADMIN_KEY: &str = "loadgen-test-admin-key-0123456789abcdefghij";

fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOTILLA_BIN") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let p = target.join("debug/flotilla");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p flotilla` first (or set FLOTILLA_BIN)",
        p.display()
    );
    p
}

/// The binary with no inherited Flotilla settings.
fn command() -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("FLOTILLA_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

struct Server {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    start_server_with(&[])
}

/// A server on `database_url` (PostgreSQL) instead of its own SQLite.
fn start_server_on(database_url: &str) -> Server {
    start_server_with(&[
        ("FLOTILLA_DATABASE_URL", database_url),
        (
            "FLOTILLA_ENCRYPTION_KEY",
            "loadgen-test-encryption-key-0123456789abc",
        ),
    ])
}

fn start_server_with(env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command()
        .envs(env.iter().copied())
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("FLOTILLA_ADMIN_API_KEY", ADMIN_KEY)
        .env("FLOTILLA_VERIFIER__EMBEDDED_AGENT", "false")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!("the server did not print its ready line");
        }
    };
    Server {
        url: format!("http://{addr}"),
        child,
        _dir: dir,
    }
}

/// Runs `flotilla loadgen <args> --json`; its summary.
fn loadgen(server: &Server, args: &[&str]) -> Value {
    loadgen_at(&server.url, args)
}

fn loadgen_at(url: &str, args: &[&str]) -> Value {
    let out = command()
        .arg("loadgen")
        .args(args)
        .args(["--url", url, "--json", "--quiet", "--timeout", "120s"])
        .env("FLOTILLA_API_KEY", ADMIN_KEY)
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadgen {args:?} failed:\n{stdout}\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {stdout}\n{stderr}"))
}

#[test]
fn enroll_and_fanout_reach_every_agent() {
    let server = start_server();

    let s = loadgen(
        &server,
        &["enroll", "--agents", "200", "--concurrency", "16"],
    );
    assert_eq!(s["scenario"], "enroll");
    assert_eq!(s["agents"], 200);
    assert_eq!(s["enrolled"], 200, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(
        s["per_tenth_per_s"].as_array().map(Vec::len),
        Some(10),
        "{s}"
    );
    assert!(s["p50_ms"].is_number() && s["p99_ms"].is_number(), "{s}");

    let s = loadgen(
        &server,
        &["fanout", "--agents", "200", "--metadata-bytes", "2048"],
    );
    assert_eq!(s["scenario"], "fanout");
    assert_eq!(s["enrolled"], 200, "{s}");
    assert!(
        s["waiting"].as_u64().unwrap() >= 200,
        "every agent waited in a long poll: {s}"
    );
    assert_eq!(
        s["received"], 200,
        "every agent received the new revision: {s}"
    );
    assert_eq!(s["acked"], 200, "every agent acked it: {s}");
    assert_eq!(s["errors"], 0, "{s}");
    for k in ["t50_s", "t99_s", "t100_s", "all_acked_s"] {
        assert!(s[k].is_number(), "{k}: {s}");
    }
}

/// `baseline` spread over two processes: hold then churn against the
/// server and against the minimal one, with figures for both and ratios.
#[test]
fn baseline_runs_over_several_processes() {
    let server = start_server_with(&[
        ("FLOTILLA_FLEET__POLL_TIMEOUT", "1s"),
        ("FLOTILLA_FLEET__POLL_JITTER", "0s"),
    ]);
    let pid = server.child.id().to_string();
    let s = loadgen(
        &server,
        &[
            "baseline",
            "--agents",
            "60",
            "--processes",
            "2",
            "--duration",
            "2s",
            "--metadata-bytes",
            "512",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(s["scenario"], "baseline", "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    for k in [
        "flotilla_rss_per_agent",
        "baseline_rss_per_agent",
        "rss_ratio",
        "checkin_ratio",
    ] {
        assert!(s[k].is_number(), "{k}: {s}");
    }
    for k in ["flotilla_checkins_per_s", "baseline_checkins_per_s"] {
        assert!(s[k].as_f64().unwrap() > 0.0, "{k}: {s}");
    }
}

/// Two instances on one PostgreSQL database, the agents spread over them
/// (two processes, one per instance): a change made through the first
/// reaches the agents held by the second.
#[test]
fn fanout_reaches_agents_on_two_instances_sharing_postgres() {
    let Some(cluster) = flotilla_testkit::postgres() else {
        return;
    };
    let db = cluster.create_database();
    let a = start_server_on(&db);
    let b = start_server_on(&db);
    let urls = format!("{},{}", a.url, b.url);
    let s = loadgen_at(
        &urls,
        &[
            "fanout",
            "--agents",
            "120",
            "--processes",
            "2",
            "--metadata-bytes",
            "512",
        ],
    );
    assert_eq!(s["enrolled"], 120, "{s}");
    assert_eq!(
        s["received"], 120,
        "every agent, on either instance, got the change: {s}"
    );
    assert_eq!(s["acked"], 120, "{s}");
    assert_eq!(s["errors"], 0, "{s}");

    // Several servers need a process each.
    let out = command()
        .args(["loadgen", "hold", "--agents", "10", "--url", &urls])
        .env("FLOTILLA_API_KEY", ADMIN_KEY)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--processes 2"), "{err}");
}

#[test]
fn overload_sheds_keeps_the_admitted_and_recovers_and_a_storm_converges() {
    // Sized for 60: 120 agents are twice its capacity.
    let server = start_server_with(&[
        ("FLOTILLA_FLEET__EXPECTED_AGENTS", "60"),
        ("FLOTILLA_FLEET__POLL_TIMEOUT", "1s"),
        ("FLOTILLA_FLEET__POLL_JITTER", "0s"),
        ("FLOTILLA_FLEET__LONG_POLL_RESERVE", "3s"),
    ]);
    let s = loadgen(
        &server,
        &[
            "overload",
            "--agents",
            "120",
            "--duration",
            "4s",
            "--metadata-bytes",
            "256",
        ],
    );
    assert_eq!(s["scenario"], "overload");
    assert_eq!(s["enrolled"], 120, "{s}");
    let admitted = s["admitted"].as_u64().unwrap();
    assert!(admitted > 0 && admitted < 120, "some shed: {s}");
    assert!(s["refused"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(
        s["admitted_refused"], 0,
        "admitted agents kept being served: {s}"
    );
    assert!(s["recover_s"].is_number(), "recovered on its own: {s}");
    assert_eq!(s["served_after"], s["staying"], "{s}");
    assert_eq!(s["healthz_failures"], 0, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    drop(server);

    let server = start_server();
    let s = loadgen(
        &server,
        &["storm", "--agents", "100", "--metadata-bytes", "256"],
    );
    assert_eq!(s["scenario"], "storm");
    assert!(s["converge_s"].is_number(), "{s}");
    assert_eq!(s["waiting_after"], 100, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(s["healthz_failures"], 0, "{s}");
}
