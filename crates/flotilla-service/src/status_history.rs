//! The agent status history: a task counts agents by derived status every
//! interval and records one sample (nothing is written per check-in); old
//! samples are pruned by the same task.

use std::time::Duration;

use chrono::{DateTime, Utc};

use flotilla_domain::status_history::{sample_bucket, StatusSample};
use flotilla_domain::ValidationError;

use crate::{ServiceError, Services};

/// The most samples one history read returns (a day at one a minute).
pub const MAX_HISTORY_SAMPLES: u32 = 1440;

/// How often samples are taken and how long they are kept.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub every: Duration,
    pub keep: Duration,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            every: Duration::from_secs(60),
            keep: Duration::from_secs(14 * 86400),
        }
    }
}

impl Services {
    /// Count agents by status at `now` and record the sample of `now`'s
    /// interval, unless this or another server already did; prune samples
    /// past `keep`. Whether this call wrote the sample.
    pub async fn sample_agent_status(
        &self,
        sampling: &Sampling,
        now: DateTime<Utc>,
    ) -> Result<bool, ServiceError> {
        let at = sample_bucket(now, sampling.every);
        let counts = self.store.agent_status_counts(None, now).await?;
        let written = self
            .store
            .record_status_sample(&StatusSample::from_counts(at, &counts))
            .await?;
        if let Some(before) = chrono::Duration::from_std(sampling.keep)
            .ok()
            .and_then(|k| now.checked_sub_signed(k))
        {
            self.store.prune_status_history(before).await?;
        }
        Ok(written)
    }

    /// How many agents (unenrolled ones too; of one policy, when given)
    /// have each derived status now: one grouped count.
    pub async fn agent_status_counts(
        &self,
        policy_id: Option<&str>,
    ) -> Result<Vec<(flotilla_domain::agent::AgentStatus, u64)>, ServiceError> {
        Ok(self
            .store
            .agent_status_counts(policy_id, self.now())
            .await?)
    }

    /// Samples from `from` (default: a day before `to`) to `to` (default:
    /// now), oldest first, at most [`MAX_HISTORY_SAMPLES`] (the newest).
    pub async fn agent_status_history(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<StatusSample>, ServiceError> {
        let to = to.unwrap_or_else(|| self.now());
        let from = from.unwrap_or(to - chrono::Duration::days(1));
        if from > to {
            return Err(ValidationError::new("from", "must not be after `to`").into());
        }
        Ok(self
            .store
            .status_history(from, to, MAX_HISTORY_SAMPLES)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{Clock, ManualClock};
    use std::sync::Arc;

    async fn services(dir: &std::path::Path, clock: Arc<ManualClock>) -> Services {
        let store = flotilla_store_sql::open(flotilla_store_sql::Location::DataDir(dir))
            .await
            .unwrap();
        Services::new(
            store,
            crate::FleetSettings::default(),
            crate::crypto::Sealer::from_secret(b"a-test-sealing-key-of-32-bytes-at-least"),
        )
        .with_clock(clock)
    }

    #[tokio::test]
    async fn one_sample_per_interval_on_a_manual_clock_and_old_ones_pruned() {
        let t0 = DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        let clock = Arc::new(ManualClock::new(t0));
        let dir = tempfile::tempdir().unwrap();
        let s = services(dir.path(), clock.clone()).await;
        let sampling = Sampling {
            every: Duration::from_secs(60),
            keep: Duration::from_secs(600),
        };
        assert!(s.sample_agent_status(&sampling, clock.now()).await.unwrap());
        // Again in the same interval (another server, a retry): no row.
        clock.advance(Duration::from_secs(10));
        assert!(!s.sample_agent_status(&sampling, clock.now()).await.unwrap());
        for _ in 0..15 {
            clock.advance(Duration::from_secs(60));
            assert!(s.sample_agent_status(&sampling, clock.now()).await.unwrap());
        }
        let got = s.agent_status_history(None, None).await.unwrap();
        // Ten minutes kept: the interval starts in the last ten minutes.
        assert_eq!(got.len(), 10, "{got:?}");
        assert!(got.iter().all(|x| x.at.timestamp_millis() % 60_000 == 0));
        assert!(got.windows(2).all(|w| w[0].at < w[1].at));
        assert!(s
            .agent_status_history(Some(clock.now()), Some(t0))
            .await
            .is_err());
    }
}
