//! Retention for the embedded output: documents older than their data
//! stream's retention are deleted, in batches, so ingest is never stalled
//! behind one long delete.

use std::time::Duration;

use chrono::{DateTime, Utc};

use flotilla_domain::permissions::glob_match;

use crate::{ServiceError, Services};

/// Rows one delete statement removes at most.
pub const RETENTION_BATCH: u32 = 5_000;

#[derive(Debug, Clone)]
pub struct RetentionRule {
    /// A data stream name pattern (`*` wildcards).
    pub pattern: String,
    pub keep: Duration,
}

/// How long documents are kept: the first rule whose pattern matches a
/// stream, else `default`.
#[derive(Debug, Clone)]
pub struct Retention {
    pub default: Duration,
    pub rules: Vec<RetentionRule>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            default: Duration::from_secs(7 * 24 * 3600),
            rules: vec![],
        }
    }
}

impl Retention {
    pub fn for_stream(&self, name: &str) -> Duration {
        self.rules
            .iter()
            .find(|r| glob_match(&r.pattern, name))
            .map(|r| r.keep)
            .unwrap_or(self.default)
    }
}

impl Services {
    /// Delete what retention says is too old; how many documents went.
    pub async fn enforce_retention(
        &self,
        retention: &Retention,
        now: DateTime<Utc>,
    ) -> Result<u64, ServiceError> {
        let mut total = 0;
        for stream in self.store.data_stream_names().await? {
            let keep = chrono::Duration::from_std(retention.for_stream(&stream))
                .unwrap_or(chrono::Duration::MAX);
            let Some(before) = now.checked_sub_signed(keep) else {
                continue;
            };
            loop {
                let n = self
                    .store
                    .delete_documents_before(&stream, before, RETENTION_BATCH)
                    .await?;
                total += n;
                if n < u64::from(RETENTION_BATCH) {
                    break;
                }
                // Let ingest in between batches.
                tokio::task::yield_now().await;
            }
        }
        if total > 0 {
            metrics::counter!("flotilla_retention_deleted_total").increment(total);
            tracing::info!(deleted = total, "retention");
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_wins_else_the_default() {
        let r = Retention {
            default: Duration::from_secs(10),
            rules: vec![
                RetentionRule {
                    pattern: "logs-audit*-*".into(),
                    keep: Duration::from_secs(100),
                },
                RetentionRule {
                    pattern: "logs-*".into(),
                    keep: Duration::from_secs(50),
                },
            ],
        };
        assert_eq!(r.for_stream("logs-audit.x-prod"), Duration::from_secs(100));
        assert_eq!(
            r.for_stream("logs-nginx.access-prod"),
            Duration::from_secs(50)
        );
        assert_eq!(
            r.for_stream("metrics-system.cpu-prod"),
            Duration::from_secs(10)
        );
    }
}
