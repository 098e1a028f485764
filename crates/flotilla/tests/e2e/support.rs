//! Starting the real server binary and talking to it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

pub const ADMIN_KEY: &str = "e2e-admin-key-0123456789abcdefghijklmnop";
pub const ENCRYPTION_KEY: &str = "e2e-encryption-key-0123456789abcdefghij";
pub const ELASTIC_UA: &str = "Elastic Agent v9.6.0";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_flotilla")
}

/// A command for the binary with no inherited Flotilla settings.
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("FLOTILLA_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Which storage engine a server runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

pub struct Server {
    pub url: String,
    pub key: String,
    pub data_dir: PathBuf,
    /// Lines the server printed on stdout before it was ready.
    pub banner: Vec<String>,
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    http: reqwest::Client,
    _tmp: Option<tempfile::TempDir>,
}

pub struct Builder {
    engine: Engine,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    admin_key: Option<String>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    listen: Option<String>,
}

impl Builder {
    pub fn engine(mut self, engine: Engine) -> Self {
        self.engine = engine;
        self
    }
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }
    pub fn database_url(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_owned());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn no_admin_key(mut self) -> Self {
        self.admin_key = None;
        self
    }
    /// Listen on this address instead of port 0 (a restart on the same
    /// port, as agents know the server by its URL).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.into());
        self
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    /// `None` when the engine is PostgreSQL and it is not installed (and
    /// not required).
    pub fn start(self) -> Option<Server> {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("data"));
        let mut cmd = command();
        let listen = self.listen.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        cmd.args(["server", "--listen", &listen, "--data-dir"])
            .arg(&data_dir);
        if self.engine == Engine::Postgres {
            let url = match self.database_url.clone() {
                Some(u) => u,
                None => flotilla_testkit::postgres()?.create_database(),
            };
            cmd.args(["--database-url", &url]);
            cmd.env("FLOTILLA_ENCRYPTION_KEY", ENCRYPTION_KEY);
        }
        cmd.args(&self.args);
        if let Some(key) = &self.admin_key {
            cmd.env("FLOTILLA_ADMIN_API_KEY", key);
        }
        cmd.env("RUST_LOG", "warn");
        // The embedded verifier agent only where a test asks for it: it is
        // an agent (and a process) the other tests do not expect.
        cmd.env("FLOTILLA_VERIFIER__EMBEDDED_AGENT", "false");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn flotilla server");
        // Drained as it comes, so a chatty server never blocks on the pipe.
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let (addr, banner) = wait_ready(&mut child, &stderr);
        let key = self
            .admin_key
            .clone()
            .or_else(|| {
                banner
                    .iter()
                    .find_map(|l| l.split(": ").nth(1).map(str::to_owned))
            })
            .unwrap_or_default();
        Some(Server {
            url: format!("http://{addr}"),
            key,
            data_dir,
            banner,
            child,
            stderr,
            stderr_reader: Some(stderr_reader),
            http: reqwest::Client::new(),
            _tmp: Some(tmp),
        })
    }
}

/// Read stdout until the ready line, under a deadline; on failure show
/// what the server said.
fn wait_ready(
    child: &mut Child,
    stderr: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) -> (String, Vec<String>) {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(Ok((addr.to_owned(), banner.clone())));
                // Keep draining so the server never blocks on a full pipe.
                continue;
            }
            banner.push(line);
        }
        let _ = tx.send(Err(banner));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(ready)) => ready,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
            panic!("server did not become ready: {other:?}\nstderr:\n{stderr}");
        }
    }
}

impl Server {
    pub fn builder() -> Builder {
        Builder {
            engine: Engine::Sqlite,
            data_dir: None,
            database_url: None,
            admin_key: Some(ADMIN_KEY.into()),
            env: vec![],
            args: vec![],
            listen: None,
        }
    }

    pub fn sqlite() -> Server {
        Self::builder().start().unwrap()
    }

    pub fn sqlite_at(data_dir: &Path, admin_key: &str) -> Server {
        let mut b = Self::builder().data_dir(data_dir);
        b.admin_key = Some(admin_key.to_owned());
        b.start().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the process to exit by itself; its exit code.
    pub fn wait(mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|s| s.code())
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with_key(method, path, body, Some(&self.key))
            .await
    }

    pub async fn call_with_key(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(key) = key {
            req = req.header("authorization", format!("ApiKey {key}"));
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("authorization", format!("ApiKey {}", self.key))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// Run the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        command()
            .args(args)
            .env("FLOTILLA_URL", &self.url)
            .env("FLOTILLA_API_KEY", &self.key)
            .output()
            .expect("run the CLI")
    }

    /// Stop the server (SIGTERM, then wait) and return what it wrote on
    /// stderr.
    pub fn stop_with_stderr(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Assert an error body has the contract's shape and status.
#[track_caller]
pub fn assert_error(resp: &(u16, Value), status: u16, message_contains: &str) {
    let (got, body) = resp;
    assert_eq!(*got, status, "body: {body}");
    assert_eq!(body["statusCode"], status, "body: {body}");
    assert!(body["error"].is_string(), "body: {body}");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(message_contains),
        "message {msg:?} should contain {message_contains:?}"
    );
}

/// A response from the fleet API.
pub struct FleetResponse {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Server {
    /// A fleet API request with `Authorization: ApiKey <key>` and an Elastic
    /// agent's user agent.
    pub async fn fleet(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> FleetResponse {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("user-agent", ELASTIC_UA);
        if let Some(key) = key {
            req = req.header("authorization", format!("ApiKey {key}"));
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("fleet request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        FleetResponse {
            status,
            body,
            headers,
        }
    }

    /// Enrol with `token`; returns (agent id, access key).
    pub async fn enroll(&self, token: &str) -> (String, String) {
        let r = self
            .fleet(
                Method::POST,
                "/api/fleet/agents/enroll",
                Some(token),
                Some(serde_json::json!({"type": "PERMANENT", "metadata": {"local": {"elastic": {"agent": {"version": "9.6.0"}}}, "user_provided": {}, "tags": ["e2e"]}})),
            )
            .await;
        assert_eq!(r.status, 200, "enroll: {}", r.body);
        (
            r.body["item"]["id"].as_str().unwrap().to_owned(),
            r.body["item"]["access_api_key"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    }

    /// A check-in running aside (for long polls the test acts during).
    pub fn spawn_checkin(
        &self,
        agent: &(String, String),
        body: Value,
    ) -> tokio::task::JoinHandle<FleetResponse> {
        let (url, http, agent) = (self.url.clone(), self.http.clone(), agent.clone());
        tokio::spawn(async move {
            let resp = http
                .post(format!("{url}/api/fleet/agents/{}/checkin", agent.0))
                .header("authorization", format!("ApiKey {}", agent.1))
                .header("user-agent", ELASTIC_UA)
                .json(&body)
                .send()
                .await
                .expect("check-in");
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.json().await.unwrap_or(Value::Null);
            FleetResponse {
                status,
                body,
                headers,
            }
        })
    }

    pub async fn checkin(&self, agent: &(String, String), body: Value) -> FleetResponse {
        self.fleet(
            Method::POST,
            &format!("/api/fleet/agents/{}/checkin", agent.0),
            Some(&agent.1),
            Some(body),
        )
        .await
    }

    pub async fn ack(&self, agent: &(String, String), action_ids: &[&str]) -> FleetResponse {
        let events: Vec<Value> = action_ids
            .iter()
            .map(|id| serde_json::json!({"type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED", "agent_id": agent.0,
                "action_id": id, "message": "acked", "timestamp": "2026-01-01T00:00:00Z"}))
            .collect();
        self.fleet(
            Method::POST,
            &format!("/api/fleet/agents/{}/acks", agent.0),
            Some(&agent.1),
            Some(serde_json::json!({"events": events})),
        )
        .await
    }

    /// An enrollment token for a new policy `policy_id` with the nginx
    /// integration in namespace `prod`.
    pub async fn policy_with_token(&self, policy_id: &str) -> String {
        let (st, _) = self
            .post(
                "/api/fleet/agent_policies",
                serde_json::json!({"id": policy_id, "name": policy_id, "namespace": "prod"}),
            )
            .await;
        assert_eq!(st, 200);
        let (st, _) = self
            .post("/api/fleet/package_policies", serde_json::json!({"name": format!("nginx-{policy_id}"), "policy_id": policy_id, "package": {"name": "nginx"}}))
            .await;
        assert_eq!(st, 200);
        let (_, key) = self
            .post(
                "/api/fleet/enrollment_api_keys",
                serde_json::json!({"policy_id": policy_id}),
            )
            .await;
        key["item"]["api_key"].as_str().unwrap().to_owned()
    }

    /// `Authorization: ApiKey` as Elasticsearch clients send it.
    pub async fn es(
        &self,
        method: Method,
        path: &str,
        output_key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(output_key);
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("authorization", format!("ApiKey {encoded}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// Every index name a package policy's role grants, in order.
pub fn role_names(perms: &Value, package_policy_id: &str) -> Vec<String> {
    perms[package_policy_id]["indices"]
        .as_array()
        .unwrap_or_else(|| panic!("no role for {package_policy_id} in {perms}"))
        .iter()
        .flat_map(|e| e["names"].as_array().cloned().unwrap_or_default())
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}
