//! Fleet operations (issue 20) against the real binary: enrollment tokens'
//! expiry and use limits and which token enrolled which agent; agent
//! search (`kuery`); bulk actions and their progress; status history.

use reqwest::Method;
use serde_json::{json, Value};

use crate::fleet::assert_fleet_error;
use crate::support::{assert_error, Engine, Server};

fn ok_json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

const ENROLL: &str = "/api/fleet/agents/enroll";

fn enroll_body() -> Value {
    json!({"type": "PERMANENT", "metadata": {"local": {"host": {"hostname": "h"}}, "user_provided": {}}})
}

async fn policy(s: &Server, id: &str) {
    let (st, body) = s
        .post(
            "/api/fleet/agent_policies",
            json!({"id": id, "name": id, "namespace": "default"}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_tokens_with_max_uses_are_spent_and_record_their_agents() {
    let s = Server::sqlite();
    policy(&s, "web").await;

    // Bad limits are the caller's mistake, named.
    assert_error(
        &s.post(
            "/api/fleet/enrollment_api_keys",
            json!({"policy_id": "web", "max_uses": 0}),
        )
        .await,
        400,
        "max_uses",
    );
    assert_error(
        &s.post(
            "/api/fleet/enrollment_api_keys",
            json!({"policy_id": "web", "expiration": "2001-01-01T00:00:00Z"}),
        )
        .await,
        400,
        "expiration",
    );
    assert_error(
        &s.post(
            "/api/fleet/enrollment_api_keys",
            json!({"policy_id": "web", "expiration": "tomorrow"}),
        )
        .await,
        400,
        "",
    );

    let (st, created) = s
        .post(
            "/api/fleet/enrollment_api_keys",
            json!({"policy_id": "web", "max_uses": 2, "expiration": "2099-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(st, 200, "{created}");
    let item = &created["item"];
    assert_eq!(item["max_uses"], 2);
    assert_eq!(item["uses"], 0);
    assert_eq!(item["expiration"], "2099-01-01T00:00:00Z");
    let key_id = item["id"].as_str().unwrap().to_owned();
    let token = item["api_key"].as_str().unwrap().to_owned();

    let first = s.enroll(&token).await;
    s.enroll(&token).await;
    let third = s
        .fleet(Method::POST, ENROLL, Some(&token), Some(enroll_body()))
        .await;
    assert_fleet_error(&third, 401, "ErrEnrollmentKeySpent");
    assert!(
        third.body["message"].as_str().unwrap().contains("spent"),
        "{}",
        third.body
    );

    let (_, key) = s
        .get(&format!("/api/fleet/enrollment_api_keys/{key_id}"))
        .await;
    assert_eq!(key["item"]["uses"], 2);
    let (_, agent) = s.get(&format!("/api/fleet/agents/{}", first.0)).await;
    assert_eq!(agent["item"]["enrollment_api_key_id"], key_id.as_str());
    let (_, by_key) = s
        .get(&format!("/api/fleet/agents?enrollment_api_key_id={key_id}"))
        .await;
    assert_eq!(by_key["total"], 2, "{by_key}");
    let (_, none) = s
        .get("/api/fleet/agents?enrollment_api_key_id=nobody")
        .await;
    assert_eq!(none["total"], 0);

    // The CLI: create with limits, list them, list the token's agents.
    let made = ok_json(&s.cli(&[
        "token",
        "create",
        "--policy",
        "web",
        "--max-uses",
        "1",
        "--expires-in",
        "24h",
        "--json",
    ]));
    assert_eq!(made["max_uses"], 1);
    let exp: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(made["expiration"].clone()).unwrap();
    let left = exp - chrono::Utc::now();
    assert!(
        left > chrono::Duration::hours(23) && left <= chrono::Duration::hours(24),
        "{left}"
    );
    let listed = ok_json(&s.cli(&["agents", "list", "--token", &key_id, "--json"]));
    assert_eq!(listed["total"], 2);
    let table = String::from_utf8_lossy(&s.cli(&["token", "list"]).stdout).into_owned();
    assert!(table.contains("MAX USES"), "{table}");
    let err =
        one_line_error(&s.cli(&["token", "create", "--policy", "web", "--expires-in", "soon"]));
    assert!(err.contains("expires-in"), "{err}");
    let err = one_line_error(&s.cli(&["token", "create", "--policy", "web", "--max-uses", "0"]));
    assert!(err.contains("max_uses"), "{err}");
}

/// Two instances sharing PostgreSQL, enrolments racing for a token's last
/// uses through both: exactly `max_uses` succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_uses_is_exact_across_two_instances_on_postgres() {
    let Some(cluster) = flotilla_testkit::postgres() else {
        return;
    };
    let url = cluster.create_database();
    let a = Server::builder()
        .engine(Engine::Postgres)
        .database_url(&url)
        .start()
        .unwrap();
    let b = Server::builder()
        .engine(Engine::Postgres)
        .database_url(&url)
        .start()
        .unwrap();
    policy(&a, "web").await;
    let (_, created) = a
        .post(
            "/api/fleet/enrollment_api_keys",
            json!({"policy_id": "web", "max_uses": 5}),
        )
        .await;
    let token = created["item"]["api_key"].as_str().unwrap().to_owned();
    let key_id = created["item"]["id"].as_str().unwrap().to_owned();
    let mut calls = Vec::new();
    for i in 0..24 {
        let s = if i % 2 == 0 { &a } else { &b };
        calls.push(s.fleet(Method::POST, ENROLL, Some(&token), Some(enroll_body())));
    }
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.status == 200).count();
    for r in results.iter().filter(|r| r.status != 200) {
        assert_fleet_error(r, 401, "ErrEnrollmentKeySpent");
    }
    assert_eq!(ok, 5);
    let (_, key) = b
        .get(&format!("/api/fleet/enrollment_api_keys/{key_id}"))
        .await;
    assert_eq!(key["item"]["uses"], 5);
    let (_, agents) = b
        .get(&format!("/api/fleet/agents?enrollment_api_key_id={key_id}"))
        .await;
    assert_eq!(agents["total"], 5);
}

async fn enroll_as(s: &Server, token: &str, hostname: &str, tags: &[&str]) -> (String, String) {
    let r = s
        .fleet(
            Method::POST,
            ENROLL,
            Some(token),
            Some(json!({"type": "PERMANENT", "metadata": {"local": {"host": {"hostname": hostname}}, "user_provided": {}, "tags": tags}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    (
        r.body["item"]["id"].as_str().unwrap().to_owned(),
        r.body["item"]["access_api_key"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

async fn token_for(s: &Server, policy_id: &str) -> String {
    let (_, key) = s
        .post(
            "/api/fleet/enrollment_api_keys",
            json!({"policy_id": policy_id}),
        )
        .await;
    key["item"]["api_key"].as_str().unwrap().to_owned()
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|a| {
            a["local_metadata"]["host"]["hostname"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    ids
}

fn kuery_path(q: &str) -> String {
    let mut u = reqwest::Url::parse("http://x/api/fleet/agents").unwrap();
    u.query_pairs_mut().append_pair("kuery", q);
    format!("{}?{}", u.path(), u.query().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_searched_with_kuery_over_http_and_the_cli() {
    let s = crate::fleet::quick_polls(Server::builder())
        .start()
        .unwrap();
    policy(&s, "web").await;
    policy(&s, "db").await;
    let web = token_for(&s, "web").await;
    let db = token_for(&s, "db").await;
    let w1 = enroll_as(&s, &web, "web-01", &["prod"]).await;
    enroll_as(&s, &web, "web-02", &["dev"]).await;
    enroll_as(&s, &db, "db-01", &["prod"]).await;
    // One checks in: online; the others are still enrolling.
    let r = s.checkin(&w1, json!({"status": "online"})).await;
    assert_eq!(r.status, 200);

    let (st, got) = s
        .get(&kuery_path("status:online and policy_id:web and tags:prod"))
        .await;
    assert_eq!(st, 200, "{got}");
    assert_eq!(ids(&got), ["web-01"]);
    let (_, got) = s
        .get(&kuery_path("fleet-agents.tags:prod and not policy_id:web"))
        .await;
    assert_eq!(ids(&got), ["db-01"]);
    let (_, got) = s
        .get(&kuery_path(
            "hostname:web-* and (status:enrolling or status:online)",
        ))
        .await;
    assert_eq!(ids(&got), ["web-01", "web-02"]);
    let (_, got) = s.get(&kuery_path("last_checkin >= now-5m")).await;
    assert_eq!(ids(&got), ["web-01"]);
    assert_eq!(got["total"], 1);

    // Errors: 400 in the contract's shape, naming the position and field.
    assert_error(
        &s.get(&kuery_path("status:online and colour:red")).await,
        400,
        "at position 18: unknown field 'colour'",
    );
    assert_error(
        &s.get(&kuery_path("(tags:prod")).await,
        400,
        "unclosed parenthesis",
    );
    assert_error(
        &s.get(&kuery_path("status:sleepy")).await,
        400,
        "unknown status",
    );
    assert_error(
        &s.get(&kuery_path(&"(".repeat(100))).await,
        400,
        "nested deeper",
    );
    assert_error(
        &s.get(&kuery_path(&format!("tags:{}", "x".repeat(5000))))
            .await,
        400,
        "longer than",
    );

    // Sorted, as Kibana asks (its field names), and refused when unknown.
    let in_order = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                a["local_metadata"]["host"]["hostname"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let (st, got) = s
        .get("/api/fleet/agents?sortField=local_metadata.host.hostname&sortOrder=desc")
        .await;
    assert_eq!(st, 200, "{got}");
    assert_eq!(in_order(&got), ["web-02", "web-01", "db-01"]);
    let (_, got) = s
        .get("/api/fleet/agents?sortField=status&sortOrder=desc&perPage=1")
        .await;
    assert_eq!(in_order(&got), ["web-01"], "online after enrolling");
    assert_eq!(got["total"], 3);
    assert_error(
        &s.get("/api/fleet/agents?sortField=access_api_key").await,
        400,
        "not a field agents can be sorted by",
    );
    assert_error(
        &s.get("/api/fleet/agents?sortField=status&sortOrder=sideways")
            .await,
        400,
        "is not asc or desc",
    );

    // The CLI.
    let listed = ok_json(&s.cli(&["agents", "list", "--kuery", "tags:prod", "--json"]));
    assert_eq!(ids(&listed), ["db-01", "web-01"]);
    let sorted = ok_json(&s.cli(&[
        "agents", "list", "--sort", "hostname", "--order", "asc", "--json",
    ]));
    assert_eq!(in_order(&sorted), ["db-01", "web-01", "web-02"]);
    let err = one_line_error(&s.cli(&["agents", "list", "--kuery", "tags:prod or"]));
    assert!(err.contains("kuery"), "{err}");
}

async fn ack_with(s: &Server, agent: &(String, String), action_id: &str, error: Option<&str>) {
    let mut ev = json!({"type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED", "agent_id": agent.0,
        "action_id": action_id, "message": "done", "timestamp": "2026-01-01T00:00:00Z"});
    if let Some(e) = error {
        ev["error"] = json!(e);
    }
    let r = s
        .fleet(
            Method::POST,
            &format!("/api/fleet/agents/{}/acks", agent.0),
            Some(&agent.1),
            Some(json!({"events": [ev]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A check-in that hands out the action: its ids.
async fn checkin_for(s: &Server, agent: &(String, String), action_id: &str) {
    let r = s.checkin(agent, json!({"status": "online"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ids: Vec<&str> = r.body["actions"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["id"].as_str()).collect())
        .unwrap_or_default();
    assert!(ids.contains(&action_id), "{ids:?} {}", r.body);
}

fn progress(s: &Server, id: &str) -> Value {
    ok_json(&s.cli(&["actions", "show", id, "--json"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_actions_by_kuery_are_followed_until_the_agents_ack() {
    let s = crate::fleet::quick_polls(Server::builder())
        .start()
        .unwrap();
    policy(&s, "web").await;
    policy(&s, "db").await;
    let web = token_for(&s, "web").await;
    let w1 = enroll_as(&s, &web, "web-01", &["prod"]).await;
    let w2 = enroll_as(&s, &web, "web-02", &["prod"]).await;
    let w3 = enroll_as(&s, &web, "web-03", &["dev"]).await;

    // Bad input: the contract's errors.
    for (route, body, status, msg) in [
        (
            "bulk_settings",
            json!({"agents": [], "log_level": "debug"}),
            400,
            "agents",
        ),
        (
            "bulk_settings",
            json!({"agents": "tags:(", "log_level": "debug"}),
            400,
            "kuery",
        ),
        (
            "bulk_settings",
            json!({"agents": "tags:prod", "log_level": "loud"}),
            400,
            "log_level",
        ),
        (
            "bulk_reassign",
            json!({"agents": "tags:prod", "policy_id": "nope"}),
            400,
            "policy_id",
        ),
        (
            "bulk_update_agent_tags",
            json!({"agents": [w1.0.clone()]}),
            400,
            "tagsToAdd",
        ),
        (
            "bulk_unenroll",
            json!({"agents": vec!["x"; 10_001]}),
            400,
            "at most",
        ),
    ] {
        assert_error(
            &s.post(&format!("/api/fleet/agents/{route}"), body).await,
            status,
            msg,
        );
    }
    assert_error(
        &s.get("/api/fleet/agents/action_status/nope").await,
        404,
        "",
    );

    // Settings for the prod agents, by kuery, from the CLI.
    let made = ok_json(&s.cli(&[
        "agents",
        "bulk-settings",
        "--kuery",
        "tags:prod",
        "--log-level",
        "debug",
        "--json",
    ]));
    let id = made["actionId"].as_str().unwrap().to_owned();
    let p = progress(&s, &id);
    assert_eq!(p["action"]["nbAgentsActionCreated"], 2, "{p}");
    assert_eq!(p["action"]["nbAgentsPending"], 2, "{p}");
    assert_eq!(p["action"]["status"], "IN_PROGRESS");

    // The agents' check-ins hand it out; their acks settle it.
    checkin_for(&s, &w1, &id).await;
    let p = progress(&s, &id);
    assert_eq!(p["action"]["nbAgentsDelivered"], 1, "{p}");
    ack_with(&s, &w1, &id, None).await;
    checkin_for(&s, &w2, &id).await;
    ack_with(&s, &w2, &id, Some("log level not supported")).await;
    let p = progress(&s, &id);
    assert_eq!(p["action"]["status"], "FAILED", "{p}");
    assert_eq!(p["action"]["nbAgentsAck"], 1);
    assert_eq!(p["action"]["nbAgentsFailed"], 1);
    let agents = p["agents"]["items"].as_array().unwrap();
    let failed: Vec<&Value> = agents.iter().filter(|a| a["outcome"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{p}");
    assert_eq!(failed[0]["agent_id"], w2.0.as_str());
    assert_eq!(failed[0]["error"], "log level not supported");
    // The third agent was never selected.
    assert!(agents.iter().all(|a| a["agent_id"] != w3.0.as_str()));

    // Tags by kuery: applied by the server, complete at once; the table
    // and the list.
    let (st, made) = s
        .post(
            "/api/fleet/agents/bulk_update_agent_tags",
            json!({"agents": "tags:prod", "tagsToAdd": ["blue"], "tagsToRemove": ["prod"]}),
        )
        .await;
    assert_eq!(st, 200, "{made}");
    let tags_id = made["actionId"].as_str().unwrap().to_owned();
    let p = progress(&s, &tags_id);
    assert_eq!(p["action"]["status"], "COMPLETE", "{p}");
    let (_, blue) = s.get(&kuery_path("tags:blue")).await;
    assert_eq!(ids(&blue), ["web-01", "web-02"]);
    let listed = ok_json(&s.cli(&["actions", "list", "--json"]));
    assert!(listed["total"].as_u64().unwrap() >= 2, "{listed}");
    let table = String::from_utf8_lossy(&s.cli(&["actions", "list"]).stdout).into_owned();
    assert!(
        table.contains("DELIVERED") && table.contains(&tags_id),
        "{table}"
    );

    // Reassign by ids, waiting on the agent's ack with --wait.
    let made = ok_json(&s.cli(&[
        "agents",
        "bulk-reassign",
        "--ids",
        &w3.0,
        "--policy",
        "db",
        "--json",
    ]));
    let re_id = made["actionId"].as_str().unwrap().to_owned();
    let (_, a3) = s.get(&format!("/api/fleet/agents/{}", w3.0)).await;
    assert_eq!(a3["item"]["policy_id"], "db");
    checkin_for(&s, &w3, &re_id).await;
    ack_with(&s, &w3, &re_id, None).await;
    let out = s.cli(&["actions", "show", &re_id, "--wait"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("COMPLETE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The CLI's errors: one line, non-zero.
    let err = one_line_error(&s.cli(&[
        "agents",
        "bulk-reassign",
        "--kuery",
        "tags:(",
        "--policy",
        "db",
    ]));
    assert!(err.contains("kuery"), "{err}");
    let err = one_line_error(&s.cli(&["actions", "show", "nope"]));
    assert!(err.contains("not found"), "{err}");
}

/// The status history: the sampler task records agents by status every
/// interval; the API returns the samples, and the OpenAPI document names
/// the new routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_status_history_is_sampled_by_a_task() {
    let s = Server::builder()
        .env("FLOTILLA_TASK_MANAGER__STATUS_SAMPLE_INTERVAL", "1s")
        .start()
        .unwrap();
    policy(&s, "web").await;
    let web = token_for(&s, "web").await;
    enroll_as(&s, &web, "h-01", &[]).await;
    // Wait (bounded) for a sample that counts the agent.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let sample = loop {
        let (st, got) = s.get("/api/flotilla/agent_status_history").await;
        assert_eq!(st, 200, "{got}");
        if let Some(x) = got["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["updating"] == 1)
        {
            break x.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no sample: {got}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    for k in ["online", "offline", "unhealthy", "inactive"] {
        assert!(sample[k].is_u64(), "{sample}");
    }
    assert_error(
        &s.get(
            "/api/flotilla/agent_status_history?from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z",
        )
        .await,
        400,
        "from",
    );
    assert_error(
        &s.get("/api/flotilla/agent_status_history?from=yesterday")
            .await,
        400,
        "",
    );
    let (_, doc) = s.get("/api/fleet/openapi.json").await;
    for path in [
        "/api/fleet/agents/bulk_reassign",
        "/api/fleet/agents/bulk_unenroll",
        "/api/fleet/agents/bulk_update_agent_tags",
        "/api/fleet/agents/bulk_settings",
        "/api/fleet/agents/action_status",
        "/api/fleet/agents/action_status/{id}/agents",
        "/api/flotilla/agent_status_history",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
}
