//! How far a policy's current revision has reached its agents.

use flotilla_domain::policy::AgentPolicy;
use flotilla_store::{Rollout, RolloutHistory};

use super::*;

impl Management<'_> {
    /// The policy and how many of its active agents run its current
    /// revision (two counts; no agent is read).
    pub async fn policy_rollout(&self, policy_id: &str) -> Result<(AgentPolicy, Rollout)> {
        let policy = self.store().get_policy(policy_id).await?;
        let rollout = self
            .store()
            .policy_rollout(policy_id, policy.revision)
            .await?;
        Ok((policy, rollout))
    }

    /// The policy and how its current revision reached its agents since
    /// the policy last changed: agents by revision, and arrivals over time
    /// in at most `buckets` buckets (grouped counts; no agent is read).
    pub async fn policy_rollout_history(
        &self,
        policy_id: &str,
        buckets: u32,
    ) -> Result<(AgentPolicy, RolloutHistory)> {
        let policy = self.store().get_policy(policy_id).await?;
        let history = self
            .store()
            .policy_rollout_history(
                policy_id,
                policy.revision,
                policy.updated_at,
                buckets.clamp(1, 500),
            )
            .await?;
        Ok((policy, history))
    }
}
