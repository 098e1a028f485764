use flotilla_domain::ValidationError;
use flotilla_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthorized(String),
    /// Temporarily unable to serve (storage busy); the caller may retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity, id } => {
                ServiceError::NotFound(format!("{entity} '{id}'"))
            }
            StoreError::Conflict(msg) | StoreError::InUse(msg) => ServiceError::Conflict(msg),
            StoreError::KeyRefused { message, .. } => ServiceError::Unauthorized(message),
            StoreError::Busy => ServiceError::Unavailable("storage is busy, retry shortly".into()),
            StoreError::Other(e) => ServiceError::Internal(e),
        }
    }
}

impl ServiceError {
    /// A reference in a request body that does not resolve is the caller's
    /// mistake (400 naming the field), not a missing resource (404).
    pub fn invalid_reference(field: &str, e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity, id } => ServiceError::Invalid(ValidationError::new(
                field,
                format!("{entity} '{id}' does not exist"),
            )),
            other => other.into(),
        }
    }
}
