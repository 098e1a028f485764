//! The hostile client: attacks from the security and reliability audit,
//! each run in seconds against the real binary, so every capability added
//! later is checked against them too. Each test failed before its fix.
//!
//! Long on purpose: one standing module, so that every attack is found and
//! run in one place.

use std::io::Write as _;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fleet::{
    assert_fleet_error, output_key, policy_change, quick_polls, slow_polls, wait_for_waiting_polls,
};
use crate::support::{assert_error, Engine, Server, ELASTIC_UA};

fn addr(s: &Server) -> String {
    s.url.trim_start_matches("http://").to_owned()
}

/// Read what the server sends until it closes the connection or `bound`
/// passes (`None`: still open then).
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(bound, read).await.ok()?;
    Some(got)
}

/// One raw HTTP/1.1 response (head and body as text) from `stream`.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn es_key(agent_key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(agent_key)
}

/// An agent that enrolled and acked its first policy, with its output key.
async fn running_agent(s: &Server, policy: &str) -> ((String, String), String) {
    let token = s.policy_with_token(policy).await;
    let agent = s.enroll(&token).await;
    let first = s.checkin(&agent, json!({"status": "online"})).await;
    let change = policy_change(&first).clone();
    let key = output_key(&change);
    s.ack(&agent, &[change["id"].as_str().unwrap()]).await;
    (agent, key)
}

// --- 1. _has_privileges ------------------------------------------------------------

#[tokio::test]
async fn has_privileges_is_bounded_and_reads_no_body_before_authentication() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let (_, key) = running_agent(&s, "web").await;

    // Beyond the cap: 400 in Elasticsearch's shape, at once.
    let names: Vec<String> = (0..200).map(|i| format!("logs-n{i}-prod")).collect();
    let privileges: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
    let (st, body) = s
        .es(
            Method::POST,
            "/_security/user/_has_privileges",
            &key,
            Some(json!({"index": [{"names": names, "privileges": privileges}]})),
        )
        .await;
    assert_eq!(st, 400, "{body}");
    assert_eq!(body["status"], 400);
    assert_eq!(
        body["error"]["type"], "illegal_argument_exception",
        "{body}"
    );
    assert!(body["error"]["reason"]
        .as_str()
        .unwrap()
        .contains("20000 privilege checks"));

    // Within it, the answer is right.
    let (st, body) = s
        .es(
            Method::POST,
            "/_security/user/_has_privileges",
            &key,
            Some(json!({"index": [{"names": ["logs-nginx.access-prod", "logs-other-prod"], "privileges": ["create_doc"]}]})),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body["index"]["logs-nginx.access-prod"]["create_doc"], true,
        "{body}"
    );
    assert_eq!(body["index"]["logs-other-prod"]["create_doc"], false);

    // Names longer than Elasticsearch allows are refused: a check's cost
    // is bounded too, not only their number.
    let (st, body) = s
        .es(
            Method::POST,
            "/_security/user/_has_privileges",
            &key,
            Some(json!({"index": [{"names": ["l".repeat(300)], "privileges": ["create_doc"]}]})),
        )
        .await;
    assert_eq!(st, 400, "{body}");
    assert!(
        body["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("255 bytes"),
        "{body}"
    );

    // A body over the route's small limit: 413 in Elasticsearch's shape.
    let big = json!({"index": [{"names": ["x".repeat(100_000)], "privileges": ["read"]}]});
    let (st, body) = s
        .es(
            Method::POST,
            "/_security/user/_has_privileges",
            &key,
            Some(big),
        )
        .await;
    assert_eq!(st, 413, "{body}");
    assert_eq!(body["status"], 413, "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");

    // Unauthenticated, announcing 2 MB and sending none of it: refused
    // without waiting for the body.
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(
        b"POST /_security/user/_has_privileges HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n",
    )
    .await
    .unwrap();
    let resp = read_response(&mut c).await;
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(resp.contains("security_exception"), "{resp}");
}

// --- 2. a recreated policy ---------------------------------------------------------

#[tokio::test]
async fn a_recreated_policy_never_serves_the_deleted_ones_content_or_keys() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let (agent, _) = running_agent(&s, "q").await;
    let (st, _) = s
        .post(
            &format!("/api/fleet/agents/{}/unenroll", agent.0),
            json!({"revoke": true}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, body) = s.delete("/api/fleet/agent_policies/q").await;
    assert_eq!(st, 200, "{body}");

    // Recreated with the same id, now collecting system logs instead.
    s.post(
        "/api/fleet/agent_policies",
        json!({"id": "q", "name": "q", "namespace": "prod"}),
    )
    .await;
    let (st, _) = s
        .post(
            "/api/fleet/package_policies",
            json!({"name": "sys", "policy_id": "q", "package": {"name": "system"}}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, full) = s.get("/api/fleet/agent_policies/q/full").await;
    let revision = full["item"]["revision"].as_i64().unwrap();
    assert!(revision > 2, "revisions continue past the deleted policy's");
    let (_, key) = s
        .post("/api/fleet/enrollment_api_keys", json!({"policy_id": "q"}))
        .await;
    let fresh = s.enroll(key["item"]["api_key"].as_str().unwrap()).await;
    let r = s.checkin(&fresh, json!({"status": "online"})).await;
    let change = policy_change(&r);
    assert_eq!(change["id"], format!("policy:q:{revision}"));
    let inputs = change["data"]["policy"]["inputs"].to_string();
    assert!(
        !inputs.contains("nginx"),
        "the deleted policy's inputs: {inputs}"
    );
    assert!(inputs.contains("system.syslog"), "{inputs}");
    let key = output_key(change);
    let (_, has) = s
        .es(
            Method::POST,
            "/_security/user/_has_privileges",
            &key,
            Some(json!({"index": [{"names": ["logs-nginx.access-prod", "logs-system.syslog-prod"], "privileges": ["create_doc"]}]})),
        )
        .await;
    assert_eq!(
        has["index"]["logs-nginx.access-prod"]["create_doc"], false,
        "{has}"
    );
    assert_eq!(
        has["index"]["logs-system.syslog-prod"]["create_doc"], true,
        "{has}"
    );
}

// --- 3. connections ----------------------------------------------------------------

#[tokio::test]
async fn silent_trickling_and_idle_connections_are_closed() {
    let s = Server::builder()
        .env("FLOTILLA_HTTP__HEADER_READ_TIMEOUT", "1s")
        .env("FLOTILLA_HTTP__IDLE_TIMEOUT", "2s")
        .start()
        .unwrap();
    let bound = Duration::from_secs(15);

    // Sends nothing.
    let mut silent = TcpStream::connect(addr(&s)).await.unwrap();
    // One header line every 300 ms: never completes its headers.
    let mut trickle = TcpStream::connect(addr(&s)).await.unwrap();
    let trickler = tokio::spawn(async move {
        trickle.write_all(b"GET /healthz HTTP/1.1\r\n").await.ok();
        for i in 0..40 {
            if trickle
                .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        false
    });
    // Answered once, then idle with keep-alive.
    let mut idle = TcpStream::connect(addr(&s)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));

    assert!(
        read_until_closed(&mut silent, bound).await.is_some(),
        "a connection that sends nothing is closed"
    );
    assert!(
        trickler.await.unwrap(),
        "a connection that trickles its headers is closed"
    );
    assert_eq!(
        read_until_closed(&mut idle, bound).await.as_deref(),
        Some(&b""[..]),
        "an idle keep-alive connection is closed, with nothing more sent"
    );
    // And the server still answers.
    assert_eq!(s.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn the_connection_cap_answers_429_beyond_it_and_serves_again_once_one_closes() {
    let s = Server::builder()
        .env("FLOTILLA_HTTP__MAX_CONNECTIONS", "2")
        .env("FLOTILLA_HTTP__HEADER_READ_TIMEOUT", "60s")
        .start()
        .unwrap();
    let a = addr(&s);
    let first = TcpStream::connect(&a).await.unwrap();
    let _second = TcpStream::connect(&a).await.unwrap();
    let mut third = TcpStream::connect(&a).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Beyond the cap: shed at once with 429, Retry-After and the JSON
    // body, then closed — not queued.
    let resp = read_until_closed(&mut third, Duration::from_secs(10))
        .await
        .expect("the refused connection is closed");
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 429"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("retry-after: "),
        "{resp}"
    );
    assert!(resp.contains(r#""error":"MaxLimit""#), "{resp}");
    // Served again once one closes.
    drop(first);
    let mut ok = false;
    for _ in 0..100 {
        let mut fourth = TcpStream::connect(&a).await.unwrap();
        fourth
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let resp = read_response(&mut fourth).await;
        if resp.starts_with("HTTP/1.1 200") {
            ok = true;
            break;
        }
        assert!(resp.starts_with("HTTP/1.1 429"), "{resp}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "served again once a connection closed");
}

#[tokio::test]
async fn an_open_file_limit_lowers_the_cap_instead_of_failing_accepts() {
    // The server under a 300-descriptor limit, then 400 connections.
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new("sh");
    for (k, _) in std::env::vars() {
        if k.starts_with("FLOTILLA_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.arg("-c")
        .arg(format!(
            "ulimit -n 300 && exec '{}' server --listen 127.0.0.1:0 --data-dir '{}'",
            crate::support::bin(),
            tmp.path().join("data").display()
        ))
        .env("FLOTILLA_ADMIN_API_KEY", crate::support::ADMIN_KEY)
        .env("FLOTILLA_HTTP__HEADER_READ_TIMEOUT", "2s")
        .env("FLOTILLA_HTTP__MAX_CONNECTIONS", "10000")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let line = lines.find_map(|l| {
            l.ok()
                .and_then(|l| l.strip_prefix("listening on ").map(str::to_owned))
        });
        // Keep draining.
        std::thread::spawn(move || for _ in lines {});
        line
    })
    .await
    .unwrap()
    .expect("the server became ready");
    let mut held = Vec::new();
    for _ in 0..400 {
        if let Ok(c) = TcpStream::connect(&line).await {
            held.push(c);
        }
    }
    drop(held);
    // Served again once they are gone (the header timeout clears them).
    let url = format!("http://{line}/healthz");
    let mut ok = false;
    for _ in 0..200 {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), reqwest::get(&url)).await {
            if r.status() == 200 {
                ok = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(ok, "the server answers after the flood");
    assert!(
        stderr.contains("http.max_connections lowered"),
        "the cap is fitted to the limit: {stderr}"
    );
    assert!(
        !stderr.contains("Too many open files"),
        "accept never runs out of descriptors: {stderr}"
    );
}

// --- 4. metric labels --------------------------------------------------------------

#[tokio::test]
async fn invented_methods_do_not_create_metric_series() {
    let s = Server::sqlite();
    let http = reqwest::Client::new();
    for i in 0..30 {
        let m = Method::from_bytes(format!("INVENTED{i}{}", "X".repeat(150)).as_bytes()).unwrap();
        let _ = http
            .request(m, format!("{}/nowhere/{i}", s.url))
            .send()
            .await;
    }
    let text = reqwest::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("INVENTED"), "a series per invented method");
    assert!(!text.contains("/nowhere"), "a series per unmatched path");
    assert!(text.contains(r#"method="other""#), "{text}");
}

// --- 5. one request limit for all operators' routes, one for all agents' ---------

/// A request that stops half-way through its body holds its slot (bodies
/// are read inside the limit).
async fn half_request(s: &Server, head: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr(s)).await.unwrap();
    c.write_all(
        format!("{head}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\"")
            .as_bytes(),
    )
    .await
    .unwrap();
    c
}

/// Probe `path` until it is shed while `hold` keeps a slot taken (if the
/// probe itself held the slot when the holder arrived, the holder was the
/// one refused: hold again).
async fn shed_while_held<F, Fut>(
    s: &Server,
    path: &str,
    hold: F,
) -> ((u16, serde_json::Value), TcpStream)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = TcpStream>,
{
    let mut held = hold().await;
    for _ in 0..200 {
        let r = s.get(path).await;
        if r.0 == 503 || r.0 == 429 {
            // Still held: the slot is known to be taken.
            return (r, held);
        }
        let mut buf = [0u8; 16];
        let answered = tokio::time::timeout(Duration::from_millis(25), held.read(&mut buf)).await;
        if answered.is_ok() {
            held = hold().await;
        }
    }
    panic!("{path} was never shed")
}

#[tokio::test]
async fn one_request_limit_for_all_operators_routes_and_one_for_all_agents() {
    let s = Server::builder()
        .env("FLOTILLA_HTTP__MAX_CONCURRENT_REQUESTS", "1")
        .env("FLOTILLA_FLEET__MAX_CONCURRENT_REQUESTS", "1")
        .start()
        .unwrap();
    let token = s.policy_with_token("web").await;
    // An enrolment holds the agents' one slot: another agent route is
    // shed in the fleet protocol's terms — it was not when each route had
    // a limit of its own — while operators keep theirs.
    let enrol = format!(
        "POST /api/fleet/agents/enroll HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {token}\r\nUser-Agent: {ELASTIC_UA}\r\n"
    );
    let (shed, held) = shed_while_held(&s, "/api/status", || half_request(&s, &enrol)).await;
    assert_eq!(shed.0, 429, "{shed:?}");
    assert_eq!(shed.1["error"], "MaxLimit");
    assert_eq!(
        s.get("/api/fleet/agent_policies").await.0,
        200,
        "agents took an operator's slot"
    );
    drop(held);
    // An operator's request holds the operators' one slot: another
    // operator route is shed; agents keep theirs.
    let create = format!(
        "POST /api/fleet/agent_policies HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {}\r\n",
        s.key
    );
    let (shed, held) =
        shed_while_held(&s, "/api/fleet/outputs", || half_request(&s, &create)).await;
    assert_error(&shed, 503, "overloaded");
    assert_eq!(
        s.get("/api/status").await.0,
        200,
        "operators took an agent's slot"
    );
    drop(held);
    // The probes stay outside both limits.
    assert_eq!(s.get("/healthz").await.0, 200);
}

// --- 6. one long poll per agent ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_cannot_take_every_long_poll_slot() {
    let s = slow_polls(Server::builder())
        .env("FLOTILLA_FLEET__MAX_LONG_POLLS", "2")
        .start()
        .unwrap();
    let (a, _) = running_agent(&s, "web").await;
    let token = s
        .post(
            "/api/fleet/enrollment_api_keys",
            json!({"policy_id": "web"}),
        )
        .await
        .1["item"]["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = s.enroll(&token).await;
    let waiting = json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": 2});
    let first = s.spawn_checkin(&a, waiting.clone());
    wait_for_waiting_polls(&s, 1).await;
    let second = s.spawn_checkin(&a, waiting.clone());
    // The newer poll replaces the older, which answers at once, empty.
    let replaced = tokio::time::timeout(Duration::from_secs(20), first)
        .await
        .expect("the older poll is answered when a newer one arrives, not at its deadline")
        .unwrap();
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    assert!(replaced.body.get("actions").is_none(), "{}", replaced.body);
    let third = s.spawn_checkin(&a, waiting);
    assert_eq!(second.await.unwrap().status, 200);
    // Agent b still gets a slot.
    let r = s.checkin(&b, json!({"status": "online"})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(policy_change(&r)["id"], "policy:web:2");
    third.abort();
}

// --- 7. NUL in JSON strings --------------------------------------------------------

async fn nul_is_refused_everywhere(engine: Engine) {
    let Some(s) = quick_polls(Server::builder().engine(engine)).start() else {
        return;
    };
    let (agent, _) = running_agent(&s, "web").await;
    let nul = "a\u{0}b";
    for body in [
        json!({"status": nul}),
        json!({"status": "online", "message": nul}),
        json!({"status": "online", "ack_token": nul}),
        json!({"status": "online", "agent_policy_id": nul, "policy_revision_idx": 1}),
        json!({"status": "online", "local_metadata": {"host": {"name": nul}}}),
    ] {
        let r = s.checkin(&agent, body.clone()).await;
        assert_fleet_error(&r, 400, "BadRequest");
        assert!(
            r.body["message"].as_str().unwrap().contains("NUL"),
            "{body}: {}",
            r.body
        );
    }
    let token = s
        .post(
            "/api/fleet/enrollment_api_keys",
            json!({"policy_id": "web"}),
        )
        .await
        .1["item"]["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s
        .fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(&token),
            Some(json!({"type": "PERMANENT", "enrollment_id": nul, "metadata": {"local": {}, "user_provided": {}}})),
        )
        .await;
    assert_fleet_error(&r, 400, "BadRequest");
    let r = s
        .fleet(
            Method::POST,
            &format!("/api/fleet/agents/{}/acks", agent.0),
            Some(&agent.1),
            Some(json!({"events": [{"type": "ACTION_RESULT", "agent_id": agent.0, "action_id": nul}]})),
        )
        .await;
    assert_fleet_error(&r, 400, "BadRequest");
    for (method, path, body) in [
        (
            Method::PUT,
            "/api/fleet/agent_policies/web".to_owned(),
            json!({"description": nul}),
        ),
        (
            Method::POST,
            "/api/fleet/package_policies".to_owned(),
            json!({"name": "n2", "description": nul, "policy_id": "web", "package": {"name": "nginx"}}),
        ),
        (
            Method::POST,
            "/api/fleet/enrollment_api_keys".to_owned(),
            json!({"policy_id": nul}),
        ),
        (
            Method::POST,
            format!("/api/fleet/agents/{}/reassign", agent.0),
            json!({"policy_id": nul}),
        ),
        (
            Method::POST,
            "/api/fleet/cloud_connectors".to_owned(),
            json!({"name": "c", "cloudProvider": "aws", "vars": {"access_key_id": nul, "secret_access_key": "s"}}),
        ),
        (
            Method::POST,
            "/api/fleet/cloud_connectors".to_owned(),
            json!({"name": "c", "cloudProvider": "aws", "vars": {"access_key_id": "a", "secret_access_key": nul}}),
        ),
    ] {
        let r = s.call(method, &path, Some(body)).await;
        assert_error(&r, 400, "NUL");
    }
    // Nothing was stored.
    let (_, p) = s.get("/api/fleet/agent_policies/web").await;
    assert!(!p.to_string().contains("\\u0000"), "{p}");
}

#[tokio::test]
async fn nul_in_json_is_bad_input_on_sqlite() {
    nul_is_refused_everywhere(Engine::Sqlite).await;
}

#[tokio::test]
async fn nul_in_json_is_bad_input_on_postgres() {
    nul_is_refused_everywhere(Engine::Postgres).await;
}

// --- 8. credentials in the database URL --------------------------------------------

#[tokio::test]
async fn a_password_in_the_database_urls_query_is_never_logged() {
    let Some(cluster) = flotilla_testkit::postgres() else {
        return;
    };
    let url = format!(
        "{}?password=hunter2-query-secret&sslpassword=ssl-secret-42",
        cluster.create_database()
    );
    let s = Server::builder()
        .engine(Engine::Postgres)
        .database_url(&url)
        .env("RUST_LOG", "flotilla=trace,info")
        .start()
        .unwrap();
    assert_eq!(s.get("/healthz").await.0, 200);
    let stderr = s.stop_with_stderr();
    assert!(stderr.contains("opening storage"), "{stderr}");
    assert!(!stderr.contains("hunter2-query-secret"), "{stderr}");
    assert!(!stderr.contains("ssl-secret-42"), "{stderr}");
    assert!(!stderr.contains(crate::support::ADMIN_KEY), "{stderr}");
    assert!(!stderr.contains(crate::support::ENCRYPTION_KEY), "{stderr}");
}

// --- 9. concurrent enrolments with one enrollment id -------------------------------

async fn one_active_agent_per_enrollment_id(engine: Engine) {
    let Some(s) = quick_polls(Server::builder().engine(engine)).start() else {
        return;
    };
    let token = s.policy_with_token("web").await;
    let body = json!({"type": "PERMANENT", "enrollment_id": "vm-9", "metadata": {"local": {}, "user_provided": {}}});
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (url, token, body) = (s.url.clone(), token.clone(), body.clone());
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(format!("{url}/api/fleet/agents/enroll"))
                    .header("authorization", format!("ApiKey {token}"))
                    .header("user-agent", ELASTIC_UA)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let (_, agents) = s.get("/api/fleet/agents").await;
    assert_eq!(agents["total"], 1, "{agents}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enrolments_leave_one_agent_on_sqlite() {
    one_active_agent_per_enrollment_id(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enrolments_leave_one_agent_on_postgres() {
    one_active_agent_per_enrollment_id(Engine::Postgres).await;
}

// --- 10. a key-less output retires the key -----------------------------------------

#[tokio::test]
async fn moving_to_a_key_less_output_retires_the_agents_key() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let (agent, key) = running_agent(&s, "web").await;
    s.post(
        "/api/fleet/outputs",
        json!({"id": "ls", "name": "ls", "type": "logstash", "hosts": ["ls:5044"]}),
    )
    .await;
    let (st, _) = s
        .put("/api/fleet/agent_policies/web", json!({"output_id": "ls"}))
        .await;
    assert_eq!(st, 200);
    let r = s
        .checkin(
            &agent,
            json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": 2}),
        )
        .await;
    let change = policy_change(&r).clone();
    assert!(change["data"]["policy"]["outputs"]["ls"]
        .get("api_key")
        .is_none());
    // Valid until the agent runs the new revision…
    assert_eq!(
        s.es(Method::GET, "/_security/_authenticate", &key, None)
            .await
            .0,
        200
    );
    s.ack(&agent, &[change["id"].as_str().unwrap()]).await;
    // …then invalidated.
    let (st, body) = s
        .es(Method::GET, "/_security/_authenticate", &key, None)
        .await;
    assert_eq!(st, 401, "{body}");
}

// --- lost notifications (storage refactor issue) ---------------------------------

/// A change that sends no notification (made behind the server's back, or
/// whose NOTIFY was lost with the LISTEN connection) still reaches a waiting
/// check-in within `fleet.recheck_interval`, not at the poll's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_delays_a_change_by_the_recheck_interval_at_most() {
    let Some(cluster) = flotilla_testkit::postgres() else {
        return;
    };
    let url = cluster.create_database();
    let s = slow_polls(Server::builder())
        .engine(Engine::Postgres)
        .database_url(&url)
        .env("FLOTILLA_FLEET__RECHECK_INTERVAL", "2s")
        .start()
        .unwrap();
    let (agent, _) = running_agent(&s, "web").await;
    let poll = s.spawn_checkin(
        &agent,
        json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": 2}),
    );
    wait_for_waiting_polls(&s, 1).await;
    // A change that sends no notification at all.
    cluster.execute(
        &url,
        "UPDATE agent_policies SET revision = revision + 1, description = 'behind its back' WHERE id = 'web'",
    );
    let r = tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .expect("delivered within the recheck bound, not at the 60 s poll deadline")
        .unwrap();
    assert_eq!(policy_change(&r)["id"], "policy:web:3", "{}", r.body);
    s.ack(&agent, &["policy:web:3"]).await;

    // The server's LISTEN connection is cut, then a change is made.
    let poll = s.spawn_checkin(
        &agent,
        json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": 3}),
    );
    wait_for_waiting_polls(&s, 1).await;
    cluster.execute(
        &url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    );
    let (st, _) = s
        .put(
            "/api/fleet/agent_policies/web",
            json!({"description": "after the cut"}),
        )
        .await;
    assert_eq!(st, 200);
    let r = tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .expect("delivered within the recheck bound")
        .unwrap();
    assert_eq!(policy_change(&r)["id"], "policy:web:4", "{}", r.body);
}

// --- 11. error bodies --------------------------------------------------------------

#[tokio::test]
async fn odd_encodings_and_paths_get_the_contracts_json_errors() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let (agent, key) = running_agent(&s, "web").await;
    let http = reqwest::Client::new();
    let checkin_url = format!("{}/api/fleet/agents/{}/checkin", s.url, agent.0);
    for coding in ["br", "deflate", "zstd", "gzip, gzip", "compress"] {
        let r = http
            .post(&checkin_url)
            .header("authorization", format!("ApiKey {}", agent.1))
            .header("user-agent", ELASTIC_UA)
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{coding}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["statusCode"], 415, "{coding}: {body}");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("Content-Encoding"));
    }
    for coding in ["GZIP", "x-gzip"] {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(br#"{"status": "online"}"#).unwrap();
        let r = http
            .post(&checkin_url)
            .header("authorization", format!("ApiKey {}", agent.1))
            .header("user-agent", ELASTIC_UA)
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(enc.finish().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{coding} is gzip");
    }
    let r = http
        .post(format!("{}/_security/user/_has_privileges", s.url))
        .header("authorization", format!("ApiKey {}", es_key(&key)))
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], 415, "{body}");

    for route in ["checkin", "acks", "audit/unenroll"] {
        let r = s
            .fleet(
                Method::POST,
                &format!("/api/fleet/agents/%FF/{route}"),
                Some(&agent.1),
                Some(json!({})),
            )
            .await;
        assert_fleet_error(&r, 400, "BadRequest");
    }
}

// --- 12. file modes ----------------------------------------------------------------

#[cfg(unix)]
#[tokio::test]
async fn the_database_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::sqlite();
    // A write, so the WAL files exist.
    s.post("/api/fleet/agent_policies", json!({"id": "m", "name": "m"}))
        .await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&s.data_dir), 0o700);
    for f in [
        "flotilla.db",
        "flotilla.db-wal",
        "flotilla.db-shm",
        "encryption.key",
        "flotilla.lock",
    ] {
        let path = s.data_dir.join(f);
        assert_eq!(mode(&path), 0o600, "{f}");
    }
}

// --- also: what the audit found sound -----------------------------------------------

#[tokio::test]
async fn credentials_do_not_cross_over() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let token = s.policy_with_token("web").await;
    let (agent, output) = running_agent(&s, "other").await;
    let access = agent.1.clone();
    // An enrollment token is no agent credential, nor an operator's.
    let r = s
        .checkin(
            &(agent.0.clone(), token.clone()),
            json!({"status": "online"}),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        s.call_with_key(Method::GET, "/api/fleet/agents", None, Some(&token))
            .await
            .0,
        401
    );
    // An access key enrols nothing and manages nothing.
    let r = s
        .fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(&access),
            Some(json!({"type": "PERMANENT", "metadata": {"local": {}, "user_provided": {}}})),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        s.call_with_key(Method::GET, "/api/fleet/agents", None, Some(&access))
            .await
            .0,
        401
    );
    // An output key is no fleet credential; an operator key is no agent's.
    let r = s
        .checkin(
            &(agent.0.clone(), es_key(&output)),
            json!({"status": "online"}),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = s
        .checkin(
            &(agent.0.clone(), s.key.clone()),
            json!({"status": "online"}),
        )
        .await;
    assert!(r.status == 400 || r.status == 401, "{}", r.body);
    assert_eq!(
        s.es(Method::GET, "/_security/_authenticate", &s.key, None)
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn forwarded_headers_do_not_pass_an_address_allowlist() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flotilla.yml");
    std::fs::write(
        &config,
        "static_enrollment_tokens:\n  enabled: true\n  allowed_ips: [10.9.0.0/16]\n  tokens:\n    - token: static-token-0123456789abcdefghijklmnopqrstuv\n      policy_id: web\n",
    )
    .unwrap();
    let s = Server::builder()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start()
        .unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/api/fleet/agents/enroll", s.url))
        .header(
            "authorization",
            "ApiKey static-token-0123456789abcdefghijklmnopqrstuv",
        )
        .header("user-agent", ELASTIC_UA)
        .header("x-forwarded-for", "10.9.0.1")
        .header("forwarded", "for=10.9.0.1")
        .header("x-real-ip", "10.9.0.1")
        .json(&json!({"type": "PERMANENT", "metadata": {"local": {}, "user_provided": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_without_inflating_it() {
    let s = quick_polls(Server::builder()).start().unwrap();
    let (agent, _) = running_agent(&s, "web").await;
    // 8 MiB of spaces (the limit is 1 MiB) compress to a few KiB.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(b"{\"status\": \"online\", \"message\": \"")
        .unwrap();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..8 {
        enc.write_all(&chunk).unwrap();
    }
    let bomb = enc.finish().unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/api/fleet/agents/{}/checkin", s.url, agent.0))
        .header("authorization", format!("ApiKey {}", agent.1))
        .header("user-agent", ELASTIC_UA)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "ErrPayloadSizeTooLarge", "{body}");
    assert_eq!(s.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_trace_log_holds_no_secret() {
    let s = quick_polls(Server::builder().env("RUST_LOG", "trace,h2=info,hyper=info"))
        .start()
        .unwrap();
    let token = s.policy_with_token("web").await;
    let agent = s.enroll(&token).await;
    let r = s.checkin(&agent, json!({"status": "online"})).await;
    let output = output_key(policy_change(&r));
    let stderr = s.stop_with_stderr();
    let secret_of = |credential: &str| {
        credential
            .split(':')
            .nth(1)
            .unwrap_or(credential)
            .to_owned()
    };
    use base64::Engine as _;
    let access = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(&agent.1)
            .unwrap(),
    )
    .unwrap();
    for secret in [
        token.clone(),
        agent.1.clone(),
        secret_of(&access),
        secret_of(&output),
        crate::support::ADMIN_KEY.to_owned(),
    ] {
        assert!(!stderr.contains(&secret), "a secret in the trace log");
    }
    assert!(stderr.len() > 1000, "trace logging was on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_restarts_cleanly() {
    let keep = tempfile::tempdir().unwrap();
    let data_dir = keep.path().join("data");
    let s = quick_polls(Server::builder().data_dir(&data_dir))
        .start()
        .unwrap();
    let token = s.policy_with_token("web").await;
    // Enrolments and check-ins in flight while the process is killed.
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (url, token) = (s.url.clone(), token.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for _ in 0..50 {
                    let r = http
                        .post(format!("{url}/api/fleet/agents/enroll"))
                        .header("authorization", format!("ApiKey {token}"))
                        .header("user-agent", ELASTIC_UA)
                        .json(&json!({"type": "PERMANENT", "metadata": {"local": {}, "user_provided": {}}}))
                        .send()
                        .await;
                    let Ok(r) = r else { return };
                    let Ok(body) = r.json::<Value>().await else { return };
                    let (id, key) = (&body["item"]["id"], &body["item"]["access_api_key"]);
                    let _ = http
                        .post(format!("{url}/api/fleet/agents/{}/checkin", id.as_str().unwrap_or("")))
                        .header("authorization", format!("ApiKey {}", key.as_str().unwrap_or("")))
                        .header("user-agent", ELASTIC_UA)
                        .json(&json!({"status": "online"}))
                        .send()
                        .await;
                }
            })
        })
        .collect();
    // Kill it once the load has written something.
    for _ in 0..400 {
        if s.get("/api/fleet/agents").await.1["total"]
            .as_u64()
            .unwrap_or(0)
            >= 5
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-9", &s.pid().to_string()])
        .status();
    for l in load {
        let _ = l.await;
    }
    assert_eq!(s.wait(), None, "killed by a signal");
    let again = Server::sqlite_at(&data_dir, crate::support::ADMIN_KEY);
    assert_eq!(again.get("/healthz").await.0, 200);
    let (st, agents) = again.get("/api/fleet/agents?perPage=1000").await;
    assert_eq!(st, 200);
    assert!(agents["total"].as_u64().unwrap() >= 5, "{agents}");
    // Agents recorded before the kill still work, and new ones enrol.
    let agent = again.enroll(&token).await;
    assert_eq!(
        again
            .checkin(&agent, json!({"status": "online"}))
            .await
            .status,
        200
    );
}

// --- package uploads (integration packages issue) -----------------------------------

fn zip_entries(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut buf);
        for (name, body) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(body).unwrap();
        }
        w.finish().unwrap();
    }
    buf.into_inner()
}

const DEMO_MANIFEST: &str = "format_version: 3.0.0\nname: demo\ntitle: Demo\nversion: 1.0.0\ntype: input\npolicy_templates:\n  - name: logs\n    title: Logs\n    type: logs\n    input: logfile\n    template_path: input.yml.hbs\n";

#[tokio::test]
async fn hostile_package_uploads_are_refused_with_a_reason() {
    let s = Server::sqlite();
    let up = |body: Vec<u8>, ct: &'static str| {
        let s = &s;
        async move {
            s.raw(Method::POST, "/api/fleet/epm/packages", ct, body)
                .await
        }
    };
    let tpl: &[u8] = b"paths: {{paths}}\n";
    let bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\n";
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not an archive at all".to_vec(), "neither a zip nor"),
        (
            zip_entries(&[
                ("demo-2.0.0/manifest.yml", DEMO_MANIFEST.as_bytes()),
                ("demo-2.0.0/agent/input/input.yml.hbs", tpl),
            ]),
            "must be 'demo-1.0.0/'",
        ),
        (
            zip_entries(&[
                ("demo-1.0.0/manifest.yml", DEMO_MANIFEST.as_bytes()),
                ("other-1.0.0/manifest.yml", DEMO_MANIFEST.as_bytes()),
            ]),
            "exactly one top-level folder",
        ),
        (
            zip_entries(&[("demo-1.0.0/../../etc/passwd", b"x")]),
            "not a plain relative path",
        ),
        (
            zip_entries(&[
                (
                    "demo-1.0.0/manifest.yml",
                    DEMO_MANIFEST.replace("title: Demo\n", "").as_bytes(),
                ),
                ("demo-1.0.0/agent/input/input.yml.hbs", tpl),
            ]),
            "manifest.yml: missing field `title`",
        ),
        (
            zip_entries(&[("demo-1.0.0/manifest.yml", DEMO_MANIFEST.as_bytes())]),
            "agent/input/input.yml.hbs does not exist",
        ),
        (
            zip_entries(&[
                ("demo-1.0.0/manifest.yml", DEMO_MANIFEST.as_bytes()),
                (
                    "demo-1.0.0/agent/input/input.yml.hbs",
                    b"{{#if x}}never closed",
                ),
            ]),
            "agent/input/input.yml.hbs: not a valid Handlebars template",
        ),
        (
            zip_entries(&[
                (
                    "demo-1.0.0/manifest.yml",
                    DEMO_MANIFEST
                        .replace("type: logs", "type: secrets")
                        .as_bytes(),
                ),
                ("demo-1.0.0/agent/input/input.yml.hbs", tpl),
            ]),
            "policy_templates[0].type",
        ),
        (
            zip_entries(&[
                (
                    "demo-1.0.0/manifest.yml",
                    format!("{DEMO_MANIFEST}{bomb}").as_bytes(),
                ),
                ("demo-1.0.0/agent/input/input.yml.hbs", tpl),
            ]),
            "manifest.yml",
        ),
        (
            zip_entries(&[("demo-1.0.0/manifest.yml", &vec![b'#'; 5 << 20])]),
            "larger than 4 MiB",
        ),
    ];
    for (body, reason) in cases {
        let (st, e) = up(body, "application/zip").await;
        assert_eq!(st, 400, "{reason}: {e}");
        assert_eq!(e["statusCode"], 400, "{e}");
        assert!(
            e["message"].as_str().unwrap().contains(reason),
            "{reason}: {e}"
        );
    }
    let (st, e) = up(b"{\"name\": \"demo\"}".to_vec(), "application/json").await;
    assert_eq!(st, 400, "{e}");
    assert!(e["message"].as_str().unwrap().contains("by upload"), "{e}");
    // Over the upload limit: 413 in the API's shape.
    let (st, e) = up(vec![0u8; (64 << 20) + 1], "application/zip").await;
    assert_eq!(st, 413, "{e}");
    assert_eq!(e["statusCode"], 413);
    // Not an operator: 401, whatever the body.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/fleet/epm/packages", s.url))
        .header("content-type", "application/zip")
        .body(vec![0u8; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Nothing was installed; the server is fine.
    let (_, list) = s.get("/api/fleet/epm/packages").await;
    assert!(!list.to_string().contains("demo"), "{list}");
}

// --- the embedded output (data plane issue) ------------------------------------------

#[tokio::test]
async fn hostile_bulk_requests_are_refused_early() {
    let s = quick_polls(Server::builder().env("FLOTILLA_HTTP__MAX_BULK_BYTES", "1048576"))
        .start()
        .unwrap();
    // Unauthenticated: 401 without the body being read.
    let resp = reqwest::Client::new()
        .post(format!("{}/_bulk", s.url))
        .body(vec![b'x'; 8 << 20])
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["x-elastic-product"], "Elasticsearch");
    }
    let token = s.policy_with_token("web").await;
    let agent = s.enroll(&token).await;
    let r = s.checkin(&agent, json!({"status": "online"})).await;
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(output_key(policy_change(&r)));
    // A gzip bomb: limited by what it inflates to.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![b'\n'; 64 << 20]).unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{}/_bulk", s.url))
        .header("authorization", format!("ApiKey {key}"))
        .header("content-encoding", "gzip")
        .body(enc.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // An agent's access key (not its output key) writes nothing.
    let access = agent.1.clone();
    let resp = reqwest::Client::new()
        .post(format!("{}/_bulk", s.url))
        .header("authorization", format!("ApiKey {access}"))
        .body("{\"create\":{\"_index\":\"logs-nginx.access-prod\"}}\n{\"m\":1}\n")
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["items"][0]["create"]["status"], 403, "{body}");
    // The server is fine.
    let (st, _) = s.get("/api/fleet/data_streams").await;
    assert_eq!(st, 200);
}
