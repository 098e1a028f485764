//! The management API, resource by resource, on both storage engines.
//!
//! Long on purpose: one file per API surface.

use std::sync::Arc;

use chrono::Utc;
use reqwest::Method;
use serde_json::{json, Value};

use flotilla_store::{NewAgent, Store};

use crate::support::{assert_error, role_names, Engine, Server};

/// Start a server on `engine` and open a second handle on its storage, to
/// put agents in place directly. (On SQLite the database file itself: the
/// directory is locked by the server.)
async fn server_and_store(engine: Engine) -> Option<(Server, Arc<dyn Store>)> {
    match engine {
        Engine::Sqlite => {
            let server = Server::sqlite();
            let file = server
                .data_dir
                .join(flotilla_store_sql::sqlite::DATABASE_FILE);
            let store = flotilla_store_sql::SqliteStore::open_file(&file)
                .await
                .unwrap();
            Some((server, Arc::new(store)))
        }
        Engine::Postgres => {
            let url = flotilla_testkit::postgres()?.create_database();
            let server = Server::builder()
                .engine(Engine::Postgres)
                .database_url(&url)
                .start()?;
            let store = flotilla_store_sql::open(flotilla_store_sql::Location::Postgres(&url))
                .await
                .unwrap();
            Some((server, store))
        }
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn every_resource(engine: Engine) {
    let Some((s, store)) = server_and_store(engine).await else {
        return;
    };

    // --- outputs: a default exists from the first start ---------------------
    let (st, outputs) = s.get("/api/fleet/outputs").await;
    assert_eq!(st, 200);
    assert_eq!(outputs["total"], 1);
    assert_eq!(outputs["items"][0]["is_default"], true);
    let (st, out) = s
        .post("/api/fleet/outputs", json!({"id": "es2", "name": "second", "type": "elasticsearch", "hosts": ["https://es2:9200"]}))
        .await;
    assert_eq!(st, 200, "{out}");
    assert_eq!(out["item"]["is_default"], false);
    assert_error(
        &s.post(
            "/api/fleet/outputs",
            json!({"name": "second", "type": "elasticsearch", "hosts": ["https://x:1"]}),
        )
        .await,
        409,
        "second",
    );
    assert_error(
        &s.post(
            "/api/fleet/outputs",
            json!({"name": "bad", "type": "elasticsearch", "hosts": ["es:9200"]}),
        )
        .await,
        400,
        "hosts[0]",
    );
    assert_error(
        &s.post(
            "/api/fleet/outputs",
            json!({"name": "bad", "type": "carrier-pigeon", "hosts": ["x"]}),
        )
        .await,
        400,
        "type",
    );
    assert_error(
        &s.delete("/api/fleet/outputs/fleet-default-output").await,
        409,
        "default output",
    );

    // --- policies --------------------------------------------------------------
    let (st, p) = s
        .post("/api/fleet/agent_policies", json!({"id": "web", "name": "Web servers", "namespace": "prod", "description": "nginx hosts"}))
        .await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["item"]["revision"], 1);
    assert_eq!(p["item"]["inactivity_timeout"], 1209600);
    let (_, p2) = s
        .post(
            "/api/fleet/agent_policies",
            json!({"name": "Databases", "output_id": "es2"}),
        )
        .await;
    let db_id = p2["item"]["id"].as_str().unwrap().to_owned();
    assert_eq!(p2["item"]["namespace"], "default");
    assert_error(
        &s.post("/api/fleet/agent_policies", json!({"name": "Web servers"}))
            .await,
        409,
        "Web servers",
    );
    assert_error(
        &s.post(
            "/api/fleet/agent_policies",
            json!({"name": "x", "output_id": "nope"}),
        )
        .await,
        400,
        "output_id",
    );
    assert_error(
        &s.post(
            "/api/fleet/agent_policies",
            json!({"name": "x", "namespace": "Bad-NS"}),
        )
        .await,
        400,
        "namespace",
    );

    let (_, list) = s.get("/api/fleet/agent_policies?perPage=1&page=2").await;
    assert_eq!(
        (
            list["total"].as_u64(),
            list["page"].as_u64(),
            list["perPage"].as_u64()
        ),
        (Some(2), Some(2), Some(1))
    );
    assert_eq!(ids(&list), std::slice::from_ref(&db_id));
    let (_, named) = s.get("/api/fleet/agent_policies?name=web").await;
    assert_eq!(ids(&named), ["web"]);

    let (st, upd) = s
        .put(
            "/api/fleet/agent_policies/web",
            json!({"description": null, "inactivity_timeout": 600}),
        )
        .await;
    assert_eq!(st, 200, "{upd}");
    assert_eq!(upd["item"]["revision"], 2);
    assert_eq!(upd["item"]["description"], Value::Null);
    assert_error(
        &s.put("/api/fleet/agent_policies/nope", json!({"name": "z"}))
            .await,
        404,
        "nope",
    );

    // --- integrations and the permissions they imply ------------------------------
    let (st, nginx) = s
        .post("/api/fleet/package_policies", json!({"name": "nginx-web", "policy_id": "web", "package": {"name": "nginx", "version": "1.20.0"}}))
        .await;
    assert_eq!(st, 200, "{nginx}");
    assert_eq!(
        nginx["item"]["namespace"],
        Value::Null,
        "defaults to the policy's namespace"
    );
    assert_eq!(
        nginx["item"]["inputs"][0]["streams"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "default inputs"
    );
    let (st, app) = s
        .post(
            "/api/fleet/package_policies",
            json!({"name": "app-logs", "policy_id": "web", "namespace": "team_a", "package": {"name": "log"},
                   "vars": {"paths": ["/var/log/app/*.log"], "data_stream.dataset": "myapp"}}),
        )
        .await;
    assert_eq!(st, 200, "{app}");
    assert_error(
        &s.post(
            "/api/fleet/package_policies",
            json!({"name": "l2", "policy_id": "web", "package": {"name": "log"}}),
        )
        .await,
        400,
        "vars.paths",
    );
    assert_error(
        &s.post(
            "/api/fleet/package_policies",
            json!({"name": "a2", "policy_id": "web", "package": {"name": "apache"}}),
        )
        .await,
        400,
        "package.name",
    );
    assert_error(
        &s.post(
            "/api/fleet/package_policies",
            json!({"name": "n2", "policy_id": "nope", "package": {"name": "nginx"}}),
        )
        .await,
        400,
        "policy_id",
    );
    assert_error(
        &s.post(
            "/api/fleet/package_policies",
            json!({"name": "nginx-web", "policy_id": "web", "package": {"name": "nginx"}}),
        )
        .await,
        409,
        "nginx-web",
    );

    let (_, full) = s.get("/api/fleet/agent_policies/web/full").await;
    let full = &full["item"];
    assert_eq!(
        full["revision"], 4,
        "two integrations after two policy revisions"
    );
    assert_eq!(
        full["outputs"]["fleet-default-output"]["type"],
        "elasticsearch"
    );
    let perms = &full["output_permissions"]["fleet-default-output"];
    let nginx_id = nginx["item"]["id"].as_str().unwrap();
    let app_id = app["item"]["id"].as_str().unwrap();
    // Kibana's shape: one role per package policy id, one entry per stream.
    assert_eq!(
        perms[nginx_id]["indices"],
        json!([{"names": ["logs-nginx.access-prod"], "privileges": ["auto_configure", "create_doc"]},
               {"names": ["logs-nginx.error-prod"], "privileges": ["auto_configure", "create_doc"]}])
    );
    assert_eq!(
        perms["_elastic_agent_checks"],
        json!({"cluster": ["monitor"]})
    );
    // An input package chooses its dataset: Kibana grants `logs-*-*`.
    assert_eq!(role_names(perms, app_id), ["logs-*-*"]);
    let inputs = full["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 2);
    assert_eq!(inputs[1]["data_stream"]["namespace"], "team_a");
    assert_eq!(
        inputs[1]["streams"][0]["paths"],
        json!(["/var/log/app/*.log"])
    );

    // A namespace change bumps the revision and changes the permissions.
    let (_, upd) = s
        .put(
            "/api/fleet/agent_policies/web",
            json!({"namespace": "staging"}),
        )
        .await;
    assert_eq!(upd["item"]["revision"], 5);
    let (_, full) = s.get("/api/fleet/agent_policies/web/full").await;
    let perms = &full["item"]["output_permissions"]["fleet-default-output"];
    assert_eq!(
        role_names(perms, nginx_id),
        ["logs-nginx.access-staging", "logs-nginx.error-staging"]
    );
    assert_eq!(role_names(perms, app_id), ["logs-*-*"]);

    // Narrowing an integration's inputs narrows the permissions.
    let (st, _) = s
        .put(
            &format!("/api/fleet/package_policies/{nginx_id}"),
            json!({"inputs": [{"type": "logfile", "streams": [{"data_stream": {"type": "logs", "dataset": "nginx.access"}}]}]}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, full) = s.get("/api/fleet/agent_policies/web/full").await;
    assert_eq!(full["item"]["revision"], 6);
    assert_eq!(
        role_names(
            &full["item"]["output_permissions"]["fleet-default-output"],
            nginx_id
        ),
        ["logs-nginx.access-staging"]
    );
    // Output changes reach the policies on that output.
    let (_, before) = s.get(&format!("/api/fleet/agent_policies/{db_id}")).await;
    s.put(
        "/api/fleet/outputs/es2",
        json!({"hosts": ["https://es3:9200"]}),
    )
    .await;
    let (_, after) = s.get(&format!("/api/fleet/agent_policies/{db_id}")).await;
    assert_eq!(
        after["item"]["revision"].as_i64().unwrap(),
        before["item"]["revision"].as_i64().unwrap() + 1
    );
    let (_, listed) = s.get("/api/fleet/package_policies?policy_id=web").await;
    assert_eq!(listed["total"], 2);
    let app_id = app["item"]["id"].as_str().unwrap();
    assert_eq!(
        s.delete(&format!("/api/fleet/package_policies/{app_id}"))
            .await
            .0,
        200
    );
    assert_error(
        &s.get(&format!("/api/fleet/package_policies/{app_id}"))
            .await,
        404,
        app_id,
    );
    assert_eq!(
        s.get("/api/fleet/agent_policies/web").await.1["item"]["revision"],
        7
    );

    // --- enrollment keys -------------------------------------------------------
    let (st, key) = s
        .post(
            "/api/fleet/enrollment_api_keys",
            json!({"policy_id": "web", "name": "rollout"}),
        )
        .await;
    assert_eq!(st, 200, "{key}");
    let token = key["item"]["api_key"].as_str().unwrap().to_owned();
    let key_id = key["item"]["id"].as_str().unwrap().to_owned();
    assert!(token.len() >= 40);
    let (_, got) = s
        .get(&format!("/api/fleet/enrollment_api_keys/{key_id}"))
        .await;
    assert_eq!(got["item"]["active"], true);
    assert!(
        got["item"].get("api_key").is_none(),
        "the secret is shown only at creation"
    );
    let (_, listed) = s.get("/api/fleet/enrollment_api_keys?policy_id=web").await;
    assert!(!listed.to_string().contains(&token));
    assert_error(
        &s.post(
            "/api/fleet/enrollment_api_keys",
            json!({"policy_id": "nope"}),
        )
        .await,
        400,
        "policy_id",
    );
    let (_, revoked) = s
        .delete(&format!("/api/fleet/enrollment_api_keys/{key_id}"))
        .await;
    assert_eq!(revoked["item"]["active"], false);

    // --- agents ------------------------------------------------------------------
    for (id, policy, tags) in [
        ("a1", "web", vec!["eu"]),
        ("a2", "web", vec!["us"]),
        ("a3", db_id.as_str(), vec!["eu"]),
    ] {
        store
            .insert_agent(&NewAgent {
                id: id.into(),
                policy_id: policy.into(),
                tags: tags.into_iter().map(String::from).collect(),
                local_metadata: json!({"host": {"hostname": id}}),
                enrolled_at: Utc::now(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let (_, agents) = s.get("/api/fleet/agents?policy_id=web").await;
    assert_eq!(agents["total"], 2);
    let (_, agents) = s.get("/api/fleet/agents?tag=eu").await;
    let mut got = ids(&agents);
    got.sort();
    assert_eq!(got, ["a1", "a3"]);
    let (_, agents) = s.get("/api/fleet/agents?status=enrolling").await;
    assert_eq!(agents["total"], 3);
    assert_error(
        &s.get("/api/fleet/agents?status=sleepy").await,
        400,
        "sleepy",
    );
    let (_, a1) = s.get("/api/fleet/agents/a1").await;
    assert_eq!(a1["item"]["status"], "enrolling");
    assert_error(&s.get("/api/fleet/agents/nope").await, 404, "nope");

    let (st, moved) = s
        .post("/api/fleet/agents/a2/reassign", json!({"policy_id": db_id}))
        .await;
    assert_eq!(st, 200, "{moved}");
    assert_eq!(moved["item"]["policy_id"], db_id.as_str());
    assert_error(
        &s.post("/api/fleet/agents/a2/reassign", json!({"policy_id": db_id}))
            .await,
        409,
        "already",
    );
    assert_error(
        &s.post(
            "/api/fleet/agents/a2/reassign",
            json!({"policy_id": "nope"}),
        )
        .await,
        400,
        "policy_id",
    );
    let (_, tagged) = s
        .put("/api/fleet/agents/a2", json!({"tags": ["blue", "green"]}))
        .await;
    assert_eq!(tagged["item"]["tags"], json!(["blue", "green"]));

    let (_, leaving) = s
        .call(Method::POST, "/api/fleet/agents/a1/unenroll", None)
        .await;
    assert_eq!(leaving["item"]["status"], "unenrolling");
    let (_, gone) = s
        .post("/api/fleet/agents/a1/unenroll", json!({"revoke": true}))
        .await;
    assert_eq!(gone["item"]["status"], "unenrolled");
    assert_error(
        &s.post("/api/fleet/agents/a1/unenroll", json!({"revoke": true}))
            .await,
        409,
        "already unenrolled",
    );
    let (_, active) = s.get("/api/fleet/agents").await;
    assert_eq!(active["total"], 2);
    let (_, all) = s.get("/api/fleet/agents?showInactive=true").await;
    assert_eq!(all["total"], 3);

    // A policy with enrolled agents cannot be deleted; without, it can.
    assert_error(
        &s.delete(&format!("/api/fleet/agent_policies/{db_id}"))
            .await,
        409,
        "enrolled agents",
    );
    let (st, del) = s.delete("/api/fleet/agent_policies/web").await;
    assert_eq!((st, del["success"].as_bool()), (200, Some(true)), "{del}");
    assert_error(&s.get("/api/fleet/agent_policies/web").await, 404, "web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resource_on_sqlite() {
    every_resource(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resource_on_postgres() {
    every_resource(Engine::Postgres).await;
}

#[tokio::test]
async fn errors_follow_the_contract() {
    let s = Server::sqlite();
    // 401: missing, malformed and unknown keys.
    assert_error(
        &s.call_with_key(Method::GET, "/api/fleet/agent_policies", None, None)
            .await,
        401,
        "Authorization",
    );
    assert_error(
        &s.call_with_key(
            Method::GET,
            "/api/fleet/agent_policies",
            None,
            Some("not-a-real-key"),
        )
        .await,
        401,
        "unknown",
    );
    let resp = reqwest::Client::new()
        .get(format!("{}/api/fleet/agent_policies", s.url))
        .header("authorization", "Bearer abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // 400: malformed JSON, wrong types, unknown fields, bad paging.
    assert_error(
        &s.raw(
            Method::POST,
            "/api/fleet/agent_policies",
            "application/json",
            b"{\"name\": ".to_vec(),
        )
        .await,
        400,
        "parse",
    );
    assert_error(
        &s.post("/api/fleet/agent_policies", json!({"name": 5}))
            .await,
        400,
        "name",
    );
    assert_error(
        &s.post(
            "/api/fleet/agent_policies",
            json!({"name": "x", "namspace": "a"}),
        )
        .await,
        400,
        "namspace",
    );
    assert_error(
        &s.post("/api/fleet/agent_policies", json!({"namespace": "a"}))
            .await,
        400,
        "name",
    );
    assert_error(
        &s.post("/api/fleet/agent_policies", json!({"name": "  "}))
            .await,
        400,
        "[name]",
    );
    assert_error(
        &s.post(
            "/api/fleet/agent_policies",
            json!({"name": "x", "inactivity_timeout": -1}),
        )
        .await,
        400,
        "inactivity_timeout",
    );
    assert_error(
        &s.get("/api/fleet/agent_policies?perPage=0").await,
        400,
        "perPage",
    );
    assert_error(
        &s.get("/api/fleet/agent_policies?page=abc").await,
        400,
        "page",
    );
    assert_error(
        &s.get("/api/fleet/agent_policies?bogus=1").await,
        400,
        "bogus",
    );
    assert_error(
        &s.put("/api/fleet/agent_policies/x", json!({})).await,
        400,
        "no field to change",
    );
    assert_error(
        &s.raw(
            Method::POST,
            "/api/fleet/agent_policies",
            "text/plain",
            b"{}".to_vec(),
        )
        .await,
        415,
        "Content-Type",
    );

    // NUL never reaches the database; reserved and misspelt integration
    // fields are refused.
    assert_error(&s.get("/api/fleet/agent_policies/a%00b").await, 400, "NUL");
    assert_error(
        &s.get("/api/fleet/agent_policies?name=%00").await,
        400,
        "NUL",
    );
    s.post(
        "/api/fleet/agent_policies",
        json!({"id": "p1", "name": "p1"}),
    )
    .await;
    let bad_var = json!({"name": "x1", "policy_id": "p1", "package": {"name": "nginx"}, "vars": {"data_stream": {"dataset": "evil"}}});
    assert_error(
        &s.post("/api/fleet/package_policies", bad_var).await,
        400,
        "vars.data_stream",
    );
    let typo = json!({"name": "x2", "policy_id": "p1", "package": {"name": "nginx"}, "inputs": [{"type": "logfile", "enabeld": false}]});
    assert_error(
        &s.post("/api/fleet/package_policies", typo).await,
        400,
        "enabeld",
    );

    // 404: unknown ids and routes; 405: wrong method.
    assert_error(
        &s.get("/api/fleet/agent_policies/missing").await,
        404,
        "missing",
    );
    assert_error(&s.get("/api/fleet/nothing-here").await, 404, "route");
    assert_error(
        &s.call(Method::PATCH, "/api/fleet/agent_policies", None)
            .await,
        405,
        "method",
    );

    // 409: duplicates.
    assert_eq!(
        s.post("/api/fleet/agent_policies", json!({"name": "dup"}))
            .await
            .0,
        200
    );
    assert_error(
        &s.post("/api/fleet/agent_policies", json!({"name": "dup"}))
            .await,
        409,
        "dup",
    );

    // 413: oversized bodies (the default limit is 1 MiB).
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    assert_error(
        &s.raw(
            Method::POST,
            "/api/fleet/agent_policies",
            "application/json",
            big.into_bytes(),
        )
        .await,
        413,
        "larger",
    );

    // Every response carries a request id; a given one is echoed.
    let resp = reqwest::Client::new()
        .get(format!("{}/api/fleet/agent_policies/missing", s.url))
        .header("authorization", format!("ApiKey {}", s.key))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-123");
}

#[tokio::test]
async fn operator_keys_can_be_created_used_and_revoked() {
    let s = Server::sqlite();
    let (st, created) = s
        .post("/api/flotilla/api_keys", json!({"name": "ci"}))
        .await;
    assert_eq!(st, 200, "{created}");
    let key = created["item"]["api_key"].as_str().unwrap().to_owned();
    let id = created["item"]["id"].as_str().unwrap().to_owned();
    let (st, _) = s
        .call_with_key(Method::GET, "/api/fleet/outputs", None, Some(&key))
        .await;
    assert_eq!(st, 200);
    let (_, listed) = s.get("/api/flotilla/api_keys").await;
    assert!(
        !listed.to_string().contains(&key),
        "secrets are never listed"
    );
    assert_error(
        &s.post("/api/flotilla/api_keys", json!({"name": "ci"}))
            .await,
        409,
        "ci",
    );
    assert_eq!(
        s.delete(&format!("/api/flotilla/api_keys/{id}")).await.0,
        200
    );
    assert_error(
        &s.call_with_key(Method::GET, "/api/fleet/outputs", None, Some(&key))
            .await,
        401,
        "revoked",
    );
}

#[tokio::test]
async fn openapi_document_and_metrics_are_served() {
    let s = Server::sqlite();
    let (st, doc) = s.get("/api/fleet/openapi.json").await;
    assert_eq!(st, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/fleet/outputs",
        "/api/fleet/agent_policies/{id}/full",
        "/api/fleet/package_policies",
        "/api/fleet/enrollment_api_keys",
        "/api/fleet/agents/{id}/reassign",
        "/api/fleet/agents/{id}/unenroll",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["CreatePackagePolicy"].is_object());
    let get_output = &doc["paths"]["/api/fleet/outputs/{id}"]["get"];
    assert_eq!(
        get_output["parameters"][0]["name"], "id",
        "path parameters are declared"
    );
    assert_eq!(get_output["parameters"][0]["in"], "path");

    s.get("/api/fleet/outputs").await;
    let text = reqwest::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(text.contains("path=\"/api/fleet/outputs\""), "{text}");
    let (st, health) = s.get("/healthz").await;
    assert_eq!((st, health["storage"].as_str()), (200, Some("sqlite")));
}
