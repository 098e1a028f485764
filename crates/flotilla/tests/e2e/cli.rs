//! The operator CLI against a real server: the README's walk-through, JSON
//! output, and one-line errors.

use serde_json::Value;

use crate::support::{command, Server};

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_str(&ok(out)).expect("--json prints JSON")
}

fn one_line_error(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn readme_walkthrough() {
    let s = Server::sqlite();
    let table = ok(&s.cli(&[
        "policy",
        "create",
        "--name",
        "web",
        "--id",
        "web",
        "--namespace",
        "prod",
    ]));
    assert!(table.contains("web") && table.contains("prod"), "{table}");

    let added = json(&s.cli(&[
        "integration",
        "add",
        "--policy",
        "web",
        "--package",
        "nginx",
        "--json",
    ]));
    assert_eq!(added["package"]["name"], "nginx");
    let logs = json(&s.cli(&[
        "integration",
        "add",
        "--policy",
        "web",
        "--package",
        "log",
        "--name",
        "app",
        "--var",
        r#"paths=["/var/log/app.log"]"#,
        "--var",
        "data_stream.dataset=app",
        "--json",
    ]));
    // An input package's variables live on its template's stream.
    let stream = &logs["inputs"][0]["streams"][0];
    assert_eq!(stream["vars"]["paths"]["value"][0], "/var/log/app.log");
    assert_eq!(stream["compiled_stream"]["data_stream"]["dataset"], "app");

    let token = json(&s.cli(&["token", "create", "--policy", "web", "--json"]));
    assert!(token["api_key"].as_str().unwrap().len() > 30);
    let listed = json(&s.cli(&["token", "list", "--json"]));
    assert_eq!(listed["total"], 1);

    let policies = json(&s.cli(&["policy", "list", "--json"]));
    assert_eq!(policies["items"][0]["revision"], 3);
    let full = json(&s.cli(&["policy", "show", "web", "--full"]));
    let perms = &full["output_permissions"]["fleet-default-output"];
    let app_id = logs["id"].as_str().unwrap();
    // Input packages write to a dataset of the user's choice: Kibana
    // grants `<type>-*-*` for them.
    assert_eq!(perms[app_id]["indices"][0]["names"][0], "logs-*-*");
    assert_eq!(perms["_elastic_agent_checks"]["cluster"][0], "monitor");

    let ints = ok(&s.cli(&["integration", "list", "--policy", "web"]));
    assert!(ints.contains("nginx") && ints.contains("app"), "{ints}");
    let outputs = ok(&s.cli(&["output", "list"]));
    assert!(outputs.contains("fleet-default-output"), "{outputs}");
    let agents = json(&s.cli(&["agents", "list", "--json"]));
    assert_eq!(agents["total"], 0);
    let packages = ok(&s.cli(&["package", "list"]));
    assert!(
        packages.contains("nginx") && packages.contains("system"),
        "{packages}"
    );

    let key = json(&s.cli(&["apikey", "create", "--name", "automation", "--json"]));
    assert!(key["api_key"].is_string());
}

#[tokio::test]
async fn agents_and_their_actions() {
    let s = Server::sqlite();
    let token = s.policy_with_token("web").await;
    let agent = s.enroll(&token).await;
    s.policy_with_token("db").await;

    let shown = json(&s.cli(&["agents", "show", &agent.0, "--json"]));
    assert_eq!(shown["policy_id"], "web");
    let action = json(&s.cli(&[
        "agents",
        "settings",
        &agent.0,
        "--log-level",
        "debug",
        "--json",
    ]));
    assert_eq!(action["type"], "SETTINGS");
    let err = one_line_error(&s.cli(&["agents", "settings", &agent.0, "--log-level", "loud"]));
    assert!(
        err.contains("--log-level") && err.contains("possible values: trace"),
        "{err}"
    );
    let listed = json(&s.cli(&["agents", "actions", &agent.0, "--json"]));
    assert_eq!(listed["items"][0]["delivered"], false);
    s.ack(&agent, &[action["id"].as_str().unwrap()]).await;
    let listed = json(&s.cli(&["agents", "actions", &agent.0, "--json"]));
    assert_eq!(listed["items"][0]["delivered"], true);
    assert!(listed["items"][0]["acked_at"].is_string());
    let table = ok(&s.cli(&["agents", "actions", &agent.0]));
    assert!(table.contains("SETTINGS"), "{table}");

    let moved = json(&s.cli(&["agents", "reassign", &agent.0, "--policy", "db", "--json"]));
    assert_eq!(moved["policy_id"], "db");
    let tagged = json(&s.cli(&["agents", "tag", &agent.0, "--tags", "a,b", "--json"]));
    assert_eq!(tagged["tags"], serde_json::json!(["a", "b"]));
    let listed = ok(&s.cli(&["agents", "list", "--tag", "a"]));
    assert!(listed.contains(&agent.0), "{listed}");
    let gone = json(&s.cli(&["agents", "unenroll", &agent.0, "--revoke", "--json"]));
    assert_eq!(gone["status"], "unenrolled");
    let all = json(&s.cli(&["agents", "list", "--all", "--json"]));
    assert_eq!(all["total"], 1);
}

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    let s = Server::sqlite();
    let err = one_line_error(&s.cli(&["policy", "show", "nope"]));
    assert!(err.contains("not found") && err.contains("404"), "{err}");
    let err = one_line_error(&s.cli(&["policy", "create", "--name", "x", "--namespace", "Bad-NS"]));
    assert!(err.contains("namespace"), "{err}");
    let err = one_line_error(&s.cli(&[
        "integration",
        "add",
        "--policy",
        "p",
        "--package",
        "nginx",
        "--var",
        "oops",
    ]));
    assert!(err.contains("KEY=VALUE"), "{err}");

    let err = one_line_error(
        &command()
            .args(["policy", "list"])
            .env("FLOTILLA_URL", &s.url)
            .output()
            .unwrap(),
    );
    assert!(err.contains("API key"), "{err}");
    let err = one_line_error(
        &command()
            .args(["policy", "list", "--api-key", "wrong"])
            .env("FLOTILLA_URL", &s.url)
            .output()
            .unwrap(),
    );
    assert!(err.contains("401"), "{err}");
    let port = flotilla_testkit::free_port();
    let err = one_line_error(
        &command()
            .args([
                "policy",
                "list",
                "--api-key",
                "k",
                "--url",
                &format!("http://127.0.0.1:{port}"),
            ])
            .output()
            .unwrap(),
    );
    assert!(err.contains("cannot reach"), "{err}");

    let out = command().args(["policy", "frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}
