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
//!
//! A wake-up also says whether the agent's own record may have changed: a
//! change to its policy alone does not touch it, so the woken poll skips
//! re-reading the agent (in a fan-out, one read fewer per agent).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;

use flotilla_store::{Store, StoreEvent};

#[derive(Default)]
struct Inner {
    next: u64,
    /// Waiters by id: their agent, policy and wake-up.
    all: HashMap<u64, (String, String, Arc<Wakeup>)>,
    by_agent: HashMap<String, Vec<u64>>,
    /// A set: a fan-out's thousands of waiters of one policy each leave it
    /// in O(1).
    by_policy: HashMap<String, HashSet<u64>>,
    /// The dispatcher is running (subscribed).
    started: bool,
    /// The store's events ended: polls rely on their recheck timer.
    closed: bool,
    /// Changes dispatched so far (any that may concern a check-in; lagged
    /// ones as one): a
    /// check-in that read before registering compares it across the two
    /// (see [`Waiters::changes_seen`]).
    seen: u64,
}

impl Inner {
    fn insert(&mut self, agent_id: &str, policy_id: &str, hub: &Arc<Waiters>) -> Registration {
        self.next += 1;
        let id = self.next;
        let wakeup = Arc::new(Wakeup::default());
        self.all.insert(
            id,
            (agent_id.to_owned(), policy_id.to_owned(), wakeup.clone()),
        );
        self.by_agent
            .entry(agent_id.to_owned())
            .or_default()
            .push(id);
        self.by_policy
            .entry(policy_id.to_owned())
            .or_default()
            .insert(id);
        Registration {
            hub: hub.clone(),
            id,
            policy_id: policy_id.to_owned(),
            wakeup,
        }
    }
}

/// The registry of waiting polls (one per process, in `Services`).
#[derive(Default)]
pub struct Waiters {
    inner: Mutex<Inner>,
}

/// What wakes one waiting poll, and whether its agent's record may have
/// changed since it was read.
#[derive(Default)]
struct Wakeup {
    notify: Notify,
    agent_stale: AtomicBool,
}

impl Wakeup {
    fn wake(&self, agent_stale: bool) {
        if agent_stale {
            self.agent_stale.store(true, Ordering::Release);
        }
        self.notify.notify_one();
    }
}

/// One waiting poll's place in the registry; leaves it on drop.
pub struct Registration {
    hub: Arc<Waiters>,
    id: u64,
    pub(crate) policy_id: String,
    wakeup: Arc<Wakeup>,
}

impl Registration {
    /// Resolves when a change that may concern this poll arrived (also one
    /// that arrived since registering).
    pub async fn notified(&self) {
        self.wakeup.notify.notified().await
    }

    /// Whether a change since the last call may have touched the agent's
    /// own record (not only its policy), clearing the mark. A poll that
    /// cannot know (woken by its recheck timer) re-reads anyway.
    pub fn take_agent_stale(&self) -> bool {
        self.wakeup.agent_stale.swap(false, Ordering::AcqRel)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(self.id);
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
        self.start(&mut inner, store);
        inner.insert(agent_id, policy_id, self)
    }

    fn start(self: &Arc<Self>, inner: &mut Inner, store: &Arc<dyn Store>) {
        if !inner.started {
            inner.started = true;
            let events = store.subscribe();
            let hub = Arc::downgrade(self);
            tokio::spawn(dispatch(hub, events));
        }
    }

    /// How many changes have been dispatched (the dispatcher started,
    /// subscribed, if it was not). A check-in that reads *before* it
    /// registers takes this before the read and again after registering:
    /// unchanged, no change was dispatched in between, and one dispatched
    /// after the registration wakes it — so what it read is as good as a
    /// read made after registering. Changed, it reads again.
    pub fn changes_seen(self: &Arc<Self>, store: &Arc<dyn Store>) -> u64 {
        let mut inner = self.lock();
        self.start(&mut inner, store);
        // Events end (a closed bus): no snapshot can be trusted.
        if inner.closed {
            return u64::MAX;
        }
        inner.seen
    }

    fn remove(&self, id: u64) {
        let mut inner = self.lock();
        if let Some((agent, policy, _)) = inner.all.remove(&id) {
            if let Some(ids) = inner.by_agent.get_mut(&agent) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    inner.by_agent.remove(&agent);
                }
            }
            if let Some(ids) = inner.by_policy.get_mut(&policy) {
                ids.remove(&id);
                if ids.is_empty() {
                    inner.by_policy.remove(&policy);
                }
            }
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
        let mut inner = self.lock();
        // Due tasks concern no check-in.
        if !matches!(event, StoreEvent::TasksDue) {
            inner.seen = inner.seen.wrapping_add(1) % (u64::MAX - 1);
        }
        let inner = inner;
        let wake = |ids: &mut dyn Iterator<Item = &u64>, agent_stale: bool| -> usize {
            let mut n = 0;
            for id in ids {
                if let Some((_, _, wakeup)) = inner.all.get(id) {
                    wakeup.wake(agent_stale);
                    n += 1;
                }
            }
            n
        };
        match event {
            // A policy's new revision leaves its agents' records as they were.
            StoreEvent::PolicyChanged { policy_id: Some(p) } => {
                wake(&mut inner.by_policy.get(p).into_iter().flatten(), false)
            }
            StoreEvent::ActionsCreated {
                agent_ids: Some(ids),
            } => ids
                .iter()
                .map(|a| wake(&mut inner.by_agent.get(a).into_iter().flatten(), true))
                .sum(),
            StoreEvent::AgentChanged { agent_id } => wake(
                &mut inner.by_agent.get(agent_id).into_iter().flatten(),
                true,
            ),
            StoreEvent::TasksDue => 0,
            StoreEvent::PolicyChanged { policy_id: None }
            | StoreEvent::ActionsCreated { agent_ids: None }
            | StoreEvent::Resync => wake(&mut inner.all.keys(), true),
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
                let mut inner = hub.lock();
                inner.closed = true;
                inner.seen = inner.seen.wrapping_add(1) % (u64::MAX - 1);
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
        hub.lock().insert(agent, policy, hub)
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

    /// A policy's change wakes its polls without marking their agents'
    /// records stale; a change to the agent (or to anything) marks it.
    #[tokio::test]
    async fn only_a_change_that_may_touch_the_agent_marks_it_stale() {
        let hub = hub_without_dispatcher();
        let a = register(&hub, "a", "p1");
        let b = register(&hub, "b", "p1");
        hub.dispatch(&StoreEvent::PolicyChanged {
            policy_id: Some("p1".into()),
        });
        assert!(!a.take_agent_stale() && !b.take_agent_stale());
        hub.dispatch(&StoreEvent::AgentChanged {
            agent_id: "a".into(),
        });
        hub.dispatch(&StoreEvent::ActionsCreated {
            agent_ids: Some(vec!["b".into()]),
        });
        assert!(a.take_agent_stale() && b.take_agent_stale());
        // Taken: cleared until the next such change.
        assert!(!a.take_agent_stale());
        hub.dispatch(&StoreEvent::Resync);
        assert!(a.take_agent_stale() && b.take_agent_stale());
    }

    /// Every dispatched change that may concern a check-in (a waiting one
    /// or not) moves the count a read-before-registering check-in
    /// compares; due tasks do not.
    #[tokio::test]
    async fn every_dispatched_change_moves_the_count() {
        let hub = hub_without_dispatcher();
        let seen = |hub: &Arc<Waiters>| hub.lock().seen;
        let before = seen(&hub);
        hub.dispatch(&StoreEvent::PolicyChanged {
            policy_id: Some("nobody's".into()),
        });
        hub.dispatch(&StoreEvent::AgentChanged {
            agent_id: "nobody".into(),
        });
        hub.dispatch(&StoreEvent::TasksDue);
        assert_eq!(seen(&hub), before + 2);
        let _a = register(&hub, "a", "p");
        hub.wake_all();
        assert_eq!(seen(&hub), before + 3);
    }
}
