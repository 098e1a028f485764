//! The fleet protocol, as the agent speaks it: enrol, check in (long
//! poll), ack. Errors say whether to retry, and after how long the server
//! asked for.

use std::time::Duration;

use serde_json::{json, Value};

/// The user agent the server gates on.
pub const USER_AGENT: &str = concat!("Flotilla Agent ", env!("CARGO_PKG_VERSION"));

#[derive(Debug)]
pub enum FleetError {
    /// Retry: the server is unreachable, busy (429/503) or failed.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The credential is refused (401): unenrolled or revoked.
    Unauthorized(String),
    /// Anything else: the request itself is wrong.
    Refused { status: u16, reason: String },
}

impl std::fmt::Display for FleetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FleetError::Retry { reason, .. } => write!(f, "{reason}"),
            FleetError::Unauthorized(r) => write!(f, "unauthorized: {r}"),
            FleetError::Refused { status, reason } => write!(f, "refused ({status}): {reason}"),
        }
    }
}

impl std::error::Error for FleetError {}

#[derive(Clone)]
pub struct FleetClient {
    http: reqwest::Client,
    base: String,
}

impl FleetClient {
    pub fn new(base: &str, request_timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(FleetClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    async fn send(&self, path: &str, credential: &str, body: &Value) -> Result<Value, FleetError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("authorization", format!("ApiKey {credential}"))
            .json(body)
            .send()
            .await
            .map_err(|e| FleetError::Retry {
                reason: format!(
                    "the server at {} is unreachable: {}",
                    self.base,
                    e.without_url()
                ),
                after: None,
            })?;
        let status = resp.status().as_u16();
        let after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        let reason = value
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .to_owned();
        match status {
            200..=299 => Ok(value),
            401 => Err(FleetError::Unauthorized(reason)),
            429 | 500..=599 => Err(FleetError::Retry {
                reason: format!("the server answered {status}: {reason}"),
                after,
            }),
            _ => Err(FleetError::Refused { status, reason }),
        }
    }

    /// Enrol with a token: `(agent id, access key, policy id)`.
    pub async fn enroll(
        &self,
        token: &str,
        tags: &[String],
        metadata: Value,
    ) -> Result<(String, String, Option<String>), FleetError> {
        let body = json!({
            "type": "PERMANENT",
            "metadata": {"local": metadata, "user_provided": {}, "tags": tags},
        });
        let v = self.send("/api/fleet/agents/enroll", token, &body).await?;
        match (
            v.pointer("/item/id").and_then(Value::as_str),
            v.pointer("/item/access_api_key").and_then(Value::as_str),
        ) {
            (Some(id), Some(key)) => Ok((
                id.to_owned(),
                key.to_owned(),
                v.pointer("/item/policy_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            )),
            _ => Err(FleetError::Refused {
                status: 200,
                reason: "the enrolment answer has no id and access key".into(),
            }),
        }
    }

    pub async fn checkin(
        &self,
        agent_id: &str,
        access_key: &str,
        body: &Value,
    ) -> Result<Value, FleetError> {
        self.send(
            &format!("/api/fleet/agents/{agent_id}/checkin"),
            access_key,
            body,
        )
        .await
    }

    pub async fn ack(
        &self,
        agent_id: &str,
        access_key: &str,
        events: &[Value],
    ) -> Result<Value, FleetError> {
        self.send(
            &format!("/api/fleet/agents/{agent_id}/acks"),
            access_key,
            &json!({ "events": events }),
        )
        .await
    }
}
