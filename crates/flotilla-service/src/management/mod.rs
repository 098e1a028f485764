//! The management use cases: outputs, agent policies, integrations,
//! enrollment keys, agents and operator API keys.

mod agents;
mod bootstrap;
mod bulk;
pub use bulk::MAX_BULK_IDS;
mod connectors;
mod console_sessions;
pub use console_sessions::SignedIn;
mod data;
mod enrollment_keys;
mod integrations;
mod packages;

pub(crate) use integrations::secret_aad;
pub(crate) use outputs::output_credential_aad;
mod operator_keys;
mod outputs;
mod policies;
mod rollout;

use flotilla_domain::{validate_id, ValidationError};

use crate::{ServiceError, Services};

type Result<T> = std::result::Result<T, ServiceError>;

/// The id of the output created on first start.
pub const DEFAULT_OUTPUT_ID: &str = "fleet-default-output";
/// The name of the operator key generated on first start.
pub const BOOTSTRAP_KEY_NAME: &str = "bootstrap-admin";
const ENV_KEY_PREFIX: &str = "env-admin-";

fn new_id(requested: Option<&str>, field: &str) -> Result<String> {
    match requested {
        Some(id) => {
            validate_id(field, id)?;
            Ok(id.to_owned())
        }
        None => Ok(uuid::Uuid::new_v4().to_string()),
    }
}

fn optional_text(field: &str, value: Option<&str>, max: usize) -> Result<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) if v.chars().count() > max => {
            Err(ValidationError::new(field, format!("must be at most {max} characters")).into())
        }
        Some(v) => Ok(Some(v.to_owned())),
    }
}

pub struct Management<'a> {
    pub(crate) services: &'a Services,
}

impl Management<'_> {
    pub(super) fn store(&self) -> &dyn flotilla_store::Store {
        &*self.services.store
    }
}
