//! Agent status history: counts by derived status in one grouped read, and
//! the samples table (one row per interval, insert-or-ignore).

use flotilla_domain::agent::AgentStatus;
use flotilla_domain::status_history::StatusSample;

use super::prelude::*;

#[tracing::instrument(skip_all)]
pub(super) async fn agent_status_counts(
    s: &Engine,
    policy_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<(AgentStatus, u64)>> {
    // The status expression as the agent queries use it, its `$5` (now)
    // and `$7` (offline threshold) renumbered as this query's `$1` and `$2`.
    let status = agent_status_sql!().replace("$5", "$1").replace("$7", "$2");
    let rows: Vec<(String, i64)> = sqlx::query_as(sql!(
        "SELECT x.status, COUNT(*) FROM (SELECT {status} AS status FROM agents a \
         LEFT JOIN agent_policies p ON p.id = a.policy_id WHERE ($3 IS NULL OR a.policy_id = $3)) x \
         GROUP BY x.status"
    ))
    .bind(ms(now))
    .bind(
        s.offline_after_ms
            .load(std::sync::atomic::Ordering::Relaxed),
    )
    .bind(policy_id.map(str::to_owned))
    .fetch_all(&s.pool)
    .await
    .db()?;
    let mut out: Vec<(AgentStatus, u64)> = AgentStatus::ALL.iter().map(|st| (*st, 0)).collect();
    for (status, n) in rows {
        let st = AgentStatus::parse(&status)
            .ok_or_else(|| StoreError::Other(format!("unknown agent status {status}").into()))?;
        if let Some(slot) = out.iter_mut().find(|(s, _)| *s == st) {
            slot.1 = n.max(0) as u64;
        }
    }
    Ok(out)
}

#[tracing::instrument(skip_all)]
pub(super) async fn record_status_sample(s: &Engine, sample: &StatusSample) -> Result<bool> {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let done = sqlx::query(
        "INSERT INTO agent_status_history (bucket, online, offline, unhealthy, updating, inactive) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (bucket) DO NOTHING",
    )
    .bind(ms(sample.at))
    .bind(n(sample.online))
    .bind(n(sample.offline))
    .bind(n(sample.unhealthy))
    .bind(n(sample.updating))
    .bind(n(sample.inactive))
    .execute(&mut *s.write_conn().await?)
    .await
    .db()?;
    Ok(done.rows_affected() > 0)
}

#[tracing::instrument(skip_all)]
pub(super) async fn status_history(
    s: &Engine,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<StatusSample>> {
    // The newest `limit` in the range, then oldest first.
    let rows: Vec<(i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT bucket, online, offline, unhealthy, updating, inactive FROM agent_status_history \
         WHERE bucket >= $1 AND bucket <= $2 ORDER BY bucket DESC LIMIT $3",
    )
    .bind(ms(from))
    .bind(ms(to))
    .bind(i64::from(limit))
    .fetch_all(&s.pool)
    .await
    .db()?;
    let n = |v: i64| v.max(0) as u64;
    Ok(rows
        .into_iter()
        .rev()
        .map(
            |(at, online, offline, unhealthy, updating, inactive)| StatusSample {
                at: from_ms(at),
                online: n(online),
                offline: n(offline),
                unhealthy: n(unhealthy),
                updating: n(updating),
                inactive: n(inactive),
            },
        )
        .collect())
}

#[tracing::instrument(skip_all)]
pub(super) async fn prune_status_history(s: &Engine, before: DateTime<Utc>) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM agent_status_history WHERE bucket < $1")
            .bind(ms(before))
            .execute(&mut *s.write_conn().await?)
            .await
            .db()?
            .rows_affected(),
    )
}
