//! `system/metrics`: the `cpu`, `memory`, `load`, `filesystem` and
//! `network` metricsets, read from /proc (and statvfs) at each stream's
//! `period`, one document per sample (per mount, per interface for
//! filesystem and network) in the stream's data stream.
//!
//! - Read from /proc directly, not through `sysinfo`: five small files on
//!   Linux, against a crate that compiles a whole system-inventory layer.
//!   Another OS gets a FAILED component saying so.
//! - A sample waits while the output is away (ticks missed meanwhile are
//!   skipped, not queued): metrics are not checkpointed; a crash loses the
//!   sample in flight at most.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{data_stream, doc_id, Context, Health, Resolved, Spawn};
use crate::output::Doc;

pub const METRICSETS: &[&str] = &["cpu", "memory", "load", "filesystem", "network"];

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub id: String,
    pub metricsets: Vec<String>,
    pub period: Duration,
    pub data_stream: Value,
    pub index: String,
}

pub fn parse(
    input: &Value,
    stream: &Value,
    namespace: &str,
    index: usize,
) -> Result<StreamConfig, String> {
    let (ds, name) = data_stream(stream, "metrics", namespace)?;
    let id = super::stream_id(input, stream, index);
    let metricsets: Vec<String> = match stream.get("metricsets") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => {
            // `system.cpu` → `cpu`, as the package's datasets are named.
            let dataset = ds["dataset"].as_str().unwrap_or("");
            vec![dataset
                .strip_prefix("system.")
                .unwrap_or(dataset)
                .to_owned()]
        }
    };
    for m in &metricsets {
        if !METRICSETS.contains(&m.as_str()) {
            return Err(format!(
                "metricset {m} is not implemented by this agent (it runs {})",
                METRICSETS.join(", ")
            ));
        }
    }
    let period = match stream.get("period") {
        None | Some(Value::Null) => Duration::from_secs(10),
        Some(Value::String(s)) => {
            humantime::parse_duration(s).map_err(|e| format!("period {s:?}: {e}"))?
        }
        Some(other) => return Err(format!("period {other} is not a duration")),
    };
    if period < Duration::from_millis(100) {
        return Err("period must be at least 100ms".into());
    }
    Ok(StreamConfig {
        id,
        metricsets,
        period,
        data_stream: ds,
        index: name,
    })
}

pub fn start(ctx: &Arc<Context>, input: &Value) -> Spawn {
    let ctx = ctx.clone();
    let input = input.clone();
    Box::new(move |r: &Resolved, health: &Health| {
        if !cfg!(target_os = "linux") {
            return Err("system/metrics reads /proc: only on Linux".into());
        }
        let streams = input
            .get("streams")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let configs = streams
            .iter()
            .enumerate()
            .map(|(i, s)| parse(&input, s, &r.namespace, i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(configs
            .into_iter()
            .map(|c| {
                tokio::spawn(sample_loop(
                    ctx.clone(),
                    c,
                    r.output.clone(),
                    health.clone(),
                ))
            })
            .collect())
    })
}

/// CPU jiffies from /proc/stat's `cpu` line: (busy fields by name, total).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuTimes {
    pub user: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub total: u64,
    pub cores: usize,
}

pub fn parse_stat(text: &str) -> Option<CpuTimes> {
    let mut cores = 0;
    let mut times = None;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("cpu") => {
                let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
                if v.len() < 5 {
                    return None;
                }
                // user nice system idle iowait irq softirq steal
                times = Some(CpuTimes {
                    user: v[0] + v[1],
                    system: v[2] + v.get(5).copied().unwrap_or(0) + v.get(6).copied().unwrap_or(0),
                    idle: v[3],
                    iowait: v[4],
                    total: v.iter().take(8).sum(),
                    cores: 0,
                });
            }
            Some(c) if c.starts_with("cpu") => cores += 1,
            _ => {}
        }
    }
    times.map(|t| CpuTimes {
        cores: cores.max(1),
        ..t
    })
}

fn pct(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (part as f64 / total as f64 * 10000.0).round() / 10000.0
    }
}

pub fn cpu_doc(prev: &CpuTimes, now: &CpuTimes) -> Value {
    let d = |a: u64, b: u64| a.saturating_sub(b);
    let total = d(now.total, prev.total);
    let idle = d(now.idle, prev.idle);
    let iowait = d(now.iowait, prev.iowait);
    // As Metricbeat: busy is neither idle nor waiting on I/O.
    let busy = total.saturating_sub(idle).saturating_sub(iowait);
    json!({"cpu": {
        "cores": now.cores,
        "total": {"pct": pct(busy, total) * now.cores as f64},
        "user": {"pct": pct(d(now.user, prev.user), total) * now.cores as f64},
        "system": {"pct": pct(d(now.system, prev.system), total) * now.cores as f64},
        "idle": {"pct": pct(idle, total) * now.cores as f64},
        "iowait": {"pct": pct(iowait, total) * now.cores as f64},
    }})
}

pub fn memory_doc(meminfo: &str) -> Option<Value> {
    let get = |k: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(k)?.strip_prefix(':')?;
            rest.split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
                .map(|kb| kb * 1024)
        })
    };
    let total = get("MemTotal")?;
    let free = get("MemFree")?;
    let available = get("MemAvailable").unwrap_or(free);
    let used = total.saturating_sub(free);
    let actual_used = total.saturating_sub(available);
    Some(json!({"memory": {
        "total": total, "free": free,
        "used": {"bytes": used, "pct": pct(used, total)},
        "actual": {"free": available, "used": {"bytes": actual_used, "pct": pct(actual_used, total)}},
        "swap": {"total": get("SwapTotal").unwrap_or(0), "free": get("SwapFree").unwrap_or(0)},
    }}))
}

pub fn load_doc(loadavg: &str, cores: usize) -> Option<Value> {
    let v: Vec<f64> = loadavg
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 3 {
        return None;
    }
    let c = cores.max(1) as f64;
    Some(
        json!({"load": {"1": v[0], "5": v[1], "15": v[2], "cores": cores,
        "norm": {"1": v[0] / c, "5": v[1] / c, "15": v[2] / c}}}),
    )
}

pub fn network_docs(netdev: &str) -> Vec<Value> {
    netdev
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() < 16 {
                return None;
            }
            Some(json!({"network": {"name": name.trim(),
                "in": {"bytes": v[0], "packets": v[1], "errors": v[2], "dropped": v[3]},
                "out": {"bytes": v[8], "packets": v[9], "errors": v[10], "dropped": v[11]}}}))
        })
        .collect()
}

/// Mounts of real filesystems: (device, mount point, type).
pub fn mounts(text: &str) -> Vec<(String, String, String)> {
    const VIRTUAL: &[&str] = &[
        "proc",
        "sysfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "securityfs",
        "debugfs",
        "tracefs",
        "mqueue",
        "pstore",
        "bpf",
        "autofs",
        "configfs",
        "fusectl",
        "hugetlbfs",
        "binfmt_misc",
        "nsfs",
        "rpc_pipefs",
        "devtmpfs",
        "selinuxfs",
        "efivarfs",
    ];
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && !VIRTUAL.contains(&f[2]))
                .then(|| (f[0].to_owned(), f[1].replace("\\040", " "), f[2].to_owned()))
        })
        .collect()
}

#[cfg(unix)]
fn statvfs(path: &str) -> Option<(u64, u64, u64)> {
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized,
    // zeroed out-parameter that statvfs fills; nothing is kept past the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    let bs = st.f_frsize as u64;
    Some((
        st.f_blocks as u64 * bs,
        st.f_bfree as u64 * bs,
        st.f_bavail as u64 * bs,
    ))
}

#[cfg(not(unix))]
fn statvfs(_: &str) -> Option<(u64, u64, u64)> {
    None
}

fn filesystem_docs() -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string("/proc/mounts").map_err(|e| format!("/proc/mounts: {e}"))?;
    let mut seen = std::collections::BTreeSet::new();
    Ok(mounts(&text)
        .into_iter()
        .filter(|(_, mp, _)| seen.insert(mp.clone()))
        .filter_map(|(dev, mp, ty)| {
            let (total, free, avail) = statvfs(&mp)?;
            if total == 0 {
                return None;
            }
            let used = total.saturating_sub(free);
            Some(
                json!({"filesystem": {"device_name": dev, "mount_point": mp, "type": ty,
                "total": total, "free": free, "available": avail,
                "used": {"bytes": used, "pct": pct(used, total)}}}),
            )
        })
        .collect())
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

/// One sample of a metricset: the `system.*` part of each document.
fn sample(set: &str, prev_cpu: &mut Option<CpuTimes>) -> Result<Vec<Value>, String> {
    match set {
        "cpu" => {
            let now = parse_stat(&read("/proc/stat")?).ok_or("/proc/stat is unreadable")?;
            let prev = prev_cpu.replace(now.clone());
            // The first sample has no interval: nothing to report yet.
            Ok(prev.map(|p| vec![cpu_doc(&p, &now)]).unwrap_or_default())
        }
        "memory" => Ok(vec![
            memory_doc(&read("/proc/meminfo")?).ok_or("/proc/meminfo is unreadable")?
        ]),
        "load" => {
            let cores = parse_stat(&read("/proc/stat")?).map_or(1, |c| c.cores);
            Ok(vec![
                load_doc(&read("/proc/loadavg")?, cores).ok_or("/proc/loadavg is unreadable")?
            ])
        }
        "filesystem" => filesystem_docs(),
        "network" => Ok(network_docs(&read("/proc/net/dev")?)),
        other => Err(format!("metricset {other} is not implemented")),
    }
}

async fn sample_loop(
    ctx: Arc<Context>,
    cfg: StreamConfig,
    output: Arc<crate::output::Output>,
    health: Health,
) {
    let mut tick = tokio::time::interval(cfg.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut prev_cpu = None;
    loop {
        tick.tick().await;
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut docs = Vec::new();
        let mut trouble = None;
        for set in &cfg.metricsets {
            match sample(set, &mut prev_cpu) {
                Ok(parts) => {
                    for (n, part) in parts.into_iter().enumerate() {
                        let mut doc = Map::new();
                        doc.insert("@timestamp".into(), json!(ts));
                        doc.insert("data_stream".into(), cfg.data_stream.clone());
                        doc.insert(
                            "event".into(),
                            json!({"dataset": cfg.data_stream["dataset"], "module": "system"}),
                        );
                        doc.insert(
                            "metricset".into(),
                            json!({"name": set, "period": cfg.period.as_millis() as u64}),
                        );
                        doc.insert("host".into(), json!({"name": ctx.host_name}));
                        doc.insert(
                            "agent".into(),
                            json!({"id": ctx.agent_id, "type": "flotilla"}),
                        );
                        doc.insert("system".into(), part);
                        docs.push(Doc {
                            index: cfg.index.clone(),
                            id: doc_id(&[&cfg.id, set, &ts, &n.to_string()]),
                            source: Value::Object(doc),
                        });
                    }
                }
                Err(e) => trouble = Some(format!("metricset {set}: {e}")),
            }
        }
        let shipped = output.ship(docs, &health).await;
        health.add_shipped(shipped.accepted, shipped.rejected);
        match trouble {
            Some(t) => health.degraded(t),
            None if shipped.rejected == 0 => health.healthy(format!(
                "sampling {} every {}",
                cfg.metricsets.join(", "),
                humantime::format_duration(cfg.period)
            )),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_become_documents() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0\ncpu1 50 0 25 400 25 0 0 0\nintr 1\n";
        let a = parse_stat(stat).unwrap();
        assert_eq!((a.total, a.cores), (1000, 2));
        let b = parse_stat("cpu  200 0 100 1600 100 0 0 0\ncpu0 1\ncpu1 1\n").unwrap();
        let d = cpu_doc(&a, &b);
        assert_eq!(
            d["cpu"]["total"]["pct"], 0.3,
            "busy 150 of 1000 jiffies on 2 cores: {d}"
        );
        let m = memory_doc("MemTotal: 1000 kB\nMemFree: 250 kB\nMemAvailable: 500 kB\n").unwrap();
        assert_eq!(m["memory"]["total"], 1024000);
        assert_eq!(m["memory"]["actual"]["used"]["pct"], 0.5);
        let l = load_doc("0.50 1.00 2.00 1/100 42\n", 2).unwrap();
        assert_eq!(l["load"]["norm"]["5"], 0.5);
        let n = network_docs(
            "Inter-|   Receive\n face |bytes\n  lo: 10 2 0 0 0 0 0 0 20 4 0 0 0 0 0 0\n",
        );
        assert_eq!(n[0]["network"]["name"], "lo");
        assert_eq!(n[0]["network"]["out"]["bytes"], 20);
        let mp = mounts("/dev/sda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n");
        assert_eq!(mp, vec![("/dev/sda1".into(), "/".into(), "ext4".into())]);
    }

    #[test]
    fn streams_are_checked() {
        let ok = parse(
            &json!({}),
            &json!({"data_stream": {"dataset": "system.cpu"}, "period": "2s"}),
            "prod",
            0,
        )
        .unwrap();
        assert_eq!(
            (ok.metricsets.clone(), ok.period, ok.index.as_str()),
            (
                vec!["cpu".to_owned()],
                Duration::from_secs(2),
                "metrics-system.cpu-prod"
            )
        );
        assert!(parse(
            &json!({}),
            &json!({"data_stream": {"dataset": "system.process"}}),
            "p",
            0
        )
        .unwrap_err()
        .contains("process is not implemented"));
        assert!(parse(
            &json!({}),
            &json!({"data_stream": {"dataset": "system.cpu"}, "period": "soon"}),
            "p",
            0
        )
        .is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_host_is_sampled() {
        let mut prev = None;
        for set in METRICSETS {
            sample(set, &mut prev).unwrap();
        }
        assert_eq!(sample("cpu", &mut prev).unwrap().len(), 1);
        assert!(!sample("memory", &mut prev).unwrap().is_empty());
    }
}
