//! How long to wait before asking again: `Retry-After` when the server
//! sent one, else exponential backoff with jitter.

use std::time::Duration;

/// The longest wait taken from a `Retry-After` header.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// `Retry-After` as delta-seconds (integer or decimal) or an HTTP date
/// (`now` is the current time for the latter); capped at
/// [`MAX_RETRY_AFTER`]. `None` when it does not parse.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = v.parse().ok()?;
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        return Some(Duration::from_secs_f64(
            secs.min(MAX_RETRY_AFTER.as_secs_f64()),
        ));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - now;
    Some(
        delta
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// The wait before attempt `attempt` (0 for the first retry): the server's
/// `Retry-After` plus up to 10 % spread when given, else 250 ms doubling up
/// to 30 s, with the upper half at random (`unit` is a random sample in
/// 0–1), so agents refused together do not come back together.
pub fn backoff(attempt: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
    let unit = unit.clamp(0.0, 1.0);
    if let Some(after) = retry_after {
        return after + after.mul_f64(0.1 * unit);
    }
    let base = Duration::from_millis(250)
        .saturating_mul(1u32 << attempt.min(7))
        .min(Duration::from_secs(30));
    base / 2 + (base / 2).mul_f64(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("5", now()), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after(" 0 ", now()), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now()),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("99999", now()), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now()),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now()),
            Some(Duration::ZERO),
            "a date in the past is now"
        );
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(parse_retry_after("", now()), None);
        assert_eq!(parse_retry_after("-3", now()), None);
        assert_eq!(parse_retry_after("1.2.3", now()), None);
    }

    #[test]
    fn backoff_honours_the_server() {
        let s = Duration::from_secs;
        assert_eq!(backoff(0, Some(s(2)), 0.0), s(2));
        assert_eq!(backoff(5, Some(s(2)), 1.0), Duration::from_millis(2200));
        assert_eq!(backoff(0, None, 0.0), Duration::from_millis(125));
        assert_eq!(backoff(0, None, 1.0), Duration::from_millis(250));
        assert_eq!(backoff(3, None, 1.0), s(2));
        assert_eq!(backoff(30, None, 1.0), s(30), "capped");
        assert_eq!(backoff(30, None, 0.0), s(15));
    }
}
