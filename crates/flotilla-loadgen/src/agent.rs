//! A simulated agent: enrol, then check in (long poll), ack each action
//! the check-in returns, back off when the server is busy, and loop.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{Answer, Pool};
use crate::retry::backoff;

/// Counters every agent adds to, read by the progress line and the
/// scenarios.
#[derive(Default)]
pub struct Shared {
    pub enrolled: AtomicU64,
    /// Check-ins sent and not yet answered.
    pub polling: AtomicU64,
    /// Agents that acked their first policy.
    pub acked_first: AtomicU64,
    /// Check-ins answered 200.
    pub checkins: AtomicU64,
    /// Requests answered 429 or 503 (check-ins, enrolments).
    pub busy: AtomicU64,
    /// Ack requests answered 429 or 503.
    pub acks_refused: AtomicU64,
    pub errors: AtomicU64,
    /// Long polls the server said were waiting when the fleet was first
    /// seen all waiting (its gauge, or the check-ins in flight here).
    pub waiting_seen: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// The revision a fan-out waits for (0: none yet).
    pub target_revision: AtomicI64,
    /// When the fan-out's change was made.
    pub t0: OnceLock<Instant>,
    /// Seconds from `t0` at which each agent received / acked the target.
    pub received_at: Mutex<Vec<f64>>,
    pub acked_at: Mutex<Vec<f64>>,
}

impl Shared {
    pub fn error(&self, what: &str, reason: String) {
        self.errors.fetch_add(1, Relaxed);
        *self.last_error.lock().unwrap() = Some(format!("{what}: {reason}"));
    }

    fn since_t0(&self) -> Option<f64> {
        self.t0.get().map(|t| t.elapsed().as_secs_f64())
    }
}

/// A small random number in 0–1 for jitter (no cryptographic need).
pub fn unit_random() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            (u64::from(std::process::id()) << 32)
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
                | 1,
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// `local_metadata` as Elastic agents send it, about `bytes` long, built
/// once: each agent's name goes in where the mark is (its id, host name).
pub struct Metadata {
    before: String,
    after: String,
}

impl Metadata {
    pub fn new(bytes: usize, version: &str) -> Metadata {
        const MARK: &str = "\u{1}NAME\u{1}";
        let mut doc = json!({
            "elastic": {"agent": {
                "id": MARK, "version": version, "snapshot": false, "upgradeable": true,
                "log_level": "info", "complete": false, "unprivileged": false,
                "build": {"original": format!("{version} (build: 0123456789abcdef0123456789abcdef01234567 at 2026-01-01 00:00:00 +0000 UTC)")},
            }},
            "host": {
                "hostname": MARK, "name": MARK, "id": MARK, "architecture": "x86_64",
                "ip": ["127.0.0.1/8", "::1/128"], "mac": [],
            },
            "os": {"family": "debian", "kernel": "6.8.0-1017-aws", "platform": "ubuntu",
                "version": "24.04.1 LTS (Noble Numbat)", "name": "Ubuntu", "full": "Ubuntu 24.04.1 LTS (Noble Numbat)"},
        });
        // Hosts with many interfaces (containers, bridges) send long
        // address lists: pad with those until the document is big enough.
        let mut i = 0u32;
        while doc.to_string().len() < bytes {
            let ip = format!("10.{}.{}.{}/24", (i >> 16) & 255, (i >> 8) & 255, i & 255);
            let mac = format!(
                "02:42:ac:{:02x}:{:02x}:{:02x}",
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255
            );
            doc["host"]["ip"].as_array_mut().unwrap().push(json!(ip));
            doc["host"]["mac"].as_array_mut().unwrap().push(json!(mac));
            i += 1;
        }
        let text = doc.to_string();
        let mark = serde_json::to_string(MARK).unwrap();
        let mark = &mark[1..mark.len() - 1];
        // Three places carry the name; split on the first, the other two
        // are filled the same way by `render`.
        let (before, after) = text.split_once(mark).expect("the mark is in the document");
        Metadata {
            before: before.to_owned(),
            after: after.to_owned(),
        }
    }

    pub fn render(&self, name: &str) -> String {
        const MARK: &str = "\\u0001NAME\\u0001";
        let mut s = String::with_capacity(self.before.len() + self.after.len() + 64);
        s.push_str(&self.before);
        s.push_str(name);
        s.push_str(&self.after.replace(MARK, name));
        s
    }
}

/// What an agent holds after enrolling.
#[derive(Clone, Debug)]
pub struct Enrolled {
    pub index: usize,
    pub id: String,
    pub key: String,
    pub policy_id: String,
}

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Enrols agent `index`: `Ok` with its latency and credentials, retrying
/// while the server is busy (at most `deadline`).
pub async fn enroll(
    pool: &Pool,
    shared: &Shared,
    meta: &Metadata,
    token: &str,
    index: usize,
    deadline: Instant,
) -> Option<(Duration, Enrolled)> {
    let name = format!("loadgen-{}-{index}", std::process::id());
    let body = format!(
        r#"{{"type":"PERMANENT","metadata":{{"local":{},"user_provided":{{}},"tags":["loadgen"]}}}}"#,
        meta.render(&name)
    );
    let mut attempt = 0;
    loop {
        let start = Instant::now();
        match pool
            .post(
                index,
                "/api/fleet/agents/enroll",
                token,
                body.clone(),
                REQUEST_TIMEOUT,
            )
            .await
        {
            Answer::Ok(v) => {
                let took = start.elapsed();
                let get = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
                match (get("/item/id"), get("/item/access_api_key")) {
                    (Some(id), Some(key)) => {
                        shared.enrolled.fetch_add(1, Relaxed);
                        return Some((
                            took,
                            Enrolled {
                                index,
                                id,
                                key,
                                policy_id: get("/item/policy_id").unwrap_or_default(),
                            },
                        ));
                    }
                    _ => {
                        shared.error("enroll", "the answer has no id and access key".into());
                        return None;
                    }
                }
            }
            Answer::Busy { after, .. } => {
                shared.busy.fetch_add(1, Relaxed);
                if Instant::now() >= deadline {
                    shared.error("enroll", "still busy at the deadline".into());
                    return None;
                }
                tokio::time::sleep(backoff(attempt, after, unit_random())).await;
                attempt += 1;
            }
            Answer::Failed { status, reason } => {
                shared.error("enroll", format!("{status:?} {reason}"));
                // Unreachable for a moment (a full backlog): retry; a
                // refusal is final.
                if status.is_some() || Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(backoff(attempt, None, unit_random())).await;
                attempt += 1;
            }
        }
    }
}

/// How the check-in loop runs.
#[derive(Clone)]
pub struct LoopConfig {
    /// Sent as `poll_timeout` when set; else the server's default applies.
    pub poll_timeout: Option<Duration>,
    pub metadata: Arc<Metadata>,
}

/// The policy revision an agent runs, kept across loops (a hold phase,
/// then a churn phase, continue where the agent was).
#[derive(Default)]
pub struct AgentState {
    pub revision: AtomicI64,
    pub ack_token: Mutex<Option<String>>,
}

/// Checks in forever (until the task is aborted).
pub async fn run_loop(
    pool: Arc<Pool>,
    shared: Arc<Shared>,
    agent: Enrolled,
    state: Arc<AgentState>,
    cfg: LoopConfig,
) {
    let name = format!("loadgen-{}-{}", std::process::id(), agent.index);
    let metadata = cfg.metadata.render(&name);
    let checkin_path = format!("/api/fleet/agents/{}/checkin", agent.id);
    let ack_path = format!("/api/fleet/agents/{}/acks", agent.id);
    let request_timeout = checkin_timeout(cfg.poll_timeout);
    let mut attempt = 0u32;
    let mut first_acked = state.revision.load(Relaxed) > 0;
    loop {
        let revision = state.revision.load(Relaxed);
        let ack_token = state.ack_token.lock().unwrap().clone();
        let text = checkin_body(
            cfg.poll_timeout,
            ack_token.as_deref(),
            &agent.policy_id,
            revision,
            &metadata,
        );

        shared.polling.fetch_add(1, Relaxed);
        let answer = pool
            .post(
                agent.index,
                &checkin_path,
                &agent.key,
                text,
                request_timeout,
            )
            .await;
        shared.polling.fetch_sub(1, Relaxed);
        let v = match answer {
            Answer::Ok(v) => v,
            Answer::Busy { after, .. } => {
                shared.busy.fetch_add(1, Relaxed);
                tokio::time::sleep(backoff(attempt, after, unit_random())).await;
                attempt = attempt.saturating_add(1);
                continue;
            }
            Answer::Failed { status, reason } => {
                shared.error("checkin", format!("{status:?} {reason}"));
                tokio::time::sleep(backoff(attempt, None, unit_random())).await;
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        attempt = 0;
        shared.checkins.fetch_add(1, Relaxed);
        if let Some(t) = v.get("ack_token").and_then(Value::as_str) {
            *state.ack_token.lock().unwrap() = Some(t.to_owned());
        }
        let actions = v
            .get("actions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if actions.is_empty() {
            continue;
        }
        let mut events = Vec::with_capacity(actions.len());
        let mut new_revision = None;
        let target = shared.target_revision.load(Relaxed);
        for action in &actions {
            let id = action.get("id").and_then(Value::as_str).unwrap_or_default();
            let kind = action
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if kind == "POLICY_CHANGE" {
                let rev = action
                    .pointer("/data/policy/revision")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if target > 0 && rev >= target && revision < target {
                    if let Some(at) = shared.since_t0() {
                        shared.received_at.lock().unwrap().push(at);
                    }
                }
                new_revision = Some(new_revision.map_or(rev, |r: i64| r.max(rev)));
            }
            events.push(json!({
                "type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED",
                "agent_id": agent.id, "action_id": id,
                "message": format!("Action '{id}' of type '{kind}' acknowledged."),
                "timestamp": chrono::Utc::now().to_rfc3339(),
            }));
        }
        let ack_body = json!({"events": events}).to_string();
        let mut ack_attempt = 0u32;
        loop {
            match pool
                .post(
                    agent.index,
                    &ack_path,
                    &agent.key,
                    ack_body.clone(),
                    REQUEST_TIMEOUT,
                )
                .await
            {
                Answer::Ok(_) => {
                    if let Some(rev) = new_revision {
                        if rev > revision {
                            state.revision.store(rev, Relaxed);
                        }
                        if !first_acked {
                            first_acked = true;
                            shared.acked_first.fetch_add(1, Relaxed);
                        }
                        if target > 0 && rev >= target && revision < target {
                            if let Some(at) = shared.since_t0() {
                                shared.acked_at.lock().unwrap().push(at);
                            }
                        }
                    }
                    break;
                }
                Answer::Busy { after, .. } => {
                    shared.acks_refused.fetch_add(1, Relaxed);
                    tokio::time::sleep(backoff(ack_attempt, after, unit_random())).await;
                    ack_attempt = ack_attempt.saturating_add(1);
                }
                Answer::Failed { status, reason } => {
                    shared.error("ack", format!("{status:?} {reason}"));
                    if status.is_some() {
                        // Refused: the real agent drops such acks.
                        break;
                    }
                    tokio::time::sleep(backoff(ack_attempt, None, unit_random())).await;
                    ack_attempt = ack_attempt.saturating_add(1);
                }
            }
        }
    }
}

/// How long a check-in asking for `poll` may take: the server holds a poll
/// at most an hour; one that takes longer than that and a margin is lost.
pub(crate) fn checkin_timeout(poll: Option<Duration>) -> Duration {
    poll.map_or(Duration::from_secs(3700), |t| t + Duration::from_secs(120))
}

/// A check-in body as an Elastic agent sends it, `metadata` (already
/// JSON) spliced in as `local_metadata` without re-serialising it.
pub(crate) fn checkin_body(
    poll: Option<Duration>,
    ack_token: Option<&str>,
    policy_id: &str,
    revision: i64,
    metadata: &str,
) -> String {
    let mut body = json!({"status": "online", "message": "Running"});
    if let Some(t) = poll {
        body["poll_timeout"] = json!(format!("{}s", t.as_secs().max(1)));
    }
    if let Some(t) = ack_token {
        body["ack_token"] = json!(t);
    }
    if !policy_id.is_empty() {
        body["agent_policy_id"] = json!(policy_id);
        body["policy_revision_idx"] = json!(revision);
    }
    let mut text = body.to_string();
    text.pop();
    text.push_str(r#","local_metadata":"#);
    text.push_str(metadata);
    text.push('}');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkin_body_is_json_with_what_was_given() {
        let meta = r#"{"elastic":{"agent":{"id":"a"}}}"#;
        let v: serde_json::Value = serde_json::from_str(&checkin_body(
            Some(Duration::from_secs(600)),
            Some("tok"),
            "p",
            3,
            meta,
        ))
        .unwrap();
        assert_eq!(v["poll_timeout"], "600s");
        assert_eq!(v["ack_token"], "tok");
        assert_eq!(v["agent_policy_id"], "p");
        assert_eq!(v["policy_revision_idx"], 3);
        assert_eq!(v["local_metadata"]["elastic"]["agent"]["id"], "a");
        let v: serde_json::Value =
            serde_json::from_str(&checkin_body(None, None, "", 0, "{}")).unwrap();
        assert!(v.get("poll_timeout").is_none() && v.get("ack_token").is_none());
        assert!(v.get("agent_policy_id").is_none());
        assert_eq!(checkin_timeout(None), Duration::from_secs(3700));
    }

    #[test]
    fn metadata_is_the_size_asked_and_names_the_agent() {
        let m = Metadata::new(4096, "9.1.0");
        let text = m.render("host-7");
        assert!(
            text.len() + 64 >= 4096 && text.len() < 4096 + 200,
            "{}",
            text.len()
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["host"]["hostname"], "host-7");
        assert_eq!(v["host"]["name"], "host-7");
        assert_eq!(v["elastic"]["agent"]["id"], "host-7");
        assert_eq!(v["elastic"]["agent"]["version"], "9.1.0");
        let small = Metadata::new(0, "9.1.0").render("x");
        assert!(small.len() < 1024);
    }

    #[test]
    fn random_units_stay_in_range() {
        for _ in 0..1000 {
            let x = unit_random();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
