//! What the operating system says: the open-file limit, and a process's
//! memory and CPU time from `/proc`.

use std::time::Duration;

/// Descriptors kept for everything but agents' connections.
pub const RESERVED_FDS: u64 = 64;

/// Raises the soft open-file limit to the hard one; the limit now in
/// force (`None`: unlimited or unknown).
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: limit.maximum,
                    maximum: limit.maximum,
                },
            );
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The line to print when `connections` cannot be held under `limit`.
pub fn fd_shortfall(limit: Option<u64>, connections: u64) -> Option<String> {
    let limit = limit?;
    let fits = limit.saturating_sub(RESERVED_FDS);
    (connections > fits).then(|| {
        format!(
            "warning: the open-file limit is {limit} (soft raised to hard), so this process holds at most about {fits} connections, not {connections}: raise the hard limit (ulimit -Hn) or spread the agents with --processes"
        )
    })
}

/// `VmRSS` of a process in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/status: {e}"))?;
    parse_vm_rss(&status).ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status has no VmRSS"))
}

pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User + system CPU time a process has used.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/stat: {e}"))?;
    let ticks = parse_stat_ticks(&stat)
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat is not readable"))?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// utime + stime (fields 14 and 15) of `/proc/<pid>/stat`; the command
/// name in parentheses may hold spaces, so fields count from its end.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> u64 {
    #[cfg(unix)]
    {
        rustix::param::clock_ticks_per_second().max(1)
    }
    #[cfg(not(unix))]
    {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        let status = "Name:\tflotilla\nVmPeak:\t  100 kB\nVmRSS:\t   51200 kB\nThreads: 3\n";
        assert_eq!(parse_vm_rss(status), Some(51200 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        let stat = "1234 (tokio (rt) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 8 0 100 1000 200";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        cpu_time(pid).unwrap();
    }

    #[test]
    fn shortfall_line() {
        assert!(fd_shortfall(Some(1024), 2000)
            .unwrap()
            .contains("at most about 960"));
        assert_eq!(fd_shortfall(Some(1_048_576), 2000), None);
        assert_eq!(fd_shortfall(None, 2000), None);
    }
}
