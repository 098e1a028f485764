//! Integrations (package policies): resolved against their installed
//! package as Kibana resolves them, secrets sealed, the ceiling checked.

use chrono::Utc;

use flotilla_domain::package_policy::{
    self, NewPackagePolicy, NewSecret, PackagePolicy, PackageRef,
};
use flotilla_domain::{validate_id, ValidationError};
use flotilla_packages::policy::{Base, PolicyRequest};
use flotilla_store::{Entity, PackagePolicyFilter, Page, Paged, StoreError};

use crate::ServiceError;
use flotilla_api::management::*;

use super::*;

/// The associated data a secret is sealed under: its integration and its
/// own id (a sealed value moved to another row or integration does not open).
pub(crate) fn secret_aad(package_policy_id: &str, id: &str) -> String {
    format!("package_policy_secret:{package_policy_id}:{id}")
}

/// What a create or an update resolves from.
struct Draft {
    id: String,
    name: String,
    description: Option<String>,
    policy_id: String,
    package: PackageRequest,
    namespace: Option<String>,
    vars: Option<serde_json::Map<String, serde_json::Value>>,
    inputs: Option<serde_json::Value>,
    cloud_connector_id: Option<String>,
}

/// A policy or package version the save names that is not there (any
/// more) is the caller's mistake, named by field.
fn reference_error(e: StoreError) -> ServiceError {
    match e {
        e @ StoreError::NotFound {
            entity: Entity::AgentPolicy,
            ..
        } => ServiceError::invalid_reference("policy_id", e),
        e @ StoreError::NotFound {
            entity: Entity::Package,
            ..
        } => ServiceError::invalid_reference("package.version", e),
        e @ StoreError::NotFound {
            entity: Entity::CloudConnector,
            ..
        } => ServiceError::invalid_reference("cloud_connector_id", e),
        other => other.into(),
    }
}

impl Management<'_> {
    async fn resolve_package_policy(
        &self,
        draft: Draft,
        current: Option<&PackagePolicy>,
    ) -> Result<NewPackagePolicy> {
        let registry = &self.services.packages;
        let package = match draft.package.version.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => registry.get(self.store(), &draft.package.name, v).await,
            None => match current.filter(|c| c.package.name == draft.package.name) {
                Some(c) => {
                    registry
                        .get(self.store(), &c.package.name, &c.package.version)
                        .await
                }
                None => registry.latest(self.store(), &draft.package.name).await,
            },
        }
        .map_err(|e| match e {
            ServiceError::NotFound(what) => ServiceError::Invalid(ValidationError::new(
                "package.name",
                format!("{what} is not installed (see GET /api/fleet/epm/packages)"),
            )),
            other => other,
        })?;
        // An update starts from the current values (of this or, on an
        // upgrade, an older version; what no longer applies is dropped).
        let base = current
            .filter(|c| c.package.name == package.name())
            .map(|c| (c.vars.clone(), c.inputs.clone()));
        let previous = current
            .map(|c| c.secret_references.clone())
            .unwrap_or_default();
        let (vars, inputs) = (draft.vars.clone(), draft.inputs.clone());
        let resolving = package.clone();
        // Rendering is CPU work: off the async workers.
        let resolved = tokio::task::spawn_blocking(move || {
            resolving.resolve_policy(
                PolicyRequest {
                    vars: vars.as_ref(),
                    inputs: inputs.as_ref(),
                },
                base.as_ref().map(|(vars, inputs)| Base { vars, inputs }),
                &previous,
                &mut || uuid::Uuid::new_v4().to_string(),
            )
        })
        .await
        .map_err(|e| ServiceError::Internal(e.into()))??;
        let sealer = &self.services.sealer;
        let new_secrets = resolved
            .new_secrets
            .into_iter()
            .map(|s| NewSecret {
                sealed: sealer.seal(s.value.as_bytes(), &secret_aad(&draft.id, &s.id)),
                id: s.id,
            })
            .collect();
        Ok(NewPackagePolicy {
            id: draft.id,
            name: package_policy::validate_package_policy_name(&draft.name)?,
            description: optional_text("description", draft.description.as_deref(), 4096)?,
            policy_id: draft.policy_id,
            package: PackageRef {
                name: package.name().to_owned(),
                version: package.version().to_owned(),
                title: Some(package.manifest.title.clone()),
            },
            namespace: package_policy::validate_optional_namespace(draft.namespace.as_deref())?,
            vars: resolved.vars,
            inputs: resolved.inputs,
            cloud_connector_id: match draft.cloud_connector_id {
                Some(c) => {
                    validate_id("cloud_connector_id", &c)?;
                    Some(c)
                }
                None => None,
            },
            secret_references: resolved.secret_references,
            new_secrets,
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
                secret_references: c.secret_references.clone(),
                created_at: Utc::now(),
                updated_at: Utc::now(),
            });
        }
        let namespace = namespace.unwrap_or(&policy.namespace);
        let compiled = self
            .services
            .compile_integrations(namespace, policy.revision, "", &[], &integrations)
            .await?;
        let excess = self.services.settings.ceiling.excess(&compiled.permissions);
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
        let draft = Draft {
            id,
            name: req.name,
            description: req.description,
            policy_id: req.policy_id,
            package: req.package,
            namespace: req.namespace,
            vars: req.vars,
            inputs: req.inputs,
            cloud_connector_id: req.cloud_connector_id,
        };
        let new = self.resolve_package_policy(draft, None).await?;
        self.check_ceiling(&new.policy_id, None, Some(&new), None)
            .await?;
        let created = self
            .store()
            .create_package_policy(&new, Utc::now())
            .await
            .map_err(reference_error)?;
        if let Some(c) = &created.cloud_connector_id {
            self.connector_needs_verifying(c).await?;
        }
        Ok(created)
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
        let draft = Draft {
            id: id.to_owned(),
            name: req.name.unwrap_or_else(|| current.name.clone()),
            description: req
                .description
                .unwrap_or_else(|| current.description.clone()),
            policy_id: req.policy_id.unwrap_or_else(|| current.policy_id.clone()),
            package: req.package.unwrap_or(PackageRequest {
                name: current.package.name.clone(),
                version: None,
            }),
            namespace: req.namespace.unwrap_or_else(|| current.namespace.clone()),
            vars: req.vars,
            inputs: req.inputs,
            cloud_connector_id: req
                .cloud_connector_id
                .unwrap_or_else(|| current.cloud_connector_id.clone()),
        };
        let new = self.resolve_package_policy(draft, Some(&current)).await?;
        self.check_ceiling(&new.policy_id, None, Some(&new), None)
            .await?;
        let updated = self
            .store()
            .update_package_policy(id, &new, Some(read_at), Utc::now())
            .await
            .map_err(reference_error)?;
        if let Some(c) = &updated.cloud_connector_id {
            if updated.cloud_connector_id != current.cloud_connector_id
                || updated.package.version != current.package.version
            {
                self.connector_needs_verifying(c).await?;
            }
        }
        Ok(updated)
    }

    pub async fn delete_package_policy(&self, id: &str) -> Result<()> {
        Ok(self.store().delete_package_policy(id, Utc::now()).await?)
    }
}
