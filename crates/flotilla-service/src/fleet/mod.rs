//! The fleet protocol's use cases: enrolment, long-poll check-in, acks,
//! audit/unenroll — and the per-agent output keys they hand out.
//!
//! Errors carry a [`FleetErrorKind`], which the HTTP layer renders with the
//! reference implementation's `error` tokens.

mod ack;
mod auth;
mod buffer;
mod checkin;
mod enroll;
mod errors;
mod group_commit;
mod output_keys;
mod policy_cache;
mod protocol;
mod rendered;
mod unenroll;
mod waiters;

pub use ack::{parse_policy_action_id, AckOutcome};
pub use buffer::CheckinBuffer;
pub use errors::{FleetError, FleetErrorKind};
pub use flotilla_api::fleet::*;
pub use group_commit::{
    CheckinBatcher, EnrolmentBatcher, GroupCommit, GroupWrite, KeyRotation, KeyRotationBatcher,
    RunsPolicyBatcher,
};
pub use output_keys::output_key_aad;
pub use policy_cache::{CachedPolicy, PolicyCache};
pub use protocol::check_user_agent;
pub use rendered::{CheckinAction, CheckinResponse, PolicyChangeTemplate};
pub use waiters::{Registration, Waiters};

// What the use-case modules share among themselves.
use buffer::*;
use errors::*;
use protocol::*;

use flotilla_store::FleetAgent;

use crate::Services;

/// The fleet protocol's use cases, as `Management` is the operators':
/// `services.fleet().checkin(…)`.
pub struct Fleet<'a> {
    pub(crate) services: &'a Services,
}

/// The use cases read the shared parts (store, settings, caches) directly.
impl std::ops::Deref for Fleet<'_> {
    type Target = Services;
    fn deref(&self) -> &Services {
        self.services
    }
}

/// The policy an enrollment credential may enrol into.
pub struct EnrollGrant {
    pub policy_id: String,
    /// Which credential it was (recorded on the agent) and how the
    /// enrolment counts against it.
    pub key_id: Option<String>,
    pub key_use: flotilla_store::KeyUse,
}

/// The most pending actions one check-in hands out.
pub(crate) const PENDING_LIMIT: u32 = 100;

/// What authenticating an agent's request yields.
pub struct AuthedAgent {
    pub agent: FleetAgent,
    /// A check-in's first reads, made with the authentication.
    pub(crate) first_reads: Option<FirstReads>,
}

/// What a check-in owes, read with its authentication (before its poll
/// registered), and the dispatcher's count when it was read.
pub(crate) struct FirstReads {
    pub(crate) seen: u64,
    pub(crate) policy_revision: Option<i64>,
    pub(crate) actions: Vec<flotilla_domain::action::Action>,
}
