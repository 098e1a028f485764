//! Outputs: where agents send data.

use chrono::Utc;

use flotilla_domain::output::{self, NewOutput, Output, OutputUpdate};
use flotilla_store::{Page, Paged};

use flotilla_api::management::*;

use super::*;

/// The associated data an output's cluster credential is sealed under.
pub(crate) fn output_credential_aad(output_id: &str) -> String {
    format!("outputs.key_credential:{output_id}")
}

impl Management<'_> {
    pub async fn create_output(&self, req: CreateOutput) -> Result<Output> {
        let id = new_id(req.id.as_deref(), "id")?;
        let new = NewOutput {
            id: Some(id.clone()),
            name: output::validate_name_field(&req.name)?,
            hosts: output::validate_hosts(req.output_type, &req.hosts)?,
            output_type: req.output_type,
            is_default: req.is_default,
        };
        if req.secrets.is_some() && req.output_type != output::OutputType::Elasticsearch {
            return Err(ValidationError::new(
                "secrets",
                "only Elasticsearch outputs manage keys in their cluster",
            )
            .into());
        }
        let created = self.store().create_output(&id, &new, Utc::now()).await?;
        match req.secrets {
            Some(secrets) => self.set_key_credential(&id, Some(&secrets.api_key)).await,
            None => Ok(created),
        }
    }

    /// Seal (or clear) the credential agents' keys are managed with in
    /// the output's cluster.
    async fn set_key_credential(&self, id: &str, api_key: Option<&str>) -> Result<Output> {
        let sealed = match api_key {
            Some(k) => {
                let k = k.trim();
                if k.is_empty() || k.len() > 4096 {
                    return Err(ValidationError::new(
                        "secrets.api_key",
                        "must be 1-4096 characters",
                    )
                    .into());
                }
                Some(
                    self.services
                        .sealer
                        .seal(k.as_bytes(), &output_credential_aad(id)),
                )
            }
            None => None,
        };
        Ok(self
            .store()
            .set_output_key_credential(id, sealed.as_deref(), Utc::now())
            .await?)
    }

    pub async fn get_output(&self, id: &str) -> Result<Output> {
        Ok(self.store().get_output(id).await?)
    }

    pub async fn list_outputs(&self, page: Page) -> Result<Paged<Output>> {
        Ok(self.store().list_outputs(page).await?)
    }

    pub async fn update_output(&self, id: &str, req: UpdateOutput) -> Result<Output> {
        let current = self.store().get_output(id).await?;
        let output_type = req.output_type.unwrap_or(current.output_type);
        let hosts = match (&req.hosts, req.output_type) {
            (Some(h), _) => Some(output::validate_hosts(output_type, h)?),
            // A type change must still fit the existing hosts.
            (None, Some(t)) => Some(output::validate_hosts(t, &current.hosts)?),
            (None, None) => None,
        };
        let update = OutputUpdate {
            name: req
                .name
                .as_deref()
                .map(output::validate_name_field)
                .transpose()?,
            output_type: req.output_type,
            hosts,
            is_default: req.is_default,
        };
        if matches!(req.secrets, Some(Some(_))) && output_type != output::OutputType::Elasticsearch
        {
            return Err(ValidationError::new(
                "secrets",
                "only Elasticsearch outputs manage keys in their cluster",
            )
            .into());
        }
        let secrets = req.secrets;
        if update == OutputUpdate::default() {
            return match secrets {
                Some(s) => {
                    self.set_key_credential(id, s.as_ref().map(|s| s.api_key.as_str()))
                        .await
                }
                None => Err(ValidationError::new("body", "names no field to change").into()),
            };
        }
        let updated = self.store().update_output(id, &update, Utc::now()).await?;
        match secrets {
            Some(s) => {
                self.set_key_credential(id, s.as_ref().map(|s| s.api_key.as_str()))
                    .await
            }
            None => Ok(updated),
        }
    }

    pub async fn delete_output(&self, id: &str) -> Result<()> {
        Ok(self.store().delete_output(id).await?)
    }
}
