//! The permission verifier end to end: the real server with its embedded
//! verifier agent, the moto AWS emulator (installed by the test kit from
//! PyPI), connectors and integrations made through the CLI, and the
//! outcome read back with `flotilla connector show`.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use flotilla_testkit::moto::{self, RoleSpec};

use crate::support::{command, Server};

const EC2: &[&str] = &[
    "ec2:DescribeInstances",
    "ec2:DescribeRegions",
    "cloudwatch:GetMetricData",
];

/// A server whose embedded verifier agent assumes roles in moto as
/// `platform`.
fn server(aws: &moto::Moto, platform: &moto::AccessKey, extra: &[(&str, &str)]) -> Server {
    let mut b = Server::builder()
        .env("FLOTILLA_VERIFIER__EMBEDDED_AGENT", "true")
        .env("FLOTILLA_VERIFIER__AWS__STS_ENDPOINT", aws.endpoint())
        .env("FLOTILLA_VERIFIER__AWS__IAM_ENDPOINT", aws.endpoint())
        .env("FLOTILLA_VERIFIER__STATUS_INTERVAL", "1s")
        .env("FLOTILLA_VERIFIER__VERIFY_INTERVAL", "2s")
        .env("FLOTILLA_VERIFIER__GRACE", "1s")
        .env("FLOTILLA_VERIFIER__TTL", "60s")
        .env("FLOTILLA_TASK_MANAGER__POLL_INTERVAL", "100ms")
        .env("AWS_ACCESS_KEY_ID", &platform.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &platform.secret_access_key);
    for (k, v) in extra {
        b = b.env(k, v);
    }
    b.start().expect("SQLite needs nothing")
}

/// A role `trusted` may assume with `external_id`, holding `actions`.
fn role(
    aws: &moto::Moto,
    trusted: &moto::AccessKey,
    name: &str,
    external_id: &str,
    actions: &[&str],
) -> String {
    aws.create_role(&RoleSpec {
        name,
        trusted: &trusted.user_arn,
        external_id: Some(external_id),
        actions,
        ..RoleSpec::default()
    })
}

/// `flotilla connector create` with the external ID on stdin.
fn create_connector(s: &Server, id: &str, role_arn: &str, external_id: &str) {
    let mut child = command()
        .args([
            "connector",
            "create",
            "--id",
            id,
            "--name",
            &format!("account {id}"),
            "--provider",
            "aws",
            "--var",
        ])
        .arg(format!("role_arn={role_arn}"))
        .args(["--secret", "external_id", "--json"])
        .env("FLOTILLA_URL", &s.url)
        .env("FLOTILLA_API_KEY", &s.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{external_id}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        !shown.contains(external_id),
        "the secret came back: {shown}"
    );
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An `aws` EC2 integration on policy `cloud` using connector `id`.
fn use_connector(s: &Server, id: &str) {
    ok(s.cli(&[
        "integration", "add", "--policy", "cloud", "--package", "aws", "--name",
        &format!("ec2-{id}"), "--cloud-connector", id, "--inputs",
        r#"{"ec2-aws/metrics": {"enabled": true, "streams": {"aws.ec2_metrics": {"vars": {"instance_id": "i-1"}}}}}"#,
    ]));
}

fn setup_policy(s: &Server) {
    let aws = flotilla_testkit::kibana::shared_dir().join("packages/aws-999.999.999");
    ok(s.cli(&["package", "install", aws.to_str().unwrap()]));
    ok(s.cli(&["policy", "create", "--id", "cloud", "--name", "cloud"]));
}

async fn connector(s: &Server, id: &str) -> Value {
    let (code, body) = s.get(&format!("/api/fleet/cloud_connectors/{id}")).await;
    assert_eq!(code, 200, "{body}");
    body["item"].clone()
}

async fn verifier_policies(s: &Server) -> Vec<String> {
    let (_, body) = s.get("/api/fleet/agent_policies?perPage=100").await;
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_str())
        .filter(|id| id.starts_with("verifier-"))
        .map(str::to_owned)
        .collect()
}

/// Wait until every connector has an outcome, checking on the way that
/// no two verifier policies ever exist at once.
async fn outcomes(s: &Server, ids: &[&str], within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let live = verifier_policies(s).await;
        assert!(live.len() <= 1, "two verifications at once: {live:?}");
        let mut all = Vec::new();
        for id in ids {
            all.push(connector(s, id).await);
        }
        if all.iter().all(|c| {
            matches!(
                c["verification_status"].as_str(),
                Some("success" | "failed")
            )
        }) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "no outcome in time: {all:#?}\nserver: {}",
            "see its stderr"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn permission<'a>(c: &'a Value, action: &str) -> &'a Value {
    c["verification_permissions"][0]["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["action"] == action)
        .unwrap_or_else(|| panic!("no {action} in {c:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_are_verified_against_aws_one_after_another() {
    let Some(aws) = moto::shared() else { return };
    let platform = aws.create_user("e2e-verifier-platform", &[]);
    let good = role(aws, &platform, "E2eGood", "ext-good-1", EC2);
    let missing = role(aws, &platform, "E2eMissing", "ext-missing-1", &EC2[..2]);
    let strict = role(aws, &platform, "E2eStrict", "ext-right-1", EC2);
    let s = server(aws, &platform, &[]);
    setup_policy(&s);
    create_connector(&s, "good", &good, "ext-good-1");
    create_connector(&s, "missing", &missing, "ext-missing-1");
    create_connector(&s, "wrong", &strict, "ext-wrong-1");
    for id in ["good", "missing", "wrong"] {
        use_connector(&s, id);
    }
    // In use: not deletable.
    let out = s.cli(&["connector", "delete", "good"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("used by 1 integration"));

    let all = outcomes(&s, &["good", "missing", "wrong"], Duration::from_secs(120)).await;
    let (good, missing, wrong) = (&all[0], &all[1], &all[2]);

    assert_eq!(good["verification_status"], "success", "{good:#}");
    for action in EC2 {
        assert_eq!(permission(good, action)["status"], "verified", "{good:#}");
    }
    assert_eq!(missing["verification_status"], "failed", "{missing:#}");
    let absent = permission(missing, "cloudwatch:GetMetricData");
    assert_eq!(absent["status"], "denied");
    assert_eq!(absent["error_code"], "implicitDeny");
    assert_eq!(
        permission(missing, "ec2:DescribeInstances")["status"],
        "verified"
    );
    assert!(missing["verification_message"]
        .as_str()
        .unwrap()
        .contains("cloudwatch:GetMetricData"));
    assert_eq!(wrong["verification_status"], "failed", "{wrong:#}");
    let p = permission(wrong, "ec2:DescribeInstances");
    assert_eq!(p["status"], "error");
    assert_eq!(p["error_code"], "AccessDenied");
    assert!(
        wrong["verification_message"]
            .as_str()
            .unwrap()
            .contains("AssumeRole"),
        "{wrong:#}"
    );

    // `connector show` names the missing permission.
    let shown = ok(s.cli(&["connector", "show", "missing"]));
    let line = shown
        .lines()
        .find(|l| l.contains("cloudwatch:GetMetricData"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        line.contains("denied") && line.contains("implicitDeny"),
        "{line}"
    );
    assert!(shown.contains("failed"), "{shown}");

    // One after the other: each started after the previous one's results.
    let mut runs: Vec<(String, String)> = all
        .iter()
        .map(|c| {
            (
                c["verification_started_at"].as_str().unwrap().to_owned(),
                c["verification_permissions"][0]["last_verified_at"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    runs.sort();
    for w in runs.windows(2) {
        let (prev_verified, next_started) = (
            chrono::DateTime::parse_from_rfc3339(&w[0].1).unwrap(),
            chrono::DateTime::parse_from_rfc3339(&w[1].0).unwrap(),
        );
        assert!(
            next_started >= prev_verified,
            "overlapping verifications: {runs:?}"
        );
    }
    // Verify again on request: a new verification, the same outcome.
    let first = good["verification_id"].as_str().unwrap().to_owned();
    let queued = ok(s.cli(&["connector", "verify", "good", "--json"]));
    assert!(queued.contains("\"queued\": true"), "{queued}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = connector(&s, "good").await;
        if c["verification_id"] != first.as_str() && c["verification_status"] == "success" {
            break;
        }
        assert!(Instant::now() < deadline, "not verified again: {c:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing left deployed; the agent is back home.
    assert!(verifier_policies(&s).await.is_empty());
    let (_, agents) = s.get("/api/fleet/agents").await;
    assert_eq!(
        agents["items"][0]["policy_id"], "flotilla-verifier",
        "{agents:#}"
    );
    // No secret reached the documents or the connector.
    let (_, docs) = s
        .get("/api/fleet/data_streams/logs-flotilla_verifier.permission-default/_search?size=100")
        .await;
    let text = docs.to_string();
    for secret in [
        "ext-good-1",
        "ext-missing-1",
        "ext-wrong-1",
        &platform.secret_access_key,
    ] {
        assert!(!text.contains(secret));
    }
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deployment_leaves_no_orphan_policy() {
    let Some(aws) = moto::shared() else { return };
    let platform = aws.create_user("e2e-verifier-fault", &[]);
    let role = role(aws, &platform, "E2eFault", "ext-fault-1", EC2);
    let s = server(
        aws,
        &platform,
        &[("FLOTILLA_VERIFIER__TEST_FAULT", "after_policy_created")],
    );
    setup_policy(&s);
    create_connector(&s, "c1", &role, "ext-fault-1");
    use_connector(&s, "c1");
    let c = &outcomes(&s, &["c1"], Duration::from_secs(60)).await[0];
    assert_eq!(c["verification_status"], "failed");
    assert!(
        c["verification_message"]
            .as_str()
            .unwrap()
            .contains("injected fault"),
        "{c:#}"
    );
    let (_, policies) = s.get("/api/fleet/agent_policies?perPage=100").await;
    let mut ids: Vec<&str> = policies["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["cloud", "flotilla-verifier"], "an orphan was left");
    let (_, integrations) = s.get("/api/fleet/package_policies?perPage=100").await;
    assert_eq!(integrations["total"], 1, "{integrations:#}");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_verifier_policy_is_removed() {
    let Some(aws) = moto::shared() else { return };
    let platform = aws.create_user("e2e-verifier-expiry", &[]);
    let role = role(aws, &platform, "E2eExpiry", "ext-expiry-1", EC2);
    let s = server(aws, &platform, &[("FLOTILLA_VERIFIER__TTL", "3s")]);
    setup_policy(&s);
    // The verifier agent goes silent (stopped, still counted online).
    let agent = wait_for_verifier_agent(&s).await;
    let child = child_pid(s.pid());
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &child.to_string()])
        .status()
        .unwrap()
        .success());
    create_connector(&s, "c1", &role, "ext-expiry-1");
    use_connector(&s, "c1");
    // Deployed, then gone after its TTL with nothing reported.
    let deadline = Instant::now() + Duration::from_secs(30);
    while verifier_policies(&s).await.is_empty() {
        assert!(Instant::now() < deadline, "never deployed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = &outcomes(&s, &["c1"], Duration::from_secs(60)).await[0];
    assert_eq!(c["verification_status"], "failed");
    assert!(
        c["verification_message"]
            .as_str()
            .unwrap()
            .contains("reported nothing"),
        "{c:#}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !verifier_policies(&s).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the expired verifier policy stayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, a) = s.get(&format!("/api/fleet/agents/{agent}")).await;
    assert_eq!(a["item"]["policy_id"], "flotilla-verifier");
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &child.to_string()])
        .status();
    s.stop();
}

async fn wait_for_verifier_agent(s: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, agents) = s.get("/api/fleet/agents").await;
        if let Some(a) = agents["items"].as_array().and_then(|a| a.first()) {
            if a["status"] == "online" {
                return a["id"].as_str().unwrap().to_owned();
            }
        }
        assert!(Instant::now() < deadline, "no verifier agent: {agents:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server's one child process (the embedded verifier agent).
fn child_pid(parent: u32) -> u32 {
    let pids = children(parent);
    assert_eq!(pids.len(), 1, "children of {parent}: {pids:?}");
    pids[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_verifier_agent_comes_back_when_it_dies() {
    let s = Server::builder()
        .env("FLOTILLA_VERIFIER__EMBEDDED_AGENT", "true")
        .start()
        .unwrap();
    let agent = wait_for_verifier_agent(&s).await;
    let first = child_pid(s.pid());
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap()
        .success());
    // A new process, the same agent (its state directory kept it), online.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (_, before) = s.get(&format!("/api/fleet/agents/{agent}")).await;
    loop {
        let (_, a) = s.get(&format!("/api/fleet/agents/{agent}")).await;
        let restarted = children(s.pid()).iter().any(|p| *p != first);
        if restarted && a["item"]["last_checkin"] != before["item"]["last_checkin"] {
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {a:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, agents) = s.get("/api/fleet/agents").await;
    assert_eq!(agents["total"], 1, "{agents:#}");
    // Its one-time enrollment key was revoked once used.
    let (_, keys) = s.get("/api/fleet/enrollment_api_keys").await;
    assert!(
        keys["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["active"] == false),
        "{keys:#}"
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_requests_are_checked() {
    let s = Server::sqlite();
    let role = "arn:aws:iam::123456789012:role/r";
    for (body, status, says) in [
        (
            serde_json::json!({"name": "x", "cloudProvider": "ibm", "vars": {}}),
            400,
            "cloudProvider",
        ),
        (
            serde_json::json!({"name": "x", "cloudProvider": "aws", "vars": {}, "extra": 1}),
            400,
            "extra",
        ),
        (
            serde_json::json!({"name": "x", "cloudProvider": "aws", "vars": {"role_arn": role}}),
            400,
            "vars.external_id",
        ),
        (
            serde_json::json!({"name": "x", "cloudProvider": "aws", "vars": {"role_arn": "arn:aws:iam::1:user/u", "external_id": "abc"}}),
            400,
            "vars.role_arn",
        ),
        (
            serde_json::json!({"name": "x", "cloudProvider": "aws", "vars": {"role_arn": role, "external_id": "x"}}),
            400,
            "vars.external_id",
        ),
        (
            serde_json::json!({"name": "x", "cloudProvider": "aws", "vars": {"password": "p"}}),
            400,
            "vars.password",
        ),
        (
            serde_json::json!({"name": "x", "cloudProvider": "azure", "vars": {"tenant_id": "t"}}),
            400,
            "vars.client_id",
        ),
        (
            serde_json::json!({"name": "x\u{0}", "cloudProvider": "aws", "vars": {}}),
            400,
            "",
        ),
    ] {
        let r = s.post("/api/fleet/cloud_connectors", body.clone()).await;
        crate::support::assert_error(&r, status, says);
    }
    let (code, created) = s
        .post(
            "/api/fleet/cloud_connectors",
            serde_json::json!({"id": "c1", "name": "prod", "cloudProvider": "aws",
                "vars": {"role_arn": {"type": "text", "value": role}, "external_id": {"type": "password", "value": "secret-ext-1"}}}),
        )
        .await;
    assert_eq!(code, 200, "{created}");
    assert!(!created.to_string().contains("secret-ext-1"));
    let reference = created["item"]["vars"]["external_id"].clone();
    assert_eq!(reference["value"]["isSecretRef"], true);
    crate::support::assert_error(
        &s.post(
            "/api/fleet/cloud_connectors",
            serde_json::json!({"name": "prod", "cloudProvider": "aws",
            "vars": {"access_key_id": "AKIA", "secret_access_key": "s"}}),
        )
        .await,
        409,
        "already exists",
    );
    crate::support::assert_error(
        &s.put(
            "/api/fleet/cloud_connectors/c1",
            serde_json::json!({"cloudProvider": "gcp"}),
        )
        .await,
        400,
        "cloudProvider",
    );
    // An update through the CLI keeps the secret it does not name.
    let out = s.cli(&[
        "connector",
        "update",
        "c1",
        "--var",
        "role_arn=arn:aws:iam::123456789012:role/other",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, got) = s.get("/api/fleet/cloud_connectors/c1").await;
    assert_eq!(got["item"]["vars"]["external_id"], reference);
    assert_eq!(
        got["item"]["vars"]["role_arn"]["value"],
        "arn:aws:iam::123456789012:role/other"
    );
    // A secret on the command line is refused; nothing to verify yet.
    for args in [
        [
            "connector",
            "update",
            "c1",
            "--secret",
            "external_id=leaked",
        ],
        ["connector", "update", "c1", "--var", "external_id=leaked"],
    ] {
        let out = s.cli(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("not on the command line"), "{err}");
    }
    crate::support::assert_error(
        &s.post(
            "/api/fleet/cloud_connectors/c1/_verify",
            serde_json::json!({}),
        )
        .await,
        409,
        "not used",
    );
    crate::support::assert_error(
        &s.get("/api/fleet/cloud_connectors/nope").await,
        404,
        "cloud connector 'nope'",
    );
    // An integration naming a missing connector is the caller's mistake.
    let (_, p) = s
        .post(
            "/api/fleet/agent_policies",
            serde_json::json!({"name": "p"}),
        )
        .await;
    crate::support::assert_error(
        &s.post(
            "/api/fleet/package_policies",
            serde_json::json!({"name": "n", "policy_id": p["item"]["id"],
            "package": {"name": "nginx"}, "cloud_connector_id": "nope"}),
        )
        .await,
        400,
        "cloud_connector_id",
    );
    let (code, _) = s.delete("/api/fleet/cloud_connectors/c1").await;
    assert_eq!(code, 200);
    s.stop();
}

/// The server's child processes.
fn children(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so from the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}
