//! The long-poll check-in.

use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use serde_json::{json, Map, Value};

use flotilla_domain::action::{Action, ActionType};
use flotilla_store::{CheckinRecord, FleetAgent, StoreError};

use super::*;

impl Fleet<'_> {
    /// Write buffered heartbeats; the server calls this on a timer and at
    /// shutdown.
    pub async fn flush_checkins(&self) -> std::result::Result<(), StoreError> {
        let batch = self.checkins.drain();
        if let Err(e) = self.store.record_checkins(&batch).await {
            self.checkins.requeue(batch);
            return Err(e);
        }
        Ok(())
    }

    pub(super) fn poll_duration(&self, requested: Option<Duration>) -> Duration {
        let jitter = self.settings.poll_jitter;
        let sample = if jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_millis(rand::thread_rng().gen_range(0..jitter.as_millis().max(1) as u64))
        };
        poll_duration(requested, self.settings.poll_timeout, sample)
    }

    /// A long-poll check-in: validate, record, then answer with what the
    /// agent is owed — at once, or when a change arrives, the poll's
    /// deadline passes or `stop` (shutdown, or a newer check-in of the same
    /// agent) resolves, whichever comes first (the last two: no actions).
    pub async fn checkin(
        &self,
        authed: AuthedAgent,
        user_agent: Option<&str>,
        body: CheckinRequest,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<CheckinResponse> {
        let mut stop = std::pin::pin!(stop);
        let AuthedAgent {
            mut agent,
            first_reads,
        } = authed;
        let checkin = validate(user_agent, &body, &self.settings.server_version)?;
        // Only the ack token outlives the record: a waiting poll does not
        // hold the agent's metadata (a few KiB as a tree of values, times
        // every waiting agent).
        let ack_token = body.ack_token.clone().unwrap_or_default();
        let (mut reread, confirmed) = self.record(&agent, body, &checkin).await?;
        let deadline = tokio::time::Instant::now() + self.poll_duration(checkin.poll_timeout);
        // Registered before reading, so no change between the read and the
        // wait goes unnoticed; only changes to this agent or its policy
        // wake it.
        let mut registration = self
            .waiters
            .register(&self.store, &agent.id, &agent.policy_id);
        // What was read with the authentication serves the first look if
        // nothing it covers can have changed since: the record wrote
        // nothing that touches it, and no change was dispatched between
        // the read and the registration (one dispatched after wakes the
        // poll, which then reads again).
        let mut first = still_good(
            first_reads,
            reread || confirmed,
            self.waiters.changes_seen(&self.store),
        );
        metrics::counter!(
            "flotilla_checkin_first_reads_total",
            "used" => if first.is_some() { "yes" } else { "no" }
        )
        .increment(1);
        let mut waited = false;
        loop {
            let step = async {
                // Woken by a change to its policy alone, the agent's record
                // is as read: only the policy's revision and the actions are
                // read again.
                if reread || registration.take_agent_stale() {
                    first = None;
                    agent = self.reload(&agent.id).await?;
                    if agent.policy_id != registration.policy_id {
                        // Reassigned: follow the new policy (registered
                        // before the read below).
                        registration =
                            self.waiters
                                .register(&self.store, &agent.id, &agent.policy_id);
                    }
                }
                self.owed(&agent, &ack_token, checkin.reports.as_ref(), first.take())
                    .await
            }
            .await;
            reread = false;
            match step {
                Ok(Some(answer)) => return Ok(answer),
                Ok(None) => {}
                // Storage busy after the poll has waited (a wake-up or a
                // recheck met an exhausted pool): the poll is kept and
                // reads again after a pause, instead of answering 503 and
                // bringing the agent back through authentication and the
                // check-in's writes — which, fleet-wide, kept the pool
                // exhausted.
                Err(e) if waited && e.kind == FleetErrorKind::Unavailable => {
                    metrics::counter!("flotilla_checkin_busy_retries_total").increment(1);
                    reread = true;
                    let pause = tokio::time::Instant::now() + busy_pause();
                    tokio::select! {
                        _ = tokio::time::sleep_until(pause.min(deadline)) => {}
                        _ = &mut stop => return Ok(empty_checkin(ack_token)),
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(empty_checkin(ack_token));
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
            // Nothing yet: wait, refreshing the agent's last-seen time.
            let wake = self
                .wait(&registration, &agent, deadline, stop.as_mut())
                .await;
            waited = true;
            match wake {
                Wake::Reread => {}
                // A possibly lost notification: read everything again.
                Wake::Recheck => reread = true,
                Wake::Deadline | Wake::Stopped => return Ok(empty_checkin(ack_token)),
            }
        }
    }

    /// Wait for what ends a waiting poll: a change that concerns the agent
    /// (or a possibly lost one: the recheck timer), the deadline, or `stop`.
    pub(super) async fn wait(
        &self,
        registration: &super::Registration,
        agent: &FleetAgent,
        deadline: tokio::time::Instant,
        mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Wake {
        let _waiting = WaitingGauge::enter();
        let mut refresh = tokio::time::interval_at(
            tokio::time::Instant::now() + HEARTBEAT_REFRESH,
            HEARTBEAT_REFRESH,
        );
        let recheck = tokio::time::sleep(self.recheck_after());
        tokio::pin!(recheck);
        loop {
            tokio::select! {
                // A change to this agent or its policy (or one that may
                // concern anyone).
                _ = registration.notified() => return Wake::Reread,
                // A notification may have been lost: read again anyway.
                _ = &mut recheck => return Wake::Recheck,
                _ = refresh.tick() => self.checkins.refresh(&agent.id, Utc::now()),
                _ = tokio::time::sleep_until(deadline) => return Wake::Deadline,
                _ = &mut stop => return Wake::Stopped,
            }
        }
    }

    /// Record the check-in (buffered unless something changed), confirm
    /// the deliveries its ack token covers, and note a newer revision the
    /// agent reports running (which may retire keys). Whether the agent's
    /// record changed, so must be read again, and whether a delivery was
    /// confirmed (so its actions are no longer pending).
    async fn record(
        &self,
        agent: &FleetAgent,
        body: CheckinRequest,
        checkin: &ValidCheckin,
    ) -> Result<(bool, bool)> {
        let now = Utc::now();
        let record = CheckinRecord {
            agent_id: agent.id.clone(),
            at: now,
            status: body.status.trim().to_lowercase(),
            message: body.message,
            local_metadata: None,
            components: body.components.filter(|c| !c.is_null()),
            agent_version: Some(checkin.version.clone()),
            reported_policy: checkin.reports.clone(),
        };
        if let Some(now_rec) = self.checkins.offer_raw(
            record,
            body.local_metadata.as_deref(),
            agent.last_checkin.is_none(),
        ) {
            if let Err(e) = self.checkin_writes.run(&self.store, now_rec, now).await {
                self.checkins.unsettle(&agent.id);
                return Err(e.into());
            }
        }
        let mut confirmed = false;
        if let Some(token) = body.ack_token.as_deref().filter(|t| !t.is_empty()) {
            // Agents send their last token on every check-in; confirm it once.
            if !self.checkins.token_confirmed(&agent.id, token) {
                self.store.confirm_delivery(&agent.id, token).await?;
                self.checkins.remember_token(&agent.id, token);
                confirmed = true;
            }
        }
        match &checkin.reports {
            Some((p, rev))
                if *p == agent.policy_id && *rev > agent.policy_revision.unwrap_or(-1) =>
            {
                self.runs_policy
                    .run(
                        &self.store,
                        flotilla_store::RunsPolicy {
                            agent_id: agent.id.clone(),
                            policy_id: p.clone(),
                            revision: *rev,
                        },
                        now,
                    )
                    .await?;
                Ok((true, confirmed))
            }
            _ => Ok((false, confirmed)),
        }
    }

    async fn reload(&self, agent_id: &str) -> Result<FleetAgent> {
        let agent = self.store.get_fleet_agent(agent_id).await?.ok_or_else(|| {
            FleetError::new(FleetErrorKind::AgentNotFound, "agent could not be found")
        })?;
        if !agent.active {
            return Err(FleetError::new(
                FleetErrorKind::AgentInactive,
                "Agent inactive",
            ));
        }
        Ok(agent)
    }

    /// What the agent is owed now: its pending actions (stamped with a new
    /// ack token) and a POLICY_CHANGE when it is behind or its key no
    /// longer fits; `None` when nothing.
    async fn owed(
        &self,
        agent: &FleetAgent,
        ack_token: &str,
        reports: Option<&(String, i64)>,
        first: Option<super::FirstReads>,
    ) -> Result<Option<CheckinResponse>> {
        // A report about another policy (it was reassigned) counts as
        // running nothing of the current one.
        let reported = reports.map(|(p, rev)| if *p == agent.policy_id { *rev } else { 0 });
        // The policy's revision and the pending actions in one read (after
        // the waiter was registered, so a change in between still wakes it).
        // (Or as read with the authentication, when still good.)
        let (revision, stored) = match first {
            Some(f) => (f.policy_revision, f.actions),
            None => {
                self.store
                    .checkin_reads(&agent.id, &agent.policy_id, Utc::now(), PENDING_LIMIT)
                    .await?
            }
        };
        let mut actions: Vec<CheckinAction> = Vec::new();
        match self.policy_change_for(agent, reported, revision).await {
            Ok(Some(change)) => actions.push(change),
            Ok(None) => {}
            // A policy that cannot be delivered must not hold back the
            // agent's other actions (an UNENROLL, say).
            Err(e) if !stored.is_empty() => {
                tracing::error!(agent_id = %agent.id, error = %e, "policy not delivered");
            }
            Err(e) => return Err(e),
        }
        if stored.is_empty() && actions.is_empty() {
            return Ok(None);
        }
        let mut ack_token = ack_token.to_owned();
        if !stored.is_empty() {
            ack_token = uuid::Uuid::new_v4().to_string();
            let ids: Vec<String> = stored.iter().map(|a| a.id.clone()).collect();
            self.store
                .mark_delivered(&agent.id, &ids, &ack_token)
                .await?;
            actions.extend(
                stored
                    .iter()
                    .map(|a| CheckinAction::Json(action_json(a, &agent.id))),
            );
        }
        Ok(Some(CheckinResponse { ack_token, actions }))
    }

    /// The recheck interval less up to a quarter, at random, so waiters
    /// woken by no event do not all read at once.
    pub(super) fn recheck_after(&self) -> Duration {
        let every = self.settings.recheck_interval;
        let spread = (every.as_millis() / 4) as u64;
        let off = if spread == 0 {
            0
        } else {
            rand::thread_rng().gen_range(0..spread)
        };
        every.saturating_sub(Duration::from_millis(off))
    }
}

/// The reads made with the authentication, if they still stand once the
/// poll has registered: the check-in's own writes touched nothing they
/// cover (`wrote`), and the waiters' change count is what it was when they
/// were read (`seen_now`).
fn still_good(
    first: Option<super::FirstReads>,
    wrote: bool,
    seen_now: u64,
) -> Option<super::FirstReads> {
    // (`u64::MAX`: the store's events ended; nothing can be trusted.)
    first.filter(|f| !wrote && seen_now != u64::MAX && f.seen == seen_now)
}

/// How long a waiting poll pauses before reading again when storage was
/// busy: 1–3 s, at random, so the polls that met it do not return at once.
fn busy_pause() -> Duration {
    Duration::from_millis(rand::thread_rng().gen_range(1000..3000))
}

fn empty_checkin(ack_token: String) -> CheckinResponse {
    CheckinResponse {
        ack_token,
        actions: vec![],
    }
}

/// What ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    /// A change that concerns the agent: read what it touched again.
    Reread,
    /// The recheck timer: a notification may have been lost, read all.
    Recheck,
    Deadline,
    Stopped,
}

/// A check-in body that passed validation.
struct ValidCheckin {
    /// The agent's version, from its user agent.
    version: String,
    poll_timeout: Option<Duration>,
    /// The policy and revision the agent says it runs (agents from 9.2).
    reports: Option<(String, i64)>,
}

fn validate(
    user_agent: Option<&str>,
    body: &CheckinRequest,
    server_version: &str,
) -> Result<ValidCheckin> {
    let version = check_user_agent(user_agent, server_version)?;
    if body.status.trim().is_empty() {
        return Err(FleetError::bad("checkin status missing"));
    }
    let poll_timeout = body
        .poll_timeout
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(parse_poll_timeout)
        .transpose()?;
    if body
        .local_metadata
        .as_ref()
        .is_some_and(|m| !m.get().trim_start().starts_with('{'))
    {
        return Err(FleetError::bad("unable to parse meta"));
    }
    Ok(ValidCheckin {
        version,
        poll_timeout,
        reports: body.agent_policy_id.clone().zip(body.policy_revision_idx),
    })
}

/// `flotilla_checkins_waiting`: long polls currently waiting for a change.
pub(super) struct WaitingGauge;

impl WaitingGauge {
    pub(super) fn enter() -> Self {
        metrics::gauge!("flotilla_checkins_waiting").increment(1.0);
        WaitingGauge
    }
}

impl Drop for WaitingGauge {
    fn drop(&mut self) {
        metrics::gauge!("flotilla_checkins_waiting").decrement(1.0);
    }
}

pub(super) fn action_json(a: &Action, agent_id: &str) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(a.id));
    m.insert("agent_id".into(), json!(agent_id));
    m.insert("created_at".into(), json!(a.created_at));
    m.insert("type".into(), json!(a.action_type.as_str()));
    m.insert("input_type".into(), json!(""));
    m.insert(
        "data".into(),
        if a.action_type == ActionType::Unenroll {
            Value::Null
        } else {
            a.data.clone()
        },
    );
    if let Some(exp) = a.expiration {
        m.insert("expiration".into(), json!(exp));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reads_stand_only_if_nothing_changed_since() {
        let reads = |seen| {
            Some(crate::fleet::FirstReads {
                seen,
                policy_revision: Some(3),
                actions: vec![],
            })
        };
        assert!(still_good(reads(7), false, 7).is_some());
        assert!(
            still_good(reads(7), false, 8).is_none(),
            "a change was dispatched"
        );
        assert!(
            still_good(reads(7), true, 7).is_none(),
            "the check-in wrote"
        );
        // A closed event bus reports a count no snapshot has.
        assert!(still_good(reads(7), false, u64::MAX).is_none());
        assert!(still_good(reads(u64::MAX), false, u64::MAX).is_none());
        assert!(still_good(None, false, 7).is_none());
    }

    /// A waiting poll ends when told to stop (shutdown), not only at its
    /// deadline, with no change ever dispatched to it.
    #[tokio::test]
    async fn a_waiting_poll_ends_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store = flotilla_store_sql::open(flotilla_store_sql::Location::DataDir(dir.path()))
            .await
            .unwrap();
        let services = crate::Services::new(
            store,
            crate::FleetSettings::default(),
            crate::crypto::Sealer::from_secret(b"a-test-sealing-key-of-32-bytes-at-least"),
        );
        let fleet = services.fleet();
        let registration = services.waiters.register(&services.store, "a", "p");
        let agent = FleetAgent {
            id: "a".into(),
            policy_id: "p".into(),
            active: true,
            policy_revision: None,
            access_api_key_id: None,
            output_api_key_id: None,
            output_api_key_sealed: None,
            output_permissions_hash: None,
            output_key_policy_id: None,
            output_key_revision: None,
            enrollment_id: None,
            replace_token_hash: None,
            last_checkin: None,
            audit_unenrolled_reason: None,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        let stop = std::pin::pin!(tokio::time::sleep(Duration::from_millis(20)));
        let wake = tokio::time::timeout(
            Duration::from_secs(30),
            fleet.wait(&registration, &agent, deadline, stop),
        )
        .await
        .expect("stopped, not left waiting for the deadline");
        assert_eq!(wake, Wake::Stopped);
    }
}
