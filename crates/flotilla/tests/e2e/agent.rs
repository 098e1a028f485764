//! The real agent binary against the real server: enrol, receive and
//! persist a policy before acking it, keep running it through an outage,
//! refuse tampered state, one agent per directory, unenrolment.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fleet::quick_polls;
use crate::support::{command, Server};

pub(crate) fn agent(dir: &Path, args: &[&str]) -> std::process::Command {
    let mut c = command();
    c.arg("agent").args(args).arg("--state-dir").arg(dir);
    c.env_remove("FLOTILLA_URL").env("RUST_LOG", "warn");
    c
}

/// A running agent, killed when the guard goes (a failing test leaves no
/// agent behind).
pub(crate) struct Running(pub(crate) std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn spawn(mut c: std::process::Command) -> Running {
    Running(
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

pub(crate) fn status(dir: &Path) -> Value {
    let out = agent(dir, &["status"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_applies_persists_then_acks_and_keeps_its_policy_through_an_outage() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");

    let out = agent(
        &dir,
        &[
            "enroll",
            "--url",
            &s.url,
            "--enrollment-token",
            &token,
            "--tag",
            "e2e",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent_id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();

    run_briefly(&dir);
    let local = status(&dir);
    assert_eq!(local["policy_id"], "web");
    assert_eq!(local["revision"], 2);
    // nginx's access and error logs: tailed (none exist here), healthy.
    assert_eq!(local["components"][0]["type"], "logfile", "{local}");
    assert_eq!(local["components"][0]["status"], "HEALTHY", "{local}");
    // The server saw it run the policy, and the policy change acked.
    let (_, a) = s.get(&format!("/api/fleet/agents/{agent_id}")).await;
    assert_eq!(a["item"]["reported_policy_revision"], 2, "{a}");
    assert_eq!(a["item"]["tags"], json!(["e2e"]));
    assert_eq!(
        a["item"]["policy_revision"], 2,
        "the policy change was acked: {a}"
    );

    // A second agent on the same directory is refused.
    // It writes its status once it holds the directory's lock.
    std::fs::remove_file(dir.join("status.json")).unwrap();
    let running = spawn(agent(&dir, &["run"]));
    wait_for("the agent to take its lock", || {
        dir.join("status.json").exists()
    });
    let out = agent(&dir, &["run", "--max-checkins", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another flotilla agent"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(running);

    // The server goes away: the agent still runs its last good policy.
    drop(s);
    let offline = spawn(agent(&dir, &["run"]));
    wait_for("the agent to report the outage", || {
        let st = status(&dir);
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable"))
            && st["revision"] == 2
    });
    drop(offline);

    // A tampered policy file is refused, reported and moved aside.
    let policy = dir.join("policy.enc");
    let mut bytes = std::fs::read(&policy).unwrap();
    let n = bytes.len() - 1;
    bytes[n] ^= 0x55;
    std::fs::write(&policy, bytes).unwrap();
    let tampered = spawn(agent(&dir, &["run"]));
    wait_for("the tampered file to be reported", || {
        status(&dir)["state_warnings"]
            .to_string()
            .contains("does not open")
    });
    drop(tampered);
    let moved = std::fs::read_dir(&dir).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("policy.corrupt-")
    });
    assert!(moved, "moved aside");
    assert_eq!(status(&dir)["policy_id"], Value::Null, "never used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unenrolled_agent_acks_and_removes_its_secrets() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    // Enrols on first start from the environment, as containers do.
    let out = agent(&dir, &["run", "--max-checkins", "1"])
        .env("FLOTILLA_URL", &s.url)
        .env("FLOTILLA_ENROLLMENT_TOKEN", &token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent_id = status(&dir)["agent_id"].as_str().unwrap().to_owned();
    let (st, _) = s
        .post(&format!("/api/fleet/agents/{agent_id}/unenroll"), json!({}))
        .await;
    assert_eq!(st, 200);
    let out = agent(&dir, &["run"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.join("identity.enc").exists(), "the access key is gone");
    assert!(!dir.join("policy.enc").exists());
    assert!(
        !dir.join("agent.key").exists(),
        "nor the key that opened them"
    );
    let out = agent(&dir, &["run", "--max-checkins", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not enrolled"));
}

/// An agent that acked a policy but never persisted it (a crash between the
/// two, or a lost disk) reports that it runs nothing, and gets the current
/// policy again; so does one whose policy file was tampered with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_lost_its_policy_converges_to_the_current_one() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    enroll_at(&dir, &s, &token);
    let out = agent(&dir, &["run", "--max-checkins", "2"])
        .env("FLOTILLA_AGENT_TEST_FAULT", "skip-persist")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent_id = status(&dir)["agent_id"].as_str().unwrap().to_owned();
    let (_, a) = s.get(&format!("/api/fleet/agents/{agent_id}")).await;
    assert_eq!(a["item"]["policy_revision"], 2, "acked");
    assert!(!dir.join("policy.enc").exists(), "but never persisted");

    // Restarted, it runs nothing, says so, and is sent the policy again.
    run_briefly(&dir);
    assert!(dir.join("policy.enc").exists());
    assert_eq!(status(&dir)["revision"], 2);

    // A tampered policy file: refused, moved aside, and the policy comes again.
    let policy = dir.join("policy.enc");
    let mut bytes = std::fs::read(&policy).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&policy, bytes).unwrap();
    run_briefly(&dir);
    let st = status(&dir);
    assert!(
        st["state_warnings"].to_string().contains("does not open"),
        "{st}"
    );
    assert_eq!(st["revision"], 2, "the current policy again: {st}");
}

/// The crash between ack and persist, for real: the agent acks a policy,
/// stalls before persisting it (a test switch) and is killed (SIGKILL);
/// restarted, it reports that it runs nothing and converges to the
/// current policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_between_ack_and_persist_converges() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    enroll_at(&dir, &s, &token);
    let mut cmd = agent(&dir, &["run"]);
    cmd.env("FLOTILLA_AGENT_TEST_FAULT", "ack-then-stall");
    let stalled = spawn(cmd);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let agent_id = loop {
        let (_, list) = s.get("/api/fleet/agents").await;
        let acked = list["items"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["policy_revision"] == 2))
            .and_then(|a| a["id"].as_str().map(str::to_owned));
        if let Some(id) = acked {
            break id;
        }
        assert!(std::time::Instant::now() < deadline, "never acked: {list}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    drop(stalled); // SIGKILL, then reaped
    assert!(!dir.join("policy.enc").exists(), "acked, never persisted");

    run_briefly(&dir);
    assert!(dir.join("policy.enc").exists());
    assert_eq!(status(&dir)["revision"], 2);
    let (_, a) = s.get(&format!("/api/fleet/agents/{agent_id}")).await;
    assert_eq!(a["item"]["reported_policy_revision"], 2, "{a}");
}

/// A reassigned agent acks the POLICY_REASSIGN action (no error) and runs
/// the new policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reassigned_agent_runs_its_new_policy() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    s.policy_with_token("db").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    enroll_at(&dir, &s, &token);
    run_briefly(&dir);
    let st = status(&dir);
    assert_eq!(st["policy_id"], "web");
    let id = st["agent_id"].as_str().unwrap().to_owned();
    let (code, body) = s
        .post(
            &format!("/api/fleet/agents/{id}/reassign"),
            serde_json::json!({"policy_id": "db"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    run_briefly(&dir);
    assert_eq!(status(&dir)["policy_id"], "db");
    let (_, actions) = s.get(&format!("/api/fleet/agents/{id}/actions")).await;
    let reassign = actions["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "POLICY_REASSIGN")
        .cloned()
        .unwrap_or_else(|| panic!("{actions}"));
    assert!(reassign["acked_at"].is_string(), "{reassign}");
    assert!(reassign["ack_error"].is_null(), "{reassign}");
}

/// Enrol the agent in `dir` with `token`; it must succeed.
fn enroll_at(dir: &std::path::Path, s: &Server, token: &str) {
    let out = agent(
        dir,
        &["enroll", "--url", &s.url, "--enrollment-token", token],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run the agent for two check-ins; it must exit cleanly.
fn run_briefly(dir: &std::path::Path) {
    let out = agent(dir, &["run", "--max-checkins", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
