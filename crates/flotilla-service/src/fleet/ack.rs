//! Acknowledgements: per-event outcomes, and what a policy ack retires.

use chrono::{DateTime, Utc};

use flotilla_domain::action::ActionType;
use flotilla_store::ActionAck;

use super::*;

/// What became of one acknowledged event (the HTTP layer gives each its
/// status code, and the response the highest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// Recorded (or already recorded: acks are idempotent).
    Acked,
    /// Malformed, for another agent, or naming another agent's action.
    Refused,
    /// No such action: the agent retries later.
    UnknownAction,
    /// Storage failed; the agent retries.
    Failed,
}

impl Fleet<'_> {
    /// Record each event's acknowledgement; a policy ack may retire the
    /// output keys its revision replaced.
    pub async fn ack(&self, authed: AuthedAgent, body: AckRequest) -> Result<Vec<AckOutcome>> {
        let AuthedAgent { agent, .. } = authed;
        let now = Utc::now();
        let mut outcomes = Vec::with_capacity(body.events.len());
        let mut newest_policy_ack: Option<i64> = None;
        for raw in body.events {
            let outcome = match serde_json::from_value::<AckEvent>(raw) {
                Err(_) => AckOutcome::Refused,
                Ok(ev) if !ev.agent_id.is_empty() && ev.agent_id != agent.id => AckOutcome::Refused,
                Ok(ev) if ev.action_id.starts_with("policy:") => {
                    match parse_policy_ack(&ev.action_id, &agent.policy_id) {
                        Some((policy_id, rev)) => {
                            let failed = ev.error.as_deref().filter(|e| !e.is_empty());
                            // A late failure of a revision older than the one the
                            // agent acked is history, not its state.
                            let newer = rev > agent.policy_revision.unwrap_or(0);
                            if policy_id == agent.policy_id && (failed.is_none() || newer) {
                                match failed {
                                    None => newest_policy_ack = newest_policy_ack.max(Some(rev)),
                                    Some(message) => {
                                        let failure = serde_json::json!({
                                            "policy_id": policy_id, "revision": rev,
                                            "message": message.chars().take(4096).collect::<String>(),
                                            "at": now,
                                        });
                                        tracing::warn!(agent_id = %agent.id, revision = rev, "the agent could not apply its policy");
                                        self.store
                                            .record_policy_change_failure(&agent.id, &failure)
                                            .await?;
                                    }
                                }
                            }
                            AckOutcome::Acked
                        }
                        None => AckOutcome::Refused,
                    }
                }
                Ok(ev) if ev.action_id.is_empty() => AckOutcome::Refused,
                Ok(ev) => self.ack_stored_action(&agent.id, &ev, now).await,
            };
            outcomes.push(outcome);
        }
        if let Some(rev) = newest_policy_ack {
            let retired = self
                .runs_policy
                .run(
                    &self.store,
                    flotilla_store::RunsPolicy {
                        agent_id: agent.id.clone(),
                        policy_id: agent.policy_id.clone(),
                        revision: rev,
                    },
                    now,
                )
                .await?;
            if !retired.is_empty() {
                tracing::info!(agent_id = %agent.id, retired = retired.len(), "old output keys invalidated");
            }
        }
        Ok(outcomes)
    }

    /// A stored action's ack; an `UNENROLL` acked without error unenrols the
    /// agent at once.
    async fn ack_stored_action(
        &self,
        agent_id: &str,
        ev: &AckEvent,
        now: DateTime<Utc>,
    ) -> AckOutcome {
        let error = ev.error.as_deref().filter(|e| !e.is_empty());
        match self
            .store
            .ack_action(agent_id, &ev.action_id, error, now)
            .await
        {
            Ok(ActionAck::NotFound) => AckOutcome::UnknownAction,
            Ok(ActionAck::OtherAgent) => AckOutcome::Refused,
            Ok(ActionAck::Acked { action_type, .. }) => {
                if action_type != ActionType::Unenroll || error.is_some() {
                    return AckOutcome::Acked;
                }
                match self.store.unenroll_now(agent_id, now).await {
                    Ok(()) => AckOutcome::Acked,
                    Err(e) => {
                        tracing::error!(error = %e, "unenroll on ack failed");
                        AckOutcome::Failed
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "ack failed");
                AckOutcome::Failed
            }
        }
    }
}

/// `policy:<policy_id>:<revision>`. Policy ids may contain `:`, so the
/// revision is the last segment.
pub fn parse_policy_action_id(id: &str) -> Option<(String, i64)> {
    let (policy_id, rev) = id.strip_prefix("policy:")?.rsplit_once(':')?;
    if policy_id.is_empty() {
        return None;
    }
    Some((policy_id.to_owned(), rev.parse().ok()?))
}

/// A policy ack id for an agent on `current`: `policy:<id>:<rev>`, or the
/// older `policy:<id>:<rev>:<coordinator>` when that names `current`.
pub(super) fn parse_policy_ack(id: &str, current: &str) -> Option<(String, i64)> {
    let (pid, rev) = parse_policy_action_id(id)?;
    if pid != current {
        if let Some((legacy_pid, legacy_rev)) = pid.rsplit_once(':') {
            if legacy_pid == current {
                if let Ok(r) = legacy_rev.parse() {
                    return Some((legacy_pid.to_owned(), r));
                }
            }
        }
    }
    Some((pid, rev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_action_ids() {
        assert_eq!(
            parse_policy_action_id("policy:p1:7"),
            Some(("p1".into(), 7))
        );
        assert_eq!(
            parse_policy_action_id("policy:a:b:12"),
            Some(("a:b".into(), 12))
        );
        assert_eq!(parse_policy_action_id("policy:p1:x"), None);
        assert_eq!(parse_policy_action_id("policy::3"), None);
        assert_eq!(parse_policy_action_id("other"), None);
        assert_eq!(
            parse_policy_ack("policy:p1:7:1", "p1"),
            Some(("p1".into(), 7))
        );
        assert_eq!(
            parse_policy_ack("policy:a:b:12", "a:b"),
            Some(("a:b".into(), 12))
        );
        assert_eq!(
            parse_policy_ack("policy:p1:7", "p2"),
            Some(("p1".into(), 7))
        );
    }
}
