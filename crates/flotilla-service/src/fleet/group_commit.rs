//! Group commit: concurrent writes of one kind share a write transaction.
//!
//! After a policy change every agent of the policy rotates its output key
//! and then acks at once, and on SQLite each was its own transaction on
//! the one writer. Now a worker per kind takes what has queued while the
//! previous batch committed (up to `MAX_BATCH`) and writes it in one
//! transaction; under no load a batch is one item and nothing waits. A
//! batch that fails is retried one by one, so one bad item fails only
//! itself. Kinds: "the agent runs this revision" (acks and reported
//! revisions), output-key rotations, check-ins that changed something and
//! enrolments.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use flotilla_store::{CheckinRecord, Enrolment, OutputKeyChange, RunsPolicy, Store, StoreError};

const MAX_BATCH: usize = 256;

/// A write that can share a transaction with others of its kind.
pub trait GroupWrite: Clone + Send + Sync + 'static {
    type Output: Send + 'static;
    /// The `kind` label of `flotilla_group_commit_batch_size`.
    const KIND: &'static str;
    /// Every item in one transaction: each one's output, in order.
    fn all(
        store: &dyn Store,
        items: &[Self],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<Self::Output>, StoreError>> + Send;
    /// One item on its own (the retry of a failed batch).
    fn one(
        store: &dyn Store,
        item: &Self,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Self::Output, StoreError>> + Send {
        async move {
            let mut out = Self::all(store, std::slice::from_ref(item), now).await?;
            out.pop()
                .ok_or_else(|| StoreError::Other("a batch of one gave no answer".into()))
        }
    }
}

impl GroupWrite for RunsPolicy {
    /// The output keys invalidated.
    type Output = Vec<String>;
    const KIND: &'static str = "runs_policy";
    async fn all(
        store: &dyn Store,
        items: &[Self],
        now: DateTime<Utc>,
    ) -> Result<Vec<Vec<String>>, StoreError> {
        store.agents_run_policies(items, now).await
    }
}

/// A check-in that changed something, written now
/// ([`Store::record_checkins`]; heartbeats wait for the buffer's flush).
impl GroupWrite for CheckinRecord {
    type Output = ();
    const KIND: &'static str = "checkin";
    async fn all(
        store: &dyn Store,
        items: &[Self],
        _now: DateTime<Utc>,
    ) -> Result<Vec<()>, StoreError> {
        store.record_checkins(items).await?;
        Ok(vec![(); items.len()])
    }
}

/// An agent's new output key ([`Store::set_output_keys`]).
#[derive(Debug, Clone)]
pub struct KeyRotation {
    pub agent_id: String,
    pub change: OutputKeyChange,
}

impl GroupWrite for KeyRotation {
    /// Installed, or lost to a concurrent rotation (nothing written).
    type Output = bool;
    const KIND: &'static str = "key_rotation";
    async fn all(
        store: &dyn Store,
        items: &[Self],
        _now: DateTime<Utc>,
    ) -> Result<Vec<bool>, StoreError> {
        let changes: Vec<(String, OutputKeyChange)> = items
            .iter()
            .map(|r| (r.agent_id.clone(), r.change.clone()))
            .collect();
        store.set_output_keys(&changes).await
    }
}

/// A new agent with its access key ([`Store::enroll_agents`]).
impl GroupWrite for Enrolment {
    /// Enrolled, or refused with `enroll_agent`'s error (policy missing,
    /// enrollment id in use, a concurrent duplicate).
    type Output = Result<(), StoreError>;
    const KIND: &'static str = "enrolment";
    async fn all(
        store: &dyn Store,
        items: &[Self],
        _now: DateTime<Utc>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        store.enroll_agents(items).await
    }
}

struct Job<W: GroupWrite> {
    item: W,
    now: DateTime<Utc>,
    reply: oneshot::Sender<Result<W::Output, StoreError>>,
}

/// One per kind per process (in `Services`).
pub struct GroupCommit<W: GroupWrite> {
    queue: OnceLock<mpsc::UnboundedSender<Job<W>>>,
}

impl<W: GroupWrite> Default for GroupCommit<W> {
    fn default() -> Self {
        GroupCommit {
            queue: OnceLock::new(),
        }
    }
}

/// Acks and reported revisions.
pub type RunsPolicyBatcher = GroupCommit<RunsPolicy>;
/// Output-key rotations.
pub type KeyRotationBatcher = GroupCommit<KeyRotation>;
/// Check-ins written at once.
pub type CheckinBatcher = GroupCommit<CheckinRecord>;
/// Enrolments.
pub type EnrolmentBatcher = GroupCommit<Enrolment>;

impl<W: GroupWrite> GroupCommit<W> {
    /// `item` written, committed with whatever else is queued.
    pub async fn run(
        &self,
        store: &Arc<dyn Store>,
        item: W,
        now: DateTime<Utc>,
    ) -> Result<W::Output, StoreError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(worker(store.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        if queue.send(Job { item, now, reply }).is_err() {
            return Err(StoreError::Other("the group-commit worker stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Other("the group-commit worker stopped".into())))
    }
}

async fn worker<W: GroupWrite>(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Job<W>>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("flotilla_group_commit_batch_size", "kind" => W::KIND)
            .record(batch.len() as f64);
        let now = batch.iter().map(|j| j.now).max().unwrap_or_else(Utc::now);
        let items: Vec<W> = batch.iter().map(|j| j.item.clone()).collect();
        let started = std::time::Instant::now();
        let written = W::all(store.as_ref(), &items, now).await;
        metrics::histogram!("flotilla_group_commit_seconds", "kind" => W::KIND)
            .record(started.elapsed().as_secs_f64());
        match written {
            Ok(results) if results.len() == batch.len() => {
                for (job, out) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(out));
                }
            }
            Ok(_) => {
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Other(
                        "a batch gave the wrong number of answers".into(),
                    )));
                }
            }
            Err(e) if batch.len() == 1 => {
                let job = batch.pop().expect("one job");
                let _ = job.reply.send(Err(e));
            }
            Err(_) => {
                for job in batch {
                    let one = W::one(store.as_ref(), &job.item, job.now).await;
                    let _ = job.reply.send(one);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_domain::policy::NewAgentPolicy;
    use flotilla_store::NewAgent;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_runs_share_transactions_and_each_gets_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = flotilla_store_sql::open(flotilla_store_sql::Location::DataDir(dir.path()))
            .await
            .unwrap();
        let now = Utc::now();
        store
            .create_policy(
                &NewAgentPolicy {
                    id: "p".into(),
                    name: "p".into(),
                    namespace: "default".into(),
                    description: None,
                    output_id: None,
                    inactivity_timeout: 3600,
                },
                now,
            )
            .await
            .unwrap();
        for i in 0..200 {
            store
                .insert_agent(&NewAgent {
                    id: format!("a{i}"),
                    policy_id: "p".into(),
                    enrolled_at: now,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let batcher = Arc::new(RunsPolicyBatcher::default());
        let runs = (0..200).map(|i| {
            let (b, s) = (batcher.clone(), store.clone());
            tokio::spawn(async move {
                let run = RunsPolicy {
                    agent_id: format!("a{i}"),
                    policy_id: "p".into(),
                    revision: 1,
                };
                b.run(&s, run, Utc::now()).await
            })
        });
        for r in futures_join(runs).await {
            assert_eq!(r.unwrap(), Vec::<String>::new());
        }
        for i in 0..200 {
            let fa = store
                .get_fleet_agent(&format!("a{i}"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(fa.policy_revision, Some(1));
        }
    }

    async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
        let mut out = Vec::new();
        for h in handles.collect::<Vec<_>>() {
            out.push(h.await.unwrap());
        }
        out
    }
}
