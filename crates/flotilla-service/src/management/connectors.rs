//! Cloud connectors: one cloud account's credentials, secrets sealed with
//! the connector and the secret's id as associated data, shown only as
//! references.

use std::collections::HashMap;

use chrono::Utc;

use flotilla_api::connectors::{CreateCloudConnector, UpdateCloudConnector, VerifyQueued};
use flotilla_domain::connector::{self, CloudConnector};
use flotilla_domain::ValidationError;
use flotilla_store::{
    ConnectorSecret, ConnectorUpdate, NewConnector, Page, Paged, VerificationWrite,
};

use super::*;
use crate::verifier::VERIFY_TASK;

/// The associated data a connector's secret is sealed under.
pub(crate) fn connector_secret_aad(connector_id: &str, secret_id: &str) -> String {
    format!("cloud_connector_secret:{connector_id}:{secret_id}")
}

impl Management<'_> {
    fn seal_connector_secrets(
        &self,
        connector_id: &str,
        secrets: Vec<connector::NewConnectorSecret>,
    ) -> Vec<ConnectorSecret> {
        secrets
            .into_iter()
            .map(|s| ConnectorSecret {
                sealed: self.services.sealer.seal(
                    s.value.as_bytes(),
                    &connector_secret_aad(connector_id, &s.id),
                ),
                id: s.id,
            })
            .collect()
    }

    /// Ask the verifier to look now (a no-op when it is switched off).
    pub(super) async fn nudge_verifier(&self) -> bool {
        self.store()
            .run_task_soon(VERIFY_TASK, Utc::now())
            .await
            .is_ok()
    }

    /// What the connector's integrations need changed (one was added, or
    /// upgraded): its status is cleared, so it is due, and the verifier
    /// asked to look now.
    pub(super) async fn connector_needs_verifying(&self, id: &str) -> Result<()> {
        self.store()
            .write_verification(
                id,
                &VerificationWrite {
                    status: Some(None),
                    ..Default::default()
                },
            )
            .await?;
        self.nudge_verifier().await;
        Ok(())
    }

    pub async fn create_connector(&self, req: CreateCloudConnector) -> Result<CloudConnector> {
        let id = new_id(req.id.as_deref(), "id")?;
        let name = connector::validate_connector_name(&req.name)?;
        let checked = connector::check_vars(req.cloud_provider, &req.vars, None, &mut || {
            uuid::Uuid::new_v4().to_string()
        })?;
        let secrets = self.seal_connector_secrets(&id, checked.new_secrets);
        let new = NewConnector {
            id,
            name,
            cloud_provider: req.cloud_provider,
            account_type: req.account_type,
            namespace: None,
            vars: checked.vars,
            secrets,
        };
        let c = self.store().create_connector(&new, Utc::now()).await?;
        self.nudge_verifier().await;
        Ok(c)
    }

    pub async fn get_connector(&self, id: &str) -> Result<CloudConnector> {
        Ok(self.store().get_connector(id).await?)
    }

    pub async fn list_connectors(&self, page: Page) -> Result<Paged<CloudConnector>> {
        Ok(self.store().list_connectors(page).await?)
    }

    pub async fn update_connector(
        &self,
        id: &str,
        req: UpdateCloudConnector,
    ) -> Result<CloudConnector> {
        let current = self.store().get_connector(id).await?;
        if let Some(p) = req.cloud_provider {
            if p != current.cloud_provider {
                return Err(ValidationError::new(
                    "cloudProvider",
                    format!(
                        "a connector's provider cannot change (it is {})",
                        current.cloud_provider.as_str()
                    ),
                )
                .into());
            }
        }
        let name = req
            .name
            .as_deref()
            .map(connector::validate_connector_name)
            .transpose()?;
        let mut update = ConnectorUpdate {
            name,
            account_type: req.account_type.map(Some),
            read_at: Some(current.updated_at),
            ..Default::default()
        };
        if let Some(vars) = &req.vars {
            let checked = connector::check_vars(
                current.cloud_provider,
                vars,
                Some(&current.vars),
                &mut || uuid::Uuid::new_v4().to_string(),
            )?;
            update.add_secrets = self.seal_connector_secrets(id, checked.new_secrets);
            update.drop_secrets = checked.dropped_secrets;
            update.vars = Some(checked.vars);
        }
        let c = self
            .store()
            .update_connector(id, &update, Utc::now())
            .await?;
        self.nudge_verifier().await;
        Ok(c)
    }

    pub async fn delete_connector(&self, id: &str) -> Result<()> {
        Ok(self.store().delete_connector(id).await?)
    }

    /// Verify again now: the connector's status is cleared (so it is due)
    /// and the verifier task asked to run.
    pub async fn verify_connector(&self, id: &str) -> Result<VerifyQueued> {
        let c = self.store().get_connector(id).await?;
        if c.package_policy_count == 0 {
            return Err(ServiceError::Conflict(format!(
                "cloud connector '{id}' is not used by any integration: there is nothing to verify"
            )));
        }
        self.store()
            .write_verification(
                id,
                &VerificationWrite {
                    status: Some(None),
                    ..Default::default()
                },
            )
            .await?;
        let queued = self.nudge_verifier().await;
        Ok(VerifyQueued {
            id: id.to_owned(),
            queued,
        })
    }

    /// The connector's secrets in plaintext, by secret id (for the verifier
    /// policy only; never returned by the API).
    pub(crate) async fn connector_secret_values(
        &self,
        id: &str,
    ) -> Result<HashMap<String, String>> {
        let sealed = self.store().connector_secrets(id).await?;
        let mut out = HashMap::new();
        for s in sealed {
            let plain = self
                .services
                .sealer
                .open(&s.sealed, &connector_secret_aad(id, &s.id))
                .map_err(|e| {
                    ServiceError::Internal(
                        format!(
                            "cloud connector '{id}' secret '{}' does not open: {e}",
                            s.id
                        )
                        .into(),
                    )
                })?;
            out.insert(
                s.id,
                String::from_utf8(plain).map_err(|e| ServiceError::Internal(e.into()))?,
            );
        }
        Ok(out)
    }
}
