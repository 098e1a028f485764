//! First-start set-up: the default output and the first operator key.

use chrono::Utc;

use secrecy::{ExposeSecret, SecretString};

use flotilla_domain::apikey::OperatorApiKey;
use flotilla_domain::output::{self, NewOutput};
use flotilla_store::{Page, StoreError};

use crate::secrets::{hash_token, NewToken};

use super::*;

impl Management<'_> {
    /// First-start set-up, safe to run on every start and from several
    /// instances at once: the built-in packages recorded, a default output,
    /// and an operator key. Returns
    /// a generated key to show once, when one was generated.
    pub async fn bootstrap(
        &self,
        admin_key: Option<&SecretString>,
        default_output_host: &str,
    ) -> Result<Option<SecretString>> {
        self.services
            .packages
            .install_builtins(self.store())
            .await?;
        if self.store().default_output().await?.is_none() {
            let new = NewOutput {
                id: Some(DEFAULT_OUTPUT_ID.into()),
                name: "default".into(),
                output_type: output::OutputType::Elasticsearch,
                // The embedded output: agents ship to this server.
                hosts: vec![default_output_host.to_owned()],
                is_default: true,
            };
            match self
                .store()
                .create_output(DEFAULT_OUTPUT_ID, &new, Utc::now())
                .await
            {
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match admin_key {
            Some(key) => {
                self.install_env_admin_key(key).await?;
                return Ok(None);
            }
            None => self.retire_env_admin_keys(None).await?,
        }
        if self.store().active_operator_keys().await? > 0 {
            return Ok(None);
        }
        let token = NewToken::generate();
        let record = OperatorApiKey {
            id: token.id.clone(),
            // Unique per start: several instances starting on an empty
            // database each print a (valid) key.
            name: format!("{BOOTSTRAP_KEY_NAME}-{}", &token.id[..8]),
            active: true,
            hint: token.hint(),
            created_at: Utc::now(),
        };
        self.store()
            .create_operator_key(&record, &token.hash())
            .await?;
        Ok(Some(token.token))
    }

    /// The key from `FLOTILLA_ADMIN_API_KEY` is valid while it is set (made
    /// active again if it was revoked); keys installed from earlier values
    /// are revoked.
    pub(super) async fn install_env_admin_key(&self, key: &SecretString) -> Result<()> {
        let hash = hash_token(key.expose_secret());
        let current = if self.store().activate_operator_key(&hash).await? {
            self.store()
                .find_operator_key_by_hash(&hash)
                .await?
                .map(|k| k.id)
        } else {
            let record = OperatorApiKey {
                id: uuid::Uuid::new_v4().to_string(),
                // Random: the name is listed and must say nothing of the key.
                name: format!(
                    "{ENV_KEY_PREFIX}{}",
                    crate::secrets::random_alphanumeric(8).to_lowercase()
                ),
                active: true,
                hint: "(env)".into(),
                created_at: Utc::now(),
            };
            match self.store().create_operator_key(&record, &hash).await {
                Ok(k) => Some(k.id),
                // Another instance installed it at the same moment.
                Err(StoreError::Conflict(_)) => self
                    .store()
                    .find_operator_key_by_hash(&hash)
                    .await?
                    .map(|k| k.id),
                Err(e) => return Err(e.into()),
            }
        };
        self.retire_env_admin_keys(current.as_deref()).await
    }

    /// Revoke keys installed from `FLOTILLA_ADMIN_API_KEY` other than `keep`.
    /// With no current env key, they are revoked only while another key
    /// remains, so the server is never left without one.
    pub(super) async fn retire_env_admin_keys(&self, keep: Option<&str>) -> Result<()> {
        let mut env_keys = Vec::new();
        let mut others_active = 0;
        let mut page = 1;
        loop {
            let keys = self
                .store()
                .list_operator_keys(Page {
                    page,
                    per_page: 500,
                })
                .await?;
            for k in keys.items.iter().filter(|k| k.active) {
                if k.name.starts_with(ENV_KEY_PREFIX) {
                    if Some(k.id.as_str()) != keep {
                        env_keys.push(k.id.clone());
                    }
                } else {
                    others_active += 1;
                }
            }
            if keys.items.len() < 500 {
                break;
            }
            page += 1;
        }
        if keep.is_none() && others_active == 0 && !env_keys.is_empty() {
            tracing::warn!(
                "FLOTILLA_ADMIN_API_KEY is no longer set, but its key is the only operator key: it stays valid \
                 until another key is created"
            );
            return Ok(());
        }
        for id in env_keys {
            self.store().revoke_operator_key(&id).await?;
        }
        Ok(())
    }
}
