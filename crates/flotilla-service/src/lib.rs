//! Flotilla's services: the use cases behind the management API.
//!
//! A service validates requests (turning them into domain values), applies
//! the domain rules, and calls the [`Store`]. It knows nothing of HTTP; the
//! HTTP crate maps [`ServiceError`] to responses.

pub mod error;
pub mod full_policy;
pub mod management;
pub mod requests;
pub mod secrets;

use std::sync::Arc;

use flotilla_domain::catalogue::Catalogue;
use flotilla_store::Store;

pub use error::ServiceError;
pub use management::Management;

/// Everything a request handler needs, cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub catalogue: &'static Catalogue,
}

impl Services {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Services {
            store,
            catalogue: Catalogue::builtin(),
        }
    }

    pub fn management(&self) -> Management<'_> {
        Management { services: self }
    }
}
