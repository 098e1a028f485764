//! Group commit of "the agent runs this revision" writes (acks and
//! reported revisions): concurrent ones share one write transaction.
//!
//! After a policy change every agent of the policy acks at once, and on
//! SQLite each ack was its own transaction on the one writer. Now a worker
//! takes what has queued while the previous batch committed (up to
//! `MAX_BATCH`) and writes it in one transaction; under no load a batch is
//! one item and nothing waits. A batch that fails is retried one by one,
//! so one bad item fails only itself.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use flotilla_store::{RunsPolicy, Store, StoreError};

const MAX_BATCH: usize = 256;

struct Job {
    run: RunsPolicy,
    now: DateTime<Utc>,
    reply: oneshot::Sender<Result<Vec<String>, StoreError>>,
}

/// One per process (in `Services`).
#[derive(Default)]
pub struct RunsPolicyBatcher {
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
}

impl RunsPolicyBatcher {
    /// [`Store::agent_runs_policy`], committed with whatever else is
    /// queued.
    pub async fn run(
        &self,
        store: &Arc<dyn Store>,
        run: RunsPolicy,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(worker(store.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        if queue.send(Job { run, now, reply }).is_err() {
            return Err(StoreError::Other("the group-commit worker stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Other("the group-commit worker stopped".into())))
    }
}

async fn worker(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let now = batch.iter().map(|j| j.now).max().unwrap_or_else(Utc::now);
        let runs: Vec<RunsPolicy> = batch.iter().map(|j| j.run.clone()).collect();
        match store.agents_run_policies(&runs, now).await {
            Ok(results) => {
                for (job, retired) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(retired));
                }
            }
            Err(e) if batch.len() == 1 => {
                let job = batch.pop().expect("one job");
                let _ = job.reply.send(Err(e));
            }
            Err(_) => {
                for job in batch {
                    let r = &job.run;
                    let one = store
                        .agent_runs_policy(&r.agent_id, &r.policy_id, r.revision, job.now)
                        .await;
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
