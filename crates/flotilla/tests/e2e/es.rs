//! The embedded output's Elasticsearch-compatible surface, end to end: the
//! official Python client (installed by the test set-up) against the real
//! binary, and the wire details it relies on.

use std::io::Write as _;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};

use crate::fleet::{output_key, policy_change, quick_polls};
use crate::support::Server;

/// A server with an agent on policy `web` (nginx in namespace `prod`): its
/// output key, base64-encoded as clients send it.
async fn agent_with_key() -> (Server, String) {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let agent = s.enroll(&token).await;
    let r = s.checkin(&agent, json!({"status": "online"})).await;
    let change = policy_change(&r);
    // A fresh install is a complete loop: agents ship to this server.
    assert_eq!(
        change["data"]["policy"]["outputs"]["fleet-default-output"]["hosts"],
        json!([s.url])
    );
    let key = output_key(change);
    (s, base64::engine::general_purpose::STANDARD.encode(key))
}

async fn bulk(s: &Server, key: &str, path: &str, body: Vec<u8>, gzip: bool) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", s.url))
        .header("authorization", format!("ApiKey {key}"))
        .header(
            "content-type",
            "application/vnd.elasticsearch+x-ndjson; compatible-with=9",
        );
    let body = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&body).unwrap();
        req = req.header("content-encoding", "gzip");
        enc.finish().unwrap()
    } else {
        body
    };
    req.body(body).send().await.unwrap()
}

#[tokio::test]
async fn bulk_items_are_authorised_one_by_one_and_fail_alone() {
    let (s, key) = agent_with_key().await;
    let body = concat!(
        "{\"create\":{\"_index\":\"logs-nginx.access-prod\"}}\n{\"message\":\"ok 1\"}\n",
        "{\"create\":{\"_index\":\"logs-secret-prod\"}}\n{\"message\":\"not mine\"}\n",
        "not json at all\n{\"message\":\"its source\"}\n",
        "{\"create\":{\"_index\":\"logs-nginx.access-prod\"}}\n{not a document\n",
        "{\"index\":{\"_index\":\"logs-nginx.access-prod\"}}\n{\"message\":\"index op\"}\n",
        "{\"create\":{\"_index\":\"my-index\"}}\n{\"message\":\"not a data stream\"}\n",
        "{\"create\":{}}\n{\"message\":\"ok 2\",\"@timestamp\":\"2026-12-01T10:00:00Z\"}\n",
        "{\"create\":{\"_id\":\"\"}}\n{\"message\":\"empty id\"}\n",
        "{\"create\":{}}\n\n",
        "{\"create\":{}}\n{\"message\":\"nul \\u0000\"}\n",
        "{\"create\":{}}\n{\"message\":\"ok 3\"}\n",
    );
    let resp = bulk(
        &s,
        &key,
        "/logs-nginx.error-prod/_bulk",
        body.as_bytes().to_vec(),
        true,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-elastic-product"], "Elasticsearch");
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["errors"], true);
    let statuses: Vec<u64> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i.as_object().unwrap().values().next().unwrap()["status"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        statuses,
        [201, 403, 400, 400, 400, 400, 201, 400, 400, 400, 201],
        "{r}"
    );
    assert_eq!(
        r["items"][1]["create"]["error"]["type"],
        "security_exception"
    );
    assert_eq!(
        r["items"][3]["create"]["error"]["type"],
        "document_parsing_exception"
    );
    assert_eq!(
        r["items"][6]["create"]["_index"], "logs-nginx.error-prod",
        "the URL's index"
    );

    // The accepted documents are stored, with @timestamp filled in.
    let (_, streams) = s.get("/api/fleet/data_streams").await;
    let names: Vec<&str> = streams["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["logs-nginx.access-prod", "logs-nginx.error-prod"],
        "{streams}"
    );
    let (_, found) = s
        .get("/api/fleet/data_streams/logs-nginx.access-prod/_search")
        .await;
    assert_eq!(found["total"], 1);
    assert_eq!(found["items"][0]["_source"]["message"], "ok 1");
    assert!(found["items"][0]["_source"]["@timestamp"].is_string());

    // No key: 401 in Elasticsearch's shape, with the product header.
    let resp = reqwest::Client::new()
        .post(format!("{}/_bulk", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["x-elastic-product"], "Elasticsearch");
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["type"], "security_exception");
}

#[tokio::test]
async fn an_oversized_bulk_is_413() {
    let s = quick_polls(Server::builder().env("FLOTILLA_HTTP__MAX_BULK_BYTES", "65536"))
        .start()
        .unwrap();
    let token = s.policy_with_token("web").await;
    let agent = s.enroll(&token).await;
    let r = s.checkin(&agent, json!({"status": "online"})).await;
    let key = base64::engine::general_purpose::STANDARD.encode(output_key(policy_change(&r)));
    let line = "{\"create\":{\"_index\":\"logs-nginx.access-prod\"}}\n{\"message\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}\n";
    let resp = bulk(&s, &key, "/_bulk", line.repeat(2000).into_bytes(), false).await;
    assert_eq!(resp.status(), 413);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["error"]["type"], "content_too_long_exception");
}

const CLIENT_SCRIPT: &str = r#"
import json, sys
from elasticsearch import Elasticsearch, helpers

url, output_key, operator_key = sys.argv[1:4]
out = {}
es = Elasticsearch(url, api_key=output_key, request_timeout=30)
out["info"] = dict(es.info())
out["ping"] = es.ping()
docs = [{"_op_type": "create", "_index": "logs-nginx.access-prod", "message": f"line {i}"} for i in range(50)]
out["allowed"] = helpers.bulk(es, docs, raise_on_error=False)
denied = [{"_op_type": "create", "_index": "logs-secret-prod", "message": "x"} for _ in range(3)]
ok, errors = helpers.bulk(es, denied, raise_on_error=False)
out["denied"] = [ok, [list(e.values())[0]["status"] for e in errors]]

admin = Elasticsearch(url, api_key=operator_key, request_timeout=30)
created = admin.security.create_api_key(
    name="py-key",
    role_descriptors={"writer": {"indices": [{"names": ["logs-app-*"], "privileges": ["create_doc", "auto_configure"]}]}},
    expiration="1d",
    metadata={"purpose": "test"},
)
out["created"] = dict(created)
writer = Elasticsearch(url, api_key=created["encoded"], request_timeout=30)
out["writer"] = helpers.bulk(writer, [{"_op_type": "create", "_index": "logs-app-prod", "m": 1}], raise_on_error=False)
out["got"] = dict(admin.security.get_api_key(id=created["id"]))
out["by_name"] = dict(admin.security.get_api_key(name="py-key"))
try:
    admin.security.create_api_key(name="too-much", role_descriptors={"r": {"indices": [{"names": ["*"], "privileges": ["all"]}]}})
    out["too_much"] = "created"
except Exception as e:
    out["too_much"] = getattr(e, "status_code", None) or getattr(getattr(e, "meta", None), "status", None)
out["invalidated"] = dict(admin.security.invalidate_api_key(ids=[created["id"]]))
out["again"] = dict(admin.security.invalidate_api_key(ids=[created["id"]]))
try:
    writer.info()
    out["after"] = "accepted"
except Exception as e:
    out["after"] = getattr(getattr(e, "meta", None), "status", None)
print(json.dumps(out))
"#;

#[tokio::test]
async fn the_official_python_client_indexes_and_manages_keys() {
    let Some(python) = flotilla_testkit::python::elasticsearch_client() else {
        return;
    };
    let (s, key) = agent_with_key().await;
    let out = tokio::process::Command::new(python)
        .args(["-c", CLIENT_SCRIPT, &s.url, &key, &s.key])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r["info"]["version"]["number"]
            .as_str()
            .unwrap()
            .starts_with("9."),
        "{r}"
    );
    assert_eq!(r["ping"], true);
    assert_eq!(
        r["allowed"],
        json!([50, []]),
        "every allowed document accepted"
    );
    assert_eq!(
        r["denied"],
        json!([0, [403, 403, 403]]),
        "every refused one 403"
    );
    let id = r["created"]["id"].as_str().unwrap();
    assert!(
        r["created"]["encoded"].is_string() && r["created"]["expiration"].is_number(),
        "{r}"
    );
    assert_eq!(
        r["writer"],
        json!([1, []]),
        "the new key writes where it may"
    );
    let got = &r["got"]["api_keys"][0];
    assert_eq!(got["id"], id);
    assert_eq!(got["name"], "py-key");
    assert_eq!(got["metadata"]["purpose"], "test");
    assert!(
        got.get("api_key").is_none()
            && !r["got"]
                .to_string()
                .contains(r["created"]["api_key"].as_str().unwrap()),
        "never the secret"
    );
    assert_eq!(r["by_name"]["api_keys"].as_array().unwrap().len(), 1);
    assert_eq!(r["too_much"], 403, "never beyond the ceiling");
    assert_eq!(r["invalidated"]["invalidated_api_keys"], json!([id]));
    assert_eq!(
        r["again"]["previously_invalidated_api_keys"],
        json!([id]),
        "twice is not an error"
    );
    assert_eq!(r["after"], 401);

    // Nothing of the refused documents was stored.
    let (_, streams) = s.get("/api/fleet/data_streams").await;
    let text = streams.to_string();
    assert!(!text.contains("logs-secret-prod"), "{text}");
    let access = streams["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "logs-nginx.access-prod")
        .unwrap();
    assert_eq!(access["documents"], 50);
}

#[tokio::test]
async fn keys_are_never_created_beyond_their_creator() {
    let (s, key) = agent_with_key().await;
    // An agent's output key holds no key-management privilege.
    let (st, e) = s
        .call_with_key(
            Method::POST,
            "/_security/api_key",
            Some(json!({"name": "mine"})),
            None,
        )
        .await;
    assert_eq!(st, 401, "{e}");
    let resp = reqwest::Client::new()
        .post(format!("{}/_security/api_key", s.url))
        .header("authorization", format!("ApiKey {key}"))
        .json(&json!({"name": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // An operator's key is limited by the ceiling; a granted key by its user.
    let (st, created) = s
        .call(Method::POST, "/_security/api_key", Some(json!({"name": "w", "role_descriptors": {"r": {"cluster": ["monitor"], "indices": [{"names": ["logs-*"], "privileges": ["create_doc"]}]}}})))
        .await;
    assert_eq!(st, 200, "{created}");
    let user = created["encoded"].as_str().unwrap();
    let (st, granted) = s
        .call(
            Method::POST,
            "/_security/api_key/grant",
            Some(json!({"grant_type": "access_token", "access_token": user,
                        "api_key": {"name": "g", "role_descriptors": {"r": {"indices": [{"names": ["metrics-*"], "privileges": ["create_doc"]}]}}}})),
        )
        .await;
    assert_eq!(st, 403, "beyond what the user holds: {granted}");
    let (st, granted) = s
        .call(
            Method::POST,
            "/_security/api_key/grant",
            Some(json!({"grant_type": "access_token", "access_token": user, "api_key": {"name": "g"}})),
        )
        .await;
    assert_eq!(st, 200, "{granted}");
    let (_, listed) = s
        .call(
            Method::GET,
            &format!("/_security/api_key?id={}", granted["id"].as_str().unwrap()),
            None,
        )
        .await;
    let k = &listed["api_keys"][0];
    assert_eq!(
        k["username"], created["id"],
        "owned by the user it was granted for"
    );
    assert_eq!(
        k["role_descriptors"]["r"]["indices"][0]["names"],
        json!(["logs-*"]),
        "the user's own descriptors"
    );
    // A malformed body is refused without repeating what it held.
    let (st, e) = s
        .call(
            Method::POST,
            "/_security/api_key/grant",
            Some(json!({"grant_type": "access_token", "access_token": user, "api_key": "s3cr3t-in-the-wrong-place"})),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    assert!(!e.to_string().contains("s3cr3t"), "{e}");
    // A granted key lives no longer than the key it was granted for.
    let root_status = |k: String| {
        let url = format!("{}/", s.url);
        async move {
            reqwest::Client::new()
                .get(url)
                .header("authorization", format!("ApiKey {k}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let granted_key = granted["encoded"].as_str().unwrap().to_owned();
    assert_eq!(root_status(granted_key.clone()).await, 200);
    let (st, _) = s
        .call(
            Method::DELETE,
            "/_security/api_key",
            Some(json!({"ids": [created["id"]]})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        root_status(granted_key).await,
        401,
        "its user's key is invalidated"
    );
}

#[tokio::test]
async fn retention_deletes_old_documents_and_the_cli_lists_searches_and_tails() {
    let s = quick_polls(
        Server::builder()
            .env("FLOTILLA_DATA__RETENTION", "1h")
            .env("FLOTILLA_DATA__RETENTION_INTERVAL", "1s"),
    )
    .start()
    .unwrap();
    let token = s.policy_with_token("web").await;
    let agent = s.enroll(&token).await;
    let r = s.checkin(&agent, json!({"status": "online"})).await;
    let key = base64::engine::general_purpose::STANDARD.encode(output_key(policy_change(&r)));
    let old = (chrono::Utc::now() - chrono::Duration::days(2)).to_rfc3339();
    let body = format!(
        "{{\"create\":{{}}}}\n{{\"message\":\"old\",\"@timestamp\":\"{old}\"}}\n{{\"create\":{{}}}}\n{{\"message\":\"new one\",\"host\":{{\"name\":\"web-1\"}}}}\n"
    );
    let resp = bulk(
        &s,
        &key,
        "/logs-nginx.access-prod/_bulk",
        body.into_bytes(),
        false,
    )
    .await;
    assert_eq!(resp.status(), 200);

    // Retention runs every second: wait for the old document to go.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, found) = s
            .get("/api/fleet/data_streams/logs-nginx.access-prod/_search")
            .await;
        if found["total"] == 1 {
            assert_eq!(found["items"][0]["_source"]["message"], "new one");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention never ran: {found}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let list = s.cli(&["data", "list"]);
    assert!(list.status.success());
    assert!(String::from_utf8_lossy(&list.stdout).contains("logs-nginx.access-prod"));
    let found = s.cli(&[
        "data",
        "search",
        "logs-nginx.access-prod",
        "--since",
        "1h",
        "--match",
        "host.name=web-1",
        "--json",
    ]);
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let found: Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(found["total"], 1);
    let none = s.cli(&[
        "data",
        "search",
        "logs-nginx.access-prod",
        "--match",
        "host.name=web-2",
        "--json",
    ]);
    assert_eq!(
        serde_json::from_slice::<Value>(&none.stdout).unwrap()["total"],
        0
    );
    let missing = s.cli(&["data", "search", "logs-nope-prod"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));

    // `tail` prints what arrives after it starts, as JSON lines.
    let mut tail = crate::support::command()
        .args([
            "data",
            "tail",
            "logs-nginx.access-prod",
            "--interval",
            "200ms",
        ])
        .env("FLOTILLA_URL", &s.url)
        .env("FLOTILLA_API_KEY", &s.key)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // Keep sending until tail has seen one (it starts from "now").
    let mut got = None;
    for i in 0..50 {
        let body = format!("{{\"create\":{{}}}}\n{{\"message\":\"tailed {i}\"}}\n");
        bulk(
            &s,
            &key,
            "/logs-nginx.access-prod/_bulk",
            body.into_bytes(),
            false,
        )
        .await;
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(500)) {
            got = Some(line);
            break;
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let line: Value = serde_json::from_str(&got.expect("tail printed an event")).unwrap();
    assert!(
        line["_source"]["message"]
            .as_str()
            .unwrap()
            .starts_with("tailed"),
        "{line}"
    );
}

/// An output on an existing cluster (a second Flotilla plays it): agents'
/// keys are minted, rotated and invalidated there, and it enforces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_live_in_an_existing_cluster() {
    let cluster = Server::sqlite();
    let s = quick_polls(Server::builder()).start().unwrap();
    let (st, out) = s
        .post(
            "/api/fleet/outputs",
            json!({"id": "cluster", "name": "cluster", "type": "elasticsearch", "hosts": [cluster.url],
                   "secrets": {"api_key": cluster.key}}),
        )
        .await;
    assert_eq!(st, 200, "{out}");
    assert_eq!(out["item"]["remote_key_management"], true);
    assert!(
        !out.to_string().contains(&cluster.key),
        "the credential is never returned"
    );
    s.post(
        "/api/fleet/agent_policies",
        json!({"id": "web", "name": "web", "namespace": "prod", "output_id": "cluster"}),
    )
    .await;
    s.post(
        "/api/fleet/package_policies",
        json!({"name": "nginx-web", "policy_id": "web", "package": {"name": "nginx"}}),
    )
    .await;
    let (_, token) = s
        .post(
            "/api/fleet/enrollment_api_keys",
            json!({"policy_id": "web"}),
        )
        .await;
    let agent = s.enroll(token["item"]["api_key"].as_str().unwrap()).await;
    let r = s.checkin(&agent, json!({"status": "online"})).await;
    let first = policy_change(&r).clone();
    let k1 = output_key(&first);
    let k1_id = k1.split_once(':').unwrap().0.to_owned();
    let encoded = |k: &str| base64::engine::general_purpose::STANDARD.encode(k);

    // The key is the cluster's: it knows it and enforces it.
    let (_, known) = cluster
        .call(Method::GET, &format!("/_security/api_key?id={k1_id}"), None)
        .await;
    assert_eq!(known["api_keys"][0]["invalidated"], false, "{known}");
    let line = |index: &str| {
        format!("{{\"create\":{{\"_index\":\"{index}\"}}}}\n{{\"message\":\"hi\"}}\n").into_bytes()
    };
    let r1 = bulk(
        &cluster,
        &encoded(&k1),
        "/_bulk",
        line("logs-nginx.access-prod"),
        false,
    )
    .await;
    assert_eq!(
        r1.json::<Value>().await.unwrap()["items"][0]["create"]["status"],
        201
    );
    let r2 = bulk(
        &cluster,
        &encoded(&k1),
        "/_bulk",
        line("logs-system.auth-prod"),
        false,
    )
    .await;
    assert_eq!(
        r2.json::<Value>().await.unwrap()["items"][0]["create"]["status"],
        403
    );

    // A permission change rotates it there; the old one goes after the ack.
    let rev1 = first["id"].as_str().unwrap().to_owned();
    s.ack(&agent, &[&rev1]).await;
    s.post(
        "/api/fleet/package_policies",
        json!({"name": "sys-web", "policy_id": "web", "package": {"name": "system"}}),
    )
    .await;
    let r = s
        .checkin(&agent, json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": first["data"]["policy"]["revision"]}))
        .await;
    let second = policy_change(&r).clone();
    let k2 = output_key(&second);
    assert_ne!(k1, k2);
    let r3 = bulk(
        &cluster,
        &encoded(&k2),
        "/_bulk",
        line("logs-system.auth-prod"),
        false,
    )
    .await;
    assert_eq!(
        r3.json::<Value>().await.unwrap()["items"][0]["create"]["status"],
        201,
        "the new key holds the new permissions"
    );
    s.ack(&agent, &[second["id"].as_str().unwrap()]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, k) = cluster
            .call(Method::GET, &format!("/_security/api_key?id={k1_id}"), None)
            .await;
        if k["api_keys"][0]["invalidated"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old key was never invalidated in the cluster: {k}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let r4 = bulk(
        &cluster,
        &encoded(&k1),
        "/_bulk",
        line("logs-nginx.access-prod"),
        false,
    )
    .await;
    assert_eq!(r4.status(), 401, "the cluster refuses the retired key");

    // The cluster's keys are the cluster's: this server does not take them.
    let here = bulk(
        &s,
        &encoded(&k2),
        "/_bulk",
        line("logs-system.auth-prod"),
        false,
    )
    .await;
    assert_eq!(here.status(), 401);

    // The cluster goes away: a change cannot rotate the key. The new
    // revision is held back (a retryable 503, so the agent backs off and
    // keeps running on its current key, which nothing retires), and the
    // agent's record says why.
    drop(cluster);
    s.put(
        "/api/fleet/agent_policies/web",
        json!({"namespace": "staging"}),
    )
    .await;
    let r = s
        .checkin(&agent, json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": second["data"]["policy"]["revision"]}))
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    let (_, a) = s.get(&format!("/api/fleet/agents/{}", agent.0)).await;
    let err = a["item"]["output_key_error"].as_str().unwrap_or_default();
    assert!(err.contains("unreachable"), "{a}");
}

/// A cluster that refuses the output's credential: no key is minted, the
/// check-in is retryable, and the agent's record and the log say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_refusing_the_credential_leaves_the_reason_on_the_agent() {
    let cluster = Server::sqlite();
    let s = quick_polls(Server::builder()).start().unwrap();
    let (st, _) = s
        .post(
            "/api/fleet/outputs",
            json!({"id": "cluster", "name": "cluster", "type": "elasticsearch", "hosts": [cluster.url],
                   "secrets": {"api_key": "bm90OmEta2V5LXRoZS1jbHVzdGVyLWtub3dz"}}),
        )
        .await;
    assert_eq!(st, 200);
    s.post(
        "/api/fleet/agent_policies",
        json!({"id": "web", "name": "web", "output_id": "cluster"}),
    )
    .await;
    let (_, token) = s
        .post(
            "/api/fleet/enrollment_api_keys",
            json!({"policy_id": "web"}),
        )
        .await;
    let agent = s.enroll(token["item"]["api_key"].as_str().unwrap()).await;
    let r = s.checkin(&agent, json!({"status": "online"})).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let (_, a) = s.get(&format!("/api/fleet/agents/{}", agent.0)).await;
    let err = a["item"]["output_key_error"].as_str().unwrap_or_default();
    assert!(err.contains("refused the output's credential (401)"), "{a}");
    assert!(
        !err.contains("bm90Om"),
        "the credential is not in the reason"
    );
    let log = s.stop_with_stderr();
    assert!(
        log.contains("could not mint the agent's output key"),
        "{log}"
    );
}
