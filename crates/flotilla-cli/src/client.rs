//! A small client for the management API.

use anyhow::{anyhow, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl Client {
    pub fn new(base: &str, api_key: Option<String>) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(anyhow!(
                "--url must start with http:// or https:// (got '{base}')"
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .user_agent(concat!("flotilla-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base,
            api_key,
        })
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        self.request(Method::GET, path, query, Body::None).await
    }

    pub async fn post(&self, path: &str, body: &impl serde::Serialize) -> Result<Value> {
        let body = serde_json::to_value(body)?;
        self.request(Method::POST, path, &[], Body::Json(&body))
            .await
    }

    pub async fn put(&self, path: &str, body: &impl serde::Serialize) -> Result<Value> {
        let body = serde_json::to_value(body)?;
        self.request(Method::PUT, path, &[], Body::Json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.request(Method::DELETE, path, &[], Body::None).await
    }

    /// POST raw bytes (a package archive).
    pub async fn post_bytes(
        &self,
        path: &str,
        content_type: &'static str,
        bytes: Vec<u8>,
    ) -> Result<Value> {
        self.request(Method::POST, path, &[], Body::Raw(content_type, bytes))
            .await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Body<'_>,
    ) -> Result<Value> {
        let api_key = self
            .api_key
            .as_deref()
            .ok_or_else(|| anyhow!("no API key: pass --api-key or set FLOTILLA_API_KEY"))?;
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", format!("ApiKey {api_key}"))
            .query(query);
        match body {
            Body::None => {}
            Body::Json(body) => req = req.json(body),
            Body::Raw(content_type, bytes) => {
                req = req.header("content-type", content_type).body(bytes)
            }
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the server at {}: {}",
                self.base,
                root_cause(&e)
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.context("reading the server's response")?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .map_err(|_| anyhow!("the server answered {status} with a non-JSON body"))?
        };
        if !status.is_success() {
            let message = value
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
            let hint = if status == StatusCode::UNAUTHORIZED {
                " (check --api-key / FLOTILLA_API_KEY)"
            } else {
                ""
            };
            return Err(anyhow!("{message} (HTTP {}){hint}", status.as_u16()));
        }
        Ok(value)
    }
}

enum Body<'a> {
    None,
    Json(&'a Value),
    Raw(&'static str, Vec<u8>),
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
