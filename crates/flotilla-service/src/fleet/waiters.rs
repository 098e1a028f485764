//! Waiting check-ins, indexed by agent and by policy, so that a change
//! wakes only the polls it concerns.
//!
//! Before, every waiting poll held its own subscription to the store's
//! change events and filtered each one itself: a change to one policy woke
//! every waiting poll of every policy, and a fan-out to N agents cost N²
//! wake-ups. Now one dispatcher per process holds the subscription and
//! looks each event up: a policy's waiters, an agent's, or — for an event
//! that may concern anyone (`Resync`, a lagged subscription, a change to
//! "possibly any" policy) — all of them.
//!
//! No wake-up is lost between a poll's read and its wait: a poll registers
//! before it reads, and `Notify` keeps a wake-up that arrives while nobody
//! waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;

use flotilla_store::{Store, StoreEvent};

#[derive(Default)]
struct Inner {
    next: u64,
    /// Waiters by id: their agent, policy and wake-up.
    all: HashMap<u64, (String, String, Arc<Notify>)>,
    by_agent: HashMap<String, Vec<u64>>,
    by_policy: HashMap<String, Vec<u64>>,
    /// The dispatcher is running (subscribed).
    started: bool,
    /// The store's events ended: polls rely on their recheck timer.
    closed: bool,
}

/// The registry of waiting polls (one per process, in `Services`).
#[derive(Default)]
pub struct Waiters {
    inner: Mutex<Inner>,
}

/// One waiting poll's place in the registry; leaves it on drop.
pub struct Registration {
    hub: Arc<Waiters>,
    id: u64,
    pub(crate) policy_id: String,
    notify: Arc<Notify>,
}

impl Registration {
    /// Resolves when a change that may concern this poll arrived (also one
    /// that arrived since registering).
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

fn remove_id(map: &mut HashMap<String, Vec<u64>>, key: &str, id: u64) {
    if let Some(ids) = map.get_mut(key) {
        ids.retain(|i| *i != id);
        if ids.is_empty() {
            map.remove(key);
        }
    }
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a poll of `agent_id` on `policy_id`. The first registration
    /// starts the dispatcher (subscribed here, before the caller reads).
    pub fn register(
        self: &Arc<Self>,
        store: &Arc<dyn Store>,
        agent_id: &str,
        policy_id: &str,
    ) -> Registration {
        let mut inner = self.lock();
        if !inner.started {
            inner.started = true;
            let events = store.subscribe();
            let hub = Arc::downgrade(self);
            tokio::spawn(dispatch(hub, events));
        }
        inner.next += 1;
        let id = inner.next;
        let notify = Arc::new(Notify::new());
        inner.all.insert(
            id,
            (agent_id.to_owned(), policy_id.to_owned(), notify.clone()),
        );
        inner
            .by_agent
            .entry(agent_id.to_owned())
            .or_default()
            .push(id);
        inner
            .by_policy
            .entry(policy_id.to_owned())
            .or_default()
            .push(id);
        Registration {
            hub: self.clone(),
            id,
            policy_id: policy_id.to_owned(),
            notify,
        }
    }

    fn remove(&self, id: u64) {
        let mut inner = self.lock();
        if let Some((agent, policy, _)) = inner.all.remove(&id) {
            remove_id(&mut inner.by_agent, &agent, id);
            remove_id(&mut inner.by_policy, &policy, id);
        }
    }

    /// How many polls wait.
    pub fn len(&self) -> usize {
        self.lock().all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wake the polls `event` may concern; how many.
    pub fn dispatch(&self, event: &StoreEvent) -> usize {
        let inner = self.lock();
        let wake = |ids: Option<&Vec<u64>>| -> usize {
            let mut n = 0;
            for id in ids.into_iter().flatten() {
                if let Some((_, _, notify)) = inner.all.get(id) {
                    notify.notify_one();
                    n += 1;
                }
            }
            n
        };
        match event {
            StoreEvent::PolicyChanged { policy_id: Some(p) } => wake(inner.by_policy.get(p)),
            StoreEvent::ActionsCreated {
                agent_ids: Some(ids),
            } => ids.iter().map(|a| wake(inner.by_agent.get(a))).sum(),
            StoreEvent::AgentChanged { agent_id } => wake(inner.by_agent.get(agent_id)),
            StoreEvent::TasksDue => 0,
            StoreEvent::PolicyChanged { policy_id: None }
            | StoreEvent::ActionsCreated { agent_ids: None }
            | StoreEvent::Resync => {
                for (_, _, notify) in inner.all.values() {
                    notify.notify_one();
                }
                inner.all.len()
            }
        }
    }

    fn wake_all(&self) {
        self.dispatch(&StoreEvent::Resync);
    }
}

async fn dispatch(
    hub: std::sync::Weak<Waiters>,
    mut events: tokio::sync::broadcast::Receiver<StoreEvent>,
) {
    loop {
        let ev = events.recv().await;
        let Some(hub) = hub.upgrade() else { return };
        match ev {
            Ok(ev) => {
                hub.dispatch(&ev);
            }
            // Some events were missed: every poll reads again.
            Err(RecvError::Lagged(_)) => hub.wake_all(),
            Err(RecvError::Closed) => {
                hub.lock().closed = true;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_without_dispatcher() -> Arc<Waiters> {
        let hub = Arc::new(Waiters::default());
        hub.lock().started = true;
        hub
    }

    fn register(hub: &Arc<Waiters>, agent: &str, policy: &str) -> Registration {
        let mut inner = hub.lock();
        inner.next += 1;
        let id = inner.next;
        let notify = Arc::new(Notify::new());
        inner
            .all
            .insert(id, (agent.into(), policy.into(), notify.clone()));
        inner.by_agent.entry(agent.into()).or_default().push(id);
        inner.by_policy.entry(policy.into()).or_default().push(id);
        Registration {
            hub: hub.clone(),
            id,
            policy_id: policy.into(),
            notify,
        }
    }

    #[tokio::test]
    async fn a_change_wakes_only_the_polls_it_concerns() {
        let hub = hub_without_dispatcher();
        let a = register(&hub, "a", "p1");
        let b = register(&hub, "b", "p1");
        let c = register(&hub, "c", "p2");
        assert_eq!(
            hub.dispatch(&StoreEvent::PolicyChanged {
                policy_id: Some("p1".into())
            }),
            2
        );
        assert_eq!(
            hub.dispatch(&StoreEvent::ActionsCreated {
                agent_ids: Some(vec!["c".into(), "nobody".into()])
            }),
            1
        );
        assert_eq!(
            hub.dispatch(&StoreEvent::AgentChanged {
                agent_id: "a".into()
            }),
            1
        );
        assert_eq!(hub.dispatch(&StoreEvent::TasksDue), 0);
        assert_eq!(hub.dispatch(&StoreEvent::Resync), 3);
        // A wake-up sent before the wait is kept (no lost change).
        tokio::time::timeout(std::time::Duration::from_secs(5), a.notified())
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), b.notified())
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), c.notified())
            .await
            .unwrap();
        drop((a, b));
        assert_eq!(hub.len(), 1);
        assert_eq!(
            hub.dispatch(&StoreEvent::PolicyChanged {
                policy_id: Some("p1".into())
            }),
            0
        );
        drop(c);
        assert!(hub.is_empty());
        assert!(hub.lock().by_policy.is_empty() && hub.lock().by_agent.is_empty());
    }
}
