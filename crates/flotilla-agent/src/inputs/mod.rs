//! The inputs of the running policy: a supervisor that diffs the running
//! inputs against a new policy by input id and config hash (the hash covers
//! the input and its resolved output, so a new output key restarts it), and
//! the health of each.
//!
//! - [`logfile`]: `logfile` / `filestream` / `log` — tail files.
//! - [`metrics`]: `system/metrics` — host metrics from /proc.
//! - [`verifier`]: `permission_verifier` — checks a cloud connector's
//!   permissions once per verification id.
//! - Any other type is a FAILED component with a message; a bad input
//!   config is a FAILED component too. Neither stops the others.

pub mod logfile;
pub mod metrics;
pub mod verifier;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use crate::output::Output;

/// Health of one input, shared with its tasks.
#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<HealthState>>);

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct HealthState {
    /// HEALTHY, DEGRADED or FAILED.
    pub status: String,
    pub message: String,
    /// Events the output accepted (over the checkpoints' life for logs).
    pub shipped: u64,
    /// Events the output rejected for good.
    pub dropped: u64,
    /// Bytes of matched files not shipped yet.
    pub pending_bytes: u64,
}

impl Health {
    fn with(&self, f: impl FnOnce(&mut HealthState)) {
        // A poisoned lock only means a task panicked while reporting:
        // the state is still a valid snapshot.
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }
    pub fn new(status: &str, message: String) -> Health {
        let h = Health::default();
        h.set(status, message);
        h
    }
    fn set(&self, status: &str, message: String) {
        self.with(|s| {
            s.status = status.to_owned();
            s.message = message;
        });
    }
    pub fn healthy(&self, message: String) {
        self.set("HEALTHY", message);
    }
    pub fn degraded(&self, message: String) {
        self.set("DEGRADED", message);
    }
    pub fn failed(&self, message: String) {
        self.set("FAILED", message);
    }
    pub fn set_shipped(&self, n: u64) {
        self.with(|s| s.shipped = n);
    }
    pub fn add_shipped(&self, n: u64, dropped: u64) {
        self.with(|s| {
            s.shipped += n;
            s.dropped += dropped;
        });
    }
    pub fn set_pending(&self, n: u64) {
        self.with(|s| s.pending_bytes = n);
    }
    pub fn snapshot(&self) -> HealthState {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What every input needs from the agent.
#[derive(Debug, Clone)]
pub struct Context {
    pub state_dir: PathBuf,
    pub agent_id: String,
    pub host_name: String,
}

struct Unit {
    ty: String,
    hash: String,
    health: Health,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Unit {
    fn drop(&mut self) {
        // Stopping loses nothing: checkpoints move only on acceptance.
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One input as `agent status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InputView {
    pub id: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(flatten)]
    pub health: HealthState,
}

/// An input's resolved settings: what it reads and where it ships.
pub struct Resolved {
    pub output: Arc<Output>,
    pub namespace: String,
    pub hash: String,
}

fn resolve(input: &Value, outputs: &Value) -> Result<Resolved, String> {
    let name = input
        .get("use_output")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let out = outputs
        .get(name)
        .ok_or_else(|| format!("the policy has no output {name:?} (use_output)"))?;
    match out.get("type").and_then(Value::as_str) {
        None | Some("elasticsearch") => {}
        Some(other) => {
            return Err(format!(
                "output type {other} is not supported by this agent"
            ))
        }
    }
    let hosts: Vec<String> = out
        .get("hosts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let key = out
        .get("api_key")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("output {name} has no api_key"))?;
    let output = Output::new(hosts.clone(), key).map_err(|e| format!("output {name}: {e}"))?;
    let namespace = input
        .pointer("/data_stream/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(input).unwrap_or_default());
    h.update(serde_json::to_vec(&hosts).unwrap_or_default());
    h.update(key.as_bytes());
    Ok(Resolved {
        output: Arc::new(output),
        namespace,
        hash: hex::encode(h.finalize()),
    })
}

/// The running inputs.
pub struct Supervisor {
    ctx: Arc<Context>,
    units: Arc<Mutex<BTreeMap<String, Unit>>>,
}

impl Supervisor {
    pub fn new(ctx: Context) -> Supervisor {
        Supervisor {
            ctx: Arc::new(ctx),
            units: Arc::default(),
        }
    }

    /// Run the policy's inputs: unchanged ones keep running, changed ones
    /// restart (from their checkpoints), removed ones stop. Must be called
    /// inside a Tokio runtime.
    pub fn reconcile(&self, policy: &Value) {
        let inputs = policy
            .get("inputs")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let outputs = policy.get("outputs").cloned().unwrap_or(Value::Null);
        let mut units = self.units.lock().unwrap_or_else(|p| p.into_inner());
        let mut keep = BTreeMap::new();
        for (i, input) in inputs.iter().enumerate() {
            let id = input
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("input-{i}"), str::to_owned);
            let ty = input
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let resolved = resolve(input, &outputs);
            let hash = match &resolved {
                Ok(r) => r.hash.clone(),
                Err(e) => format!("error:{e}"),
            };
            if let Some(u) = units.remove(&id) {
                if u.hash == hash && u.ty == ty {
                    keep.insert(id, u);
                    continue;
                }
                tracing::info!(input = %id, "input changed; restarting it from its checkpoints");
            }
            let unit = self.start(&id, &ty, input, resolved, hash);
            keep.insert(id, unit);
        }
        for id in units.keys() {
            tracing::info!(input = %id, "input removed; stopped");
        }
        *units = keep;
    }

    fn start(
        &self,
        id: &str,
        ty: &str,
        input: &Value,
        resolved: Result<Resolved, String>,
        hash: String,
    ) -> Unit {
        let failed = |message: String| {
            tracing::error!(input = %id, %message, "input not started");
            Unit {
                ty: ty.to_owned(),
                hash: hash.clone(),
                health: Health::new("FAILED", message),
                tasks: vec![],
            }
        };
        let started = match ty {
            "logfile" | "filestream" | "log" => Ok(logfile::start(&self.ctx, input, ty)),
            "system/metrics" => Ok(metrics::start(&self.ctx, input)),
            "permission_verifier" => Ok(verifier::start(&self.ctx, input)),
            "" => Err("the input has no type".to_owned()),
            other => Err(format!(
                "input type {other} is not implemented by this agent"
            )),
        };
        let spawn = match started {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        let resolved = match resolved {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let health = Health::new("HEALTHY", "starting".into());
        match spawn(&resolved, &health) {
            Ok(tasks) => Unit {
                ty: ty.to_owned(),
                hash,
                health,
                tasks,
            },
            Err(e) => failed(e),
        }
    }

    pub fn stop_all(&self) {
        self.units.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn inputs(&self) -> Vec<InputView> {
        views(&self.units)
    }

    /// Components as check-in reports them.
    pub fn components(&self) -> Vec<Value> {
        self.inputs()
            .into_iter()
            .map(|v| {
                json!({"id": v.id, "type": v.ty, "status": v.health.status, "message": v.health.message,
                       "units": [{"unit_id": v.id, "unit_type": "input", "status": v.health.status, "message": v.health.message}]})
            })
            .collect()
    }

    /// Write `inputs.json` (plain: no secret) every second, for
    /// `flotilla agent status`.
    pub fn spawn_status_writer(&self) -> JoinHandle<()> {
        let units = self.units.clone();
        let dir = self.ctx.state_dir.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = views(&units);
                if last.as_ref() != Some(&now) {
                    if let Ok(bytes) = serde_json::to_vec_pretty(&now) {
                        if let Err(e) = crate::state::write_atomic(&dir, "inputs.json", &bytes) {
                            tracing::warn!(error = %e, "cannot write inputs.json");
                        }
                    }
                    last = Some(now);
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        })
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn views(units: &Mutex<BTreeMap<String, Unit>>) -> Vec<InputView> {
    units
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(id, u)| InputView {
            id: id.clone(),
            ty: u.ty.clone(),
            health: u.health.snapshot(),
        })
        .collect()
}

/// Starts an input's tasks once its output is resolved.
pub type Spawn = Box<dyn FnOnce(&Resolved, &Health) -> Result<Vec<JoinHandle<()>>, String> + Send>;

/// A stream's id, or `<input id>-<index>` when the policy gives none.
pub fn stream_id(input: &Value, stream: &Value, index: usize) -> String {
    stream.get("id").and_then(Value::as_str).map_or_else(
        || format!("{}-{index}", input["id"].as_str().unwrap_or("input")),
        str::to_owned,
    )
}

/// A stream's data stream: `{type, dataset, namespace}` and its index name.
pub fn data_stream(
    stream: &Value,
    default_type: &str,
    namespace: &str,
) -> Result<(Value, String), String> {
    let dataset = stream
        .pointer("/data_stream/dataset")
        .and_then(Value::as_str)
        .ok_or("a stream has no data_stream.dataset")?;
    let ty = stream
        .pointer("/data_stream/type")
        .and_then(Value::as_str)
        .unwrap_or(default_type);
    if dataset.contains('-') || ty.contains('-') || namespace.contains('-') {
        return Err(format!(
            "data stream {ty}-{dataset}-{namespace} is not a valid name"
        ));
    }
    Ok((
        json!({"type": ty, "dataset": dataset, "namespace": namespace}),
        format!("{ty}-{dataset}-{namespace}"),
    ))
}

/// A deterministic document id.
pub fn doc_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(inputs: Value, key: &str) -> Value {
        json!({"inputs": inputs, "outputs": {"default": {"type": "elasticsearch", "hosts": ["http://127.0.0.1:9"], "api_key": key}}})
    }

    #[tokio::test]
    async fn unknown_and_bad_inputs_fail_alone_and_a_new_key_restarts_an_input() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = Supervisor::new(Context {
            state_dir: tmp.path().to_owned(),
            agent_id: "a".into(),
            host_name: "h".into(),
        });
        let log = json!({"id": "logs-1", "type": "logfile", "data_stream": {"namespace": "prod"},
            "streams": [{"id": "s1", "data_stream": {"dataset": "app"}, "paths": [tmp.path().join("*.log")]}]});
        let inputs = json!([
            log,
            {"id": "w-1", "type": "winlog"},
            {"id": "bad-1", "type": "logfile", "streams": [{"data_stream": {"dataset": "x"}, "paths": ["[["]}]},
            {"id": "nout", "type": "logfile", "use_output": "nope", "streams": []},
        ]);
        sup.reconcile(&policy(inputs.clone(), "k:1"));
        let c = sup.components();
        let by_id = |id: &str| c.iter().find(|x| x["id"] == id).unwrap().clone();
        assert_eq!(by_id("logs-1")["status"], "HEALTHY");
        assert_eq!(by_id("w-1")["status"], "FAILED");
        assert!(by_id("w-1")["message"]
            .as_str()
            .unwrap()
            .contains("winlog is not implemented"));
        assert_eq!(by_id("bad-1")["status"], "FAILED");
        assert!(by_id("nout")["message"].as_str().unwrap().contains("nope"));

        let hash = |s: &Supervisor| s.units.lock().unwrap()["logs-1"].hash.clone();
        let before = hash(&sup);
        sup.reconcile(&policy(inputs.clone(), "k:1"));
        assert_eq!(hash(&sup), before, "unchanged: kept");
        sup.reconcile(&policy(inputs, "k:2"));
        assert_ne!(hash(&sup), before, "a new output key restarts it");
        sup.reconcile(&policy(json!([]), "k:2"));
        assert!(sup.components().is_empty());
    }
}
