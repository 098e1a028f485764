//! The protocol's errors: a kind per reference-implementation token, and how store and service errors map to them.

use flotilla_store::{Entity, StoreError};

/// What went wrong, in the protocol's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetErrorKind {
    BadRequest,
    InvalidUserAgent,
    UnsupportedVersion,
    MalformedHeader,
    MalformedToken,
    NoAuthHeader,
    InvalidToken,
    Unauthorized,
    /// The enrollment key is past its expiration.
    EnrollmentKeyExpired,
    /// The enrollment key's uses are all used.
    EnrollmentKeySpent,
    KeyNotEnabled,
    AgentInactive,
    AgentIdentity,
    AgentNotReplaceable,
    AddressRefused,
    AgentNotFound,
    PolicyNotFound,
    AuditReasonConflict,
    MaxLimit,
    EnrollDuplicate,
    PayloadTooLarge,
    Unavailable,
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FleetError {
    pub kind: FleetErrorKind,
    pub message: String,
}

impl FleetError {
    pub fn new(kind: FleetErrorKind, message: impl Into<String>) -> Self {
        FleetError {
            kind,
            message: message.into(),
        }
    }
    pub(super) fn bad(message: impl Into<String>) -> Self {
        Self::new(FleetErrorKind::BadRequest, message)
    }
    pub(super) fn key_refused(
        why: flotilla_domain::enrollment::EnrollRefusal,
        message: impl Into<String>,
    ) -> Self {
        use flotilla_domain::enrollment::EnrollRefusal;
        let kind = match why {
            EnrollRefusal::Revoked => FleetErrorKind::Unauthorized,
            EnrollRefusal::Expired => FleetErrorKind::EnrollmentKeyExpired,
            EnrollRefusal::Spent => FleetErrorKind::EnrollmentKeySpent,
        };
        Self::new(kind, message)
    }
}

impl From<StoreError> for FleetError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Busy => FleetError::new(FleetErrorKind::Unavailable, "storage busy; retry"),
            StoreError::NotFound {
                entity: Entity::Agent,
                id,
            } => FleetError::new(
                FleetErrorKind::AgentNotFound,
                format!("agent '{id}' not found"),
            ),
            StoreError::NotFound {
                entity: Entity::AgentPolicy,
                id,
            } => FleetError::new(
                FleetErrorKind::PolicyNotFound,
                format!("agent policy '{id}' not found"),
            ),
            e @ StoreError::NotFound { .. } => {
                tracing::error!(error = %e, "a record the fleet API needs is missing");
                FleetError::new(FleetErrorKind::Internal, "internal error")
            }
            StoreError::Conflict(msg) => FleetError::bad(msg),
            StoreError::KeyRefused { why, message } => FleetError::key_refused(why, message),
            StoreError::InUse(msg) => FleetError::new(FleetErrorKind::AgentNotReplaceable, msg),
            StoreError::Other(e) => {
                tracing::error!(error = %e, "storage failure in the fleet API");
                FleetError::new(FleetErrorKind::Internal, "internal error")
            }
        }
    }
}

impl From<crate::ServiceError> for FleetError {
    fn from(e: crate::ServiceError) -> Self {
        match e {
            crate::ServiceError::Unavailable(m) => FleetError::new(FleetErrorKind::Unavailable, m),
            crate::ServiceError::NotFound(m) => FleetError::new(FleetErrorKind::AgentNotFound, m),
            other => {
                tracing::error!(error = %other, "service failure in the fleet API");
                FleetError::new(FleetErrorKind::Internal, "internal error")
            }
        }
    }
}

pub(super) type Result<T> = std::result::Result<T, FleetError>;

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_store::Entity;

    #[test]
    fn store_errors_map_by_entity_not_by_message() {
        let kind = |e: StoreError| FleetError::from(e).kind;
        assert_eq!(
            kind(StoreError::not_found(Entity::Agent, "a")),
            FleetErrorKind::AgentNotFound
        );
        assert_eq!(
            kind(StoreError::not_found(Entity::AgentPolicy, "p")),
            FleetErrorKind::PolicyNotFound
        );
        assert_eq!(
            kind(StoreError::not_found(Entity::Output, "o")),
            FleetErrorKind::Internal,
            "a missing output is the server's problem, not the agent's"
        );
        assert_eq!(
            kind(StoreError::InUse("held".into())),
            FleetErrorKind::AgentNotReplaceable
        );
        assert_eq!(kind(StoreError::Busy), FleetErrorKind::Unavailable);
    }
}
