//! The agent-facing fleet API against the real binary: enrolment (stored
//! and static tokens), long-poll check-in, acks, output keys and their
//! rotation, actions, and two instances sharing PostgreSQL.
//!
//! Long on purpose: one file per API surface, its cases sharing the helpers
//! at the top (and `hostile.rs` borrows them).

use std::io::Write;
use std::time::Instant;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{assert_error, role_names, Engine, Server};

pub(crate) fn quick_polls(b: crate::support::Builder) -> crate::support::Builder {
    b.env("FLOTILLA_FLEET__POLL_TIMEOUT", "1s")
        .env("FLOTILLA_FLEET__POLL_JITTER", "0s")
}

pub(crate) fn slow_polls(b: crate::support::Builder) -> crate::support::Builder {
    b.env("FLOTILLA_FLEET__POLL_TIMEOUT", "60s")
        .env("FLOTILLA_FLEET__POLL_JITTER", "0s")
}

#[track_caller]
pub(crate) fn assert_fleet_error(r: &crate::support::FleetResponse, status: u16, token: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["statusCode"], status, "{}", r.body);
    assert_eq!(r.body["error"], token, "{}", r.body);
}

pub(crate) fn policy_change(r: &crate::support::FleetResponse) -> &Value {
    r.body["actions"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "POLICY_CHANGE"))
        .unwrap_or_else(|| panic!("no POLICY_CHANGE in {}", r.body))
}

pub(crate) fn output_key(change: &Value) -> String {
    let outputs = change["data"]["policy"]["outputs"].as_object().unwrap();
    outputs.values().next().unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn status_and_protocol_headers() {
    let s = Server::sqlite();
    let r = s.fleet(Method::GET, "/api/status", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"name": "fleet-server", "status": "HEALTHY"}));
    assert_eq!(r.headers["elastic-api-version"], "2023-06-01");
    assert!(r.headers.contains_key("x-request-id"));

    let resp = reqwest::Client::new()
        .get(format!("{}/api/status", s.url))
        .header("elastic-api-version", "2023-6-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["elastic-api-version"], "2023-06-01");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "ErrInvalidAPIVersionFormat");
    let resp = reqwest::Client::new()
        .get(format!("{}/api/status", s.url))
        .header("elastic-api-version", "2030-01-01")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "ErrUnsupportedAPIVersion"
    );
    let resp = reqwest::Client::new()
        .get(format!("{}/api/status", s.url))
        .header("elastic-api-version", "2023-06-01")
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    assert_eq!(resp.headers()["elastic-api-version"], "2023-06-01");
}

#[tokio::test]
async fn enrol_check_in_receive_policy_with_a_least_privilege_key_and_ack() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let agent = s.enroll(&token).await;

    let r = s
        .checkin(&agent, json!({"status": "online", "message": "starting"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["action"], "checkin");
    let change = policy_change(&r);
    assert_eq!(change["id"], "policy:web:2");
    assert_eq!(change["agent_id"], agent.0.as_str());
    let policy = &change["data"]["policy"];
    assert_eq!(policy["revision"], 2);
    let perms = &policy["output_permissions"]["fleet-default-output"];
    let nginx_id = policy["inputs"][0]["package_policy_id"].as_str().unwrap();
    assert_eq!(
        role_names(perms, nginx_id),
        ["logs-nginx.access-prod", "logs-nginx.error-prod"]
    );
    assert_eq!(
        perms["_elastic_agent_checks"]["cluster"],
        json!(["monitor"])
    );
    let key = output_key(change);
    assert!(key.contains(':'), "plain id:key as the reference sends it");

    // The key is exactly the policy's permissions.
    let (st, me) = s
        .es(Method::GET, "/_security/_authenticate", &key, None)
        .await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["api_key"]["id"], key.split(':').next().unwrap());
    let ask = json!({"index": [{"names": ["logs-nginx.access-prod", "logs-secret-prod"], "privileges": ["create_doc", "read"]}]});
    let (_, has) = s
        .es(
            Method::POST,
            "/_security/user/_has_privileges",
            &key,
            Some(ask),
        )
        .await;
    assert_eq!(has["index"]["logs-nginx.access-prod"]["create_doc"], true);
    assert_eq!(has["index"]["logs-nginx.access-prod"]["read"], false);
    assert_eq!(has["index"]["logs-secret-prod"]["create_doc"], false);
    assert_eq!(has["has_all_requested"], false);

    // Until acked, the policy is sent again, with the same key.
    let again = s
        .checkin(&agent, json!({"status": "online", "message": "ok"}))
        .await;
    assert_eq!(output_key(policy_change(&again)), key);
    let acked = s.ack(&agent, &["policy:web:2"]).await;
    assert_eq!(acked.status, 200, "{}", acked.body);
    assert_eq!(
        acked.body,
        json!({"action": "acks", "items": [{"status": 200, "message": "OK"}]})
    );

    // Nothing new: the long poll ends empty at its deadline.
    let quiet = s
        .checkin(&agent, json!({"status": "online", "message": "ok"}))
        .await;
    assert_eq!(quiet.status, 200);
    assert!(quiet.body.get("actions").is_none(), "{}", quiet.body);

    // The management API sees it, with what it reported.
    let (_, a) = s.get(&format!("/api/fleet/agents/{}", agent.0)).await;
    assert_eq!(a["item"]["status"], "online");
    assert_eq!(a["item"]["policy_revision"], 2);
    assert_eq!(a["item"]["tags"], json!(["e2e"]));
    assert_eq!(
        a["item"]["local_metadata"]["elastic"]["agent"]["id"],
        agent.0.as_str()
    );

    // Keys carry index privileges only.
    let (_, cluster) = s
        .es(
            Method::POST,
            "/_security/user/_has_privileges",
            &key,
            Some(json!({"cluster": ["manage_security"]})),
        )
        .await;
    assert_eq!(cluster["has_all_requested"], false);
    assert_eq!(cluster["cluster"]["manage_security"], false);
    let (_, nothing) = s
        .es(
            Method::POST,
            "/_security/user/_has_privileges",
            &key,
            Some(json!({})),
        )
        .await;
    assert_eq!(nothing["has_all_requested"], false);

    // A revision the policy never had is not believed: re-sent.
    let future = s
        .checkin(
            &agent,
            json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": 999}),
        )
        .await;
    assert_eq!(policy_change(&future)["id"], "policy:web:2");
    assert_eq!(
        s.get(&format!("/api/fleet/agents/{}", agent.0)).await.1["item"]["policy_revision"],
        2
    );

    // What it reports is recorded: version, components, the policy it runs.
    let components = json!([{"id": "log-default", "type": "log", "status": "HEALTHY", "message": "ok", "units": []}]);
    let quiet = s
        .checkin(
            &agent,
            json!({"status": "online", "message": "ok", "components": components,
            "agent_policy_id": "web", "policy_revision_idx": 2}),
        )
        .await;
    assert!(quiet.body.get("actions").is_none(), "{}", quiet.body);
    let (_, a) = s.get(&format!("/api/fleet/agents/{}", agent.0)).await;
    assert_eq!(a["item"]["components"], components);
    assert_eq!(a["item"]["agent_version"], "9.6.0");
    assert_eq!(
        (
            a["item"]["reported_policy_id"].as_str(),
            a["item"]["reported_policy_revision"].as_i64()
        ),
        (Some("web"), Some(2))
    );

    // An agent that lost its state reports an older revision: it is re-sent.
    let lost = s
        .checkin(&agent, json!({"status": "online", "message": "ok", "agent_policy_id": "web", "policy_revision_idx": 0}))
        .await;
    assert_eq!(policy_change(&lost)["id"], "policy:web:2");
}

#[tokio::test]
async fn bad_requests_are_refused_in_the_contracts_shape() {
    // A small body limit, so an oversized body still fits the socket
    // buffers and the 413 is read rather than a reset.
    let s = quick_polls(Server::builder())
        .env("FLOTILLA_HTTP__MAX_BODY_BYTES", "16384")
        .start()
        .unwrap();
    let token = s.policy_with_token("web").await;
    let a = s.enroll(&token).await;
    let b = s.enroll(&token).await;
    let path = |id: &str| format!("/api/fleet/agents/{id}/checkin");
    let ok = json!({"status": "online", "message": ""});

    // Another agent's key, an unknown agent, no key, a malformed header.
    assert_fleet_error(
        &s.fleet(Method::POST, &path(&a.0), Some(&b.1), Some(ok.clone()))
            .await,
        403,
        "ErrAgentIdentity",
    );
    assert_fleet_error(
        &s.fleet(Method::POST, &path("nobody"), Some(&a.1), Some(ok.clone()))
            .await,
        404,
        "AgentNotFound",
    );
    assert_fleet_error(
        &s.fleet(Method::POST, &path(&a.0), None, Some(ok.clone()))
            .await,
        401,
        "ErrNoAuthHeader",
    );
    let resp = reqwest::Client::new()
        .post(format!("{}{}", s.url, path(&a.0)))
        .header("authorization", format!("Bearer {}", a.1))
        .header("user-agent", crate::support::ELASTIC_UA)
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "ErrMalformedHeader"
    );
    assert_fleet_error(
        &s.fleet(
            Method::POST,
            &path(&a.0),
            Some("bm9jb2xvbg=="),
            Some(ok.clone()),
        )
        .await,
        400,
        "ErrMalformedToken",
    );
    // An enrollment token is not an agent credential.
    assert_fleet_error(
        &s.fleet(Method::POST, &path(&a.0), Some(&token), Some(ok.clone()))
            .await,
        401,
        "ErrUnauthorized",
    );

    // Malformed and oversized bodies; a missing status.
    let resp = reqwest::Client::new()
        .post(format!("{}{}", s.url, path(&a.0)))
        .header("authorization", format!("ApiKey {}", a.1))
        .header("user-agent", crate::support::ELASTIC_UA)
        .header("content-type", "application/json")
        .body("{\"status\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "BadRequest");
    let huge = json!({"status": "online", "message": "x".repeat(64 * 1024)});
    assert_fleet_error(
        &s.fleet(Method::POST, &path(&a.0), Some(&a.1), Some(huge))
            .await,
        413,
        "ErrPayloadSizeTooLarge",
    );
    assert_fleet_error(
        &s.fleet(
            Method::POST,
            &path(&a.0),
            Some(&a.1),
            Some(json!({"message": "x"})),
        )
        .await,
        400,
        "BadRequest",
    );
    assert_fleet_error(
        &s.fleet(
            Method::POST,
            &path(&a.0),
            Some(&a.1),
            Some(json!({"status": "online", "poll_timeout": "later"})),
        )
        .await,
        400,
        "BadRequest",
    );

    // User agents.
    let resp = reqwest::Client::new()
        .post(format!("{}{}", s.url, path(&a.0)))
        .header("authorization", format!("ApiKey {}", a.1))
        .header("user-agent", "curl/8.0")
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "InvalidUserAgent"
    );

    // Enrolment: unknown and revoked tokens, bad bodies.
    let enroll = json!({"type": "PERMANENT", "metadata": {"local": {}, "user_provided": {}}});
    assert_fleet_error(
        &s.fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some("dW5rbm93bjp0b2tlbg=="),
            Some(enroll.clone()),
        )
        .await,
        401,
        "ErrUnauthorized",
    );
    assert_fleet_error(
        &s.fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(&token),
            Some(json!({"type": "SOMETIMES", "metadata": {}})),
        )
        .await,
        400,
        "BadRequest",
    );
    let (_, keys) = s.get("/api/fleet/enrollment_api_keys").await;
    let key_id = keys["items"][0]["id"].as_str().unwrap().to_owned();
    s.delete(&format!("/api/fleet/enrollment_api_keys/{key_id}"))
        .await;
    assert_fleet_error(
        &s.fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(&token),
            Some(enroll),
        )
        .await,
        401,
        "ErrUnauthorized",
    );

    // Acks: unknown actions are 404 items (and the response), another
    // agent's events 400 items, duplicates harmless.
    let events = json!({"events": [
        {"agent_id": a.0, "action_id": "no-such-action", "type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED", "message": "", "timestamp": "2026-01-01T00:00:00Z"},
        {"agent_id": b.0, "action_id": "policy:web:2", "type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED", "message": "", "timestamp": "2026-01-01T00:00:00Z"},
        {"agent_id": a.0, "action_id": "policy:web:2", "type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED", "message": "", "timestamp": "2026-01-01T00:00:00Z"},
        {"agent_id": a.0, "action_id": "policy:web:2", "type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED", "message": "", "timestamp": "2026-01-01T00:00:00Z"}
    ]});
    let r = s
        .fleet(
            Method::POST,
            &format!("/api/fleet/agents/{}/acks", a.0),
            Some(&a.1),
            Some(events),
        )
        .await;
    assert_eq!(r.status, 404);
    let statuses: Vec<u64> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [404, 400, 200, 200]);
    assert_eq!(r.body["errors"], true);

    // audit/unenroll.
    let audit = |reason: &str| json!({"reason": reason, "timestamp": "2026-01-01T00:00:00Z"});
    let p = format!("/api/fleet/agents/{}/audit/unenroll", b.0);
    assert_fleet_error(
        &s.fleet(Method::POST, &p, Some(&b.1), Some(audit("bored")))
            .await,
        400,
        "BadRequest",
    );
    assert_eq!(
        s.fleet(Method::POST, &p, Some(&b.1), Some(audit("orphaned")))
            .await
            .status,
        200
    );
    assert_fleet_error(
        &s.fleet(Method::POST, &p, Some(&b.1), Some(audit("orphaned")))
            .await,
        409,
        "ErrAuditReasonConflict",
    );
}

#[tokio::test]
async fn re_enrolment_with_a_replace_token_invalidates_the_old_keys() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let body = |replace: &str| {
        json!({"type": "PERMANENT", "id": "host-1", "replace_token": replace,
        "metadata": {"local": {}, "user_provided": {}}})
    };
    let first = s
        .fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(&token),
            Some(body("s3cret-replace")),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let old_key = first.body["item"]["access_api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let old = ("host-1".to_owned(), old_key);
    let change = s.checkin(&old, json!({"status": "online"})).await;
    let old_output = output_key(policy_change(&change));

    assert_fleet_error(
        &s.fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(&token),
            Some(body("wrong")),
        )
        .await,
        403,
        "AgentNotReplaceable",
    );
    let second = s
        .fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(&token),
            Some(body("s3cret-replace")),
        )
        .await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.body["item"]["id"], "host-1");
    assert_fleet_error(
        &s.checkin(&old, json!({"status": "online"})).await,
        401,
        "Unauthorized",
    );
    let (st, _) = s
        .es(Method::GET, "/_security/_authenticate", &old_output, None)
        .await;
    assert_eq!(st, 401, "the replaced agent's output key is invalidated");
}

#[tokio::test]
async fn policy_changes_wake_long_polls_and_rotate_keys_after_the_ack() {
    let s = slow_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let agent = s.enroll(&token).await;
    let first = s.checkin(&agent, json!({"status": "online"})).await;
    let old_key = output_key(policy_change(&first));
    s.ack(&agent, &["policy:web:2"]).await;

    let started = Instant::now();
    let poll = s.spawn_checkin(
        &agent,
        json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": 2}),
    );
    wait_for_waiting_polls(&s, 1).await;
    // Add an integration: the permissions change, the poll wakes.
    let (st, _) = s
        .post(
            "/api/fleet/package_policies",
            json!({"name": "app", "policy_id": "web", "package": {"name": "log"}, "vars": {"paths": ["/a.log"], "data_stream.dataset": "app"}}),
        )
        .await;
    assert_eq!(st, 200);
    let body = poll.await.unwrap().body;
    eprintln!(
        "policy change reached the long poll after {:?}",
        started.elapsed()
    );
    let change = body["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "POLICY_CHANGE")
        .unwrap()
        .clone();
    assert_eq!(change["id"], "policy:web:3");
    let new_key = output_key(&change);
    assert_ne!(new_key, old_key, "new permissions, new key");
    let ask = json!({"index": [{"names": ["logs-app-prod"], "privileges": ["create_doc"]}]});
    let (_, has) = s
        .es(
            Method::POST,
            "/_security/user/_has_privileges",
            &new_key,
            Some(ask.clone()),
        )
        .await;
    assert_eq!(has["has_all_requested"], true);
    let (_, has_old) = s
        .es(
            Method::POST,
            "/_security/user/_has_privileges",
            &old_key,
            Some(ask),
        )
        .await;
    assert_eq!(has_old["has_all_requested"], false);

    // Until the agent runs revision 3, its old key keeps working…
    assert_eq!(
        s.es(Method::GET, "/_security/_authenticate", &old_key, None)
            .await
            .0,
        200
    );
    s.ack(&agent, &["policy:web:3"]).await;
    // …then it is invalidated; the new one stays.
    assert_eq!(
        s.es(Method::GET, "/_security/_authenticate", &old_key, None)
            .await
            .0,
        401
    );
    assert_eq!(
        s.es(Method::GET, "/_security/_authenticate", &new_key, None)
            .await
            .0,
        200
    );

    // A namespace change is a permissions change too.
    s.put(
        "/api/fleet/agent_policies/web",
        json!({"namespace": "staging"}),
    )
    .await;
    let r = s
        .checkin(
            &agent,
            json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": 3}),
        )
        .await;
    let change = policy_change(&r);
    assert_eq!(change["id"], "policy:web:4");
    assert_ne!(output_key(change), new_key);
    // Reporting the revision (instead of acking) retires the previous key.
    // That check-in then long-polls (nothing is pending), so it runs aside.
    let report = s.spawn_checkin(
        &agent,
        json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": 4}),
    );
    let mut retired = false;
    for _ in 0..400 {
        if s.es(Method::GET, "/_security/_authenticate", &new_key, None)
            .await
            .0
            == 401
        {
            retired = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    report.abort();
    assert!(
        retired,
        "the key replaced in revision 4 is invalidated once the agent reports running it"
    );
}

#[tokio::test]
async fn actions_are_delivered_once_acked_and_unenrolment_invalidates_keys() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let agent = s.enroll(&token).await;
    let first = s.checkin(&agent, json!({"status": "online"})).await;
    let out_key = output_key(policy_change(&first));
    s.ack(&agent, &["policy:web:2"]).await;

    let (st, created) = s
        .post(
            &format!("/api/fleet/agents/{}/actions", agent.0),
            json!({"action": {"type": "SETTINGS", "data": {"log_level": "debug"}}}),
        )
        .await;
    assert_eq!(st, 200, "{created}");
    let action_id = created["item"]["id"].as_str().unwrap().to_owned();
    assert_error(
        &s.post(
            &format!("/api/fleet/agents/{}/actions", agent.0),
            json!({"action": {"type": "SETTINGS", "data": {"log_level": "loud"}}}),
        )
        .await,
        400,
        "log_level",
    );

    let r = s.checkin(&agent, json!({"status": "online"})).await;
    let actions = r.body["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{}", r.body);
    assert_eq!(actions[0]["type"], "SETTINGS");
    assert_eq!(actions[0]["data"], json!({"log_level": "debug"}));
    let ack_token = r.body["ack_token"].as_str().unwrap().to_owned();
    assert!(!ack_token.is_empty());
    // Received (the ack token comes back): not delivered again.
    let r = s
        .checkin(&agent, json!({"status": "online", "ack_token": ack_token}))
        .await;
    assert!(r.body.get("actions").is_none(), "{}", r.body);
    // Another agent acking it: a 400 item, and it stays pending for ours.
    let other = s.enroll(&token).await;
    let r = s.ack(&other, &[&action_id]).await;
    assert_eq!(
        (r.status, r.body["items"][0]["status"].as_u64()),
        (400, Some(400)),
        "{}",
        r.body
    );
    assert_eq!(s.ack(&agent, &[&action_id]).await.status, 200);
    assert_eq!(
        s.ack(&agent, &[&action_id]).await.status,
        200,
        "duplicates are harmless"
    );

    // Unenrol: the agent is told, acks, and every key it held stops working.
    let (_, u) = s
        .call(
            Method::POST,
            &format!("/api/fleet/agents/{}/unenroll", agent.0),
            None,
        )
        .await;
    assert_eq!(u["item"]["status"], "unenrolling");
    let r = s
        .checkin(&agent, json!({"status": "online", "ack_token": ack_token}))
        .await;
    let unenroll = r.body["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "UNENROLL")
        .unwrap()
        .clone();
    assert_eq!(unenroll["data"], Value::Null);
    assert_eq!(
        s.ack(&agent, &[unenroll["id"].as_str().unwrap()])
            .await
            .status,
        200
    );
    assert_eq!(
        s.get(&format!("/api/fleet/agents/{}", agent.0)).await.1["item"]["status"],
        "unenrolled"
    );
    assert_eq!(
        s.checkin(&agent, json!({"status": "online"})).await.status,
        401
    );
    assert_eq!(
        s.es(Method::GET, "/_security/_authenticate", &out_key, None)
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn reassignment_sends_the_new_policy_with_a_new_key() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    s.policy_with_token("db").await;
    let agent = s.enroll(&token).await;
    let first = s.checkin(&agent, json!({"status": "online"})).await;
    let key = output_key(policy_change(&first));
    s.ack(&agent, &["policy:web:2"]).await;
    let (st, _) = s
        .post(
            &format!("/api/fleet/agents/{}/reassign", agent.0),
            json!({"policy_id": "db"}),
        )
        .await;
    assert_eq!(st, 200);
    let r = s
        .checkin(
            &agent,
            json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": 2}),
        )
        .await;
    let change = policy_change(&r);
    assert_eq!(change["id"], "policy:db:2");
    assert_ne!(output_key(change), key);
    assert!(r.body["actions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["type"] == "POLICY_REASSIGN" && a["data"]["policy_id"] == "db"));
}

#[tokio::test]
async fn revoking_unenrols_at_once() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let agent = s.enroll(&token).await;
    let key = output_key(policy_change(
        &s.checkin(&agent, json!({"status": "online"})).await,
    ));
    let (_, u) = s
        .post(
            &format!("/api/fleet/agents/{}/unenroll", agent.0),
            json!({"revoke": true}),
        )
        .await;
    assert_eq!(u["item"]["status"], "unenrolled");
    assert_fleet_error(
        &s.checkin(&agent, json!({"status": "online"})).await,
        401,
        "Unauthorized",
    );
    assert_eq!(
        s.es(Method::GET, "/_security/_authenticate", &key, None)
            .await
            .0,
        401
    );
}

const STATIC_TOKEN: &str = "static-enrollment-token-0123456789abcdef";

fn static_config(dir: &std::path::Path, allowed: &str) -> std::path::PathBuf {
    let path = dir.join("flotilla.yml");
    let mut f = std::fs::File::create(&path).unwrap();
    write!(
        f,
        "static_enrollment_tokens:\n  enabled: true\n  allowed_ips: {allowed}\n  tokens:\n    - token: {STATIC_TOKEN}\n      policy_id: k8s\n"
    )
    .unwrap();
    path
}

#[tokio::test]
async fn static_tokens_wait_for_their_policy_and_only_enrol() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = static_config(dir.path(), "[127.0.0.0/8]");
    let s = quick_polls(Server::builder())
        .arg("--config")
        .arg(cfg.to_str().unwrap())
        .start()
        .unwrap();
    use base64::Engine as _;
    let elastic_style =
        base64::engine::general_purpose::STANDARD.encode(format!("01234:{STATIC_TOKEN}"));
    let body = json!({"type": "PERMANENT", "metadata": {"local": {}, "user_provided": {}}});

    let r = s
        .fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(&elastic_style),
            Some(body.clone()),
        )
        .await;
    assert_fleet_error(&r, 503, "ErrPolicyNotFound");
    assert!(r.body["message"].as_str().unwrap().contains("k8s"));
    assert!(r.headers.contains_key("retry-after"), "retryable");
    let (_, agents) = s.get("/api/fleet/agents?showInactive=true").await;
    assert_eq!(
        agents["total"], 0,
        "no agent recorded against a missing policy"
    );

    s.post(
        "/api/fleet/agent_policies",
        json!({"id": "k8s", "name": "Kubernetes"}),
    )
    .await;
    let r = s
        .fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(&elastic_style),
            Some(body.clone()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["item"]["policy_id"], "k8s");
    let agent = r.body["item"]["id"].as_str().unwrap().to_owned();
    // The agent records the static token by the start of its hash.
    let (_, shown) = s.get(&format!("/api/fleet/agents/{agent}")).await;
    let hash = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(STATIC_TOKEN.as_bytes()))
    };
    assert_eq!(
        shown["item"]["enrollment_api_key_id"],
        format!("static:{}", &hash[..12])
    );
    // The raw token works too, for enrolment only.
    assert_eq!(
        s.fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(STATIC_TOKEN),
            Some(body)
        )
        .await
        .status,
        200
    );
    // A static token is never an agent's credential, in either encoding.
    let raw = s
        .checkin(
            &(agent.clone(), STATIC_TOKEN.to_owned()),
            json!({"status": "online"}),
        )
        .await;
    assert_fleet_error(&raw, 400, "ErrMalformedToken");
    let encoded = s
        .checkin(&(agent, elastic_style), json!({"status": "online"}))
        .await;
    assert_fleet_error(&encoded, 401, "ErrUnauthorized");
}

#[tokio::test]
async fn static_tokens_refuse_addresses_outside_their_cidrs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = static_config(dir.path(), "[10.0.0.0/8]");
    let s = Server::builder()
        .arg("--config")
        .arg(cfg.to_str().unwrap())
        .start()
        .unwrap();
    s.post(
        "/api/fleet/agent_policies",
        json!({"id": "k8s", "name": "Kubernetes"}),
    )
    .await;
    let body = json!({"type": "PERMANENT", "metadata": {"local": {}, "user_provided": {}}});
    let r = s
        .fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(STATIC_TOKEN),
            Some(body),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(!r.body.to_string().contains(STATIC_TOKEN));
}

#[test]
fn a_short_static_token_stops_the_server_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("f.yml");
    std::fs::write(&cfg, "static_enrollment_tokens:\n  enabled: true\n  tokens:\n    - token: short-secret\n      policy_id: p\n").unwrap();
    let out = crate::support::command()
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("d"))
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tokens[0]") && err.contains("32"), "{err}");
    assert!(!err.contains("short-secret"), "{err}");
}

#[tokio::test]
async fn check_in_accepts_gzip_and_answers_gzip() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let agent = s.enroll(&token).await;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(
        json!({"status": "online", "message": "zipped"})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let body = enc.finish().unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{}/api/fleet/agents/{}/checkin", s.url, agent.0))
        .header("authorization", format!("ApiKey {}", agent.1))
        .header("user-agent", crate::support::ELASTIC_UA)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("accept-encoding", "br;q=0, gzip;q=0.8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let bytes = resp.bytes().await.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
        .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["actions"][0]["type"], "POLICY_CHANGE");
    let (_, a) = s.get(&format!("/api/fleet/agents/{}", agent.0)).await;
    assert_eq!(a["item"]["last_checkin_message"], "zipped");
}

#[tokio::test]
async fn a_policy_beyond_the_ceiling_is_refused_naming_the_excess() {
    let s = Server::builder()
        .env(
            "FLOTILLA_FLEET__OUTPUT_KEY_CEILING",
            r#"[{names=["logs-nginx*"], privileges=["auto_configure", "create_doc"]}]"#,
        )
        .start()
        .unwrap();
    s.post(
        "/api/fleet/agent_policies",
        json!({"id": "web", "name": "web", "namespace": "prod"}),
    )
    .await;
    let (st, _) = s
        .post(
            "/api/fleet/package_policies",
            json!({"name": "n", "policy_id": "web", "package": {"name": "nginx"}}),
        )
        .await;
    assert_eq!(st, 200);
    let r = s
        .post(
            "/api/fleet/package_policies",
            json!({"name": "sys", "policy_id": "web", "package": {"name": "system"}}),
        )
        .await;
    assert_error(&r, 400, "metrics-system.cpu-prod");
    let (_, p) = s.get("/api/fleet/agent_policies/web").await;
    assert_eq!(p["item"]["revision"], 2, "nothing was saved");
}

/// Two instances on one PostgreSQL database: a policy change made through
/// one reaches an agent long-polling on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_changes_through_postgres() {
    let Some(cluster) = flotilla_testkit::postgres() else {
        return;
    };
    let url = cluster.create_database();
    let a = slow_polls(
        Server::builder()
            .engine(Engine::Postgres)
            .database_url(&url),
    )
    .start()
    .unwrap();
    let b = slow_polls(
        Server::builder()
            .engine(Engine::Postgres)
            .database_url(&url),
    )
    .start()
    .unwrap();
    let token = a.policy_with_token("web").await;
    let agent = b.enroll(&token).await;
    let first = b.checkin(&agent, json!({"status": "online"})).await;
    assert_eq!(policy_change(&first)["id"], "policy:web:2");
    b.ack(&agent, &["policy:web:2"]).await;

    let started = Instant::now();
    let poll = b.spawn_checkin(
        &agent,
        json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": 2}),
    );
    // Make sure the poll is waiting on B before the change on A.
    wait_for_waiting_polls(&b, 1).await;
    let changed_at = Instant::now();
    let (st, _) = a
        .put(
            "/api/fleet/agent_policies/web",
            json!({"description": "changed on instance A"}),
        )
        .await;
    assert_eq!(st, 200);
    let body = poll.await.unwrap().body;
    eprintln!(
        "change on A reached the long poll on B after {:?} (poll open {:?})",
        changed_at.elapsed(),
        started.elapsed()
    );
    let change = body["actions"]
        .as_array()
        .expect("woken with actions, not by the 60 s deadline");
    assert_eq!(change[0]["id"], "policy:web:3");
}

/// A counter or gauge from the server's `/metrics` (0 when absent).
pub(crate) async fn metric(s: &Server, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_is_serialised_once_for_all_its_agents() {
    let s = slow_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let mut agents = Vec::new();
    for _ in 0..20 {
        let agent = s.enroll(&token).await;
        s.checkin(&agent, json!({"status": "online"})).await;
        s.ack(&agent, &["policy:web:2"]).await;
        agents.push(agent);
    }
    let polls: Vec<_> = agents
        .iter()
        .map(|a| {
            s.spawn_checkin(
                a,
                json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": 2}),
            )
        })
        .collect();
    wait_for_waiting_polls(&s, 20).await;
    let before = metric(&s, "flotilla_policy_builds_total").await;
    s.put(
        "/api/fleet/agent_policies/web",
        json!({"description": "one change, twenty agents"}),
    )
    .await;
    for p in polls {
        let r = p.await.unwrap();
        assert_eq!(policy_change(&r)["id"], "policy:web:3");
    }
    let after = metric(&s, "flotilla_policy_builds_total").await;
    assert_eq!(after - before, 1.0, "revision 3 was built once");
}

/// Wait (bounded) until `n` long polls are waiting on `s`, read from its
/// `flotilla_checkins_waiting` gauge.
pub(crate) async fn wait_for_waiting_polls(s: &Server, n: u64) {
    for _ in 0..400 {
        if metric(s, "flotilla_checkins_waiting").await >= n as f64 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("no long poll started waiting");
}

#[tokio::test]
async fn shutdown_ends_long_polls_at_once() {
    let s = slow_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let agent = s.enroll(&token).await;
    s.checkin(&agent, json!({"status": "online"})).await;
    s.ack(&agent, &["policy:web:2"]).await;
    let poll = s.spawn_checkin(
        &agent,
        json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": 2}),
    );
    wait_for_waiting_polls(&s, 1).await;
    let pid = s.pid();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let resp = poll.await.unwrap();
    assert_eq!(
        resp.status, 200,
        "a stopping server answers the poll, empty"
    );
    let body = resp.body;
    assert!(body.get("actions").is_none(), "{body}");
    assert_eq!(s.wait(), Some(0));
}

#[tokio::test]
async fn an_enrollment_id_replaces_an_agent_that_never_checked_in() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let body = json!({"type": "PERMANENT", "enrollment_id": "vm-7", "metadata": {"local": {}, "user_provided": {}}});
    let first = s
        .fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(&token),
            Some(body.clone()),
        )
        .await;
    let first_id = first.body["item"]["id"].as_str().unwrap().to_owned();
    let second = s
        .fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(&token),
            Some(body.clone()),
        )
        .await;
    assert_eq!(second.status, 200);
    let second_id = second.body["item"]["id"].as_str().unwrap().to_owned();
    assert_ne!(first_id, second_id);
    assert_error(
        &s.get(&format!("/api/fleet/agents/{first_id}")).await,
        404,
        &first_id,
    );
    let old = (
        first_id,
        first.body["item"]["access_api_key"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    assert_eq!(
        s.checkin(&old, json!({"status": "online"})).await.status,
        401,
        "its key is invalidated"
    );

    // Once it has checked in it is a live agent: a re-enrolment with its
    // enrollment id is refused, and it keeps running.
    let second_agent = (
        second_id.clone(),
        second.body["item"]["access_api_key"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    s.checkin(&second_agent, json!({"status": "online"})).await;
    let third = s
        .fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(&token),
            Some(body),
        )
        .await;
    assert_fleet_error(&third, 403, "AgentNotReplaceable");
    let (st, kept) = s.get(&format!("/api/fleet/agents/{second_id}")).await;
    assert_eq!(st, 200);
    assert_eq!(kept["item"]["status"], "online", "{kept}");
}

#[tokio::test]
async fn changing_the_policys_output_changes_the_key() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let agent = s.enroll(&token).await;
    let key = output_key(policy_change(
        &s.checkin(&agent, json!({"status": "online"})).await,
    ));
    s.ack(&agent, &["policy:web:2"]).await;
    s.post(
        "/api/fleet/outputs",
        json!({"id": "es2", "name": "es2", "type": "elasticsearch", "hosts": ["https://es2:9200"]}),
    )
    .await;
    s.put("/api/fleet/agent_policies/web", json!({"output_id": "es2"}))
        .await;
    let r = s
        .checkin(
            &agent,
            json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": 2}),
        )
        .await;
    let change = policy_change(&r);
    assert_eq!(
        change["data"]["policy"]["outputs"]["es2"]["hosts"],
        json!(["https://es2:9200"])
    );
    assert_ne!(output_key(change), key);
}

#[tokio::test]
async fn outputs_other_than_elasticsearch_get_no_api_key() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let (st, _) = s
        .post(
            "/api/fleet/outputs",
            json!({"id": "ls", "name": "ls", "type": "logstash", "hosts": ["ls:5044"]}),
        )
        .await;
    assert_eq!(st, 200);
    s.post(
        "/api/fleet/agent_policies",
        json!({"id": "edge", "name": "edge", "output_id": "ls"}),
    )
    .await;
    s.post(
        "/api/fleet/package_policies",
        json!({"name": "n", "policy_id": "edge", "package": {"name": "nginx"}}),
    )
    .await;
    let (_, key) = s
        .post(
            "/api/fleet/enrollment_api_keys",
            json!({"policy_id": "edge"}),
        )
        .await;
    let agent = s.enroll(key["item"]["api_key"].as_str().unwrap()).await;
    let r = s.checkin(&agent, json!({"status": "online"})).await;
    let change = policy_change(&r);
    let output = &change["data"]["policy"]["outputs"]["ls"];
    assert_eq!(output["type"], "logstash");
    assert!(output.get("api_key").is_none(), "{output}");
    s.ack(&agent, &["policy:edge:2"]).await;
    let quiet = s.checkin(&agent, json!({"status": "online"})).await;
    assert!(quiet.body.get("actions").is_none(), "{}", quiet.body);
}

/// A policy change the agent could not apply is shown as failed — not as
/// applied (Elastic counts it a success, Kibana #209125) — until it applies
/// a later revision.
#[tokio::test]
async fn a_failed_policy_change_shows_as_failed_until_one_applies() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let agent = s.enroll(&token).await;
    let r = s.checkin(&agent, json!({"status": "online"})).await;
    let id = policy_change(&r)["id"].as_str().unwrap().to_owned();
    let failed = s
        .fleet(
            Method::POST,
            &format!("/api/fleet/agents/{}/acks", agent.0),
            Some(&agent.1),
            Some(json!({"events": [{"type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED", "agent_id": agent.0,
                "action_id": id, "message": "failed", "error": "input logfile: permission denied on /var/log",
                "timestamp": "2026-01-01T00:00:00Z"}]})),
        )
        .await;
    assert_eq!(failed.status, 200, "{}", failed.body);
    let (_, a) = s.get(&format!("/api/fleet/agents/{}", agent.0)).await;
    let f = &a["item"]["policy_change_failure"];
    assert_eq!(f["revision"], 2, "{a}");
    assert_eq!(f["message"], "input logfile: permission denied on /var/log");
    assert_eq!(
        a["item"]["policy_revision"],
        Value::Null,
        "not counted as applied"
    );
    // A later successful ack clears it.
    s.ack(&agent, &[&id]).await;
    let (_, a) = s.get(&format!("/api/fleet/agents/{}", agent.0)).await;
    assert_eq!(a["item"]["policy_revision"], 2);
    assert!(a["item"].get("policy_change_failure").is_none(), "{a}");
}
