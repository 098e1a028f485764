//! Outputs: where agents send data.

use chrono::Utc;

use flotilla_domain::output::{self, NewOutput, Output, OutputUpdate};
use flotilla_store::{Page, Paged};

use flotilla_api::management::*;

use super::*;

/// The credential as stored: `ApiKey <key>` or `Bearer <token>`, ready to
/// be an `Authorization` header.
fn check_secrets(s: &OutputSecrets) -> Result<String> {
    match (&s.api_key, &s.service_token) {
        (Some(k), None) => {
            let k = k.trim();
            // Elasticsearch API keys are base64(id:secret); a Flotilla
            // operator key is any token. Either is sent as it is.
            if k.is_empty() || k.len() > 4096 || k.chars().any(char::is_whitespace) {
                return Err(ValidationError::new(
                    "secrets.api_key",
                    "must be an API key credential (base64(id:secret))",
                )
                .into());
            }
            Ok(format!("ApiKey {k}"))
        }
        (None, Some(t)) => {
            let t = t.trim();
            if t.is_empty() || t.len() > 4096 || t.chars().any(char::is_whitespace) {
                return Err(ValidationError::new(
                    "secrets.service_token",
                    "must be a service token",
                )
                .into());
            }
            Ok(format!("Bearer {t}"))
        }
        _ => Err(ValidationError::new("secrets", "give one of api_key or service_token").into()),
    }
}

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
            Some(secrets) => self.set_key_credential(&id, Some(&secrets)).await,
            None => Ok(created),
        }
    }

    /// Seal (or clear) the credential agents' keys are managed with in
    /// the output's cluster.
    async fn set_key_credential(
        &self,
        id: &str,
        secrets: Option<&OutputSecrets>,
    ) -> Result<Output> {
        let sealed = match secrets {
            Some(s) => {
                let stored = check_secrets(s)?;
                Some(
                    self.services
                        .sealer
                        .seal(stored.as_bytes(), &output_credential_aad(id)),
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
                Some(s) => self.set_key_credential(id, s.as_ref()).await,
                None => Err(ValidationError::new("body", "names no field to change").into()),
            };
        }
        let updated = self.store().update_output(id, &update, Utc::now()).await?;
        match secrets {
            Some(s) => self.set_key_credential(id, s.as_ref()).await,
            None => Ok(updated),
        }
    }

    pub async fn delete_output(&self, id: &str) -> Result<()> {
        Ok(self.store().delete_output(id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_credential_is_one_api_key_or_one_service_token() {
        let s = |api_key: Option<&str>, service_token: Option<&str>| OutputSecrets {
            api_key: api_key.map(str::to_owned),
            service_token: service_token.map(str::to_owned),
        };
        assert_eq!(
            check_secrets(&s(Some("aWQ6c2VjcmV0"), None)).unwrap(),
            "ApiKey aWQ6c2VjcmV0"
        );
        assert_eq!(
            check_secrets(&s(None, Some("AAEAAWVs"))).unwrap(),
            "Bearer AAEAAWVs"
        );
        assert!(check_secrets(&s(None, None)).is_err());
        assert!(check_secrets(&s(Some("a"), Some("b"))).is_err());
        assert!(check_secrets(&s(Some("has space"), None)).is_err());
        assert!(
            !format!("{:?}", s(Some("aWQ6c2VjcmV0"), None)).contains("aWQ6"),
            "Debug redacts"
        );
    }
}
