//! Enrol, then run: load the last good policy and run it before talking to
//! the server; long-poll; apply a policy change, persist it, then ack.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::client::{FleetClient, FleetError};
use crate::inputs::{Context as InputContext, Supervisor};
use crate::state::{Kind, Loaded, StateDir};

/// Who the agent is (encrypted: it holds the access key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub agent_id: String,
    pub url: String,
    pub access_key: String,
    /// The policy it was enrolled into: reported (at revision 0) while it
    /// runs none, so the server sends it.
    #[serde(default)]
    pub policy_id: Option<String>,
}

/// The ack token and results not acked yet.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Acks {
    pub ack_token: Option<String>,
    pub pending: Vec<Value>,
}

/// The policy the agent runs (its inputs' health is the supervisor's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Running {
    pub policy_id: String,
    pub revision: i64,
}

/// The local view `flotilla agent status` prints (plain JSON: no secrets).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LocalStatus {
    pub agent_id: Option<String>,
    pub server: Option<String>,
    pub policy_id: Option<String>,
    pub revision: Option<i64>,
    pub last_checkin: Option<String>,
    pub components: Vec<Value>,
    pub last_error: Option<String>,
    pub state_warnings: Vec<String>,
    /// Each input's health, events shipped and bytes pending (from
    /// `inputs.json`, which the running agent rewrites every second).
    #[serde(default)]
    pub inputs: Vec<Value>,
    #[serde(default)]
    pub events_shipped: u64,
    #[serde(default)]
    pub pending_bytes: u64,
}

/// Validate a POLICY_CHANGE before it is persisted and run. Its inputs
/// are checked by the supervisor: a bad or unknown input is a FAILED
/// component, never a refused policy.
pub fn apply(action: &Value) -> Result<Running, String> {
    let policy = action
        .pointer("/data/policy")
        .ok_or("the action has no policy")?;
    let policy_id = policy
        .get("id")
        .and_then(Value::as_str)
        .ok_or("the policy has no id")?;
    let revision = policy
        .get("revision")
        .and_then(Value::as_i64)
        .ok_or("the policy has no revision")?;
    match policy.get("inputs") {
        None | Some(Value::Null) | Some(Value::Array(_)) => {}
        Some(_) => return Err("the policy's inputs are not a list".into()),
    }
    Ok(Running {
        policy_id: policy_id.to_owned(),
        revision,
    })
}

fn write_status(dir: &Path, status: &LocalStatus) {
    let tmp = dir.join("status.json.tmp");
    if std::fs::write(&tmp, serde_json::to_vec_pretty(status).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join("status.json"));
    }
}

/// The local view, readable while the agent runs (or not).
pub fn read_status(dir: &Path) -> Result<LocalStatus> {
    let text = std::fs::read(dir.join("status.json")).with_context(|| {
        format!(
            "no agent state in {} (not enrolled, or never run)",
            dir.display()
        )
    })?;
    let mut status: LocalStatus = serde_json::from_slice(&text)?;
    if let Ok(bytes) = std::fs::read(dir.join("inputs.json")) {
        status.inputs = serde_json::from_slice(&bytes).unwrap_or_default();
    }
    status.events_shipped = status
        .inputs
        .iter()
        .filter_map(|i| i["shipped"].as_u64())
        .sum();
    status.pending_bytes = status
        .inputs
        .iter()
        .filter_map(|i| i["pending_bytes"].as_u64())
        .sum();
    Ok(status)
}

/// Exponential backoff with full jitter, at least what the server asked.
fn backoff(attempt: u32, asked: Option<Duration>) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1 << attempt.min(8));
    let cap = Duration::from_secs(60).min(base);
    let jittered = Duration::from_millis(rand::thread_rng().gen_range(0..=cap.as_millis() as u64));
    asked.map_or(jittered, |a| a.max(jittered))
}

fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
}

fn metadata(agent_id: Option<&str>) -> Value {
    let host = host_name();
    json!({
        "elastic": {"agent": {"version": env!("CARGO_PKG_VERSION"), "id": agent_id, "name": "flotilla"}},
        "host": {"hostname": host, "name": host},
        "os": {"family": std::env::consts::OS},
    })
}

/// Enrol with a token and store the identity.
pub async fn enroll(state: &StateDir, url: &str, token: &str, tags: &[String]) -> Result<Identity> {
    let client = FleetClient::new(url, Duration::from_secs(60))?;
    let mut attempt = 0;
    let (agent_id, access_key, policy_id) = loop {
        match client.enroll(token, tags, metadata(None)).await {
            Ok(ok) => break ok,
            Err(FleetError::Retry { reason, after }) if attempt < 8 => {
                let wait = backoff(attempt, after);
                tracing::warn!(%reason, ?wait, "enrolment failed; retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => bail!("enrolment failed: {e}"),
        }
    };
    let identity = Identity {
        agent_id,
        url: url.to_owned(),
        access_key,
        policy_id,
    };
    state.save("", Kind::Identity, &identity)?;
    Ok(identity)
}

pub struct RunOptions {
    pub state_dir: PathBuf,
    pub url: Option<String>,
    pub enrollment_token: Option<String>,
    pub tags: Vec<String>,
    /// Stop after this many successful check-ins (tests); run forever when `None`.
    pub max_checkins: Option<u64>,
}

/// Run until stopped, or until the server refuses the agent.
pub async fn run(opts: RunOptions) -> Result<()> {
    let state = StateDir::open(&opts.state_dir)?;
    let mut status = LocalStatus::default();
    let mut identity = match state.load::<Identity>("", Kind::Identity) {
        Loaded::Found(i) => i,
        Loaded::Missing => match (&opts.url, &opts.enrollment_token) {
            (Some(url), Some(token)) => enroll(&state, url, token, &opts.tags).await?,
            _ => bail!(
                "this agent is not enrolled: run `flotilla agent enroll --url … --enrollment-token …`, \
                 or give --url and --enrollment-token (FLOTILLA_URL, FLOTILLA_ENROLLMENT_TOKEN)"
            ),
        },
        Loaded::Refused { moved_to, reason } => bail!(
            "the agent's identity file {reason}; it was moved to {} — enrol again",
            moved_to.display()
        ),
    };
    let id = identity.agent_id.clone();
    status.agent_id = Some(id.clone());
    status.server = Some(identity.url.clone());

    let supervisor = Supervisor::new(InputContext {
        state_dir: opts.state_dir.clone(),
        agent_id: id.clone(),
        host_name: host_name().unwrap_or_else(|| "unknown".into()),
    });
    let _writer = AbortOnDrop(supervisor.spawn_status_writer());

    // The last good policy runs before the server is asked anything.
    let mut running: Option<(Running, Value)> = match state.load::<Value>(&id, Kind::Policy) {
        Loaded::Found(action) => match apply(&action) {
            Ok(r) => {
                tracing::info!(policy_id = %r.policy_id, revision = r.revision, "running the last good policy");
                supervisor.reconcile(&action["data"]["policy"]);
                Some((r, action))
            }
            Err(e) => {
                status
                    .state_warnings
                    .push(format!("the stored policy does not apply: {e}"));
                None
            }
        },
        Loaded::Missing => None,
        Loaded::Refused { moved_to, reason } => {
            let warning = format!(
                "the stored policy {reason}; moved to {}",
                moved_to.display()
            );
            tracing::error!("{warning}");
            status.state_warnings.push(warning);
            None
        }
    };
    let mut acks = match state.load::<Acks>(&id, Kind::Acks) {
        Loaded::Found(a) => a,
        Loaded::Missing => Acks::default(),
        Loaded::Refused { moved_to, reason } => {
            let warning = format!(
                "the stored ack state {reason}; moved to {}",
                moved_to.display()
            );
            tracing::error!("{warning}");
            status.state_warnings.push(warning);
            Acks::default()
        }
    };
    let show = |status: &mut LocalStatus, running: &Option<(Running, Value)>| {
        status.policy_id = running.as_ref().map(|(r, _)| r.policy_id.clone());
        status.revision = running.as_ref().map(|(r, _)| r.revision);
        status.components = supervisor.components();
    };
    show(&mut status, &running);
    write_status(state.path(), &status);

    let client = FleetClient::new(&identity.url, Duration::from_secs(20 * 60))?;
    let mut attempt = 0u32;
    let mut checkins = 0u64;
    let mut failed_revision: Option<(String, i64)> = None;
    // A test-only fault: ack without persisting, as an agent that crashed
    // between the two would have.
    // `ack-then-stall` also stops dead after its first ack, so a test can
    // kill -9 it there: the crash between ack and persist.
    let fault = std::env::var("FLOTILLA_AGENT_TEST_FAULT").unwrap_or_default();
    let stall_after_ack = fault == "ack-then-stall";
    let skip_persist = fault == "skip-persist" || stall_after_ack;
    if skip_persist {
        tracing::warn!(
            fault = %fault,
            "FLOTILLA_AGENT_TEST_FAULT: policies are NOT persisted (a test switch)"
        );
    }
    loop {
        let mut retry_failed = false;
        if !acks.pending.is_empty() {
            match client.ack(&id, &identity.access_key, &acks.pending).await {
                Ok(_) => {
                    acks.pending.clear();
                    save_acks(&state, &id, &acks);
                    if stall_after_ack {
                        tracing::warn!("FLOTILLA_AGENT_TEST_FAULT=ack-then-stall: acked, stalling before persisting");
                        std::future::pending::<()>().await;
                    }
                }
                Err(FleetError::Unauthorized(r)) => return unenrolled(&state, &mut status, &r),
                // Refused for good (an expired or unknown action): retrying
                // would jam every later ack behind it.
                Err(FleetError::Refused {
                    status: code,
                    reason,
                }) => {
                    tracing::warn!(status = code, %reason, dropped = acks.pending.len(), "the server refused these acks; they are dropped");
                    acks.pending.clear();
                    save_acks(&state, &id, &acks);
                }
                Err(e) => tracing::warn!(error = %e, "could not ack; will retry"),
            }
        }
        if acks.pending.len() > MAX_PENDING_ACKS {
            let drop_n = acks.pending.len() - MAX_PENDING_ACKS;
            acks.pending.drain(..drop_n);
        }
        let components = supervisor.components();
        let healthy = components.iter().all(|c| c["status"] == "HEALTHY");
        let mut body = json!({
            "status": if healthy || running.is_none() { "online" } else { "degraded" },
            "message": if healthy { "running" } else { "some inputs are not healthy" },
            "local_metadata": metadata(Some(&id)),
            "components": components,
        });
        if let Some(t) = &acks.ack_token {
            body["ack_token"] = json!(t);
        }
        match (&running, &identity.policy_id) {
            (Some((r, _)), _) => {
                body["agent_policy_id"] = json!(r.policy_id);
                body["policy_revision_idx"] = json!(r.revision);
            }
            // Running nothing (a lost or refused policy file): say so, and
            // the server sends the policy again.
            (None, Some(p)) => {
                body["agent_policy_id"] = json!(p);
                body["policy_revision_idx"] = json!(0);
            }
            (None, None) => {}
        }
        let answer = match client.checkin(&id, &identity.access_key, &body).await {
            Ok(v) => v,
            Err(FleetError::Unauthorized(r)) => return unenrolled(&state, &mut status, &r),
            Err(FleetError::Retry { reason, after }) => {
                let wait = backoff(attempt, after);
                attempt = attempt.saturating_add(1);
                tracing::warn!(%reason, ?wait, "check-in failed; the current policy keeps running");
                status.last_error = Some(reason);
                write_status(state.path(), &status);
                tokio::time::sleep(wait).await;
                continue;
            }
            Err(e) => {
                let wait = backoff(attempt, None);
                attempt = attempt.saturating_add(1);
                tracing::error!(error = %e, "check-in refused");
                status.last_error = Some(e.to_string());
                write_status(state.path(), &status);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        attempt = 0;
        status.last_error = None;
        status.last_checkin = Some(chrono::Utc::now().to_rfc3339());
        if let Some(t) = answer.get("ack_token").and_then(Value::as_str) {
            acks.ack_token = Some(t.to_owned());
        }
        let mut stop = None;
        for action in answer
            .get("actions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let action_id = action
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let kind = action
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let mut event = json!({
                "type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED", "agent_id": id, "action_id": action_id,
                "timestamp": chrono::Utc::now().to_rfc3339(), "message": format!("{kind} handled"),
            });
            let revision = (
                action
                    .pointer("/data/policy/id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                action
                    .pointer("/data/policy/revision")
                    .and_then(Value::as_i64)
                    .unwrap_or(-1),
            );
            if kind == "POLICY_CHANGE" && failed_revision.as_ref() == Some(&revision) {
                // Sent again while it still does not apply: do not spin.
                retry_failed = true;
                continue;
            }
            match kind.as_str() {
                "POLICY_CHANGE" => match apply(&action) {
                    // Apply, then persist, then ack.
                    Ok(r) => {
                        // A test-only fault: ack without persisting, as an
                        // agent that crashed between the two would have.
                        let persisted = if skip_persist {
                            Ok(())
                        } else {
                            state.save(&id, Kind::Policy, &action)
                        };
                        match persisted {
                            Ok(()) => {
                                tracing::info!(policy_id = %r.policy_id, revision = r.revision, "policy applied and persisted");
                                supervisor.reconcile(&action["data"]["policy"]);
                                running = Some((r, action.clone()));
                                failed_revision = None;
                            }
                            // Not persisted, not acked as applied: the
                            // previous policy keeps running.
                            Err(e) => {
                                tracing::error!(error = %e, "the policy cannot be persisted; the previous one keeps running");
                                event["error"] = json!(format!("cannot persist the policy: {e}"));
                                event["message"] = json!("policy change failed: cannot persist it");
                                failed_revision = Some(revision.clone());
                            }
                        }
                    }
                    Err(e) => {
                        failed_revision = Some(revision.clone());
                        tracing::error!(error = %e, "the policy does not apply; the previous one keeps running");
                        event["error"] = json!(e);
                        event["message"] = json!(format!("policy change failed: {e}"));
                    }
                },
                "UNENROLL" => stop = Some(()),
                // The server sends the new policy as a POLICY_CHANGE; the
                // policy to report while running none is the new one.
                "POLICY_REASSIGN" => {
                    if let Some(p) = action.pointer("/data/policy_id").and_then(Value::as_str) {
                        identity.policy_id = Some(p.to_owned());
                        if let Err(e) = state.save("", Kind::Identity, &identity) {
                            tracing::warn!(error = %e, "could not record the new policy id");
                        }
                    }
                }
                "SETTINGS" => {
                    if let Some(level) = action.pointer("/data/log_level").and_then(Value::as_str) {
                        match crate::cli::set_log_level(level) {
                            Ok(()) => tracing::info!(%level, "log level changed"),
                            Err(e) => {
                                event["error"] = json!(e);
                                event["message"] = json!(format!("settings not applied: {e}"));
                            }
                        }
                    }
                }
                other => {
                    event["error"] = json!(format!(
                        "action type {other} is not supported by this agent"
                    ));
                }
            }
            acks.pending.push(event);
        }
        save_acks(&state, &id, &acks);
        show(&mut status, &running);
        write_status(state.path(), &status);
        if stop.is_some() {
            // Ack the unenrolment, then forget the secrets.
            for attempt in 0..8 {
                match client.ack(&id, &identity.access_key, &acks.pending).await {
                    Ok(_) | Err(FleetError::Unauthorized(_)) | Err(FleetError::Refused { .. }) => {
                        break
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not ack the unenrolment; retrying");
                        tokio::time::sleep(backoff(attempt, None)).await;
                    }
                }
            }
            supervisor.stop_all();
            for k in [Kind::Identity, Kind::Policy, Kind::Acks] {
                state.remove(k)?;
            }
            state.remove_key_and_refused()?;
            status.last_error = Some("unenrolled".into());
            write_status(state.path(), &status);
            tracing::info!("unenrolled: inputs stopped, secrets removed");
            return Ok(());
        }
        checkins += 1;
        if opts.max_checkins.is_some_and(|m| checkins >= m) {
            if !acks.pending.is_empty()
                && client
                    .ack(&id, &identity.access_key, &acks.pending)
                    .await
                    .is_ok()
            {
                acks.pending.clear();
                save_acks(&state, &id, &acks);
            }
            return Ok(());
        }
        if retry_failed {
            // The server re-sent a revision that does not apply: wait
            // before asking again.
            tokio::time::sleep(backoff(attempt.max(3), None)).await;
            attempt = attempt.saturating_add(1);
        }
    }
}

/// Stops the status writer when the run ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The most results kept waiting for an ack.
const MAX_PENDING_ACKS: usize = 1000;

/// Keep the ack state; a failed write is logged (the state stays in
/// memory and is written again next time), never fatal.
fn save_acks(state: &StateDir, id: &str, acks: &Acks) {
    if let Err(e) = state.save(id, Kind::Acks, acks) {
        tracing::error!(error = %e, "cannot persist the ack state; it is kept in memory");
    }
}

/// How `status.json`'s `last_error` starts when the server refused the
/// agent's identity (a supervisor may enrol afresh on seeing it).
pub const REFUSED: &str = "the server refuses this agent";

fn unenrolled(state: &StateDir, status: &mut LocalStatus, reason: &str) -> Result<()> {
    status.last_error = Some(format!("{REFUSED}: {reason}"));
    write_status(state.path(), status);
    Err(anyhow!(
        "the server no longer accepts this agent (unenrolled or revoked: {reason}); its inputs are stopped"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_is_validated_before_it_runs() {
        let action = json!({"id": "policy:p:2", "type": "POLICY_CHANGE", "data": {"policy": {
            "id": "p", "revision": 2, "inputs": [{"id": "logfile-nginx-x", "type": "logfile"}]}}});
        let r = apply(&action).unwrap();
        assert_eq!((r.policy_id.as_str(), r.revision), ("p", 2));
        assert!(apply(&json!({"data": {"policy": {"id": "p"}}})).is_err());
        assert!(
            apply(&json!({"data": {"policy": {"id": "p", "revision": 1, "inputs": {}}}})).is_err()
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        for attempt in 0..20 {
            assert!(backoff(attempt, None) <= Duration::from_secs(60));
        }
        assert!(backoff(0, Some(Duration::from_secs(5))) >= Duration::from_secs(5));
    }
}
