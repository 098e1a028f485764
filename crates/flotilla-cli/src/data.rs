//! `flotilla data`: the embedded output's data streams.

use std::time::Duration;

use anyhow::{anyhow, Result};
use clap::Subcommand;

use crate::render::{view, Columns, View};
use crate::{at, client, ClientOpts, PageArgs};

const STREAMS: &str = "/api/fleet/data_streams";

#[derive(Debug, Subcommand)]
pub enum DataCmd {
    /// Data streams with their document counts, sizes and last event.
    List,
    /// Search one data stream, newest first.
    Search {
        stream: String,
        /// Only events this recent (`15m`, `1h`, `7d`).
        #[arg(long)]
        since: Option<humantime::Duration>,
        /// Text anywhere in the event (case-insensitive).
        #[arg(long, short = 'q')]
        query: Option<String>,
        /// `field=value` (dotted fields are nested); repeatable.
        #[arg(long = "match", value_name = "FIELD=VALUE")]
        matches: Vec<String>,
        /// Oldest first.
        #[arg(long)]
        asc: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Follow a data stream: print new events as JSON lines until stopped.
    Tail {
        stream: String,
        /// How often to look for new events.
        #[arg(long, default_value = "1s")]
        interval: humantime::Duration,
    },
}

const STREAM_COLS: Columns = &[
    ("NAME", "name"),
    ("DOCUMENTS", "documents"),
    ("BYTES", "size_bytes"),
    ("LAST EVENT", "last_event"),
];
const DOC_COLS: Columns = &[
    ("@TIMESTAMP", "@timestamp"),
    ("ID", "_id"),
    ("MESSAGE", "_source.message"),
];

fn since(d: Option<humantime::Duration>) -> Result<Option<String>> {
    d.map(|d| {
        let d = chrono::Duration::from_std(*d).map_err(|_| anyhow!("--since is too long"))?;
        Ok((chrono::Utc::now() - d).to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    })
    .transpose()
}

fn check_matches(matches: &[String]) -> Result<String> {
    for m in matches {
        if !m.contains('=') || m.starts_with('=') || m.contains(',') {
            return Err(anyhow!(
                "--match must be FIELD=VALUE without commas (got '{m}')"
            ));
        }
    }
    Ok(matches.join(","))
}

pub(crate) async fn run(opts: &ClientOpts, cmd: DataCmd) -> Result<View> {
    let c = client(opts)?;
    Ok(match cmd {
        DataCmd::List => view(c.get(STREAMS, &[]).await?, STREAM_COLS),
        DataCmd::Search {
            stream,
            since: s,
            query,
            matches,
            asc,
            page,
        } => {
            let mut q = page.query();
            if let Some(from) = since(s)? {
                q.push(("from", from));
            }
            if let Some(text) = query {
                q.push(("q", text));
            }
            let m = check_matches(&matches)?;
            if !m.is_empty() {
                q.push(("match", m));
            }
            if asc {
                q.push(("sort", "asc".into()));
            }
            view(
                c.get(&format!("{}/_search", at(STREAMS, &stream)), &q)
                    .await?,
                DOC_COLS,
            )
        }
        DataCmd::Tail { stream, interval } => {
            let path = format!("{}/_search", at(STREAMS, &stream));
            // Start from now; then everything after the last event printed.
            let mut from = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let mut printed: std::collections::HashSet<String> = Default::default();
            loop {
                // Every page from the last timestamp printed (inclusive:
                // events of that millisecond arriving late are not missed).
                let mut page_no = 1;
                loop {
                    let q = vec![
                        ("from", from.clone()),
                        ("sort", "asc".to_owned()),
                        ("perPage", "1000".to_owned()),
                        ("page", page_no.to_string()),
                    ];
                    let page = c.get(&path, &q).await?;
                    let items = page["items"].as_array().cloned().unwrap_or_default();
                    for doc in &items {
                        let id = doc["_id"].as_str().unwrap_or_default().to_owned();
                        if printed.contains(&id) {
                            continue;
                        }
                        println!("{}", serde_json::to_string(doc).unwrap_or_default());
                        if let Some(ts) = doc["@timestamp"].as_str() {
                            if ts != from {
                                printed.clear();
                                from = ts.to_owned();
                                page_no = 0;
                            }
                        }
                        printed.insert(id);
                    }
                    if items.len() < 1000 {
                        break;
                    }
                    page_no += 1;
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
                tokio::time::sleep(Duration::from(interval)).await;
            }
        }
    })
}
