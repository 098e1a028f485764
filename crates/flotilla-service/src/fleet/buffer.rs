//! The check-in buffer: heartbeats written in batches, changes at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

use flotilla_store::CheckinRecord;

/// How often a waiting long poll refreshes its agent's last-seen time (well
/// inside the 5-minute offline threshold).
pub(super) const HEARTBEAT_REFRESH: Duration = Duration::from_secs(30);

/// Coalesces check-in writes: a heartbeat that changes nothing but the time
/// waits for the next batch; a first check-in or a change of status,
/// message or metadata is written at once.
#[derive(Default)]
pub struct CheckinBuffer {
    inner: Mutex<BufferState>,
}

#[derive(Default)]
pub(super) struct BufferState {
    pending: HashMap<String, CheckinRecord>,
    /// What each agent last reported.
    last: HashMap<String, Fingerprint>,
    /// The last ack token each agent confirmed through this instance.
    tokens: HashMap<String, String>,
}

/// Status, message, digests of metadata and components, reported policy.
pub(super) type Fingerprint = (
    String,
    String,
    Option<[u8; 32]>,
    Option<[u8; 32]>,
    Option<(String, i64)>,
);

/// A JSON value's SHA-256, serialised straight into the hasher (no
/// intermediate string: agents send a few KiB of metadata each time).
pub(super) fn digest(v: &Option<Value>) -> Option<[u8; 32]> {
    struct Hashing(Sha256);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    v.as_ref().map(|v| {
        let mut h = Hashing(Sha256::new());
        // Writing into a hasher cannot fail, nor can serialising a Value.
        let _ = serde_json::to_writer(&mut h, v);
        h.0.finalize().into()
    })
}

/// Raw JSON's SHA-256, over its bytes as sent (an agent sends the same
/// bytes while nothing changes).
fn digest_raw(raw: &RawValue) -> [u8; 32] {
    Sha256::digest(raw.get().as_bytes()).into()
}

impl CheckinBuffer {
    /// Buffer a check-in; returns it back when it should be written now.
    #[cfg(test)]
    pub(super) fn offer(&self, rec: CheckinRecord, first: bool) -> Option<CheckinRecord> {
        self.offer_raw(rec, None, first)
    }

    /// [`CheckinBuffer::offer`] with the metadata as sent (`raw`, in place
    /// of `rec.local_metadata`): digested as bytes, parsed only into a
    /// record that is to be written with it.
    pub(super) fn offer_raw(
        &self,
        rec: CheckinRecord,
        raw: Option<&RawValue>,
        first: bool,
    ) -> Option<CheckinRecord> {
        // Digested before the lock: every check-in of the instance takes it.
        let metadata = match raw {
            Some(r) => Some(digest_raw(r)),
            None => digest(&rec.local_metadata),
        };
        let fingerprint = (
            rec.status.clone(),
            rec.message.clone(),
            metadata,
            digest(&rec.components),
            rec.reported_policy.clone(),
        );
        let written = self.decide(rec, fingerprint, first);
        written.map(|(mut out, with_metadata)| {
            if with_metadata && out.local_metadata.is_none() {
                // Valid JSON (the request was parsed with it), so it parses.
                out.local_metadata = raw.and_then(|r| serde_json::from_str(r.get()).ok());
            }
            out
        })
    }

    /// The buffering decision for a fingerprinted check-in: the record to
    /// write now and whether its metadata goes with it, or `None` (kept as
    /// a heartbeat).
    fn decide(
        &self,
        rec: CheckinRecord,
        fingerprint: Fingerprint,
        first: bool,
    ) -> Option<(CheckinRecord, bool)> {
        let mut st = self.inner.lock().expect("buffer lock");
        let previous = st.last.insert(rec.agent_id.clone(), fingerprint.clone());
        let changed = previous.as_ref() != Some(&fingerprint);
        if first || changed {
            st.pending.remove(&rec.agent_id);
            let mut rec = rec;
            let mut with_metadata = fingerprint.2.is_some();
            // A change of status or revision alone leaves the metadata (a
            // few KiB, sent on every check-in) as written: not rewritten.
            if let Some((_, _, metadata, components, _)) = previous.filter(|_| !first) {
                if metadata.is_some() && metadata == fingerprint.2 {
                    rec.local_metadata = None;
                    with_metadata = false;
                }
                if components.is_some() && components == fingerprint.3 {
                    rec.components = None;
                }
            }
            Some((rec, with_metadata))
        } else {
            // What it reports is what was written: the heartbeat needs only
            // the time (the write keeps stored values it is not given).
            let mut rec = rec;
            rec.local_metadata = None;
            rec.components = None;
            st.pending.insert(rec.agent_id.clone(), rec);
            None
        }
    }

    /// A change `offer` returned could not be written: the next check-in
    /// counts as a change again, so it is not lost.
    pub(super) fn unsettle(&self, agent_id: &str) {
        let mut st = self.inner.lock().expect("buffer lock");
        st.last.remove(agent_id);
    }

    /// Whether `token` was already confirmed for this agent here.
    pub(super) fn token_confirmed(&self, agent_id: &str, token: &str) -> bool {
        let st = self.inner.lock().expect("buffer lock");
        st.tokens.get(agent_id).is_some_and(|t| t == token)
    }

    pub(super) fn remember_token(&self, agent_id: &str, token: &str) {
        let mut st = self.inner.lock().expect("buffer lock");
        st.tokens.insert(agent_id.to_owned(), token.to_owned());
    }

    /// A heartbeat while a long poll waits, so a waiting agent never looks
    /// offline: buffered like any unchanged check-in.
    pub(super) fn refresh(&self, agent_id: &str, at: DateTime<Utc>) {
        let mut st = self.inner.lock().expect("buffer lock");
        if let Some(rec) = st.pending.get_mut(agent_id) {
            rec.at = at;
            return;
        }
        if let Some((status, message, ..)) = st.last.get(agent_id).cloned() {
            st.pending.insert(
                agent_id.to_owned(),
                CheckinRecord {
                    agent_id: agent_id.to_owned(),
                    at,
                    status,
                    message,
                    local_metadata: None,
                    components: None,
                    agent_version: None,
                    reported_policy: None,
                },
            );
        }
    }

    /// Put back a batch that could not be written, unless newer records
    /// arrived meanwhile.
    pub fn requeue(&self, batch: Vec<CheckinRecord>) {
        let mut st = self.inner.lock().expect("buffer lock");
        for rec in batch {
            st.pending.entry(rec.agent_id.clone()).or_insert(rec);
        }
    }

    pub fn drain(&self) -> Vec<CheckinRecord> {
        let mut st = self.inner.lock().expect("buffer lock");
        st.pending.drain().map(|(_, v)| v).collect()
    }

    pub fn forget(&self, agent_id: &str) {
        let mut st = self.inner.lock().expect("buffer lock");
        st.pending.remove(agent_id);
        st.last.remove(agent_id);
        st.tokens.remove(agent_id);
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_writes_changes_at_once_and_coalesces_heartbeats() {
        let b = CheckinBuffer::default();
        let rec = |status: &str| CheckinRecord {
            agent_id: "a".into(),
            at: Utc::now(),
            status: status.into(),
            message: "m".into(),
            local_metadata: None,
            components: None,
            agent_version: None,
            reported_policy: None,
        };
        assert!(b.offer(rec("online"), true).is_some(), "first check-in");
        assert!(b.offer(rec("online"), false).is_none(), "heartbeat");
        assert!(b.offer(rec("online"), false).is_none());
        assert_eq!(b.drain().len(), 1, "coalesced to one write");
        assert!(b.offer(rec("error"), false).is_some(), "status change");
        // A change that leaves the metadata as written does not resend it.
        let with_meta = |status: &str| CheckinRecord {
            local_metadata: Some(serde_json::json!({"host": {"hostname": "h"}})),
            ..rec(status)
        };
        assert!(b
            .offer(with_meta("error"), false)
            .unwrap()
            .local_metadata
            .is_some());
        let changed = b.offer(with_meta("online"), false).expect("status change");
        assert_eq!(
            changed.local_metadata, None,
            "the same metadata, not rewritten"
        );
        assert!(b.offer(with_meta("error"), false).is_some());
        assert!(b.drain().is_empty());

        // A waiting poll refreshes the last-seen time, buffered.
        let later = Utc::now() + chrono::Duration::seconds(30);
        b.refresh("a", later);
        let drained = b.drain();
        assert_eq!(
            (drained.len(), drained[0].at, drained[0].status.as_str()),
            (1, later, "error")
        );
        // A failed write is put back, unless something newer arrived.
        b.requeue(drained.clone());
        assert_eq!(b.drain(), drained);
        b.refresh("a", later + chrono::Duration::seconds(30));
        b.requeue(drained);
        assert_eq!(b.drain()[0].at, later + chrono::Duration::seconds(30));
    }

    /// Metadata as sent is digested as bytes and parsed only into a
    /// record written with it.
    #[test]
    fn raw_metadata_is_parsed_only_when_written() {
        let b = CheckinBuffer::default();
        let rec = |status: &str| CheckinRecord {
            agent_id: "a".into(),
            at: Utc::now(),
            status: status.into(),
            message: "m".into(),
            local_metadata: None,
            components: None,
            agent_version: None,
            reported_policy: None,
        };
        let raw = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        let v1 = raw(r#"{"host": {"hostname": "h1"}}"#);
        let first = b.offer_raw(rec("online"), Some(&v1), true).unwrap();
        assert_eq!(
            first.local_metadata,
            Some(serde_json::json!({"host": {"hostname": "h1"}}))
        );
        assert!(
            b.offer_raw(rec("online"), Some(&v1), false).is_none(),
            "heartbeat"
        );
        let status_only = b.offer_raw(rec("error"), Some(&v1), false).unwrap();
        assert_eq!(
            status_only.local_metadata, None,
            "the same bytes: not rewritten"
        );
        let v2 = raw(r#"{"host": {"hostname": "h2"}}"#);
        let changed = b.offer_raw(rec("error"), Some(&v2), false).unwrap();
        assert_eq!(changed.local_metadata.unwrap()["host"]["hostname"], "h2");
        // No metadata sent: nothing to write but the rest.
        let none = b.offer_raw(rec("online"), None, false).unwrap();
        assert_eq!(none.local_metadata, None);
    }

    /// A heartbeat holds no copy of what was already written; a change
    /// whose write failed counts as a change again.
    #[test]
    fn heartbeats_hold_no_metadata_and_a_failed_change_is_offered_again() {
        let b = CheckinBuffer::default();
        let rec = || CheckinRecord {
            agent_id: "a".into(),
            at: Utc::now(),
            status: "online".into(),
            message: "m".into(),
            local_metadata: Some(serde_json::json!({"host": {"name": "h"}})),
            components: Some(serde_json::json!([{"id": "c"}])),
            agent_version: None,
            reported_policy: None,
        };
        assert!(b.offer(rec(), true).is_some());
        assert!(b.offer(rec(), false).is_none());
        let pending = b.drain();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (&pending[0].local_metadata, &pending[0].components),
            (&None, &None)
        );
        assert!(b.offer(rec(), false).is_none(), "unchanged");
        b.unsettle("a");
        let again = b.offer(rec(), false).expect("offered as a change again");
        assert!(again.local_metadata.is_some());
    }
}
