//! The task manager's rules: costs, intervals, retry backoff and when a
//! recurring task runs next. Pure functions; the service applies them.

use std::time::Duration;

use crate::error::ValidationError;

/// What a run of a task type costs out of an instance's capacity (in
/// units; a normal task is 2, as Kibana counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    Tiny,
    Normal,
    Large,
    ExtraLarge,
}

impl Cost {
    pub fn units(self) -> i32 {
        match self {
            Cost::Tiny => 1,
            Cost::Normal => 2,
            Cost::Large => 4,
            Cost::ExtraLarge => 10,
        }
    }
}

/// The first retry waits this long; each further one doubles it.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);
/// No retry waits longer.
pub const MAX_RETRY: Duration = Duration::from_secs(3600);

/// How long to wait after failed attempt `attempt` (1-based): exponential
/// from [`FIRST_RETRY`], capped at [`MAX_RETRY`], with "equal jitter" — a
/// random point in the upper half — so retries of tasks that failed
/// together spread out, yet none comes back at once. `jitter` is in [0, 1).
pub fn retry_delay(attempt: u32, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let base = FIRST_RETRY
        .saturating_mul(1u32 << exp)
        .min(MAX_RETRY)
        .as_secs_f64();
    let jitter = jitter.clamp(0.0, 1.0);
    Duration::from_secs_f64(base / 2.0 + base / 2.0 * jitter)
}

/// When a recurring task runs next. Anchored on when it was due if it
/// started within `poll` of that (so the schedule does not creep), else on
/// when it started (a late run does not cause a burst of catch-ups); never
/// in the past.
pub fn next_run_ms(
    interval_ms: i64,
    due_ms: i64,
    started_ms: i64,
    now_ms: i64,
    poll_ms: i64,
) -> i64 {
    let anchor = if started_ms - due_ms <= poll_ms {
        due_ms
    } else {
        started_ms
    };
    (anchor + interval_ms.max(1)).max(now_ms)
}

/// The shortest interval a recurring task may have.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest (a year).
pub const MAX_INTERVAL: Duration = Duration::from_secs(366 * 86400);

/// An interval as operators write it: `30s`, `5m`, `1h`, `1d` (any
/// humantime duration), between [`MIN_INTERVAL`] and [`MAX_INTERVAL`].
pub fn parse_interval(field: &str, text: &str) -> Result<Duration, ValidationError> {
    let d = humantime::parse_duration(text.trim()).map_err(|_| {
        ValidationError::new(
            field,
            format!("'{text}' is not an interval: use a number and a unit, as 30s, 5m, 1h or 1d"),
        )
    })?;
    if d < MIN_INTERVAL || d > MAX_INTERVAL {
        return Err(ValidationError::new(
            field,
            "an interval is between 1s and 366d".to_owned(),
        ));
    }
    Ok(d)
}

/// A task id: what [`crate::validate_id`] allows (ids travel in URLs).
pub fn validate_task_id(id: &str) -> Result<(), ValidationError> {
    crate::validate_id("id", id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_within_their_jitter() {
        assert_eq!(retry_delay(1, 0.0), Duration::from_secs(15));
        assert_eq!(retry_delay(1, 0.999_999).as_secs(), 29);
        assert_eq!(retry_delay(2, 0.0), Duration::from_secs(30));
        assert_eq!(retry_delay(3, 0.0), Duration::from_secs(60));
        // Capped at an hour, whatever the attempt.
        assert_eq!(retry_delay(12, 1.0), MAX_RETRY);
        assert_eq!(retry_delay(u32::MAX, 1.0), MAX_RETRY);
        assert_eq!(retry_delay(0, 0.0), Duration::from_secs(15));
    }

    #[test]
    fn recurring_runs_keep_their_cadence_unless_late() {
        // Started on time: the next run is due + interval.
        assert_eq!(next_run_ms(60_000, 1_000, 1_200, 1_300, 500), 61_000);
        // Started late: anchored on the start.
        assert_eq!(next_run_ms(60_000, 1_000, 30_000, 30_100, 500), 90_000);
        // Never in the past (a run longer than its interval).
        assert_eq!(next_run_ms(1_000, 1_000, 1_100, 10_000, 500), 10_000);
    }

    #[test]
    fn intervals_and_ids_are_checked() {
        assert_eq!(
            parse_interval("schedule.interval", "5m").unwrap(),
            Duration::from_secs(300)
        );
        assert!(parse_interval("schedule.interval", "0s").is_err());
        assert!(parse_interval("schedule.interval", "often").is_err());
        assert!(parse_interval("schedule.interval", "400d").is_err());
        assert!(validate_task_id("fleet:verify_permissions:1").is_ok());
        assert!(validate_task_id("").is_err());
        assert!(validate_task_id("a\nb").is_err());
        assert!(validate_task_id(&"x".repeat(129)).is_err());
    }
}
