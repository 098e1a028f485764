//! The long polls held open: a global cap, and one slot per agent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The long polls held open: at most `max` in all, and one per agent — a
/// newer check-in of an agent replaces its waiting one (which answers at
/// once, with no actions), so no agent can hold more than one slot.
pub struct LongPolls {
    permits: Arc<tokio::sync::Semaphore>,
    waiting: Mutex<HashMap<String, (u64, Arc<tokio::sync::Notify>)>>,
    next: AtomicU64,
}

/// How long a check-in that replaced an agent's waiting one waits for that
/// one to give its slot back when every slot is taken.
const REPLACE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl LongPolls {
    pub fn new(max: usize) -> Self {
        LongPolls {
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
            waiting: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        }
    }

    /// A slot for the agent's check-in, replacing its previous one; `None`
    /// when every slot is held by other agents.
    pub async fn enter(self: &Arc<Self>, agent_id: &str) -> Option<LongPollSlot> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let replaced = Arc::new(tokio::sync::Notify::new());
        let previous = self
            .waiting
            .lock()
            .expect("long-poll lock")
            .insert(agent_id.to_owned(), (id, replaced.clone()));
        // Removes our entry again if no slot is had.
        let mut slot = LongPollSlot {
            polls: self.clone(),
            agent_id: agent_id.to_owned(),
            id,
            replaced,
            permit: None,
        };
        let had_previous = previous.is_some();
        if let Some((_, older)) = previous {
            // Stored if the older one is not waiting yet: it ends as soon as
            // it would.
            older.notify_one();
        }
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) if had_previous => {
                tokio::time::timeout(REPLACE_WAIT, self.permits.clone().acquire_owned())
                    .await
                    .ok()?
                    .ok()?
            }
            Err(_) => return None,
        };
        slot.permit = Some(permit);
        Some(slot)
    }
}

pub struct LongPollSlot {
    polls: Arc<LongPolls>,
    agent_id: String,
    id: u64,
    replaced: Arc<tokio::sync::Notify>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl LongPollSlot {
    /// Resolves when a newer check-in of the same agent takes over.
    pub async fn replaced(&self) {
        self.replaced.notified().await
    }
}

impl Drop for LongPollSlot {
    fn drop(&mut self) {
        let mut waiting = self.polls.waiting.lock().expect("long-poll lock");
        if waiting
            .get(&self.agent_id)
            .is_some_and(|(id, _)| *id == self.id)
        {
            waiting.remove(&self.agent_id);
        }
        drop(waiting);
        self.permit.take();
    }
}
