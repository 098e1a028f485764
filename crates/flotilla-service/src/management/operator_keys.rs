//! Operator API keys: authentication, creation, revocation.

use chrono::Utc;

use secrecy::SecretString;

use flotilla_domain::apikey::OperatorApiKey;
use flotilla_domain::ValidationError;
use flotilla_store::{Page, Paged};

use crate::secrets::{hash_token, NewToken};
use crate::ServiceError;
use flotilla_api::management::*;

use super::*;

impl Management<'_> {
    /// The key behind an `Authorization: ApiKey <token>` header.
    pub async fn authenticate(&self, token: &str) -> Result<OperatorApiKey> {
        self.store()
            .find_operator_key_by_hash(&hash_token(token))
            .await?
            .ok_or_else(|| ServiceError::Unauthorized("the API key is unknown or revoked".into()))
    }

    pub async fn create_operator_key(
        &self,
        req: CreateOperatorKey,
    ) -> Result<(OperatorApiKey, SecretString)> {
        let name = flotilla_domain::output::validate_name_field(&req.name)?;
        if name.starts_with(ENV_KEY_PREFIX) || name.starts_with(BOOTSTRAP_KEY_NAME) {
            return Err(ValidationError::new("name", "is reserved").into());
        }
        let token = NewToken::generate();
        let record = OperatorApiKey {
            id: token.id.clone(),
            name,
            active: true,
            hint: token.hint(),
            created_at: Utc::now(),
        };
        let key = self
            .store()
            .create_operator_key(&record, &token.hash())
            .await?;
        Ok((key, token.token))
    }

    pub async fn list_operator_keys(&self, page: Page) -> Result<Paged<OperatorApiKey>> {
        Ok(self.store().list_operator_keys(page).await?)
    }

    /// Revoke operator key `id` on behalf of the operator holding `caller`
    /// (the key the request authenticated with), which cannot revoke itself.
    pub async fn revoke_operator_key(&self, caller: &str, id: &str) -> Result<OperatorApiKey> {
        if caller == id {
            return Err(ServiceError::Conflict(
                "an API key cannot revoke itself".into(),
            ));
        }
        Ok(self.store().revoke_operator_key(id).await?)
    }

    /// Whether storage answers, and which engine it is.
    pub async fn storage_health(&self) -> std::result::Result<&'static str, ServiceError> {
        self.store().ping().await?;
        Ok(self.store().engine())
    }
}
