//! Flotilla's services: the use cases behind the management API
//! ([`Management`]) and the fleet protocol ([`fleet::Fleet`]).
//!
//! A service validates requests (turning them into domain values), applies
//! the domain rules, and calls the [`Store`]. It knows nothing of HTTP; the
//! HTTP crate maps [`ServiceError`] to responses.

#![warn(unreachable_pub)]

pub mod crypto;
pub mod error;
pub mod fleet;
pub mod full_policy;
pub mod ingest;
pub mod keys;
pub mod management;
pub mod packages;
pub mod retention;
pub mod secrets;
pub mod settings;
pub mod status_history;
pub mod tasks;
pub mod verifier;

use std::sync::Arc;

use flotilla_store::Store;

pub use error::ServiceError;
pub use management::Management;
pub use settings::FleetSettings;

/// Everything a request handler needs, cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub packages: Arc<packages::PackageRegistry>,
    pub settings: Arc<FleetSettings>,
    pub sealer: Arc<crypto::Sealer>,
    pub checkins: Arc<fleet::CheckinBuffer>,
    pub policy_cache: Arc<fleet::PolicyCache>,
    /// Waiting check-ins by agent and policy.
    pub waiters: Arc<fleet::Waiters>,
    /// Acks and reported revisions, committed in groups.
    pub runs_policy: Arc<fleet::RunsPolicyBatcher>,
    /// Output-key rotations, group-committed.
    pub key_rotations: Arc<fleet::KeyRotationBatcher>,
    /// Check-ins that changed something, group-committed.
    pub checkin_writes: Arc<fleet::CheckinBatcher>,
    /// Enrolments, group-committed.
    pub enrolments: Arc<fleet::EnrolmentBatcher>,
    /// The time the services' rules are judged by (enrollment keys'
    /// expiry, key creation times); tests drive a `ManualClock`.
    pub clock: Arc<dyn tasks::Clock>,
}

impl Services {
    pub fn new(store: Arc<dyn Store>, settings: FleetSettings, sealer: crypto::Sealer) -> Self {
        Services {
            store,
            packages: Default::default(),
            settings: Arc::new(settings),
            sealer: Arc::new(sealer),
            checkins: Default::default(),
            policy_cache: Default::default(),
            waiters: Default::default(),
            runs_policy: Default::default(),
            key_rotations: Default::default(),
            checkin_writes: Default::default(),
            enrolments: Default::default(),
            clock: Arc::new(tasks::SystemClock),
        }
    }

    /// The same services judging time by `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn tasks::Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Now, by the services' clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    pub fn management(&self) -> Management<'_> {
        Management { services: self }
    }

    /// The key service over this store.
    pub fn keys(&self) -> keys::KeyService {
        keys::KeyService::new(self.store.clone())
    }

    pub fn fleet(&self) -> fleet::Fleet<'_> {
        fleet::Fleet { services: self }
    }
}
