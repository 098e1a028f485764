//! The overload scenarios: `overload` (twice the server's capacity: what
//! is shed, whether admitted agents keep being served, how it recovers)
//! and `storm` (every waiting agent drops and reconnects at once: how long
//! until all wait again).
//!
//! Their agents run a loop of their own (not `agent::run_loop`): each
//! records whether it was admitted and whether it was refused after.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::agent::{unit_random, Enrolled, Metadata, REQUEST_TIMEOUT};
use crate::client::{Answer, Pool};
use crate::retry::backoff;
use crate::summary::{Figure, Summary};
use crate::LoadgenArgs;

/// A check-in in flight this long without an answer is waiting (refusals
/// come back at once).
const WAITING_AFTER: Duration = Duration::from_secs(1);

#[derive(Default)]
struct AgentSlot {
    admitted: AtomicBool,
    /// Answered 200, or waiting, since the phase began.
    ok: AtomicBool,
    /// Milliseconds since the run's start when the check-in in flight was
    /// sent (0: none).
    sent_at_ms: AtomicU64,
    leave: AtomicBool,
    revision: AtomicI64,
    ack_token: Mutex<Option<String>>,
}

#[derive(Default)]
struct Counts {
    /// Check-ins refused (429/503) before the agent was first admitted.
    refused: AtomicU64,
    /// ... of which came with a `Retry-After` (and were retried after it).
    with_retry_after: AtomicU64,
    /// Check-ins refused after the agent had been admitted.
    admitted_refused: AtomicU64,
    acks_refused: AtomicU64,
    checkins: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

struct Run {
    pool: Arc<Pool>,
    meta: Arc<Metadata>,
    counts: Arc<Counts>,
    agents: Vec<(Enrolled, Arc<AgentSlot>)>,
    loops: JoinSet<()>,
    start: Instant,
}

impl Run {
    fn start_loops(&mut self, poll: Option<Duration>) {
        for (agent, slot) in &self.agents {
            self.loops.spawn(agent_loop(
                self.pool.clone(),
                self.meta.clone(),
                self.counts.clone(),
                agent.clone(),
                slot.clone(),
                poll,
                self.start,
            ));
        }
    }

    /// Agents answered or waiting since the phase began (of those that
    /// have not left).
    fn converged(&self) -> (usize, usize) {
        let now = self.start.elapsed().as_millis() as u64;
        let mut ok = 0;
        let mut staying = 0;
        for (_, s) in &self.agents {
            if s.leave.load(Relaxed) {
                continue;
            }
            staying += 1;
            let sent = s.sent_at_ms.load(Relaxed);
            if s.admitted.load(Relaxed)
                && (s.ok.load(Relaxed)
                    || (sent > 0 && now.saturating_sub(sent) >= WAITING_AFTER.as_millis() as u64))
            {
                ok += 1;
            }
        }
        (ok, staying)
    }

    fn admitted(&self) -> usize {
        self.agents
            .iter()
            .filter(|(_, s)| s.admitted.load(Relaxed))
            .count()
    }

    /// Seconds until every staying agent is answered or waiting.
    async fn wait_converged(&self, timeout: Duration, quiet: bool, label: &str) -> Option<f64> {
        let t = Instant::now();
        let mut shown = Instant::now();
        loop {
            let (ok, staying) = self.converged();
            if ok >= staying {
                return Some(t.elapsed().as_secs_f64());
            }
            if t.elapsed() >= timeout {
                return None;
            }
            if !quiet && shown.elapsed() >= Duration::from_secs(1) {
                shown = Instant::now();
                self.progress(label, ok, staying);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn progress(&self, label: &str, ok: usize, staying: usize) {
        let c = &self.counts;
        eprintln!(
            "{label} {:>4}s: served-or-waiting {ok}/{staying} admitted {} refused {} admitted-refused {} errors {}",
            self.start.elapsed().as_secs(),
            self.admitted(),
            c.refused.load(Relaxed),
            c.admitted_refused.load(Relaxed),
            c.errors.load(Relaxed),
        );
    }

    fn last_error(&self) {
        if let Some(e) = self.counts.last_error.lock().unwrap().clone() {
            eprintln!("last error: {e}");
        }
    }
}

fn error(c: &Counts, what: &str, reason: String) {
    c.errors.fetch_add(1, Relaxed);
    *c.last_error.lock().unwrap() = Some(format!("{what}: {reason}"));
}

async fn agent_loop(
    pool: Arc<Pool>,
    meta: Arc<Metadata>,
    counts: Arc<Counts>,
    agent: Enrolled,
    slot: Arc<AgentSlot>,
    poll: Option<Duration>,
    start: Instant,
) {
    let name = format!("loadgen-{}-{}", std::process::id(), agent.index);
    let metadata = meta.render(&name);
    let checkin_path = format!("/api/fleet/agents/{}/checkin", agent.id);
    let ack_path = format!("/api/fleet/agents/{}/acks", agent.id);
    let request_timeout = crate::agent::checkin_timeout(poll);
    let mut attempt = 0u32;
    while !slot.leave.load(Relaxed) {
        let revision = slot.revision.load(Relaxed);
        let ack_token = slot.ack_token.lock().unwrap().clone();
        let text = crate::agent::checkin_body(
            poll,
            ack_token.as_deref(),
            &agent.policy_id,
            revision,
            &metadata,
        );
        slot.sent_at_ms
            .store((start.elapsed().as_millis() as u64).max(1), Relaxed);
        let answer = pool
            .post(
                agent.index,
                &checkin_path,
                &agent.key,
                text,
                request_timeout,
            )
            .await;
        slot.sent_at_ms.store(0, Relaxed);
        let v = match answer {
            Answer::Ok(v) => v,
            Answer::Busy { after } => {
                if slot.admitted.load(Relaxed) {
                    counts.admitted_refused.fetch_add(1, Relaxed);
                } else {
                    counts.refused.fetch_add(1, Relaxed);
                    if after.is_some() {
                        counts.with_retry_after.fetch_add(1, Relaxed);
                    }
                }
                tokio::time::sleep(backoff(attempt, after, unit_random())).await;
                attempt = attempt.saturating_add(1);
                continue;
            }
            Answer::Failed { status, reason } => {
                error(&counts, "checkin", format!("{status:?} {reason}"));
                tokio::time::sleep(backoff(attempt, None, unit_random())).await;
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        attempt = 0;
        counts.checkins.fetch_add(1, Relaxed);
        if let Some(t) = v.get("ack_token").and_then(Value::as_str) {
            *slot.ack_token.lock().unwrap() = Some(t.to_owned());
        }
        let actions = v
            .get("actions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut new_revision = None;
        let mut events = Vec::new();
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
                new_revision = Some(new_revision.map_or(rev, |r: i64| r.max(rev)));
            }
            events.push(json!({
                "type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED",
                "agent_id": agent.id, "action_id": id,
                "message": format!("Action '{id}' of type '{kind}' acknowledged."),
                "timestamp": chrono::Utc::now().to_rfc3339(),
            }));
        }
        if !events.is_empty() {
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
                            slot.revision.fetch_max(rev, Relaxed);
                        }
                        break;
                    }
                    Answer::Busy { after } => {
                        counts.acks_refused.fetch_add(1, Relaxed);
                        tokio::time::sleep(backoff(ack_attempt, after, unit_random())).await;
                        ack_attempt = ack_attempt.saturating_add(1);
                    }
                    Answer::Failed { status, reason } => {
                        error(&counts, "ack", format!("{status:?} {reason}"));
                        if status.is_some() {
                            break;
                        }
                        tokio::time::sleep(backoff(ack_attempt, None, unit_random())).await;
                        ack_attempt = ack_attempt.saturating_add(1);
                    }
                }
            }
        }
        // Admitted once its first policy is acked.
        if slot.revision.load(Relaxed) > 0 {
            slot.admitted.store(true, Relaxed);
            slot.ok.store(true, Relaxed);
        }
    }
}

/// `/healthz` every 250 ms; counts answers other than 200 (and timeouts).
fn watch_health(url: &str) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>, Arc<AtomicU64>) {
    let failures = Arc::new(AtomicU64::new(0));
    let probes = Arc::new(AtomicU64::new(0));
    let (f, p) = (failures.clone(), probes.clone());
    let url = format!("{}/healthz", url.trim_end_matches('/'));
    let handle = tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            let r = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            p.fetch_add(1, Relaxed);
            if !matches!(r, Ok(ref r) if r.status().as_u16() == 200) {
                f.fetch_add(1, Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    (handle, failures, probes)
}

async fn enrolled_run(args: &LoadgenArgs, label: &str) -> anyhow::Result<(Run, u64, f64)> {
    if args.processes > 1 {
        bail!("{label} runs in one process (--processes 1)");
    }
    let mut b = crate::scenarios::new_bench(args, &args.url, label)?;
    let (token, _) = crate::scenarios::prepare(args, &b.op).await?;
    let e = b
        .enroll(&token, args.agents, args.concurrency, args.timeout)
        .await;
    if b.agents.is_empty() {
        bail!("no agent enrolled");
    }
    let enroll_refused = b.shared.busy.load(Relaxed);
    let agents = std::mem::take(&mut b.agents)
        .into_iter()
        .map(|a| (a, Arc::new(AgentSlot::default())))
        .collect();
    let run = Run {
        pool: b.pool.clone(),
        meta: b.meta.clone(),
        counts: Arc::new(Counts::default()),
        agents,
        loops: JoinSet::new(),
        start: Instant::now(),
    };
    Ok((run, enroll_refused, e.rate()))
}

/// N agents against a server sized for fewer: for `--duration` they all
/// check in (refused ones retry after `Retry-After`); then as many of the
/// admitted leave as were kept out, and the rest must all be admitted with
/// no operator action.
pub async fn overload(args: &LoadgenArgs) -> anyhow::Result<Summary> {
    let (mut run, enroll_refused, enroll_rate) = enrolled_run(args, "overload").await?;
    let (health, health_failures, probes) = watch_health(&args.url);
    let phase = Instant::now();
    run.start_loops(args.poll_timeout);
    let mut last_admitted = (0usize, 0.0f64);
    let mut shown = Instant::now();
    while phase.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let a = run.admitted();
        if a > last_admitted.0 {
            last_admitted = (a, phase.elapsed().as_secs_f64());
        }
        if !args.quiet && shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            let (ok, staying) = run.converged();
            run.progress("overload", ok, staying);
        }
    }
    let admitted = run.admitted();
    let admitted_refused_overload = run.counts.admitted_refused.load(Relaxed);
    // The overload ends: as many admitted agents leave as were kept out.
    let kept_out = run.agents.len() - admitted;
    let mut left = 0;
    for (_, s) in &run.agents {
        if left >= kept_out {
            break;
        }
        if s.admitted.load(Relaxed) {
            s.leave.store(true, Relaxed);
            left += 1;
        }
    }
    let recover_s = run
        .wait_converged(args.timeout, args.quiet, "overload")
        .await;
    let (ok, staying) = run.converged();
    health.abort();
    run.loops.abort_all();
    // Check-ins of agents not yet admitted refused, overload and recovery.
    let refused = run.counts.refused.load(Relaxed);
    let mut s = Summary::new("overload");
    s.push("agents", Figure::Count(args.agents as u64))
        .push("enrolled", Figure::Count(run.agents.len() as u64))
        .push("enroll_per_s", Figure::Rate(enroll_rate))
        .push("enroll_refused", Figure::Count(enroll_refused))
        .push("admitted", Figure::Count(admitted as u64))
        .push(
            "admitted_per_s",
            Figure::Rate(if last_admitted.1 > 0.0 {
                last_admitted.0 as f64 / last_admitted.1
            } else {
                0.0
            }),
        )
        .push("refused", Figure::Count(refused))
        .push(
            "refused_with_retry_after",
            Figure::Count(run.counts.with_retry_after.load(Relaxed)),
        )
        .push(
            "admitted_refused",
            Figure::Count(run.counts.admitted_refused.load(Relaxed)),
        )
        .push(
            "admitted_refused_in_overload",
            Figure::Count(admitted_refused_overload),
        )
        .push("left", Figure::Count(left as u64))
        .push("recover_s", Figure::opt_seconds(recover_s))
        .push("served_after", Figure::Count(ok as u64))
        .push("staying", Figure::Count(staying as u64))
        .push(
            "acks_refused",
            Figure::Count(run.counts.acks_refused.load(Relaxed)),
        )
        .push("healthz_probes", Figure::Count(probes.load(Relaxed)))
        .push(
            "healthz_failures",
            Figure::Count(health_failures.load(Relaxed)),
        )
        .push("errors", Figure::Count(run.counts.errors.load(Relaxed)));
    run.last_error();
    Ok(s)
}

/// N agents enrolled and waiting drop their connections at once and
/// reconnect at once: how long until all wait again.
pub async fn storm(args: &LoadgenArgs) -> anyhow::Result<Summary> {
    let (mut run, _, _) = enrolled_run(args, "storm").await?;
    let poll = Some(args.poll_timeout.unwrap_or(crate::scenarios::DEFAULT_POLL));
    run.start_loops(poll);
    let Some(first) = run.wait_converged(args.timeout, args.quiet, "storm").await else {
        run.last_error();
        bail!("not every agent was waiting after {:?}", args.timeout);
    };
    // Every connection dropped at once (a new client pool: new
    // connections), then every agent back at once.
    run.loops.abort_all();
    while run.loops.join_next().await.is_some() {}
    run.pool = Arc::new(Pool::new(&args.url, &args.ips(), &args.user_agent)?);
    for (_, s) in &run.agents {
        s.ok.store(false, Relaxed);
        s.sent_at_ms.store(0, Relaxed);
    }
    let before = (
        run.counts.refused.load(Relaxed) + run.counts.admitted_refused.load(Relaxed),
        run.counts.errors.load(Relaxed),
    );
    let (health, health_failures, probes) = watch_health(&args.url);
    run.start_loops(poll);
    let converge_s = run.wait_converged(args.timeout, args.quiet, "storm").await;
    let (ok, staying) = run.converged();
    health.abort();
    run.loops.abort_all();
    let refused =
        run.counts.refused.load(Relaxed) + run.counts.admitted_refused.load(Relaxed) - before.0;
    let mut s = Summary::new("storm");
    s.push("agents", Figure::Count(args.agents as u64))
        .push("enrolled", Figure::Count(run.agents.len() as u64))
        .push("to_all_waiting_s", Figure::Seconds(first))
        .push("converge_s", Figure::opt_seconds(converge_s))
        .push("waiting_after", Figure::Count(ok as u64))
        .push("of", Figure::Count(staying as u64))
        .push("refused_in_storm", Figure::Count(refused))
        .push("healthz_probes", Figure::Count(probes.load(Relaxed)))
        .push(
            "healthz_failures",
            Figure::Count(health_failures.load(Relaxed)),
        )
        .push(
            "errors",
            Figure::Count(run.counts.errors.load(Relaxed) - before.1),
        );
    run.last_error();
    Ok(s)
}
