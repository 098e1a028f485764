//! One target server and the simulated fleet against it: enrol, start the
//! check-in loops, wait until every agent waits in a long poll, measure.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::agent::{self, AgentState, Enrolled, LoopConfig, Metadata, Shared};
use crate::client::{Operator, Pool};
use crate::stats;

pub struct Bench {
    pub pool: Arc<Pool>,
    pub shared: Arc<Shared>,
    pub meta: Arc<Metadata>,
    pub op: Operator,
    pub agents: Vec<Enrolled>,
    states: Vec<Arc<AgentState>>,
    loops: JoinSet<()>,
    progress: Option<tokio::task::JoinHandle<()>>,
}

/// What enrolling the fleet measured.
pub struct Enrolment {
    pub latencies_ms: Vec<f64>,
    /// Seconds from the start at which each enrolment completed.
    pub done_at: Vec<f64>,
    pub elapsed: Duration,
}

impl Enrolment {
    pub fn rate(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.elapsed.as_secs_f64().max(1e-6)
    }
    pub fn p(&self, p: f64) -> Option<f64> {
        stats::percentile(&self.latencies_ms, p)
    }
}

impl Bench {
    pub fn new(pool: Pool, op: Operator, meta: Arc<Metadata>) -> Bench {
        Bench {
            pool: Arc::new(pool),
            shared: Arc::new(Shared::default()),
            meta,
            op,
            agents: Vec::new(),
            states: Vec::new(),
            loops: JoinSet::new(),
            progress: None,
        }
    }

    /// A progress line on stderr every second, `label` first.
    pub fn show_progress(&mut self, label: String, total: usize) {
        let shared = self.shared.clone();
        let start = Instant::now();
        self.progress = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let err = shared.last_error.lock().unwrap().clone();
                eprintln!(
                    "{label} {:>4}s: enrolled {}/{total} polling {} acked {} checkins {} busy {} acks-refused {} errors {}{}",
                    start.elapsed().as_secs(),
                    shared.enrolled.load(Relaxed),
                    shared.polling.load(Relaxed),
                    shared.acked_first.load(Relaxed),
                    shared.checkins.load(Relaxed),
                    shared.busy.load(Relaxed),
                    shared.acks_refused.load(Relaxed),
                    shared.errors.load(Relaxed),
                    err.map(|e| format!(" (last: {e})")).unwrap_or_default(),
                );
            }
        }));
    }

    /// Enrols `n` agents, `concurrency` at a time.
    pub async fn enroll(
        &mut self,
        token: &str,
        n: usize,
        concurrency: usize,
        timeout: Duration,
    ) -> Enrolment {
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let deadline = start + timeout;
        let mut workers = JoinSet::new();
        for _ in 0..concurrency.clamp(1, n.max(1)) {
            let (pool, shared, meta, next, token) = (
                self.pool.clone(),
                self.shared.clone(),
                self.meta.clone(),
                next.clone(),
                token.to_owned(),
            );
            workers.spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= n {
                        return out;
                    }
                    if let Some((took, e)) =
                        agent::enroll(&pool, &shared, &meta, &token, i, deadline).await
                    {
                        out.push((took, start.elapsed(), e));
                    }
                }
            });
        }
        let mut all = Vec::with_capacity(n);
        while let Some(r) = workers.join_next().await {
            all.extend(r.unwrap_or_default());
        }
        let elapsed = start.elapsed();
        all.sort_by_key(|(_, _, e)| e.index);
        let mut out = Enrolment {
            latencies_ms: Vec::with_capacity(all.len()),
            done_at: Vec::with_capacity(all.len()),
            elapsed,
        };
        for (took, at, e) in all {
            out.latencies_ms.push(stats::millis(took));
            out.done_at.push(at.as_secs_f64());
            self.agents.push(e);
            self.states.push(Arc::new(AgentState::default()));
        }
        out
    }

    /// Starts every agent's check-in loop (stopping any running first).
    pub fn start_loops(&mut self, cfg: LoopConfig) {
        self.stop_loops();
        for (agent, state) in self.agents.iter().zip(&self.states) {
            self.loops.spawn(agent::run_loop(
                self.pool.clone(),
                self.shared.clone(),
                agent.clone(),
                state.clone(),
                cfg.clone(),
            ));
        }
    }

    pub fn stop_loops(&mut self) {
        self.loops.abort_all();
        self.shared.polling.store(0, Relaxed);
    }

    /// Waits until every agent acked its first policy and the server
    /// reports at least `expect` waiting long polls (its
    /// `flotilla_checkins_waiting`; without it, the check-ins in flight
    /// here). The seconds it took, or `None` at the timeout.
    pub async fn wait_all_waiting(&self, expect: usize, timeout: Duration) -> Option<f64> {
        let start = Instant::now();
        let n = self.agents.len() as u64;
        loop {
            if self.shared.acked_first.load(Relaxed) >= n {
                let waiting = match self.op.metric("flotilla_checkins_waiting").await {
                    Some(w) => w as u64,
                    None => self.shared.polling.load(Relaxed),
                };
                self.shared.waiting_seen.store(waiting, Relaxed);
                if waiting >= expect as u64 {
                    return Some(start.elapsed().as_secs_f64());
                }
            }
            if start.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.loops.abort_all();
        if let Some(p) = self.progress.take() {
            p.abort();
        }
    }
}
