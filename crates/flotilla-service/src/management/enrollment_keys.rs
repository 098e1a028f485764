//! Enrollment keys for a policy.

use secrecy::SecretString;

use flotilla_domain::enrollment::EnrollmentApiKey;
use flotilla_store::{EnrollmentKeyFilter, Page, Paged};

use crate::secrets::NewToken;
use crate::ServiceError;
use flotilla_api::management::*;

use super::*;

impl Management<'_> {
    /// Creates a key; the token is returned this once and never stored.
    pub async fn create_enrollment_key(
        &self,
        req: CreateEnrollmentKey,
    ) -> Result<(EnrollmentApiKey, SecretString)> {
        let now = self.services.now();
        flotilla_domain::enrollment::validate_limits(req.expiration, req.max_uses, now)?;
        let token = NewToken::generate();
        let name = match req.name.as_deref() {
            Some(n) => flotilla_domain::output::validate_name_field(n)?,
            None => format!("{} ({})", token.id, req.policy_id),
        };
        let record = EnrollmentApiKey {
            id: token.id.clone(),
            name,
            policy_id: req.policy_id,
            active: true,
            hint: token.hint(),
            created_at: now,
            expiration: req.expiration,
            max_uses: req.max_uses,
            uses: 0,
        };
        let key = self
            .store()
            .create_enrollment_key(&record, &token.hash())
            .await
            .map_err(|e| ServiceError::invalid_reference("policy_id", e))?;
        Ok((key, token.token))
    }

    pub async fn get_enrollment_key(&self, id: &str) -> Result<EnrollmentApiKey> {
        Ok(self.store().get_enrollment_key(id).await?)
    }

    pub async fn list_enrollment_keys(
        &self,
        filter: &EnrollmentKeyFilter,
        page: Page,
    ) -> Result<Paged<EnrollmentApiKey>> {
        Ok(self.store().list_enrollment_keys(filter, page).await?)
    }

    pub async fn revoke_enrollment_key(&self, id: &str) -> Result<EnrollmentApiKey> {
        Ok(self.store().revoke_enrollment_key(id).await?)
    }
}
