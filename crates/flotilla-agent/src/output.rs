//! Ship documents to an Elasticsearch-compatible output through `_bulk`.
//!
//! - Every document goes as a `create` with a deterministic `_id`, so a
//!   batch re-sent after a lost answer is refused per item as 409, and a
//!   409 counts as accepted: retries never duplicate.
//! - Per item: 2xx and 409 are accepted; 429 and 5xx are retried; any other
//!   status is rejected for good (counted, reported, never retried: it
//!   would jam the stream).
//! - Whole request: unreachable, 429, 5xx, 401 and 403 are retried with
//!   exponential backoff and full jitter, across the output's hosts (a new
//!   policy with a new key replaces the shipper); 413 splits the batch.
//! - The API key is sent in `Authorization` only; it is never logged.

use std::time::Duration;

use base64::Engine as _;
use rand::Rng;
use serde_json::Value;

use crate::inputs::Health;

/// One document for one data stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub index: String,
    pub id: String,
    pub source: Value,
}

/// What became of one item of a `_bulk`.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Accepted,
    Retry(String),
    Rejected(String),
}

/// Read a `_bulk` answer: one outcome per document sent (missing items are
/// retried).
pub fn classify(answer: &Value, sent: usize) -> Vec<Outcome> {
    let items = answer
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    (0..sent)
        .map(|i| {
            let Some(item) = items
                .get(i)
                .and_then(Value::as_object)
                .and_then(|o| o.values().next())
            else {
                return Outcome::Retry("the output's answer lacks this item".into());
            };
            let status = item.get("status").and_then(Value::as_u64).unwrap_or(0);
            let reason = || {
                let e = &item["error"];
                format!(
                    "{status} {}: {}",
                    e["type"].as_str().unwrap_or("error"),
                    e["reason"].as_str().unwrap_or("")
                )
            };
            match status {
                200..=299 | 409 => Outcome::Accepted,
                429 | 500..=599 | 0 => Outcome::Retry(reason()),
                _ => Outcome::Rejected(reason()),
            }
        })
        .collect()
}

/// NDJSON `create` lines.
pub fn bulk_body(docs: &[Doc]) -> Vec<u8> {
    let mut body = Vec::with_capacity(docs.len() * 256);
    for d in docs {
        let meta = serde_json::json!({"create": {"_index": d.index, "_id": d.id}});
        // Serialising a Value to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut body, &meta);
        body.push(b'\n');
        let _ = serde_json::to_writer(&mut body, &d.source);
        body.push(b'\n');
    }
    body
}

/// Exponential backoff with full jitter: 250 ms doubling, at most 10 s.
pub fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(250)
        .saturating_mul(1 << attempt.min(6))
        .min(Duration::from_secs(10));
    Duration::from_millis(
        rand::thread_rng().gen_range(cap.as_millis() as u64 / 4..=cap.as_millis() as u64),
    )
}

/// An output as a policy names it.
pub struct Output {
    hosts: Vec<String>,
    auth: String,
    http: reqwest::Client,
}

/// What shipping a batch did.
#[derive(Debug, Default, PartialEq)]
pub struct Shipped {
    pub accepted: u64,
    pub rejected: u64,
}

enum Attempt {
    Answer(Vec<Outcome>),
    TooLarge,
    Retry(String),
    Refused(String),
}

impl Output {
    /// `api_key` is `id:key`, as the policy carries it.
    pub fn new(hosts: Vec<String>, api_key: &str) -> anyhow::Result<Output> {
        if hosts.is_empty() {
            anyhow::bail!("the output has no hosts");
        }
        Ok(Output {
            hosts: hosts
                .into_iter()
                .map(|h| h.trim_end_matches('/').to_owned())
                .collect(),
            auth: format!(
                "ApiKey {}",
                base64::engine::general_purpose::STANDARD.encode(api_key)
            ),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    async fn attempt(&self, host: &str, docs: &[Doc]) -> Attempt {
        let resp = self
            .http
            .post(format!("{host}/_bulk"))
            .header("authorization", &self.auth)
            .header("content-type", "application/x-ndjson")
            .body(bulk_body(docs))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(format!("output {host} unreachable: {e}")),
        };
        let status = resp.status().as_u16();
        match status {
            200 => match resp.json::<Value>().await {
                Ok(v) => Attempt::Answer(classify(&v, docs.len())),
                Err(e) => Attempt::Retry(format!("unreadable _bulk answer from {host}: {e}")),
            },
            413 => Attempt::TooLarge,
            401 | 403 | 429 | 500..=599 => {
                Attempt::Retry(format!("output {host} answered {status}"))
            }
            _ => Attempt::Refused(format!("output {host} refused the batch: {status}")),
        }
    }

    /// Ship until every document is accepted or rejected for good; retries
    /// forever while the output is away (the caller's checkpoint does not
    /// move meanwhile).
    pub async fn ship(&self, docs: Vec<Doc>, health: &Health) -> Shipped {
        let mut shipped = Shipped::default();
        let mut queue = vec![docs];
        let mut attempt = 0u32;
        while let Some(batch) = queue.pop() {
            if batch.is_empty() {
                continue;
            }
            let host = &self.hosts[attempt as usize % self.hosts.len()];
            match self.attempt(host, &batch).await {
                Attempt::Answer(outcomes) => {
                    let mut again = Vec::new();
                    let mut last_retry = None;
                    for (doc, o) in batch.into_iter().zip(outcomes) {
                        match o {
                            Outcome::Accepted => shipped.accepted += 1,
                            Outcome::Rejected(r) => {
                                shipped.rejected += 1;
                                tracing::warn!(index = %doc.index, reason = %r, "the output rejected a document; it is dropped");
                                health.degraded(format!("the output rejected a document: {r}"));
                            }
                            Outcome::Retry(r) => {
                                last_retry = Some(r);
                                again.push(doc);
                            }
                        }
                    }
                    if let Some(r) = last_retry {
                        health.degraded(format!("retrying: {r}"));
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt = attempt.saturating_add(1);
                        queue.push(again);
                    } else {
                        attempt = 0;
                    }
                }
                Attempt::TooLarge if batch.len() > 1 => {
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    queue.push(second);
                    queue.push(first);
                }
                Attempt::TooLarge => {
                    shipped.rejected += 1;
                    health.degraded("a document is larger than the output accepts".into());
                }
                Attempt::Retry(r) => {
                    tracing::warn!(reason = %r, "shipping failed; retrying");
                    health.degraded(r);
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                    queue.push(batch);
                }
                Attempt::Refused(r) => {
                    shipped.rejected += batch.len() as u64;
                    tracing::error!(reason = %r, dropped = batch.len(), "the output refused a batch for good");
                    health.degraded(r);
                }
            }
        }
        shipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn items_are_classified_one_by_one() {
        let answer = json!({"errors": true, "items": [
            {"create": {"status": 201}},
            {"create": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}},
            {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception"}}},
            {"create": {"status": 503}},
            {"create": {"status": 400, "error": {"type": "document_parsing_exception", "reason": "bad"}}},
            {"create": {"status": 403, "error": {"type": "security_exception"}}},
        ]});
        let o = classify(&answer, 7);
        assert_eq!(o[0], Outcome::Accepted);
        assert_eq!(o[1], Outcome::Accepted, "a 409 is a document already there");
        assert!(matches!(o[2], Outcome::Retry(_)));
        assert!(matches!(o[3], Outcome::Retry(_)));
        assert_eq!(
            o[4],
            Outcome::Rejected("400 document_parsing_exception: bad".into())
        );
        assert!(matches!(o[5], Outcome::Rejected(_)));
        assert!(matches!(o[6], Outcome::Retry(_)), "missing: retried");
    }

    #[test]
    fn bodies_are_create_ops_with_ids_and_backoff_is_bounded() {
        let body = bulk_body(&[Doc {
            index: "logs-a-b".into(),
            id: "x1".into(),
            source: json!({"message": "m"}),
        }]);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "{\"create\":{\"_id\":\"x1\",\"_index\":\"logs-a-b\"}}\n{\"message\":\"m\"}\n"
        );
        for a in 0..40 {
            assert!(backoff(a) <= Duration::from_secs(10));
        }
    }
}
