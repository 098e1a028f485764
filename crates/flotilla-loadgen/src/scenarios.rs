//! The scenarios, each ending with one [`Summary`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::agent::{LoopConfig, Metadata};
use crate::bench::Bench;
use crate::client::{Operator, Pool};
use crate::summary::{Figure, Summary};
use crate::{stats, sys, LoadgenArgs, Scenario};

/// The long poll agents ask for when --poll-timeout is not given.
pub const DEFAULT_POLL: Duration = Duration::from_secs(600);

pub async fn run(args: &LoadgenArgs) -> anyhow::Result<Summary> {
    match args.scenario {
        Scenario::Enroll => enroll(args).await,
        Scenario::Hold => hold(args).await,
        Scenario::Fanout => fanout(args).await,
        Scenario::Churn => churn(args).await,
        Scenario::Baseline => baseline(args).await,
        Scenario::Overload => crate::overload::overload(args).await,
        Scenario::Storm => crate::overload::storm(args).await,
        Scenario::BaselineServer => bail!("baseline-server is not a measuring scenario"),
    }
}

/// The agent version in a user agent (`Elastic Agent 9.1.0` → `9.1.0`).
pub fn agent_version(user_agent: &str) -> String {
    user_agent
        .split_whitespace()
        .last()
        .unwrap_or("9.1.0")
        .trim_start_matches('v')
        .to_owned()
}

pub(crate) fn new_bench(args: &LoadgenArgs, url: &str, label: &str) -> anyhow::Result<Bench> {
    let pool = Pool::new(url, &args.ips(), &args.user_agent)?;
    let op = Operator::new(url, args.api_key.clone())?;
    let meta = Arc::new(Metadata::new(
        args.metadata_bytes,
        &agent_version(&args.user_agent),
    ));
    let mut b = Bench::new(pool, op, meta);
    if !args.quiet {
        b.show_progress(label.to_owned(), args.agents);
    }
    Ok(b)
}

/// The enrollment token and policy of this run: given, or a new policy
/// and token made with the operator key.
pub(crate) async fn prepare(
    args: &LoadgenArgs,
    op: &Operator,
) -> anyhow::Result<(String, Option<String>)> {
    if let Some(t) = &args.enrollment_token {
        return Ok((t.clone(), args.policy_id.clone()));
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
    let name = format!(
        "loadgen-{}-{stamp}-{}",
        args.scenario.name(),
        std::process::id()
    );
    let policy = op
        .create_policy(&name)
        .await
        .context("cannot create the run's policy")?;
    let token = op
        .enrollment_token(&policy)
        .await
        .context("cannot create an enrollment token")?;
    Ok((token, Some(policy)))
}

/// In a multi-process run: say `ready` and wait for the parent's `go`
/// line (its words after `go`). Outside one: at once, nothing.
async fn child_sync(args: &LoadgenArgs) -> anyhow::Result<Vec<String>> {
    if !args.child {
        return Ok(Vec::new());
    }
    println!("ready");
    let mut line = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await?;
    let mut words = line.split_whitespace();
    if words.next() != Some("go") {
        bail!("the parent process went away");
    }
    Ok(words.map(str::to_owned).collect())
}

fn loop_config(b: &Bench, poll: Option<Duration>) -> LoopConfig {
    LoopConfig {
        poll_timeout: poll,
        metadata: b.meta.clone(),
    }
}

fn counts(s: &mut Summary, b: &Bench) {
    s.push("busy", Figure::Count(b.shared.busy.load(Relaxed)))
        .push("errors", Figure::Count(b.shared.errors.load(Relaxed)));
}

fn last_error(b: &Bench) {
    if let Some(e) = b.shared.last_error.lock().unwrap().clone() {
        eprintln!("last error: {e}");
    }
}

async fn enroll(args: &LoadgenArgs) -> anyhow::Result<Summary> {
    let mut b = new_bench(args, &args.url, "enroll")?;
    let (token, _) = prepare(args, &b.op).await?;
    let e = b
        .enroll(&token, args.agents, args.concurrency, args.timeout)
        .await;
    let mut s = Summary::new("enroll");
    s.push("agents", Figure::Count(args.agents as u64))
        .push("enrolled", Figure::Count(b.agents.len() as u64))
        .push("concurrency", Figure::Count(args.concurrency as u64))
        .push("enroll_per_s", Figure::Rate(e.rate()))
        .push("p50_ms", Figure::opt_millis(e.p(50.0)))
        .push("p99_ms", Figure::opt_millis(e.p(99.0)))
        .push(
            "per_tenth_per_s",
            Figure::Rates(stats::rates_per_tenth(&e.done_at)),
        )
        .push("elapsed_s", Figure::Seconds(e.elapsed.as_secs_f64()));
    counts(&mut s, &b);
    if args.child {
        s.push("raw_latencies_ms", Figure::Samples(e.latencies_ms.clone()))
            .push("raw_done_at_s", Figure::Samples(e.done_at.clone()));
    }
    last_error(&b);
    Ok(s)
}

/// Enrols the fleet and brings every agent to a waiting long poll.
async fn bring_to_wait(
    b: &mut Bench,
    args: &LoadgenArgs,
    token: &str,
) -> anyhow::Result<Option<f64>> {
    b.enroll(token, args.agents, args.concurrency, args.timeout)
        .await;
    if b.agents.is_empty() {
        last_error(b);
        bail!("no agent enrolled");
    }
    let start = Instant::now();
    b.start_loops(loop_config(
        b,
        Some(args.poll_timeout.unwrap_or(DEFAULT_POLL)),
    ));
    let expect = args.expect_waiting.unwrap_or(b.agents.len());
    let waited = b.wait_all_waiting(expect, args.timeout).await;
    if waited.is_none() {
        eprintln!(
            "warning: not every agent was waiting after {:?} ({} of {} acked their first policy)",
            args.timeout,
            b.shared.acked_first.load(Relaxed),
            b.agents.len()
        );
    }
    Ok(waited.map(|_| start.elapsed().as_secs_f64()))
}

/// What holding the fleet cost the server.
struct Held {
    rss_before: Option<u64>,
    rss_held: Option<u64>,
    cpu_ms: Option<f64>,
    waiting_s: Option<f64>,
    held: usize,
}

impl Held {
    fn per_agent(&self) -> Option<u64> {
        match (self.rss_before, self.rss_held) {
            (Some(a), Some(b)) if self.held > 0 => Some(b.saturating_sub(a) / self.held as u64),
            _ => None,
        }
    }
    fn cpu_percent(&self, window: Duration) -> Option<f64> {
        self.cpu_ms
            .map(|ms| ms / 1000.0 / window.as_secs_f64() * 100.0)
    }
}

async fn hold_phase(
    b: &mut Bench,
    args: &LoadgenArgs,
    token: &str,
    pid: Option<u32>,
) -> anyhow::Result<Held> {
    let rss_before = pid.map(sys::rss_bytes).transpose()?;
    let waiting_s = bring_to_wait(b, args, token).await?;
    child_sync(args).await?;
    let rss_held = pid.map(sys::rss_bytes).transpose()?;
    let cpu_ms = match pid {
        Some(pid) => {
            let c0 = sys::cpu_time(pid)?;
            tokio::time::sleep(args.duration).await;
            Some(stats::millis(sys::cpu_time(pid)?.saturating_sub(c0)))
        }
        None => None,
    };
    Ok(Held {
        rss_before,
        rss_held,
        cpu_ms,
        waiting_s,
        held: b.agents.len(),
    })
}

async fn hold(args: &LoadgenArgs) -> anyhow::Result<Summary> {
    let mut b = new_bench(args, &args.url, "hold")?;
    let (token, _) = prepare(args, &b.op).await?;
    if args.server_pid.is_none() && !args.child {
        eprintln!("note: without --server-pid the server's memory and CPU are not measured");
    }
    let h = hold_phase(&mut b, args, &token, args.server_pid).await?;
    let mut s = Summary::new("hold");
    s.push("agents", Figure::Count(args.agents as u64))
        .push("enrolled", Figure::Count(b.agents.len() as u64))
        .push(
            "acked_first",
            Figure::Count(b.shared.acked_first.load(Relaxed)),
        )
        .push(
            "waiting",
            Figure::Count(b.shared.waiting_seen.load(Relaxed)),
        )
        .push("to_all_waiting_s", Figure::opt_seconds(h.waiting_s))
        .push(
            "rss_before",
            h.rss_before.map_or(Figure::Missing, Figure::Bytes),
        )
        .push(
            "rss_held",
            h.rss_held.map_or(Figure::Missing, Figure::Bytes),
        )
        .push(
            "rss_per_agent",
            h.per_agent().map_or(Figure::Missing, Figure::Bytes),
        )
        .push(
            "idle_cpu_pct",
            h.cpu_percent(args.duration)
                .map_or(Figure::Missing, Figure::Percent),
        )
        .push(
            "idle_window_s",
            Figure::Seconds(args.duration.as_secs_f64()),
        );
    counts(&mut s, &b);
    last_error(&b);
    Ok(s)
}

async fn fanout(args: &LoadgenArgs) -> anyhow::Result<Summary> {
    let mut b = new_bench(args, &args.url, "fanout")?;
    let (token, policy) = prepare(args, &b.op).await?;
    let waiting_s = bring_to_wait(&mut b, args, &token).await?;
    let policy = policy
        .or_else(|| b.agents.first().map(|a| a.policy_id.clone()))
        .context("the agents' policy is not known (--policy-id)")?;
    let n = b.agents.len();
    let mut api_ms = None;
    let go = child_sync(args).await?;
    if args.child {
        // The parent makes the change: it sent the revision to wait past.
        let rev: i64 = go
            .first()
            .and_then(|r| r.parse().ok())
            .context("go without a revision")?;
        b.shared.target_revision.store(rev + 1, Relaxed);
        let _ = b.shared.t0.set(Instant::now());
    } else {
        let rev = b.op.policy_revision(&policy).await?;
        b.shared.target_revision.store(rev + 1, Relaxed);
        let t0 = Instant::now();
        let _ = b.shared.t0.set(t0);
        let name = format!(
            "loadgen-{}-{}",
            args.package,
            chrono::Utc::now().timestamp_millis()
        );
        b.op.add_integration(&policy, &args.package, &name)
            .await
            .context("cannot add the integration")?;
        api_ms = Some(stats::millis(t0.elapsed()));
    }
    let start = Instant::now();
    while b.shared.acked_at.lock().unwrap().len() < n && start.elapsed() < args.timeout {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.stop_loops();
    let received = b.shared.received_at.lock().unwrap().clone();
    let acked = b.shared.acked_at.lock().unwrap().clone();
    let mut s = Summary::new("fanout");
    s.push("agents", Figure::Count(args.agents as u64))
        .push("enrolled", Figure::Count(n as u64))
        .push("to_all_waiting_s", Figure::opt_seconds(waiting_s))
        .push(
            "waiting",
            Figure::Count(b.shared.waiting_seen.load(Relaxed)),
        )
        .push("received", Figure::Count(received.len() as u64))
        .push("acked", Figure::Count(acked.len() as u64))
        .push(
            "t50_s",
            Figure::opt_seconds(stats::time_to_share(&received, n, 0.5)),
        )
        .push(
            "t99_s",
            Figure::opt_seconds(stats::time_to_share(&received, n, 0.99)),
        )
        .push(
            "t100_s",
            Figure::opt_seconds(stats::time_to_share(&received, n, 1.0)),
        )
        .push(
            "all_acked_s",
            Figure::opt_seconds(stats::time_to_share(&acked, n, 1.0)),
        )
        .push("change_api_ms", Figure::opt_millis(api_ms))
        .push(
            "acks_refused",
            Figure::Count(b.shared.acks_refused.load(Relaxed)),
        );
    counts(&mut s, &b);
    if args.child {
        s.push("raw_received_s", Figure::Samples(received))
            .push("raw_acked_s", Figure::Samples(acked));
    }
    last_error(&b);
    Ok(s)
}

/// Check-ins per second with the agents asking `poll` (none: the
/// server's default), counted over `args.duration` once every agent acked
/// its first policy.
async fn churn_phase(
    b: &mut Bench,
    args: &LoadgenArgs,
    poll: Option<Duration>,
) -> anyhow::Result<(u64, f64)> {
    b.start_loops(loop_config(b, poll));
    if b.wait_all_waiting(0, args.timeout).await.is_none() {
        eprintln!("warning: not every agent acked its first policy");
    }
    child_sync(args).await?;
    let c0 = b.shared.checkins.load(Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(args.duration).await;
    let n = b.shared.checkins.load(Relaxed) - c0;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    if n == 0 {
        eprintln!(
            "note: no check-in completed in {:?}: the server holds polls longer; start it with FLOTILLA_FLEET__POLL_TIMEOUT=1s FLOTILLA_FLEET__POLL_JITTER=0s",
            args.duration
        );
    }
    Ok((n, rate))
}

async fn churn(args: &LoadgenArgs) -> anyhow::Result<Summary> {
    let mut b = new_bench(args, &args.url, "churn")?;
    let (token, _) = prepare(args, &b.op).await?;
    b.enroll(&token, args.agents, args.concurrency, args.timeout)
        .await;
    if b.agents.is_empty() {
        last_error(&b);
        bail!("no agent enrolled");
    }
    let (n, rate) = churn_phase(&mut b, args, args.poll_timeout).await?;
    let mut s = Summary::new("churn");
    s.push("agents", Figure::Count(args.agents as u64))
        .push("enrolled", Figure::Count(b.agents.len() as u64))
        .push("checkins", Figure::Count(n))
        .push("checkins_per_s", Figure::Rate(rate))
        .push("window_s", Figure::Seconds(args.duration.as_secs_f64()));
    counts(&mut s, &b);
    last_error(&b);
    Ok(s)
}

/// hold, then churn, against one server.
struct Compared {
    held: Held,
    checkins_per_s: f64,
    errors: u64,
}

async fn hold_and_churn(
    args: &LoadgenArgs,
    url: &str,
    pid: u32,
    label: &str,
    token: Option<&str>,
) -> anyhow::Result<Compared> {
    let mut b = new_bench(args, url, label)?;
    let token = match token {
        Some(t) => t.to_owned(),
        None => prepare(args, &b.op).await?.0,
    };
    let held = hold_phase(&mut b, args, &token, Some(pid)).await?;
    let (_, checkins_per_s) = churn_phase(&mut b, args, None).await?;
    b.stop_loops();
    last_error(&b);
    Ok(Compared {
        held,
        checkins_per_s,
        errors: b.shared.errors.load(Relaxed),
    })
}

async fn baseline(args: &LoadgenArgs) -> anyhow::Result<Summary> {
    let flotilla = match args.server_pid {
        Some(pid) => Some(hold_and_churn(args, &args.url, pid, "baseline[flotilla]", None).await?),
        None => {
            eprintln!("note: without --server-pid only the baseline server is measured");
            None
        }
    };
    let mut server = BaselineServer::start().await?;
    let base = hold_and_churn(
        args,
        &server.url,
        server.pid,
        "baseline[hyper]",
        Some(BASELINE_TOKEN),
    )
    .await;
    server.stop().await;
    let base = base?;
    let side = |c: &Compared| Side {
        rss_per_agent: c.held.per_agent(),
        idle_cpu_pct: c.held.cpu_percent(args.duration),
        checkins_per_s: c.checkins_per_s,
        errors: c.errors,
    };
    Ok(compare(
        args.agents,
        flotilla.as_ref().map(side),
        side(&base),
    ))
}

/// The token the baseline server accepts.
pub(crate) const BASELINE_TOKEN: &str = "baseline-token";

/// The minimal hyper long-poll server, as a child process (so its memory
/// is its own).
pub(crate) struct BaselineServer {
    child: tokio::process::Child,
    pub pid: u32,
    pub url: String,
}

impl BaselineServer {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()
            .context("cannot find this program to start the baseline server")?;
        let mut child = tokio::process::Command::new(exe)
            .args([
                "loadgen",
                "baseline-server",
                "--listen",
                "127.0.0.1:0",
                "--poll-timeout",
                "1s",
            ])
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the baseline server")?;
        let pid = child.id().context("the baseline server has no pid")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?)
            .read_line(&mut line)
            .await?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("the baseline server said {line:?}"))?;
        let url = format!("http://{addr}");
        Ok(BaselineServer { child, pid, url })
    }

    pub(crate) async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// One server's figures in a baseline run.
pub(crate) struct Side {
    pub rss_per_agent: Option<u64>,
    pub idle_cpu_pct: Option<f64>,
    pub checkins_per_s: f64,
    pub errors: u64,
}

/// The baseline summary: Flotilla's figures (when measured), the minimal
/// server's, and their ratios.
pub(crate) fn compare(agents: usize, flotilla: Option<Side>, base: Side) -> Summary {
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Figure::Ratio(a / b),
        _ => Figure::Missing,
    };
    let f_rss = flotilla.as_ref().and_then(|f| f.rss_per_agent);
    let f_rate = flotilla.as_ref().map(|f| f.checkins_per_s);
    let mut s = Summary::new("baseline");
    s.push("agents", Figure::Count(agents as u64))
        .push(
            "flotilla_rss_per_agent",
            f_rss.map_or(Figure::Missing, Figure::Bytes),
        )
        .push(
            "baseline_rss_per_agent",
            base.rss_per_agent.map_or(Figure::Missing, Figure::Bytes),
        )
        .push(
            "rss_ratio",
            ratio(
                f_rss.map(|x| x as f64),
                base.rss_per_agent.map(|x| x as f64),
            ),
        )
        .push(
            "flotilla_idle_cpu_pct",
            flotilla
                .as_ref()
                .and_then(|f| f.idle_cpu_pct)
                .map_or(Figure::Missing, Figure::Percent),
        )
        .push(
            "baseline_idle_cpu_pct",
            base.idle_cpu_pct.map_or(Figure::Missing, Figure::Percent),
        )
        .push(
            "flotilla_checkins_per_s",
            f_rate.map_or(Figure::Missing, Figure::Rate),
        )
        .push("baseline_checkins_per_s", Figure::Rate(base.checkins_per_s))
        .push("checkin_ratio", ratio(f_rate, Some(base.checkins_per_s)))
        .push(
            "errors",
            Figure::Count(base.errors + flotilla.as_ref().map_or(0, |f| f.errors)),
        );
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn agent_versions() {
        assert_eq!(super::agent_version("Elastic Agent 9.1.0"), "9.1.0");
        assert_eq!(super::agent_version("Elastic Agent v8.15.1"), "8.15.1");
    }
}
