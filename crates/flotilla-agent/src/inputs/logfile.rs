//! `logfile` / `filestream`: tail the files matching a stream's `paths`.
//!
//! - A file is known by its fingerprint — the SHA-256 of its first line —
//!   not by path or inode: a renamed file carries on from its offset, a
//!   copy-truncated one (now empty, then a new first line) starts afresh, a
//!   file shorter than its offset was truncated and is read from 0.
//! - A file whose first line is not complete yet is not read (nothing to
//!   ship: only complete lines are events).
//! - Lines are read from the checkpoint's offset in batches (at most
//!   [`MAX_BATCH_EVENTS`] lines or [`MAX_BATCH_BYTES`]); the checkpoint moves
//!   only once the output has accepted the batch, and is written atomically.
//!   A crash re-sends at most the last batch, whose ids the output already
//!   holds (409: accepted, not duplicated).
//! - Each event's `_id` is derived from (stream id, fingerprint, offset).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{data_stream, doc_id, Context, Health, Resolved, Spawn};
use crate::checkpoint::{CheckpointFile, FileState};
use crate::output::{Doc, Output};

pub const MAX_BATCH_EVENTS: usize = 1000;
pub const MAX_BATCH_BYTES: u64 = 1 << 20;
/// The longest first line hashed (a longer one is hashed on its start).
const FINGERPRINT_BYTES: usize = 1024;
const SCAN_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq)]
pub enum Processor {
    /// `target` empty: at the root; default `fields`, as Beats does.
    AddFields {
        target: String,
        fields: Value,
    },
    AddTags {
        tags: Vec<String>,
    },
    DropFields {
        fields: Vec<String>,
    },
}

/// One stream, resolved.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub id: String,
    pub input_type: String,
    pub paths: Vec<String>,
    pub exclude: Vec<regex::Regex>,
    pub tags: Vec<String>,
    pub processors: Vec<Processor>,
    pub data_stream: Value,
    pub index: String,
}

fn strings(v: Option<&Value>, what: &str) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{what} must be strings"))
            })
            .collect(),
        Some(_) => Err(format!("{what} must be a list of strings")),
    }
}

fn processors(v: Option<&Value>) -> Result<Vec<Processor>, String> {
    let list = match v {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("processors must be a list".into()),
    };
    list.iter()
        .map(|p| {
            let (name, body) = p
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.iter().next())
                .ok_or("a processor is a map with one key")?;
            match name.as_str() {
                "add_fields" => Ok(Processor::AddFields {
                    target: body
                        .get("target")
                        .and_then(Value::as_str)
                        .unwrap_or("fields")
                        .to_owned(),
                    fields: body
                        .get("fields")
                        .filter(|f| f.is_object())
                        .cloned()
                        .ok_or("add_fields needs fields (a map)")?,
                }),
                "add_tags" => Ok(Processor::AddTags {
                    tags: strings(body.get("tags"), "add_tags.tags")?,
                }),
                "drop_fields" => Ok(Processor::DropFields {
                    fields: strings(body.get("fields"), "drop_fields.fields")?,
                }),
                other => Err(format!("processor {other} is not supported by this agent")),
            }
        })
        .collect()
}

pub fn parse(
    input: &Value,
    stream: &Value,
    ty: &str,
    namespace: &str,
    index: usize,
) -> Result<StreamConfig, String> {
    let (ds, name) = data_stream(stream, "logs", namespace)?;
    let id = super::stream_id(input, stream, index);
    let paths = strings(stream.get("paths"), "paths")?;
    if paths.is_empty() {
        return Err(format!("stream {id} has no paths"));
    }
    for p in &paths {
        glob::Pattern::new(p).map_err(|e| format!("path {p:?} is not a glob: {e}"))?;
    }
    let exclude = strings(stream.get("exclude_files"), "exclude_files")?
        .iter()
        .map(|r| regex::Regex::new(r).map_err(|e| format!("exclude_files {r:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let mut procs = processors(input.get("processors"))?;
    procs.extend(processors(stream.get("processors"))?);
    Ok(StreamConfig {
        id,
        input_type: ty.to_owned(),
        paths,
        exclude,
        tags: strings(stream.get("tags"), "tags")?,
        processors: procs,
        data_stream: ds,
        index: name,
    })
}

pub fn start(ctx: &Arc<Context>, input: &Value, ty: &str) -> Spawn {
    let ctx = ctx.clone();
    let input = input.clone();
    let ty = ty.to_owned();
    Box::new(move |r: &Resolved, health: &Health| {
        let streams = input
            .get("streams")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let configs = streams
            .iter()
            .enumerate()
            .map(|(i, s)| parse(&input, s, &ty, &r.namespace, i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(configs
            .into_iter()
            .map(|c| tokio::spawn(harvest(ctx.clone(), c, r.output.clone(), health.clone())))
            .collect())
    })
}

/// SHA-256 of the first line (with its newline), or of its first
/// [`FINGERPRINT_BYTES`]; `None` while the first line is incomplete.
pub fn fingerprint(file: &mut impl Read) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(256);
    file.take(FINGERPRINT_BYTES as u64).read_to_end(&mut head)?;
    let line = match head.iter().position(|&b| b == b'\n') {
        Some(n) => &head[..=n],
        None if head.len() == FINGERPRINT_BYTES => &head[..],
        None => return Ok(None),
    };
    Ok(Some(hex::encode(Sha256::digest(line))))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub fingerprint: String,
    pub path: String,
    pub len: u64,
}

/// The files the stream reads now, one per fingerprint.
pub fn scan(cfg: &StreamConfig, known: &BTreeMap<String, FileState>) -> Vec<Found> {
    let mut by_fp: BTreeMap<String, Found> = BTreeMap::new();
    for pattern in &cfg.paths {
        let Ok(paths) = glob::glob(pattern) else {
            continue;
        };
        for path in paths.flatten() {
            let shown = path.to_string_lossy().into_owned();
            if cfg.exclude.iter().any(|r| r.is_match(&shown)) {
                continue;
            }
            let Ok(mut f) = std::fs::File::open(&path) else {
                continue;
            };
            let Ok(meta) = f.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let Ok(Some(fp)) = fingerprint(&mut f) else {
                continue;
            };
            let found = Found {
                fingerprint: fp.clone(),
                path: shown,
                len: meta.len(),
            };
            // Two paths, one fingerprint (a copy): keep the one it was read
            // at, else the longer.
            match by_fp.get(&fp) {
                Some(prev)
                    if known.get(&fp).is_some_and(|k| k.path == prev.path)
                        || prev.len >= found.len => {}
                _ => {
                    by_fp.insert(fp, found);
                }
            }
        }
    }
    by_fp.into_values().collect()
}

/// Lines read: (offset of each line, line), and where the next read starts.
pub type Lines = (Vec<(u64, String)>, u64);

/// Complete lines from `offset`: (offset of each line, line), and where
/// the next read starts. `None` when the file no longer has `fingerprint`.
pub fn read_lines(
    path: &str,
    fingerprint_want: &str,
    offset: u64,
) -> std::io::Result<Option<Lines>> {
    let mut f = std::fs::File::open(path)?;
    if fingerprint(&mut f)?.as_deref() != Some(fingerprint_want) {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut r = BufReader::with_capacity(64 * 1024, f.take(MAX_BATCH_BYTES));
    let mut lines = Vec::new();
    let mut at = offset;
    let mut buf = Vec::new();
    while lines.len() < MAX_BATCH_EVENTS {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            // An incomplete last line waits for its newline, unless it
            // fills a whole batch on its own (then it is cut there).
            if lines.is_empty() && n as u64 >= MAX_BATCH_BYTES {
                lines.push((at, String::from_utf8_lossy(&buf).into_owned()));
                at += n as u64;
            }
            break;
        }
        let mut line = &buf[..buf.len() - 1];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        lines.push((at, String::from_utf8_lossy(line).into_owned()));
        at += n as u64;
    }
    Ok(Some((lines, at)))
}

fn set_path(root: &mut Map<String, Value>, dotted: &str, v: Value) {
    let mut parts = dotted.split('.').peekable();
    let mut cur = root;
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(p.to_owned(), v);
            return;
        }
        let next = cur.entry(p.to_owned()).or_insert_with(|| json!({}));
        if !next.is_object() {
            *next = json!({});
        }
        let Some(obj) = next.as_object_mut() else {
            return;
        };
        cur = obj;
    }
}

fn merge(into: &mut Map<String, Value>, from: &Value) {
    if let Some(o) = from.as_object() {
        for (k, v) in o {
            match (into.get_mut(k), v) {
                (Some(Value::Object(a)), Value::Object(_)) => merge(a, v),
                _ => {
                    into.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

pub fn apply_processors(doc: &mut Map<String, Value>, procs: &[Processor]) {
    for p in procs {
        match p {
            Processor::AddFields { target, fields } => {
                if target.is_empty() {
                    merge(doc, fields);
                } else {
                    let mut sub = Map::new();
                    merge(&mut sub, fields);
                    let slot = doc.entry(target.clone()).or_insert_with(|| json!({}));
                    if let Value::Object(o) = slot {
                        merge(o, &Value::Object(sub));
                    } else {
                        *slot = Value::Object(sub);
                    }
                }
            }
            Processor::AddTags { tags } => {
                let slot = doc.entry("tags").or_insert_with(|| json!([]));
                if let Value::Array(a) = slot {
                    a.extend(tags.iter().map(|t| json!(t)));
                }
            }
            Processor::DropFields { fields } => {
                for f in fields {
                    doc.remove(f);
                }
            }
        }
    }
}

/// The event for one line.
pub fn event(
    ctx: &Context,
    cfg: &StreamConfig,
    path: &str,
    offset: u64,
    line: String,
) -> Map<String, Value> {
    let mut doc = Map::new();
    doc.insert(
        "@timestamp".into(),
        json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    );
    doc.insert("message".into(), json!(line));
    doc.insert("data_stream".into(), cfg.data_stream.clone());
    doc.insert(
        "event".into(),
        json!({"dataset": cfg.data_stream["dataset"]}),
    );
    set_path(&mut doc, "log.file.path", json!(path));
    set_path(&mut doc, "log.offset", json!(offset));
    doc.insert("host".into(), json!({"name": ctx.host_name}));
    doc.insert(
        "agent".into(),
        json!({"id": ctx.agent_id, "type": "flotilla"}),
    );
    doc.insert("input".into(), json!({"type": cfg.input_type}));
    if !cfg.tags.is_empty() {
        doc.insert("tags".into(), json!(cfg.tags));
    }
    apply_processors(&mut doc, &cfg.processors);
    doc
}

fn crash_after_ship() -> bool {
    std::env::var("FLOTILLA_AGENT_TEST_FAULT").as_deref() == Ok("crash-after-ship")
}

async fn harvest(ctx: Arc<Context>, cfg: StreamConfig, output: Arc<Output>, health: Health) {
    let file = CheckpointFile::new(&ctx.state_dir, &cfg.id);
    let (mut cp, mut warning) = file.load();
    if let Some(w) = &warning {
        tracing::error!(stream = %cfg.id, "{w}");
    }
    health.set_shipped(cp.shipped);
    let cfg = Arc::new(cfg);
    loop {
        let known = cp.files.clone();
        let scanned = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || scan(&cfg, &known)).await
        };
        let found = scanned.unwrap_or_default();
        let now = chrono::Utc::now().timestamp();
        // A lost checkpoint is reported once: what it re-reads is
        // refused by the output as already there (409), never stored twice.
        let mut trouble: Option<String> = warning.take();
        for f in &found {
            let st = cp.files.entry(f.fingerprint.clone()).or_default();
            if f.len < st.offset {
                tracing::info!(path = %f.path, "file truncated; reading it from the start");
                st.offset = 0;
            }
            if st.path != f.path && !st.path.is_empty() {
                tracing::info!(from = %st.path, to = %f.path, "file renamed; carrying on from its offset");
            }
            st.path = f.path.clone();
            st.last_seen = now;
        }
        health.set_pending(
            found
                .iter()
                .map(|f| {
                    f.len
                        .saturating_sub(cp.files.get(&f.fingerprint).map_or(0, |s| s.offset))
                })
                .sum(),
        );
        for f in &found {
            loop {
                let offset = cp.files.get(&f.fingerprint).map_or(0, |s| s.offset);
                let (path, fp) = (f.path.clone(), f.fingerprint.clone());
                let read =
                    tokio::task::spawn_blocking(move || read_lines(&path, &fp, offset)).await;
                let (lines, next) = match read {
                    Ok(Ok(Some((lines, next)))) if !lines.is_empty() => (lines, next),
                    Ok(Err(e)) => {
                        trouble = Some(format!("cannot read {}: {e}", f.path));
                        break;
                    }
                    _ => break,
                };
                let docs: Vec<Doc> = lines
                    .into_iter()
                    .map(|(off, line)| Doc {
                        index: cfg.index.clone(),
                        id: doc_id(&[&cfg.id, &f.fingerprint, &off.to_string()]),
                        source: Value::Object(event(&ctx, &cfg, &f.path, off, line)),
                    })
                    .collect();
                let shipped = output.ship(docs, &health).await;
                if crash_after_ship() {
                    // A test-only fault: die between the output accepting a
                    // batch and the checkpoint recording it.
                    tracing::error!("FLOTILLA_AGENT_TEST_FAULT=crash-after-ship: exiting before the checkpoint (a test switch)");
                    std::process::exit(70);
                }
                if let Some(st) = cp.files.get_mut(&f.fingerprint) {
                    st.offset = next;
                }
                cp.shipped += shipped.accepted;
                health.add_shipped(shipped.accepted, shipped.rejected);
                if let Err(e) = file.save(&cp) {
                    trouble = Some(format!("cannot write the checkpoint: {e:#}"));
                    tracing::error!(stream = %cfg.id, error = %e, "cannot write the checkpoint");
                }
                let pending: u64 = found
                    .iter()
                    .map(|g| {
                        g.len
                            .saturating_sub(cp.files.get(&g.fingerprint).map_or(0, |s| s.offset))
                    })
                    .sum();
                health.set_pending(pending);
            }
        }
        cp.forget_old(now);
        match trouble {
            Some(t) => health.degraded(t),
            None => health.healthy(format!("tailing {} file(s)", found.len())),
        }
        tokio::time::sleep(SCAN_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn cfg(dir: &std::path::Path) -> StreamConfig {
        let input = json!({"id": "i", "processors": [{"add_fields": {"target": "", "fields": {"team": "a"}}}]});
        let stream = json!({"id": "s", "data_stream": {"dataset": "app"}, "paths": [dir.join("*.log")],
            "exclude_files": ["\\.gz$", "skip"], "tags": ["t1"],
            "processors": [{"add_fields": {"fields": {"env": "x"}}}]});
        parse(&input, &stream, "logfile", "prod", 0).unwrap()
    }

    fn append(path: &std::path::Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_fingerprint_needs_a_complete_first_line() {
        assert_eq!(fingerprint(&mut &b"partial"[..]).unwrap(), None);
        let a = fingerprint(&mut &b"one\ntwo\n"[..]).unwrap().unwrap();
        assert_eq!(fingerprint(&mut &b"one\nother\n"[..]).unwrap().unwrap(), a);
        assert_ne!(fingerprint(&mut &b"uno\n"[..]).unwrap().unwrap(), a);
        let long = vec![b'x'; 5000];
        assert!(
            fingerprint(&mut &long[..]).unwrap().is_some(),
            "a long first line is hashed on its start"
        );
    }

    #[test]
    fn rename_truncation_and_copy_truncate_are_followed_by_fingerprint() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path());
        let log = tmp.path().join("app.log");
        append(&log, "first\nsecond\npart");
        let mut known = BTreeMap::new();
        let found = scan(&c, &known);
        assert_eq!(found.len(), 1);
        let fp = found[0].fingerprint.clone();
        let (lines, next) = read_lines(&found[0].path, &fp, 0).unwrap().unwrap();
        assert_eq!(
            lines,
            vec![(0, "first".to_owned()), (6, "second".to_owned())],
            "the partial line waits"
        );
        assert_eq!(next, 13);
        known.insert(
            fp.clone(),
            FileState {
                path: found[0].path.clone(),
                offset: next,
                last_seen: 0,
            },
        );

        // Renamed (still matching): the same fingerprint, the same offset.
        let rotated = tmp.path().join("app.1.log");
        std::fs::rename(&log, &rotated).unwrap();
        append(&rotated, "ial\n");
        let found = scan(&c, &known);
        assert_eq!(found[0].fingerprint, fp);
        assert_eq!(found[0].path, rotated.to_string_lossy());
        let (lines, _) = read_lines(&found[0].path, &fp, next).unwrap().unwrap();
        assert_eq!(lines, vec![(13, "partial".to_owned())]);

        // A new file at the old path: another fingerprint, read from 0.
        append(&log, "brand new\n");
        let found = scan(&c, &known);
        assert_eq!(found.len(), 2);
        assert!(found
            .iter()
            .any(|f| f.fingerprint != fp && f.path == log.to_string_lossy()));

        // Copy-truncate: the copy keeps the fingerprint, the truncated file
        // has none until its first line is complete, then a new one.
        std::fs::remove_file(&rotated).unwrap();
        std::fs::remove_file(&log).unwrap();
        append(&log, "first\nsecond\n");
        std::fs::copy(&log, tmp.path().join("app.2.log")).unwrap();
        std::fs::write(&log, b"").unwrap();
        let found = scan(&c, &known);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].fingerprint, fp);
        assert!(found[0].path.ends_with("app.2.log"));
        append(&log, "after rotation\n");
        let found = scan(&c, &known);
        assert_eq!(found.len(), 2);

        // Truncation in place (same first line, shorter than the offset):
        // read_lines still matches; the harvester restarts it at 0 (len < offset).
        let shorter = found.iter().find(|f| f.fingerprint == fp).unwrap();
        assert!(shorter.len <= known[&fp].offset);
        // A file whose fingerprint changed under the reader is not read.
        assert_eq!(read_lines(&log.to_string_lossy(), &fp, 0).unwrap(), None);

        // exclude_files are regexes on the path.
        append(&tmp.path().join("skip-me.log"), "x\n");
        assert!(scan(&c, &known).iter().all(|f| !f.path.contains("skip")));
    }

    #[test]
    fn events_carry_the_ecs_fields_tags_and_added_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path());
        let ctx = Context {
            state_dir: tmp.path().into(),
            agent_id: "ag".into(),
            host_name: "web-1".into(),
        };
        let e = Value::Object(event(&ctx, &c, "/x/app.log", 7, "hello".into()));
        assert_eq!(e["message"], "hello");
        assert_eq!(
            e["data_stream"],
            json!({"type": "logs", "dataset": "app", "namespace": "prod"})
        );
        assert_eq!(e["log"]["file"]["path"], "/x/app.log");
        assert_eq!(e["log"]["offset"], 7);
        assert_eq!(e["host"]["name"], "web-1");
        assert_eq!(e["agent"]["id"], "ag");
        assert_eq!(e["tags"], json!(["t1"]));
        assert_eq!(e["team"], "a", "target \"\": at the root");
        assert_eq!(e["fields"]["env"], "x", "no target: under fields");
        assert!(e["@timestamp"].is_string());
        assert_eq!(c.index, "logs-app-prod");
        let bad = parse(
            &json!({}),
            &json!({"data_stream": {"dataset": "a"}, "paths": ["/x"], "processors": [{"script": {}}]}),
            "logfile",
            "p",
            0,
        );
        assert!(bad.unwrap_err().contains("script is not supported"));
    }
}
