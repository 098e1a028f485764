//! How far a policy's current revision has reached its agents.

use flotilla_domain::policy::AgentPolicy;
use flotilla_store::Rollout;

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
}
