//! Rules of the protocol that need no storage: the user-agent gate and the long-poll duration.

use std::time::Duration;

use super::*;

pub(super) fn parse_version(s: &str) -> Option<(u64, u64, u64)> {
    let s = s.trim().trim_start_matches('v');
    let core = s.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().unwrap_or("0").parse().ok()?;
    Some((major, minor, patch))
}

/// Accepts `Elastic Agent X.Y.Z` and `Flotilla Agent X.Y.Z`
/// (case-insensitive); returns the agent's version.
pub fn check_user_agent(header: Option<&str>, server_version: &str) -> Result<String> {
    let ua = header.unwrap_or("").trim().to_lowercase();
    let invalid = || FleetError::new(FleetErrorKind::InvalidUserAgent, "user-agent is invalid");
    let (rest, elastic) = if let Some(rest) = ua.strip_prefix("elastic agent ") {
        (rest, true)
    } else if let Some(rest) = ua.strip_prefix("flotilla agent ") {
        (rest, false)
    } else {
        return Err(invalid());
    };
    let token = rest.split_whitespace().next().unwrap_or("");
    let version = parse_version(token).ok_or_else(invalid)?;
    if elastic {
        let (smaj, smin, _) = parse_version(server_version).unwrap_or((9, 6, 0));
        if version < (7, 13, 0) || (version.0, version.1) > (smaj, smin) {
            return Err(FleetError::new(
                FleetErrorKind::UnsupportedVersion,
                "version is not supported",
            ));
        }
    }
    Ok(format!("{}.{}.{}", version.0, version.1, version.2))
}

/// How long a check-in may wait: the agent's `poll_timeout` T gives
/// max(1m, min(T − 2m, 1h)), otherwise the configured default; minus the
/// jitter sample when that leaves something to wait.
pub(super) fn poll_duration(
    requested: Option<Duration>,
    default: Duration,
    jitter: Duration,
) -> Duration {
    let base = match requested {
        Some(t) if !t.is_zero() => t
            .saturating_sub(Duration::from_secs(120))
            .clamp(Duration::from_secs(60), Duration::from_secs(3600)),
        _ => default,
    };
    if jitter < base {
        base - jitter
    } else {
        base
    }
}

/// Go-style durations as agents send them (`5m`, `1h30m`, `300s`).
pub(super) fn parse_poll_timeout(s: &str) -> Result<Duration> {
    humantime::parse_duration(s)
        .map_err(|_| FleetError::bad("poll_timeout cannot be parsed as duration"))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents() {
        assert_eq!(
            check_user_agent(Some("Elastic Agent v9.6.0"), "9.6.0").unwrap(),
            "9.6.0"
        );
        assert_eq!(
            check_user_agent(Some("elastic agent 8.15.1-SNAPSHOT"), "9.6.0").unwrap(),
            "8.15.1"
        );
        assert_eq!(
            check_user_agent(Some("flotilla agent 0.1.0"), "9.6.0").unwrap(),
            "0.1.0"
        );
        let kind = |ua: Option<&str>| check_user_agent(ua, "9.6.0").unwrap_err().kind;
        assert_eq!(kind(None), FleetErrorKind::InvalidUserAgent);
        assert_eq!(
            kind(Some("elastic-agent 8.6.0")),
            FleetErrorKind::InvalidUserAgent
        );
        assert_eq!(kind(Some("curl/8")), FleetErrorKind::InvalidUserAgent);
        assert_eq!(
            kind(Some("elastic agent 7.12.0")),
            FleetErrorKind::UnsupportedVersion
        );
        assert_eq!(
            kind(Some("elastic agent 9.7.0")),
            FleetErrorKind::UnsupportedVersion
        );
        assert!(check_user_agent(Some("elastic agent 9.6.99"), "9.6.0").is_ok());
    }

    #[test]
    fn poll_durations_follow_the_reference() {
        let (m, s) = (|n: u64| Duration::from_secs(60 * n), Duration::from_secs);
        assert_eq!(poll_duration(None, m(5), s(0)), m(5));
        assert_eq!(poll_duration(None, m(5), s(20)), m(5) - s(20));
        assert_eq!(poll_duration(Some(m(14)), m(5), s(0)), m(12));
        assert_eq!(
            poll_duration(Some(m(2)), m(5), s(0)),
            m(1),
            "at least a minute"
        );
        assert_eq!(
            poll_duration(Some(m(600)), m(5), s(0)),
            m(60),
            "at most an hour"
        );
        assert_eq!(poll_duration(Some(s(0)), m(5), s(0)), m(5), "0 means unset");
        assert_eq!(
            poll_duration(None, s(1), s(5)),
            s(1),
            "jitter never exceeds the poll"
        );
    }

    #[test]
    fn poll_timeouts_parse_like_go() {
        assert_eq!(parse_poll_timeout("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_poll_timeout("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert!(parse_poll_timeout("soon").is_err());
    }
}
