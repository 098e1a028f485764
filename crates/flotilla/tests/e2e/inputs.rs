//! The agent's inputs, end to end: the real server and the real agent
//! binary; a `log` integration tailing a temp file and `system` metrics,
//! read back through the management API. Lines written while the server is
//! away, across a rotation, a `kill -9` of the agent, and a new output key
//! each arrive exactly once.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::agent::{agent, status, Running};
use crate::fleet::quick_polls;
use crate::support::Server;

fn start(data: &Path, listen: Option<&str>) -> Server {
    let mut b = quick_polls(Server::builder().data_dir(data));
    if let Some(l) = listen {
        b = b.listen(l);
    }
    b.start().unwrap()
}

fn line(i: usize) -> String {
    format!("line {i:05} of the e2e log")
}

fn append(path: &Path, lines: std::ops::Range<usize>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let text: String = lines.map(|i| line(i) + "\n").collect();
    f.write_all(text.as_bytes()).unwrap();
}

/// Every document of a data stream (none while it does not exist).
async fn docs(s: &Server, stream: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for page in 1.. {
        let (st, body) = s
            .get(&format!(
                "/api/fleet/data_streams/{stream}/_search?perPage=1000&page={page}&sort=asc"
            ))
            .await;
        if st != 200 {
            break;
        }
        let items = body["items"].as_array().cloned().unwrap_or_default();
        let n = items.len();
        all.extend(items.into_iter().map(|i| i["_source"].clone()));
        if n < 1000 {
            break;
        }
    }
    all
}

async fn count(s: &Server, stream: &str) -> u64 {
    let (_, body) = s
        .get(&format!(
            "/api/fleet/data_streams/{stream}/_search?perPage=1"
        ))
        .await;
    body["total"].as_u64().unwrap_or(0)
}

async fn wait_docs(s: &Server, stream: &str, at_least: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = docs(s, stream).await;
        if d.len() >= at_least {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{stream}: {} documents of {at_least}",
            d.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn messages(docs: &[Value]) -> Vec<String> {
    let mut m: Vec<String> = docs
        .iter()
        .map(|d| d["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    m.sort();
    m
}

fn expected(lines: std::ops::Range<usize>) -> Vec<String> {
    lines.map(line).collect()
}

/// Policy `edge` (namespace `prod`): the `log` package on `logs/*.log`,
/// and with `metrics`, the `system` package's metrics every second.
async fn setup(s: &Server, logs: &Path, metrics: bool) -> String {
    let (st, _) = s
        .post(
            "/api/fleet/agent_policies",
            json!({"id": "edge", "name": "edge", "namespace": "prod"}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, pp) = s
        .post(
            "/api/fleet/package_policies",
            json!({"name": "app", "policy_id": "edge", "package": {"name": "log"},
                "vars": {"paths": [format!("{}/*.log", logs.display())], "data_stream.dataset": "app",
                         "exclude_files": ["\\.skip\\.log$"], "tags": ["e2e"],
                         "processors": "- add_fields:\n    target: \"\"\n    fields:\n      team: blue\n"}}),
        )
        .await;
    assert_eq!(st, 200, "{pp}");
    if metrics {
        let every = json!({"vars": {"period": "1s"}});
        let (st, pp) = s
            .post(
                "/api/fleet/package_policies",
                json!({"name": "sys", "policy_id": "edge", "package": {"name": "system"},
                    "inputs": {"system-logfile": {"enabled": false},
                               "system-system/metrics": {"streams": {"system.cpu": every, "system.memory": every,
                                   "system.filesystem": every, "system.network": every}}}}),
            )
            .await;
        assert_eq!(st, 200, "{pp}");
    }
    let (_, key) = s
        .post(
            "/api/fleet/enrollment_api_keys",
            json!({"policy_id": "edge"}),
        )
        .await;
    key["item"]["api_key"].as_str().unwrap().to_owned()
}

fn enroll(dir: &Path, url: &str, token: &str) -> String {
    let out = agent(dir, &["enroll", "--url", url, "--enrollment-token", token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned()
}

/// The agent, its log kept beside its state for a failing test to show.
fn run_agent(dir: &Path) -> Running {
    run_agent_with(dir, None)
}

fn run_agent_with(dir: &Path, fault: Option<&str>) -> Running {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("log"))
        .unwrap();
    let mut cmd = agent(dir, &["run"]);
    if let Some(f) = fault {
        cmd.env("FLOTILLA_AGENT_TEST_FAULT", f);
    }
    Running(
        cmd.stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn wait_status(dir: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = status(dir);
        if done(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn addr(s: &Server) -> String {
    s.url.trim_start_matches("http://").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_metrics_arrive_once_through_an_outage_and_a_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, logs, dir) = (
        tmp.path().join("data"),
        tmp.path().join("logs"),
        tmp.path().join("state"),
    );
    std::fs::create_dir_all(&logs).unwrap();
    let app = logs.join("app.log");
    append(&app, 0..50);
    append(&logs.join("ignored.skip.log"), 0..5);
    let s = start(&data, None);
    let token = setup(&s, &logs, true).await;
    let agent_id = enroll(&dir, &s.url, &token);
    let agent = run_agent(&dir);

    let got = wait_docs(&s, "logs-app-prod", 50).await;
    assert_eq!(
        messages(&got),
        expected(0..50),
        "excluded files are not read"
    );
    let d = &got[0];
    assert_eq!(
        d["data_stream"],
        json!({"type": "logs", "dataset": "app", "namespace": "prod"})
    );
    assert_eq!(d["log"]["file"]["path"], app.to_string_lossy().as_ref());
    assert_eq!(d["agent"]["id"], agent_id.as_str());
    assert!(d["host"]["name"].is_string(), "{d}");
    assert!(d["@timestamp"].is_string());
    assert_eq!(d["tags"], json!(["e2e"]));
    assert_eq!(d["team"], "blue", "add_fields: {d}");
    for set in ["cpu", "memory", "filesystem", "network"] {
        let m = wait_docs(&s, &format!("metrics-system.{set}-prod"), 1).await;
        assert!(m[0]["system"][set].is_object(), "{}", m[0]);
        assert_eq!(m[0]["metricset"]["name"], set);
    }

    // Health reaches the server, and `agents show` shows it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, a) = s.get(&format!("/api/fleet/agents/{agent_id}")).await;
        let comps = a["item"]["components"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if comps.len() == 2 && comps.iter().all(|c| c["status"] == "HEALTHY") {
            break;
        }
        assert!(Instant::now() < deadline, "components: {a}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shown = s.cli(&["agents", "show", &agent_id]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("INPUTS") && text.contains("HEALTHY"),
        "{text}"
    );
    // SETTINGS changes the log level: the agent runs at `warn`, and says
    // (at info) that it now logs at debug.
    let (st, _) = s
        .post(
            &format!("/api/fleet/agents/{agent_id}/actions"),
            json!({"action": {"type": "SETTINGS", "data": {"log_level": "debug"}}}),
        )
        .await;
    assert_eq!(st, 200);
    wait_status(&dir, "the log level to change", |_| {
        std::fs::read_to_string(dir.with_extension("log"))
            .is_ok_and(|l| l.contains("log level changed"))
    });
    let local = wait_status(&dir, "events shipped", |st| {
        st["events_shipped"].as_u64() >= Some(50)
    });
    assert_eq!(local["inputs"].as_array().unwrap().len(), 2, "{local}");

    // The server goes away; lines are written, the file is rotated.
    let at = addr(&s);
    s.stop();
    append(&app, 50..80);
    std::fs::rename(&app, logs.join("app-1.log")).unwrap();
    append(&app, 80..100);
    // The agent restarts while the server is down: it runs its last good
    // policy without it, tailing from its checkpoints.
    drop(agent);
    let _agent = run_agent(&dir);
    // `agent status` works offline, and shows the backlog.
    wait_status(&dir, "the backlog to show", |st| {
        st["pending_bytes"].as_u64() > Some(0)
            && st["inputs"]
                .as_array()
                .is_some_and(|i| i.iter().any(|i| i["status"] == "DEGRADED"))
    });
    let s = start(&data, Some(&at));
    wait_docs(&s, "logs-app-prod", 100).await;
    wait_status(&dir, "the backlog to drain", |st| st["pending_bytes"] == 0);
    assert_eq!(
        messages(&docs(&s, "logs-app-prod").await),
        expected(0..100),
        "every line exactly once"
    );
    // Even at debug, through retries: no credential in the agent's log.
    let log = std::fs::read_to_string(dir.with_extension("log")).unwrap();
    assert!(log.contains("DEBUG"), "it logged at debug");
    for secret in ["ApiKey", "api_key", "authorization"] {
        assert!(!log.contains(secret), "{secret} in the agent's log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_and_a_new_output_key_lose_and_duplicate_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, logs, dir) = (
        tmp.path().join("data"),
        tmp.path().join("logs"),
        tmp.path().join("state"),
    );
    std::fs::create_dir_all(&logs).unwrap();
    let app = logs.join("app.log");
    append(&app, 0..1);
    let s = start(&data, None);
    let token = setup(&s, &logs, false).await;
    let agent_id = enroll(&dir, &s.url, &token);
    // It dies after the output accepted the first batch, before its
    // checkpoint moved: restarted, it sends the batch again, the output
    // answers 409 per item, and nothing is stored twice.
    let mut crashing = run_agent_with(&dir, Some("crash-after-ship"));
    let died = crashing.0.wait().unwrap();
    assert!(!died.success());
    drop(crashing);
    assert_eq!(
        count(&s, "logs-app-prod").await,
        1,
        "accepted before the crash"
    );
    let mut first = run_agent(&dir);
    wait_status(&dir, "the re-sent batch", |st| st["events_shipped"] == 1);
    assert_eq!(count(&s, "logs-app-prod").await, 1, "not twice");

    // Lines keep coming; the agent is killed (SIGKILL) mid-stream.
    let writer = {
        let app = app.clone();
        std::thread::spawn(move || {
            for chunk in 0..30 {
                append(&app, 1 + chunk * 100..1 + (chunk + 1) * 100);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&s, "logs-app-prod").await < 300 {
        assert!(Instant::now() < deadline, "nothing shipped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let at_kill = docs(&s, "logs-app-prod").await.len();
    eprintln!("agent killed with {at_kill} of 3001 lines shipped");
    drop(first);
    // The output key it ships with, read from its own state (its lock is
    // free while it is down): valid now, invalidated after the rotation.
    let old_key = {
        use flotilla_agent::state::{Kind, Loaded, StateDir};
        let state = StateDir::open(&dir).unwrap();
        let Loaded::Found(action) = state.load::<Value>(&agent_id, Kind::Policy) else {
            panic!("the agent's last good policy is readable");
        };
        action["data"]["policy"]["outputs"]
            .as_object()
            .and_then(|o| o.values().find_map(|v| v["api_key"].as_str()))
            .expect("an output key")
            .to_owned()
    };
    assert_eq!(bulk_as(&s, &old_key).await, 200, "the key works before");
    writer.join().unwrap();
    let _second = run_agent(&dir);
    wait_docs(&s, "logs-app-prod", 3001).await;
    wait_status(&dir, "the backlog to drain", |st| st["pending_bytes"] == 0);
    assert_eq!(
        messages(&docs(&s, "logs-app-prod").await),
        expected(0..3001),
        "nothing lost, nothing twice"
    );

    // A new integration changes the output's permissions: a new key, the
    // old one invalidated once acked; events keep flowing on the new one.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (st, pp) = s
        .post(
            "/api/fleet/package_policies",
            json!({"name": "other", "policy_id": "edge", "package": {"name": "log"},
                "vars": {"paths": [format!("{}/*.log", other.display())], "data_stream.dataset": "other"}}),
        )
        .await;
    assert_eq!(st, 200, "{pp}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, a) = s.get(&format!("/api/fleet/agents/{agent_id}")).await;
        if a["item"]["reported_policy_revision"] == a["item"]["policy_revision"]
            && a["item"]["policy_revision"].as_i64() > Some(2)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the new revision never ran: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    append(&app, 3001..3011);
    append(&other.join("x.log"), 0..5);
    wait_docs(&s, "logs-other-prod", 5).await;
    wait_docs(&s, "logs-app-prod", 3011).await;
    wait_status(&dir, "the backlog to drain", |st| st["pending_bytes"] == 0);
    assert_eq!(
        messages(&docs(&s, "logs-app-prod").await),
        expected(0..3011)
    );
    assert_eq!(
        bulk_as(&s, &old_key).await,
        401,
        "the old key stopped working once the new revision ran"
    );
}

/// `_bulk` with this key: the status.
async fn bulk_as(s: &Server, key: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/_bulk", s.url))
        .header("authorization", format!("ApiKey {key}"))
        .header("content-type", "application/x-ndjson")
        .body("{\"create\":{\"_index\":\"logs-probe-prod\"}}\n{\"message\":\"probe\"}\n")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
