//! Loading a consistent full policy.

use flotilla_domain::full_policy::{CompiledIntegrations, FullAgentPolicy};
use flotilla_domain::package_policy::PackagePolicy;
use flotilla_packages::compile::{compile, Target};
use flotilla_store::StoreError;

use crate::{ServiceError, Services};

impl Services {
    /// Compile integrations with their installed packages (an integration
    /// whose package version is gone keeps its stored compiled streams).
    pub async fn compile_integrations(
        &self,
        namespace: &str,
        revision: i64,
        output_id: &str,
        output_hosts: &[String],
        integrations: &[PackagePolicy],
    ) -> Result<CompiledIntegrations, ServiceError> {
        let mut packages = Vec::with_capacity(integrations.len());
        for pp in integrations {
            match self
                .packages
                .get(&*self.store, &pp.package.name, &pp.package.version)
                .await
            {
                Ok(p) => packages.push(Some(p)),
                Err(ServiceError::NotFound(_)) => packages.push(None),
                Err(e) => return Err(e),
            }
        }
        let pairs: Vec<_> = integrations
            .iter()
            .zip(&packages)
            .map(|(pp, p)| (pp, p.as_deref()))
            .collect();
        Ok(compile(
            &Target {
                policy_namespace: namespace,
                revision,
                output_id,
                output_hosts,
            },
            &pairs,
        ))
    }

    /// The policy as an agent will receive it (secrets as references).
    /// Reads are not one transaction, so the revision is read before and
    /// after the integrations and the read retried if a change slipped in
    /// between: the result always matches its revision.
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
                let compiled = self
                    .compile_integrations(
                        &policy.namespace,
                        policy.revision,
                        &output.id,
                        &output.hosts,
                        &integrations,
                    )
                    .await?;
                return Ok(FullAgentPolicy::build(&policy, &output, compiled));
            }
        }
        Err(StoreError::Busy.into())
    }
}
