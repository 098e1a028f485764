//! The embedded output's ingest: Elasticsearch's `_bulk`, each item
//! authorised against the writing key's role descriptors, the accepted ones
//! stored in one transaction.
//!
//! Items fail alone, as in Elasticsearch: a malformed line, a name that is
//! not a data stream, an `index` op on a data stream, a privilege the key
//! lacks — each answers for its own item; the rest of the request is kept.

use std::collections::BTreeSet;
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use flotilla_domain::permissions::Permissions;
use flotilla_store::{NewDocument, StoreError};

use crate::secrets::random_alphanumeric;
use crate::{ServiceError, Services};

/// Data stream types the embedded output stores.
const STREAM_TYPES: &[&str] = &["logs", "metrics", "traces", "synthetics", "profiling"];

/// Privileges that let a key add a document to a data stream.
pub const WRITE_PRIVILEGES: &[&str] = &["create_doc", "create", "index", "write", "all"];
/// Privileges that let a key create a data stream by writing to it.
pub const AUTO_CONFIGURE_PRIVILEGES: &[&str] = &["auto_configure", "create_index", "manage", "all"];

/// An item's outcome, rendered as Elasticsearch renders it.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemOutcome {
    pub op: String,
    pub index: Option<String>,
    pub id: Option<String>,
    pub status: u16,
    /// `None` for a stored document.
    pub error: Option<(String, String)>,
}

impl ItemOutcome {
    fn failed(
        op: &str,
        index: Option<&str>,
        id: Option<&str>,
        status: u16,
        kind: &str,
        reason: String,
    ) -> Self {
        ItemOutcome {
            op: op.to_owned(),
            index: index.map(str::to_owned),
            id: id.map(str::to_owned),
            status,
            error: Some((kind.to_owned(), reason)),
        }
    }

    pub fn to_json(&self, seq_no: usize) -> Value {
        let mut body = Map::new();
        if let Some(i) = &self.index {
            body.insert("_index".into(), json!(i));
        }
        if let Some(i) = &self.id {
            body.insert("_id".into(), json!(i));
        }
        body.insert("status".into(), json!(self.status));
        match &self.error {
            None => {
                body.insert("_version".into(), json!(1));
                body.insert("result".into(), json!("created"));
                body.insert(
                    "_shards".into(),
                    json!({"total": 1, "successful": 1, "failed": 0}),
                );
                body.insert("_seq_no".into(), json!(seq_no));
                body.insert("_primary_term".into(), json!(1));
            }
            Some((kind, reason)) => {
                body.insert("error".into(), json!({"type": kind, "reason": reason}));
            }
        }
        json!({ self.op.clone(): body })
    }
}

/// A `_bulk` answer.
#[derive(Debug, Clone)]
pub struct BulkOutcome {
    pub took_ms: u64,
    pub items: Vec<ItemOutcome>,
}

impl BulkOutcome {
    pub fn errors(&self) -> bool {
        self.items.iter().any(|i| i.error.is_some())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "took": self.took_ms,
            "errors": self.errors(),
            "items": self.items.iter().enumerate().map(|(i, item)| item.to_json(i)).collect::<Vec<_>>(),
        })
    }
}

/// One action of a bulk body, parsed.
struct Action<'a> {
    op: String,
    index: Option<String>,
    id: Option<String>,
    /// The source line, when the action takes one.
    source: Option<&'a [u8]>,
    /// Why the action line itself is refused.
    invalid: Option<String>,
}

/// The body's lines; only trailing blank lines are dropped (a blank line
/// inside is an empty source, so the pairing of actions and sources holds).
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut all: Vec<&[u8]> = body
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    while all
        .last()
        .is_some_and(|l| l.iter().all(u8::is_ascii_whitespace))
    {
        all.pop();
    }
    all.into_iter()
}

/// The most items one `_bulk` request may carry.
pub const MAX_BULK_ITEMS: usize = 100_000;
/// Elasticsearch's longest document id, in bytes.
pub const MAX_ID_BYTES: usize = 512;

fn parse_actions<'a>(body: &'a [u8], default_index: Option<&str>) -> Vec<Action<'a>> {
    let mut out = Vec::new();
    let mut it = lines(body);
    while let Some(line) = it.next() {
        if line.iter().all(u8::is_ascii_whitespace) {
            out.push(Action {
                op: "index".into(),
                index: default_index.map(str::to_owned),
                id: None,
                source: None,
                invalid: Some("Malformed action/metadata line: the line is empty".into()),
            });
            continue;
        }
        let parsed: Result<Map<String, Value>, _> = serde_json::from_slice(line);
        let (op, meta) = match parsed {
            Ok(m) if m.len() == 1 => {
                let (k, v) = m.into_iter().next().unwrap_or_default();
                (k, v)
            }
            Ok(_) | Err(_) => {
                // Elasticsearch's framing is line pairs: the next line is this
                // action's source.
                let source = it.next();
                out.push(Action {
                    op: "index".into(),
                    index: default_index.map(str::to_owned),
                    id: None,
                    source,
                    invalid: Some("Malformed action/metadata line: expected one of create, index, delete, update with its metadata".into()),
                });
                continue;
            }
        };
        let meta = meta.as_object().cloned().unwrap_or_default();
        let index = meta
            .get("_index")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| default_index.map(str::to_owned));
        let id = meta.get("_id").and_then(Value::as_str).map(str::to_owned);
        let takes_source = op != "delete";
        let source = if takes_source { it.next() } else { None };
        let invalid = match op.as_str() {
            "create" | "index" => None,
            "delete" | "update" => Some(format!(
                "the embedded output does not support [{op}]: data streams are append-only"
            )),
            other => Some(format!(
                "Malformed action/metadata line: unknown action [{other}]"
            )),
        };
        out.push(Action {
            op: if invalid.is_some() && !matches!(op.as_str(), "delete" | "update") {
                "index".into()
            } else {
                op
            },
            index,
            id,
            source,
            invalid,
        });
    }
    out
}

/// `<type>-<dataset>-<namespace>`, each part non-empty, lowercase, none of
/// Elasticsearch's forbidden characters.
pub fn is_data_stream_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    let [ty, dataset, namespace] = parts.as_slice() else {
        return false;
    };
    STREAM_TYPES.contains(ty)
        && name.len() <= 255
        && [dataset, namespace]
            .iter()
            .all(|p| flotilla_domain::permissions::is_data_stream_part(p))
}

fn timestamp_of(source: &Map<String, Value>) -> Result<Option<DateTime<Utc>>, String> {
    match source.get("@timestamp") {
        None => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|e| {
                // A time without a zone (Python's naive isoformat()) is UTC,
                // as Elasticsearch reads it.
                [
                    "%Y-%m-%dT%H:%M:%S%.f",
                    "%Y-%m-%dT%H:%M:%S",
                    "%Y-%m-%d %H:%M:%S%.f",
                    "%Y-%m-%d",
                ]
                .iter()
                .find_map(|f| {
                    chrono::NaiveDateTime::parse_from_str(s, f)
                        .ok()
                        .or_else(|| {
                            chrono::NaiveDate::parse_from_str(s, f)
                                .ok()
                                .and_then(|d| d.and_hms_opt(0, 0, 0))
                        })
                })
                .map(|n| n.and_utc())
                .ok_or_else(|| format!("failed to parse field [@timestamp] of type [date]: {e}"))
            })
            .map(Some),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(DateTime::from_timestamp_millis)
            .map(Some)
            .ok_or_else(|| "failed to parse field [@timestamp] of type [date]".to_owned()),
        Some(_) => Err("failed to parse field [@timestamp] of type [date]".to_owned()),
    }
}

fn allowed(perms: Option<&Permissions>, index: &str, privileges: &[&str]) -> bool {
    perms.is_some_and(|p| privileges.iter().any(|priv_| p.allows(index, priv_)))
}

impl Services {
    /// Store a `_bulk` body written with `key_id`'s `perms` (`None`: the
    /// key grants nothing).
    pub async fn bulk(
        &self,
        principal: &str,
        perms: Option<&Permissions>,
        body: &[u8],
        default_index: Option<&str>,
    ) -> Result<BulkOutcome, ServiceError> {
        let started = Instant::now();
        let actions = parse_actions(body, default_index);
        if actions.len() > MAX_BULK_ITEMS {
            return Err(flotilla_domain::ValidationError::new(
                "body",
                format!(
                    "a _bulk request may carry at most {MAX_BULK_ITEMS} items, this one has {}",
                    actions.len()
                ),
            )
            .into());
        }
        let names: Vec<String> = actions
            .iter()
            .filter_map(|a| a.index.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|n| is_data_stream_name(n))
            .collect();
        let existing: BTreeSet<String> = self
            .store
            .existing_data_streams(&names)
            .await?
            .into_iter()
            .collect();
        let now = Utc::now();
        let mut items = Vec::with_capacity(actions.len());
        // Accepted documents, with the item each answers for.
        let mut docs: Vec<(usize, NewDocument)> = Vec::new();
        let mut seen_ids = BTreeSet::new();
        for a in actions {
            let (op, index, id) = (a.op.as_str(), a.index.as_deref(), a.id.as_deref());
            if let Some(reason) = a.invalid {
                items.push(ItemOutcome::failed(
                    op,
                    index,
                    id,
                    400,
                    "illegal_argument_exception",
                    reason,
                ));
                continue;
            }
            let Some(index) = index else {
                items.push(ItemOutcome::failed(
                    op,
                    None,
                    id,
                    400,
                    "action_request_validation_exception",
                    "Validation Failed: 1: index is missing;".into(),
                ));
                continue;
            };
            if !is_data_stream_name(index) {
                items.push(ItemOutcome::failed(
                    op,
                    Some(index),
                    id,
                    400,
                    "illegal_argument_exception",
                    format!("[{index}] is not a data stream: the embedded output stores data streams named <type>-<dataset>-<namespace>, type one of {}", STREAM_TYPES.join(", ")),
                ));
                continue;
            }
            if let Some(bad) = id.filter(|i| {
                i.is_empty() || i.len() > MAX_ID_BYTES || i.chars().any(char::is_control)
            }) {
                items.push(ItemOutcome::failed(
                    op,
                    Some(index),
                    None,
                    400,
                    "illegal_argument_exception",
                    format!("id is empty, longer than {MAX_ID_BYTES} bytes or holds control characters: [{}]", bad.escape_debug().to_string().chars().take(64).collect::<String>()),
                ));
                continue;
            }
            if op == "index" {
                items.push(ItemOutcome::failed(
                    op,
                    Some(index),
                    id,
                    400,
                    "illegal_argument_exception",
                    "only write ops with an op_type of create are allowed in data streams".into(),
                ));
                continue;
            }
            if !allowed(perms, index, WRITE_PRIVILEGES) {
                items.push(ItemOutcome::failed(
                    op,
                    Some(index),
                    id,
                    403,
                    "security_exception",
                    format!("action [indices:data/write/bulk[s]] is unauthorized for API key id [{principal}] on indices [{index}], this action is granted by the index privileges [{}]", WRITE_PRIVILEGES.join(",")),
                ));
                continue;
            }
            if !existing.contains(index) && !allowed(perms, index, AUTO_CONFIGURE_PRIVILEGES) {
                items.push(ItemOutcome::failed(
                    op,
                    Some(index),
                    id,
                    403,
                    "security_exception",
                    format!("action [indices:admin/auto_create] is unauthorized for API key id [{principal}] on indices [{index}], this action is granted by the index privileges [{}]", AUTO_CONFIGURE_PRIVILEGES.join(",")),
                ));
                continue;
            }
            let source: Result<Map<String, Value>, String> = match a.source {
                None => Err("the action has no source line".into()),
                // Neither engine stores NUL in text faithfully.
                Some(line) if line.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) => {
                    Err("failed to parse: the document holds a NUL character (\\u0000)".into())
                }
                Some(line) => match serde_json::from_slice::<Value>(line) {
                    Ok(Value::Object(m)) => Ok(m),
                    Ok(_) => Err("failed to parse: the document must be a JSON object".into()),
                    Err(e) => Err(format!("failed to parse: {e}")),
                },
            };
            let mut source = match source {
                Ok(s) => s,
                Err(reason) => {
                    items.push(ItemOutcome::failed(
                        op,
                        Some(index),
                        id,
                        400,
                        "document_parsing_exception",
                        reason,
                    ));
                    continue;
                }
            };
            let ts = match timestamp_of(&source) {
                Ok(Some(ts)) => ts,
                Ok(None) => {
                    source.insert(
                        "@timestamp".into(),
                        json!(now.to_rfc3339_opts(SecondsFormat::Millis, true)),
                    );
                    now
                }
                Err(reason) => {
                    items.push(ItemOutcome::failed(
                        op,
                        Some(index),
                        id,
                        400,
                        "document_parsing_exception",
                        reason,
                    ));
                    continue;
                }
            };
            let doc_id = id
                .map(str::to_owned)
                .unwrap_or_else(|| random_alphanumeric(20));
            if !seen_ids.insert(doc_id.clone()) {
                items.push(ItemOutcome::failed(
                    op,
                    Some(index),
                    Some(&doc_id),
                    409,
                    "version_conflict_engine_exception",
                    format!("[{doc_id}]: version conflict, document already exists"),
                ));
                continue;
            }
            let slot = items.len();
            items.push(ItemOutcome {
                op: op.to_owned(),
                index: Some(index.to_owned()),
                id: Some(doc_id.clone()),
                status: 201,
                error: None,
            });
            docs.push((
                slot,
                NewDocument {
                    id: doc_id,
                    data_stream: index.to_owned(),
                    timestamp: ts,
                    source: Value::Object(source).to_string(),
                },
            ));
        }
        let batch: Vec<NewDocument> = docs.iter().map(|(_, d)| d.clone()).collect();
        match self.store.insert_documents(&batch, now).await {
            Ok(()) => {}
            // A client-chosen id that exists: store one by one, so only the
            // conflicting items fail.
            Err(StoreError::Conflict(_)) => {
                for (slot, doc) in &docs {
                    if let Err(e) = self
                        .store
                        .insert_documents(std::slice::from_ref(doc), now)
                        .await
                    {
                        let item = &mut items[*slot];
                        let (status, kind, reason) = match e {
                            StoreError::Conflict(_) => (
                                409,
                                "version_conflict_engine_exception",
                                format!("[{}]: version conflict, document already exists", doc.id),
                            ),
                            other => return Err(other.into()),
                        };
                        item.status = status;
                        item.error = Some((kind.to_owned(), reason));
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
        metrics::counter!("flotilla_ingest_documents_total").increment(docs.len() as u64);
        let refused = items.iter().filter(|i| i.error.is_some()).count();
        metrics::counter!("flotilla_ingest_refused_total").increment(refused as u64);
        Ok(BulkOutcome {
            took_ms: started.elapsed().as_millis() as u64,
            items,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_stream_names() {
        for ok in [
            "logs-nginx.access-prod",
            "metrics-system.cpu-default",
            "traces-apm-x",
        ] {
            assert!(is_data_stream_name(ok), "{ok}");
        }
        for bad in [
            "logs",
            "logs-a",
            "foo-a-b",
            "logs-A-b",
            "logs-a-b-c",
            "logs--b",
            "logs-a-",
            "logs-a b-c",
            "logs-_a-b",
        ] {
            assert!(!is_data_stream_name(bad), "{bad}");
        }
    }

    #[test]
    fn actions_pair_with_their_sources_even_when_malformed() {
        let body = b"{\"create\":{\"_index\":\"logs-a-b\"}}\n{\"m\":1}\nnot json\n{\"m\":2}\n{\"delete\":{\"_id\":\"x\"}}\n{\"create\":{}}\r\n{\"m\":3}\n\n\n";
        let a = parse_actions(body, Some("logs-d-e"));
        assert_eq!(a.len(), 4);
        assert_eq!(a[0].index.as_deref(), Some("logs-a-b"));
        assert_eq!(a[0].source, Some(&b"{\"m\":1}"[..]));
        assert!(a[1].invalid.is_some());
        assert_eq!(
            a[1].source,
            Some(&b"{\"m\":2}"[..]),
            "the malformed action's source is consumed"
        );
        assert_eq!(a[2].op, "delete");
        assert!(a[2].source.is_none());
        assert_eq!(
            a[3].index.as_deref(),
            Some("logs-d-e"),
            "the URL's index is the default"
        );
        assert_eq!(a[3].source, Some(&b"{\"m\":3}"[..]));
    }

    #[test]
    fn timestamps_are_read_in_both_forms() {
        let m = |v: Value| v.as_object().cloned().unwrap();
        assert!(
            timestamp_of(&m(json!({"@timestamp": "2026-12-01T10:00:00.000Z"})))
                .unwrap()
                .is_some()
        );
        assert!(timestamp_of(&m(json!({"@timestamp": 1764583200000i64})))
            .unwrap()
            .is_some());
        assert!(timestamp_of(&m(json!({"@timestamp": "yesterday"}))).is_err());
        assert!(
            timestamp_of(&m(json!({"@timestamp": "2026-12-01T10:00:00.123456"})))
                .unwrap()
                .is_some(),
            "naive is UTC"
        );
        assert_eq!(timestamp_of(&m(json!({}))).unwrap(), None);
    }
}
