//! Agent status history: periodic samples of how many agents are in each
//! status group, for the overview's chart over time. Sampled by a task,
//! never written per check-in.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::agent::AgentStatus;

/// The groups the chart shows (Kibana's agent status summary):
/// unhealthy is error or degraded, updating is enrolling or unenrolling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusGroup {
    Online,
    Offline,
    Unhealthy,
    Updating,
    Inactive,
}

impl StatusGroup {
    pub const ALL: [StatusGroup; 5] = [
        StatusGroup::Online,
        StatusGroup::Offline,
        StatusGroup::Unhealthy,
        StatusGroup::Updating,
        StatusGroup::Inactive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatusGroup::Online => "online",
            StatusGroup::Offline => "offline",
            StatusGroup::Unhealthy => "unhealthy",
            StatusGroup::Updating => "updating",
            StatusGroup::Inactive => "inactive",
        }
    }

    /// The group of a derived status; unenrolled agents are in none.
    pub fn of(status: AgentStatus) -> Option<StatusGroup> {
        match status {
            AgentStatus::Online => Some(StatusGroup::Online),
            AgentStatus::Offline => Some(StatusGroup::Offline),
            AgentStatus::Error | AgentStatus::Degraded => Some(StatusGroup::Unhealthy),
            AgentStatus::Enrolling | AgentStatus::Unenrolling => Some(StatusGroup::Updating),
            AgentStatus::Inactive => Some(StatusGroup::Inactive),
            AgentStatus::Unenrolled => None,
        }
    }
}

/// One sample: the agents in each group at `at` (the start of its
/// interval, so every server sampling in one interval names the same one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusSample {
    pub at: DateTime<Utc>,
    pub online: u64,
    pub offline: u64,
    pub unhealthy: u64,
    pub updating: u64,
    pub inactive: u64,
}

impl StatusSample {
    /// A sample from per-status counts.
    pub fn from_counts(at: DateTime<Utc>, counts: &[(AgentStatus, u64)]) -> Self {
        let mut s = StatusSample {
            at,
            online: 0,
            offline: 0,
            unhealthy: 0,
            updating: 0,
            inactive: 0,
        };
        for (status, n) in counts {
            match StatusGroup::of(*status) {
                Some(StatusGroup::Online) => s.online += n,
                Some(StatusGroup::Offline) => s.offline += n,
                Some(StatusGroup::Unhealthy) => s.unhealthy += n,
                Some(StatusGroup::Updating) => s.updating += n,
                Some(StatusGroup::Inactive) => s.inactive += n,
                None => {}
            }
        }
        s
    }

    pub fn get(&self, g: StatusGroup) -> u64 {
        match g {
            StatusGroup::Online => self.online,
            StatusGroup::Offline => self.offline,
            StatusGroup::Unhealthy => self.unhealthy,
            StatusGroup::Updating => self.updating,
            StatusGroup::Inactive => self.inactive,
        }
    }

    pub fn total(&self) -> u64 {
        StatusGroup::ALL.iter().map(|g| self.get(*g)).sum()
    }
}

/// The start of the interval `now` falls in (intervals counted from the
/// Unix epoch, so servers agree on them without talking).
pub fn sample_bucket(now: DateTime<Utc>, every: std::time::Duration) -> DateTime<Utc> {
    let step = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1);
    let ms = now.timestamp_millis();
    Utc.timestamp_millis_opt(ms - ms.rem_euclid(step))
        .single()
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_start_their_interval() {
        let t = Utc.timestamp_millis_opt(125_500).unwrap();
        let b = sample_bucket(t, Duration::from_secs(60));
        assert_eq!(b.timestamp_millis(), 120_000);
        assert_eq!(sample_bucket(b, Duration::from_secs(60)), b);
    }

    #[test]
    fn statuses_fall_in_groups() {
        let s = StatusSample::from_counts(
            Utc::now(),
            &[
                (AgentStatus::Online, 3),
                (AgentStatus::Error, 1),
                (AgentStatus::Degraded, 2),
                (AgentStatus::Enrolling, 1),
                (AgentStatus::Unenrolled, 9),
            ],
        );
        assert_eq!((s.online, s.unhealthy, s.updating, s.total()), (3, 3, 1, 7));
    }
}
