//! HTTP for the simulated agents (a client per source address) and for the
//! operator's few management calls.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::retry::parse_retry_after;

/// `Elastic-Api-Version`, as agents send it.
pub const API_VERSION: &str = "2023-06-01";

/// What one agent request came back with.
#[derive(Debug)]
pub enum Answer {
    Ok(Value),
    /// 429 or 503: come back later (after `after` when the server said).
    Busy {
        after: Option<Duration>,
    },
    /// Anything else: unreachable (`status` none), refused, failed.
    Failed {
        status: Option<u16>,
        reason: String,
    },
}

/// One reqwest client per source address; agent `i` uses client
/// `i % len`, so its connections leave from that address.
pub struct Pool {
    clients: Vec<reqwest::Client>,
    base: String,
}

impl Pool {
    pub fn new(base: &str, source_ips: &[IpAddr], user_agent: &str) -> anyhow::Result<Pool> {
        let build = |ip: Option<IpAddr>| {
            reqwest::Client::builder()
                .user_agent(user_agent)
                .connect_timeout(Duration::from_secs(30))
                .pool_idle_timeout(Duration::from_secs(20))
                .tcp_nodelay(true)
                .local_address(ip)
                .build()
                .context("cannot build an HTTP client")
        };
        let clients = if source_ips.is_empty() {
            vec![build(None)?]
        } else {
            source_ips
                .iter()
                .map(|ip| build(Some(*ip)))
                .collect::<anyhow::Result<_>>()?
        };
        Ok(Pool {
            clients,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// POST `body` (JSON text) to `path` with `ApiKey <credential>`.
    pub async fn post(
        &self,
        agent: usize,
        path: &str,
        credential: &str,
        body: String,
        timeout: Duration,
    ) -> Answer {
        let client = &self.clients[agent % self.clients.len()];
        let sent = client
            .post(format!("{}{path}", self.base))
            .header("authorization", format!("ApiKey {credential}"))
            .header("content-type", "application/json")
            .header("elastic-api-version", API_VERSION)
            .body(body)
            .timeout(timeout)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return Answer::Failed {
                    status: None,
                    reason: e.without_url().to_string(),
                }
            }
        };
        let status = resp.status().as_u16();
        let after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        let text = resp.text().await.unwrap_or_default();
        match status {
            200..=299 => match serde_json::from_str(&text) {
                Ok(v) => Answer::Ok(v),
                Err(e) => Answer::Failed {
                    status: Some(status),
                    reason: format!("the answer is not JSON: {e}"),
                },
            },
            429 | 503 => Answer::Busy { after },
            _ => Answer::Failed {
                status: Some(status),
                reason: one_line(&text),
            },
        }
    }
}

fn one_line(text: &str) -> String {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let msg = v
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| text.chars().take(200).collect());
    msg.replace('\n', " ")
}

/// The operator's calls: a policy, an enrollment token, an integration,
/// and the server's metrics.
pub struct Operator {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Operator {
    pub fn new(base: &str, key: Option<String>) -> anyhow::Result<Operator> {
        Ok(Operator {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            key,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let Some(key) = &self.key else {
            bail!("an operator key is needed (--api-key or FLOTILLA_API_KEY)");
        };
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("authorization", format!("ApiKey {key}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{method} {path}: {}", e.without_url()))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!(
                "{method} {path} answered {}: {}",
                status.as_u16(),
                one_line(&text)
            );
        }
        serde_json::from_str(&text)
            .with_context(|| format!("{method} {path}: the answer is not JSON"))
    }

    /// A new policy for this run: its id.
    pub async fn create_policy(&self, name: &str) -> anyhow::Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/api/fleet/agent_policies",
                Some(json!({"name": name, "namespace": "default", "description": "flotilla loadgen"})),
            )
            .await?;
        v.pointer("/item/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("the new policy has no id")
    }

    pub async fn enrollment_token(&self, policy_id: &str) -> anyhow::Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/api/fleet/enrollment_api_keys",
                Some(json!({"policy_id": policy_id})),
            )
            .await?;
        v.pointer("/item/api_key")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("the new enrollment key has no api_key")
    }

    pub async fn policy_revision(&self, policy_id: &str) -> anyhow::Result<i64> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/api/fleet/agent_policies/{policy_id}"),
                None,
            )
            .await?;
        v.pointer("/item/revision")
            .and_then(Value::as_i64)
            .context("the policy has no revision")
    }

    /// Adds an integration of `package` to the policy.
    pub async fn add_integration(
        &self,
        policy_id: &str,
        package: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            "/api/fleet/package_policies",
            Some(json!({"name": name, "policy_id": policy_id, "package": {"name": package}})),
        )
        .await
        .map(|_| ())
    }

    /// A gauge or counter of the server's `/metrics` (summed over its
    /// label sets); `None` when the server does not expose it.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        parse_metric(&text, name)
    }
}

/// The sum of a metric's samples in the Prometheus text format.
pub fn parse_metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_text() {
        let text = "# TYPE flotilla_checkins_waiting gauge\nflotilla_checkins_waiting 1200\nflotilla_checkins_waiting_other 3\nx{a=\"1\"} 2\nx{a=\"2\"} 3\n";
        assert_eq!(
            super::parse_metric(text, "flotilla_checkins_waiting"),
            Some(1200.0)
        );
        assert_eq!(super::parse_metric(text, "x"), Some(5.0));
        assert_eq!(super::parse_metric(text, "y"), None);
    }
}
