//! Starting the server: configuration, first start, storage, shutdown.

use std::process::Stdio;

use reqwest::Method;
use serde_json::json;

use crate::support::{assert_error, command, Server};

fn start_failure(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command();
    cmd.args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("d"))
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_configuration_stops_the_server_naming_the_key() {
    let (code, err) = start_failure(&[], &[("FLOTILLA_HTTP__MAX_BODY_BYTES", "lots")]);
    assert_ne!(code, 0);
    assert!(err.contains("http.max_body_bytes"), "{err}");

    let secret = "too-short-secret";
    let (code, err) = start_failure(&[], &[("FLOTILLA_ADMIN_API_KEY", secret)]);
    assert_ne!(code, 0);
    assert!(
        err.contains("admin_api_key") && !err.contains(secret),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flotilla.yml");
    std::fs::write(&file, "log:\n  format: fancy\n").unwrap();
    let (code, err) = start_failure(&["--config", file.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("log.format"), "{err}");

    std::fs::write(&file, "lisen: 127.0.0.1:1\n").unwrap();
    let (_, err) = start_failure(&["--config", file.to_str().unwrap()], &[]);
    assert!(err.contains("lisen"), "{err}");

    let (code, err) = start_failure(&["--config", "/nonexistent/flotilla.yml"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/flotilla.yml"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
}

#[tokio::test]
async fn first_start_generates_an_admin_key_shown_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::builder()
        .no_admin_key()
        .data_dir(&data)
        .start()
        .unwrap();
    assert!(
        s.banner.iter().any(|l| l.contains("admin API key")),
        "{:?}",
        s.banner
    );
    assert!(s.key.len() >= 32);
    assert_eq!(s.get("/api/fleet/outputs").await.0, 200);
    let key = s.key.clone();
    s.stop();

    assert!(
        data.join("flotilla.db").is_file(),
        "the database file lives in the data dir"
    );
    let mut again = Server::builder()
        .no_admin_key()
        .data_dir(&data)
        .start()
        .unwrap();
    assert!(
        again.banner.iter().all(|l| !l.contains("admin API key")),
        "{:?}",
        again.banner
    );
    again.key = key;
    assert_eq!(
        again.get("/api/fleet/outputs").await.0,
        200,
        "the first key survives restarts"
    );
}

async fn works(s: &Server, key: &str) -> u16 {
    s.call_with_key(Method::GET, "/api/fleet/outputs", None, Some(key))
        .await
        .0
}

#[tokio::test]
async fn a_changed_admin_key_replaces_the_previous_one() {
    const A: &str = "first-admin-key-0123456789abcdefghijkl";
    const B: &str = "second-admin-key-0123456789abcdefghijk";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Server::sqlite_at(&data, A);
    assert_eq!(works(&first, A).await, 200);
    first.stop();
    let second = Server::sqlite_at(&data, B);
    assert_eq!(works(&second, B).await, 200);
    assert_error(
        &second
            .call_with_key(Method::GET, "/api/fleet/outputs", None, Some(A))
            .await,
        401,
        "unknown or revoked",
    );
    // An operator key made meanwhile.
    let (_, made) = second
        .post("/api/flotilla/api_keys", json!({"name": "ops"}))
        .await;
    let ops = made["item"]["api_key"].as_str().unwrap().to_owned();
    second.stop();

    // Back to the first value: it works again, the second does not.
    let third = Server::sqlite_at(&data, A);
    assert_eq!(works(&third, A).await, 200);
    assert_eq!(works(&third, B).await, 401);
    third.stop();

    // Unset: the env key is retired since another key remains.
    let mut fourth = Server::builder()
        .no_admin_key()
        .data_dir(&data)
        .start()
        .unwrap();
    assert!(fourth.banner.iter().all(|l| !l.contains("admin API key")));
    fourth.key = ops.clone();
    assert_eq!(works(&fourth, &ops).await, 200);
    assert_eq!(works(&fourth, A).await, 401);
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    Server::sqlite_at(&data, crate::support::ADMIN_KEY).stop();

    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(data.join("flotilla.db"));
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999, 'future', TRUE, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let out = command()
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("newer than this flotilla binary"), "{err}");
}

#[tokio::test]
async fn config_file_limits_apply() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flotilla.yml");
    std::fs::write(
        &file,
        "http:\n  max_body_bytes: 2048\nlog:\n  format: json\n",
    )
    .unwrap();
    let s = Server::builder()
        .arg("--config")
        .arg(file.to_str().unwrap())
        .start()
        .unwrap();
    let body = json!({"name": "x".repeat(4096)});
    assert_error(
        &s.post("/api/fleet/agent_policies", body).await,
        413,
        "larger",
    );
    assert_eq!(
        s.post("/api/fleet/agent_policies", json!({"name": "small"}))
            .await
            .0,
        200
    );
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let s = Server::sqlite();
    let pid = s.pid();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = s.wait();
    assert_eq!(code, Some(0));
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let first = Server::sqlite();
    let out = command()
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&first.data_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another flotilla server"), "{err}");
}
