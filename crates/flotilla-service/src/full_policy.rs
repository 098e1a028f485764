//! Loading a consistent full policy.

use flotilla_domain::full_policy::FullAgentPolicy;
use flotilla_store::StoreError;

use crate::{ServiceError, Services};

impl Services {
    /// The policy as an agent will receive it. Reads are not one
    /// transaction, so the revision is read before and after the
    /// integrations and the read retried if a change slipped in between:
    /// the result always matches its revision.
    pub async fn full_policy(&self, policy_id: &str) -> Result<FullAgentPolicy, ServiceError> {
        for _ in 0..5 {
            let policy = self.store.get_policy(policy_id).await?;
            let integrations = self.store.policy_integrations(policy_id).await?;
            let output = match &policy.output_id {
                Some(id) => self.store.get_output(id).await?,
                None => self.store.default_output().await?.ok_or_else(|| {
                    ServiceError::Conflict("no default output is configured".into())
                })?,
            };
            let again = self.store.get_policy(policy_id).await?;
            if again.revision == policy.revision {
                return Ok(FullAgentPolicy::build(
                    &policy,
                    &output,
                    &integrations,
                    self.catalogue,
                ));
            }
        }
        Err(StoreError::Busy.into())
    }
}
