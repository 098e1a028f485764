//! The check-in's answer as bytes: each policy revision's POLICY_CHANGE
//! is serialised once, with holes for the two things that differ per agent
//! (its id and its output key), and every agent's answer shares those
//! bytes.
//!
//! Before, each woken check-in cloned the policy document (a tree of maps
//! tens of KiB large), put its key in and serialised it: after a change
//! to a policy of 10,000 agents that was 10,000 clones alive at once, the
//! largest share of the server's CPU and allocations in a profile of the
//! fan-out. Now an answer is a few shared slices and two short strings.

use bytes::Bytes;
use serde_json::Value;

/// What a check-in answers.
#[derive(Debug)]
pub struct CheckinResponse {
    pub ack_token: String,
    pub actions: Vec<CheckinAction>,
}

/// One action of an answer.
#[derive(Debug)]
pub enum CheckinAction {
    /// A stored action, as JSON.
    Json(Value),
    /// A POLICY_CHANGE from its revision's template.
    PolicyChange {
        template: std::sync::Arc<PolicyChangeTemplate>,
        agent_id: String,
        /// The agent's output key (`id:secret`) for the output that takes one.
        credential: Option<String>,
    },
}

impl CheckinResponse {
    /// The body: `{"action":"checkin","ack_token":…,"actions":[…]}` (no
    /// `actions` when there are none), in pieces that share the templates'
    /// bytes.
    pub fn into_chunks(self) -> Vec<Bytes> {
        let mut out = Vec::with_capacity(4 + self.actions.len() * 6);
        let mut head = br#"{"action":"checkin","ack_token":"#.to_vec();
        head.extend_from_slice(&json_string(&self.ack_token));
        if self.actions.is_empty() {
            head.push(b'}');
            out.push(Bytes::from(head));
            return out;
        }
        head.extend_from_slice(br#","actions":["#);
        out.push(Bytes::from(head));
        for (i, action) in self.actions.into_iter().enumerate() {
            if i > 0 {
                out.push(Bytes::from_static(b","));
            }
            match action {
                CheckinAction::Json(v) => out.push(Bytes::from(
                    serde_json::to_vec(&v).expect("a JSON value serialises"),
                )),
                CheckinAction::PolicyChange {
                    template,
                    agent_id,
                    credential,
                } => template.render(&agent_id, credential.as_deref(), &mut out),
            }
        }
        out.push(Bytes::from_static(b"]}"));
        out
    }

    /// The body in one piece (tests, and anything that wants a value).
    pub fn to_json(self) -> Value {
        let bytes: Vec<u8> = self.into_chunks().concat();
        serde_json::from_slice(&bytes).expect("the answer is JSON")
    }
}

/// A POLICY_CHANGE action serialised once, with holes.
#[derive(Debug)]
pub struct PolicyChangeTemplate {
    segments: Vec<Segment>,
}

#[derive(Debug)]
enum Segment {
    Literal(Bytes),
    AgentId,
    Credential,
}

impl PolicyChangeTemplate {
    /// `action` with `agent_id` (and, when `key_at` is given, the string at
    /// that JSON pointer) standing for what each agent gets. Each hole is a
    /// placeholder string made unique for this build (it must occur exactly
    /// once in the serialised action; a document that happened to contain
    /// one is refused, and the caller builds nothing from it).
    pub fn new(mut action: Value, key_at: Option<&str>) -> Option<Self> {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let agent_hole = format!("\u{1}agent-id-{nonce}");
        let key_hole = format!("\u{1}credential-{nonce}");
        *action.get_mut("agent_id")? = Value::String(agent_hole.clone());
        let with_key = match key_at.and_then(|p| action.pointer_mut(p)) {
            Some(obj @ Value::Object(_)) => {
                obj.as_object_mut()?
                    .insert("api_key".into(), Value::String(key_hole.clone()));
                true
            }
            _ => false,
        };
        let text = serde_json::to_vec(&action).ok()?;
        let mut holes = vec![(json_string(&agent_hole), Segment::AgentId)];
        if with_key {
            holes.push((json_string(&key_hole), Segment::Credential));
        }
        // Where each hole is, in order; each exactly once.
        let mut found = Vec::new();
        for (needle, seg) in holes {
            let mut at = find_all(&text, &needle);
            if at.len() != 1 {
                return None;
            }
            found.push((at.pop()?, needle.len(), seg));
        }
        found.sort_by_key(|(at, _, _)| *at);
        let text = Bytes::from(text);
        let mut segments = Vec::new();
        let mut from = 0;
        for (at, len, seg) in found {
            segments.push(Segment::Literal(text.slice(from..at)));
            segments.push(seg);
            from = at + len;
        }
        segments.push(Segment::Literal(text.slice(from..)));
        Some(PolicyChangeTemplate { segments })
    }

    /// Whether the template has a hole for an output key.
    pub fn takes_credential(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Credential))
    }

    fn render(&self, agent_id: &str, credential: Option<&str>, out: &mut Vec<Bytes>) {
        for seg in &self.segments {
            match seg {
                Segment::Literal(b) => out.push(b.clone()),
                Segment::AgentId => out.push(Bytes::from(json_string(agent_id))),
                // A template with a key hole is only rendered with a key;
                // should one be missing, the agent gets null rather than
                // another's key or broken JSON.
                Segment::Credential => out.push(match credential {
                    Some(c) => Bytes::from(json_string(c)),
                    None => Bytes::from_static(b"null"),
                }),
            }
        }
    }
}

fn json_string(s: &str) -> Vec<u8> {
    serde_json::to_vec(s).expect("a string serialises")
}

fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    if needle.is_empty() || hay.len() < needle.len() {
        return out;
    }
    // Once per policy revision: a plain scan is enough.
    for (i, w) in hay.windows(needle.len()).enumerate() {
        if w == needle {
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn action(doc: Value) -> Value {
        json!({"id": "policy:p:3", "agent_id": "", "created_at": "2026-01-01T00:00:00Z",
               "type": "POLICY_CHANGE", "input_type": "", "data": {"policy": doc}})
    }

    /// What an agent gets from the template is what serialising its own
    /// copy of the action gave before: its id, its key, the rest shared.
    #[test]
    fn a_rendered_answer_equals_the_action_built_per_agent() {
        let doc = json!({"id": "p", "outputs": {"default": {"type": "elasticsearch", "hosts": ["h"]}},
                         "inputs": [{"id": "i", "streams": [{"x": "quote \" and \\ and \u{1}"}]}]});
        let t = Arc::new(
            PolicyChangeTemplate::new(action(doc.clone()), Some("/data/policy/outputs/default"))
                .unwrap(),
        );
        assert!(t.takes_credential());
        let agent = "agent-\"1\"";
        let resp = CheckinResponse {
            ack_token: "tok".into(),
            actions: vec![
                CheckinAction::Json(json!({"id": "a1", "type": "UNENROLL"})),
                CheckinAction::PolicyChange {
                    template: t.clone(),
                    agent_id: agent.into(),
                    credential: Some("kid:se\"cret".into()),
                },
            ],
        };
        let mut expected = action(doc);
        expected["agent_id"] = json!(agent);
        expected["data"]["policy"]["outputs"]["default"]["api_key"] = json!("kid:se\"cret");
        assert_eq!(
            resp.to_json(),
            json!({"action": "checkin", "ack_token": "tok",
                   "actions": [{"id": "a1", "type": "UNENROLL"}, expected]})
        );
    }

    #[test]
    fn an_output_without_a_key_and_an_empty_answer() {
        let t = PolicyChangeTemplate::new(
            action(json!({"outputs": {}})),
            Some("/data/policy/outputs/x"),
        )
        .unwrap();
        assert!(!t.takes_credential());
        let empty = CheckinResponse {
            ack_token: String::new(),
            actions: vec![],
        };
        assert_eq!(
            empty.to_json(),
            json!({"action": "checkin", "ack_token": ""})
        );
    }
}
