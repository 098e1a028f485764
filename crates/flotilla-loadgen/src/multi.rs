//! `--processes K`: the parent re-executes itself K times, each child with
//! a share of the agents (and of `--source-ips`), and aggregates their
//! JSON summaries. The parent makes the run's policy and token, so every
//! child's agents share them; children say `ready` once their agents wait
//! and take the measured step when the parent says `go` — so the parent
//! measures the server (hold), makes the change (fanout) or starts every
//! count at once (churn).

use std::process::Stdio;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::client::Operator;
use crate::summary::{Figure, Summary};
use crate::{scenarios, stats, sys, LoadgenArgs, Scenario};

/// Agent `share` of `total` for child `i` of `k`: the first ones get one
/// more when it does not divide.
pub fn share(total: usize, k: usize, i: usize) -> usize {
    total / k + usize::from(i < total % k)
}

struct Kid {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Kid {
    /// The next line that is `ready` or a JSON summary.
    async fn next(&mut self) -> anyhow::Result<String> {
        match self.lines.next_line().await? {
            Some(l) => Ok(l),
            None => bail!("a child process ended without a summary"),
        }
    }
}

fn passed_through(args: &LoadgenArgs) -> Vec<String> {
    let mut v = vec![
        "--metadata-bytes".into(),
        args.metadata_bytes.to_string(),
        "--duration".into(),
        format!("{}ms", args.duration.as_millis()),
        "--timeout".into(),
        format!("{}ms", args.timeout.as_millis()),
        "--user-agent".into(),
        args.user_agent.clone(),
        "--package".into(),
        args.package.clone(),
    ];
    if let Some(p) = args.poll_timeout {
        v.extend(["--poll-timeout".into(), format!("{}ms", p.as_millis())]);
    }
    v
}

pub async fn run(args: &LoadgenArgs) -> anyhow::Result<Summary> {
    if args.scenario == Scenario::Baseline {
        return Box::pin(baseline(args)).await;
    }
    if matches!(args.scenario, Scenario::Overload | Scenario::Storm) {
        bail!(
            "{} runs in one process (drop --processes)",
            args.scenario.name()
        );
    }
    let k = args.processes.min(args.agents).max(1);
    let urls = args.urls();
    if urls.len() > k {
        bail!("{} servers in --url but only {k} processes", urls.len());
    }
    // Child i talks to server i mod n, and waits for that server to hold
    // every agent of the children that share it.
    let url_of = |i: usize| &urls[i % urls.len()];
    let expect_on = |u: usize| -> usize {
        (0..k)
            .filter(|i| i % urls.len() == u)
            .map(|i| share(args.agents, k, i))
            .sum()
    };
    let op = Operator::new(&urls[0], args.api_key.clone())?;
    let (token, policy) = match &args.enrollment_token {
        Some(t) => (t.clone(), args.policy_id.clone()),
        None => {
            let name = format!(
                "loadgen-{}-{}-{}",
                args.scenario.name(),
                chrono::Utc::now().format("%Y%m%dT%H%M%S"),
                std::process::id()
            );
            let p = op.create_policy(&name).await?;
            (op.enrollment_token(&p).await?, Some(p))
        }
    };
    if args.scenario == Scenario::Fanout && policy.is_none() {
        bail!("fanout with --enrollment-token needs --policy-id");
    }
    let rss_before = match (args.scenario, args.server_pid) {
        (Scenario::Hold, Some(pid)) => Some(sys::rss_bytes(pid)?),
        _ => None,
    };
    let ips = args.ips();
    let exe = std::env::current_exe().context("cannot find this program")?;
    let mut kids = Vec::with_capacity(k);
    for i in 0..k {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(["loadgen", args.scenario.name()])
            .args(passed_through(args))
            .args(["--agents", &share(args.agents, k, i).to_string()])
            .args([
                "--concurrency",
                &args.concurrency.div_ceil(k).max(1).to_string(),
            ])
            .args(["--enrollment-token", &token])
            .args(["--url", url_of(i)])
            .args([
                "--expect-waiting",
                &if urls.len() > 1 {
                    expect_on(i % urls.len())
                } else {
                    args.agents
                }
                .to_string(),
            ])
            .args(["--json", "--quiet", "--child"]);
        if let Some(p) = &policy {
            cmd.args(["--policy-id", p]);
        }
        if !ips.is_empty() {
            let part: Vec<String> = if ips.len() >= k {
                ips[i * ips.len() / k..(i + 1) * ips.len() / k]
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            } else {
                ips.iter().map(ToString::to_string).collect()
            };
            cmd.args(["--source-ips", &part.join(",")]);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("cannot start a child process")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        kids.push(Kid {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        });
    }
    if !args.quiet {
        eprintln!(
            "loadgen: {k} processes, {} agents, {} server(s)",
            args.agents,
            urls.len()
        );
    }
    let synced = matches!(
        args.scenario,
        Scenario::Hold | Scenario::Fanout | Scenario::Churn
    );
    let mut held = (None, None);
    let mut api_ms = None;
    if synced {
        for kid in &mut kids {
            let l = kid.next().await?;
            if l != "ready" {
                bail!("a child process said {l:?} instead of ready");
            }
        }
        let mut go = "go".to_owned();
        if let (Scenario::Hold, Some(pid)) = (args.scenario, args.server_pid) {
            let rss = sys::rss_bytes(pid)?;
            let c0 = sys::cpu_time(pid)?;
            tokio::time::sleep(args.duration).await;
            let cpu = sys::cpu_time(pid)?.saturating_sub(c0);
            held = (Some(rss), Some(stats::millis(cpu)));
        }
        if args.scenario == Scenario::Fanout {
            let p = policy.as_deref().unwrap_or_default();
            go = format!("go {}", op.policy_revision(p).await?);
        }
        for kid in &mut kids {
            kid.stdin.write_all(format!("{go}\n").as_bytes()).await?;
            kid.stdin.flush().await?;
        }
        if args.scenario == Scenario::Fanout {
            let t0 = std::time::Instant::now();
            let name = format!(
                "loadgen-{}-{}",
                args.package,
                chrono::Utc::now().timestamp_millis()
            );
            op.add_integration(policy.as_deref().unwrap_or_default(), &args.package, &name)
                .await
                .context("cannot add the integration")?;
            api_ms = Some(stats::millis(t0.elapsed()));
        }
    }
    let mut summaries = Vec::with_capacity(k);
    for kid in &mut kids {
        let line = kid.next().await?;
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("a child said {line:?}"))?;
        summaries.push(v);
        let _ = kid.child.wait().await;
    }
    Ok(aggregate(args, k, &summaries, rss_before, held, api_ms))
}

/// `baseline` over several processes: `hold` then `churn` against
/// Flotilla (when `--server-pid` is given) and against the minimal server,
/// each a multi-process run of its own. Unlike one process, whose churn
/// reuses the held agents, each churn here enrols a fresh fleet (on
/// Flotilla the first one is still enrolled, no longer polling).
async fn baseline(args: &LoadgenArgs) -> anyhow::Result<Summary> {
    let phase = |scenario: Scenario, url: &str, pid: u32, token: Option<&str>| {
        let mut a = args.clone();
        a.scenario = scenario;
        a.url = url.to_owned();
        a.server_pid = Some(pid);
        if let Some(t) = token {
            a.enrollment_token = Some(t.to_owned());
            a.policy_id = None;
        }
        a
    };
    let side = |hold: &Summary, churn: &Summary| scenarios::Side {
        rss_per_agent: match hold.get("rss_per_agent") {
            Some(Figure::Bytes(b)) => Some(*b),
            _ => None,
        },
        idle_cpu_pct: match hold.get("idle_cpu_pct") {
            Some(Figure::Percent(p)) => Some(*p),
            _ => None,
        },
        checkins_per_s: match churn.get("checkins_per_s") {
            Some(Figure::Rate(r)) => *r,
            _ => 0.0,
        },
        errors: [hold, churn]
            .iter()
            .map(|s| match s.get("errors") {
                Some(Figure::Count(n)) => *n,
                _ => 0,
            })
            .sum(),
    };
    let flotilla = match args.server_pid {
        Some(pid) => {
            let hold = Box::pin(run(&phase(Scenario::Hold, &args.url, pid, None))).await?;
            let churn = Box::pin(run(&phase(Scenario::Churn, &args.url, pid, None))).await?;
            Some(side(&hold, &churn))
        }
        None => {
            eprintln!("note: without --server-pid only the baseline server is measured");
            None
        }
    };
    let mut server = scenarios::BaselineServer::start().await?;
    let token = Some(scenarios::BASELINE_TOKEN);
    let base = async {
        let hold = Box::pin(run(&phase(Scenario::Hold, &server.url, server.pid, token))).await?;
        let churn = Box::pin(run(&phase(Scenario::Churn, &server.url, server.pid, token))).await?;
        anyhow::Ok(side(&hold, &churn))
    }
    .await;
    server.stop().await;
    Ok(scenarios::compare(args.agents, flotilla, base?))
}

fn sum(summaries: &[Value], key: &str) -> u64 {
    summaries.iter().filter_map(|s| s[key].as_u64()).sum()
}

fn fsum(summaries: &[Value], key: &str) -> f64 {
    summaries.iter().filter_map(|s| s[key].as_f64()).sum()
}

fn fmax(summaries: &[Value], key: &str) -> Option<f64> {
    summaries
        .iter()
        .filter_map(|s| s[key].as_f64())
        .reduce(f64::max)
}

fn samples(summaries: &[Value], key: &str) -> Vec<f64> {
    summaries
        .iter()
        .filter_map(|s| s[key].as_array())
        .flatten()
        .filter_map(Value::as_f64)
        .collect()
}

/// One summary from the children's: counts and rates summed, percentiles
/// and shares over all their samples, the slowest child's times.
pub fn aggregate(
    args: &LoadgenArgs,
    k: usize,
    summaries: &[Value],
    rss_before: Option<u64>,
    held: (Option<u64>, Option<f64>),
    api_ms: Option<f64>,
) -> Summary {
    let mut s = Summary::new(args.scenario.name());
    let n = sum(summaries, "enrolled");
    s.push("agents", Figure::Count(args.agents as u64))
        .push("processes", Figure::Count(k as u64))
        .push("enrolled", Figure::Count(n));
    match args.scenario {
        Scenario::Enroll => {
            let lat = samples(summaries, "raw_latencies_ms");
            let elapsed = fmax(summaries, "elapsed_s").unwrap_or(0.0);
            s.push("concurrency", Figure::Count(args.concurrency as u64))
                .push("enroll_per_s", Figure::Rate(n as f64 / elapsed.max(1e-6)))
                .push("p50_ms", Figure::opt_millis(stats::percentile(&lat, 50.0)))
                .push("p99_ms", Figure::opt_millis(stats::percentile(&lat, 99.0)))
                .push(
                    "per_tenth_per_s",
                    Figure::Rates(stats::rates_per_tenth(&samples(summaries, "raw_done_at_s"))),
                )
                .push("elapsed_s", Figure::Seconds(elapsed));
        }
        Scenario::Hold => {
            let per_agent = match (rss_before, held.0) {
                (Some(a), Some(b)) if n > 0 => Figure::Bytes(b.saturating_sub(a) / n),
                _ => Figure::Missing,
            };
            s.push("acked_first", Figure::Count(sum(summaries, "acked_first")))
                .push(
                    "to_all_waiting_s",
                    Figure::opt_seconds(fmax(summaries, "to_all_waiting_s")),
                )
                .push(
                    "rss_before",
                    rss_before.map_or(Figure::Missing, Figure::Bytes),
                )
                .push("rss_held", held.0.map_or(Figure::Missing, Figure::Bytes))
                .push("rss_per_agent", per_agent)
                .push(
                    "idle_cpu_pct",
                    held.1.map_or(Figure::Missing, |ms| {
                        Figure::Percent(ms / 10.0 / args.duration.as_secs_f64())
                    }),
                )
                .push(
                    "idle_window_s",
                    Figure::Seconds(args.duration.as_secs_f64()),
                );
        }
        Scenario::Fanout => {
            let received = samples(summaries, "raw_received_s");
            let acked = samples(summaries, "raw_acked_s");
            let total = n as usize;
            s.push(
                "to_all_waiting_s",
                Figure::opt_seconds(fmax(summaries, "to_all_waiting_s")),
            )
            .push("received", Figure::Count(received.len() as u64))
            .push("acked", Figure::Count(acked.len() as u64))
            .push(
                "t50_s",
                Figure::opt_seconds(stats::time_to_share(&received, total, 0.5)),
            )
            .push(
                "t99_s",
                Figure::opt_seconds(stats::time_to_share(&received, total, 0.99)),
            )
            .push(
                "t100_s",
                Figure::opt_seconds(stats::time_to_share(&received, total, 1.0)),
            )
            .push(
                "all_acked_s",
                Figure::opt_seconds(stats::time_to_share(&acked, total, 1.0)),
            )
            .push("change_api_ms", Figure::opt_millis(api_ms))
            .push(
                "acks_refused",
                Figure::Count(sum(summaries, "acks_refused")),
            );
        }
        Scenario::Churn => {
            s.push("checkins", Figure::Count(sum(summaries, "checkins")))
                .push(
                    "checkins_per_s",
                    Figure::Rate(fsum(summaries, "checkins_per_s")),
                )
                .push("window_s", Figure::Seconds(args.duration.as_secs_f64()));
        }
        Scenario::Baseline | Scenario::BaselineServer | Scenario::Overload | Scenario::Storm => {}
    }
    s.push("busy", Figure::Count(sum(summaries, "busy")))
        .push("errors", Figure::Count(sum(summaries, "errors")));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadgenArgs,
    }

    #[test]
    fn shares_add_up() {
        assert_eq!(
            (0..3).map(|i| share(10, 3, i)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!((0..4).map(|i| share(2000, 4, i)).sum::<usize>(), 2000);
    }

    #[test]
    fn children_aggregate() {
        let args = Cli::parse_from(["x", "fanout", "--agents", "4", "--processes", "2"]).args;
        let kids = [
            serde_json::json!({"enrolled": 2, "raw_received_s": [0.1, 0.3], "raw_acked_s": [0.2, 0.4], "acks_refused": 1, "busy": 0, "errors": 0, "to_all_waiting_s": 1.0}),
            serde_json::json!({"enrolled": 2, "raw_received_s": [0.2, 0.5], "raw_acked_s": [0.3, 0.6], "acks_refused": 0, "busy": 2, "errors": 0, "to_all_waiting_s": 2.0}),
        ];
        let s = aggregate(&args, 2, &kids, None, (None, None), Some(5.0));
        assert_eq!(s.get("enrolled"), Some(&Figure::Count(4)));
        assert_eq!(s.get("received"), Some(&Figure::Count(4)));
        assert_eq!(s.get("t50_s"), Some(&Figure::Seconds(0.2)));
        assert_eq!(s.get("t100_s"), Some(&Figure::Seconds(0.5)));
        assert_eq!(s.get("all_acked_s"), Some(&Figure::Seconds(0.6)));
        assert_eq!(s.get("acks_refused"), Some(&Figure::Count(1)));
        assert_eq!(s.get("busy"), Some(&Figure::Count(2)));
        assert_eq!(s.get("to_all_waiting_s"), Some(&Figure::Seconds(2.0)));
    }
}
