//! Integrations (package policies): variables layered, the ceiling checked.

use chrono::Utc;

use flotilla_domain::package_policy::{
    self, InputRequest, NewPackagePolicy, PackagePolicy, PackageRef, StreamRequest,
};
use flotilla_domain::{validate_id, ValidationError};
use flotilla_store::{Entity, PackagePolicyFilter, Page, Paged, StoreError};

use crate::ServiceError;
use flotilla_api::management::*;

use super::*;

impl Management<'_> {
    pub(super) fn resolve_package_policy(
        &self,
        id: String,
        req: CreatePackagePolicy,
    ) -> Result<NewPackagePolicy> {
        let catalogue = self.services.catalogue;
        let package_ref = PackageRef {
            name: req.package.name.clone(),
            version: req.package.version.clone().unwrap_or_default(),
        };
        let spec = package_policy::resolve_package(catalogue, &package_ref)?;
        let inputs = package_policy::resolve_inputs(spec, &req.vars, req.inputs.as_deref())?;
        Ok(NewPackagePolicy {
            id,
            name: package_policy::validate_package_policy_name(&req.name)?,
            description: optional_text("description", req.description.as_deref(), 4096)?,
            policy_id: req.policy_id,
            package: PackageRef {
                name: spec.name.clone(),
                version: spec.version.clone(),
            },
            namespace: package_policy::validate_optional_namespace(req.namespace.as_deref())?,
            vars: req.vars,
            inputs,
            cloud_connector_id: match req.cloud_connector_id {
                Some(c) => {
                    validate_id("cloud_connector_id", &c)?;
                    Some(c)
                }
                None => None,
            },
        })
    }

    /// Refuse a change whose resulting permissions exceed what the server
    /// may grant, naming the excess.
    pub(super) async fn check_ceiling(
        &self,
        policy_id: &str,
        namespace: Option<&str>,
        changed: Option<&NewPackagePolicy>,
        removed: Option<&str>,
    ) -> Result<()> {
        let policy = match self.store().get_policy(policy_id).await {
            Ok(p) => p,
            Err(e) => return Err(ServiceError::invalid_reference("policy_id", e)),
        };
        let mut integrations = self.store().policy_integrations(policy_id).await?;
        integrations
            .retain(|pp| Some(pp.id.as_str()) != removed && Some(&pp.id) != changed.map(|c| &c.id));
        if let Some(c) = changed {
            integrations.push(PackagePolicy {
                id: c.id.clone(),
                name: c.name.clone(),
                description: c.description.clone(),
                policy_id: c.policy_id.clone(),
                package: c.package.clone(),
                namespace: c.namespace.clone(),
                vars: c.vars.clone(),
                inputs: c.inputs.clone(),
                cloud_connector_id: c.cloud_connector_id.clone(),
                created_at: Utc::now(),
                updated_at: Utc::now(),
            });
        }
        let namespace = namespace.unwrap_or(&policy.namespace);
        let perms = flotilla_domain::permissions::compute(
            namespace,
            &integrations,
            self.services.catalogue,
        );
        let excess = self.services.settings.ceiling.excess(&perms);
        if excess.is_empty() {
            return Ok(());
        }
        let listed: Vec<String> = excess
            .iter()
            .take(10)
            .map(|(i, p)| format!("{p} on {i}"))
            .collect();
        Err(ValidationError::new(
            "permissions",
            format!(
                "the policy would need privileges beyond what this server may grant: {}{}",
                listed.join(", "),
                if excess.len() > 10 {
                    format!(" (and {} more)", excess.len() - 10)
                } else {
                    String::new()
                }
            ),
        )
        .into())
    }

    pub async fn create_package_policy(&self, req: CreatePackagePolicy) -> Result<PackagePolicy> {
        let id = new_id(req.id.as_deref(), "id")?;
        let new = self.resolve_package_policy(id, req)?;
        self.check_ceiling(&new.policy_id, None, Some(&new), None)
            .await?;
        self.store()
            .create_package_policy(&new, Utc::now())
            .await
            .map_err(|e| ServiceError::invalid_reference("policy_id", e))
    }

    pub async fn get_package_policy(&self, id: &str) -> Result<PackagePolicy> {
        Ok(self.store().get_package_policy(id).await?)
    }

    pub async fn list_package_policies(
        &self,
        filter: &PackagePolicyFilter,
        page: Page,
    ) -> Result<Paged<PackagePolicy>> {
        Ok(self.store().list_package_policies(filter, page).await?)
    }

    pub async fn update_package_policy(
        &self,
        id: &str,
        req: UpdatePackagePolicy,
    ) -> Result<PackagePolicy> {
        let current = self.store().get_package_policy(id).await?;
        let read_at = current.updated_at;
        let package_changed = req
            .package
            .as_ref()
            .is_some_and(|p| p.name != current.package.name);
        // Keep the current inputs unless replaced (or the package changes,
        // in which case the new package's defaults apply).
        let inputs = match req.inputs {
            Some(inputs) => Some(inputs),
            None if package_changed => None,
            None => Some(
                current
                    .inputs
                    .iter()
                    .map(|i| InputRequest {
                        input_type: i.input_type.clone(),
                        enabled: i.enabled,
                        streams: Some(
                            i.streams
                                .iter()
                                .map(|s| StreamRequest {
                                    enabled: s.enabled,
                                    data_stream: s.data_stream.clone(),
                                    vars: s.vars.clone(),
                                })
                                .collect(),
                        ),
                    })
                    .collect(),
            ),
        };
        let merged = CreatePackagePolicy {
            id: None,
            name: req.name.unwrap_or(current.name),
            description: req.description.unwrap_or(current.description),
            policy_id: req.policy_id.unwrap_or(current.policy_id),
            package: req.package.unwrap_or(PackageRequest {
                name: current.package.name,
                version: None,
            }),
            namespace: req.namespace.unwrap_or(current.namespace),
            vars: req.vars.unwrap_or(current.vars),
            inputs,
            cloud_connector_id: req.cloud_connector_id.unwrap_or(current.cloud_connector_id),
        };
        let new = self.resolve_package_policy(id.to_owned(), merged)?;
        self.check_ceiling(&new.policy_id, None, Some(&new), None)
            .await?;
        self.store()
            .update_package_policy(id, &new, Some(read_at), Utc::now())
            .await
            .map_err(|e| match e {
                e @ StoreError::NotFound {
                    entity: Entity::AgentPolicy,
                    ..
                } => ServiceError::invalid_reference("policy_id", e),
                other => other.into(),
            })
    }

    pub async fn delete_package_policy(&self, id: &str) -> Result<()> {
        Ok(self.store().delete_package_policy(id, Utc::now()).await?)
    }
}
