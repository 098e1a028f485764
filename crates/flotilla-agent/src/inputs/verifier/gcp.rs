//! GCP: the agent's subject token (a file named by
//! `FLOTILLA_VERIFIER_GCP_SUBJECT_TOKEN_FILE`, else
//! `CLOUD_CONNECTORS_ID_TOKEN_FILE`) exchanged at `<sts>/v1/token` for a
//! federated token with the connector's audience, the service account
//! impersonated (`generateAccessToken`), then
//! `projects/<project>:testIamPermissions`: the permissions it returns are
//! granted, the others denied (`PermissionNotGranted`).

use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::{
    all, endpoint, status_for_error, text, Check, Env, Kind, Outcome, Report, Status, Verifier,
};

pub const METHOD: &str = "test_iam_permissions";
pub const TOKEN_FILE_ENV: &str = "FLOTILLA_VERIFIER_GCP_SUBJECT_TOKEN_FILE";
pub const PLATFORM_TOKEN_FILE_ENV: &str = "CLOUD_CONNECTORS_ID_TOKEN_FILE";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The `gcp` block of a stream.
#[derive(Debug)]
pub struct GcpConfig {
    pub service_account: Option<String>,
    pub audience: Option<String>,
    pub project_id: Option<String>,
    pub sts_endpoint: String,
    pub iamcredentials_endpoint: String,
    pub resourcemanager_endpoint: String,
}

impl GcpConfig {
    pub fn parse(v: &Value) -> Result<GcpConfig, String> {
        Ok(GcpConfig {
            service_account: text(v, "/service_account"),
            audience: text(v, "/audience"),
            project_id: text(v, "/project_id"),
            sts_endpoint: endpoint(v, "/sts_endpoint", "https://sts.googleapis.com".into())?,
            iamcredentials_endpoint: endpoint(
                v,
                "/iamcredentials_endpoint",
                "https://iamcredentials.googleapis.com".into(),
            )?,
            resourcemanager_endpoint: endpoint(
                v,
                "/resourcemanager_endpoint",
                "https://cloudresourcemanager.googleapis.com".into(),
            )?,
        })
    }
}

/// A Google error answer: `{"error": {"status", "message"}}` (APIs) or
/// `{"error": "...", "error_description": "..."}` (STS).
fn error_of(status: u16, body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    match &v["error"] {
        Value::Object(e) => (
            e.get("status")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP{status}")),
            e.get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        ),
        Value::String(code) => (
            code.clone(),
            v["error_description"].as_str().unwrap_or("").to_owned(),
        ),
        _ => (format!("HTTP{status}"), format!("answered {status}")),
    }
}

pub struct GcpVerifier<'a> {
    cfg: &'a GcpConfig,
    env: Env,
    http: reqwest::Client,
}

type Failure = (String, String);

impl<'a> GcpVerifier<'a> {
    pub fn new(cfg: &'a GcpConfig, env: Env, http: reqwest::Client) -> GcpVerifier<'a> {
        GcpVerifier { cfg, env, http }
    }

    async fn post(
        &self,
        url: &str,
        bearer: Option<&SecretString>,
        body: &Value,
    ) -> Result<Value, Failure> {
        let mut req = self.http.post(url).json(body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t.expose_secret());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ("RequestFailed".to_owned(), format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(error_of(status, &text));
        }
        serde_json::from_str(&text)
            .map_err(|e| ("MalformedResponse".to_owned(), format!("{url}: {e}")))
    }

    fn subject_token(&self) -> Result<SecretString, Failure> {
        let path = (self.env)(TOKEN_FILE_ENV)
            .or_else(|| (self.env)(PLATFORM_TOKEN_FILE_ENV))
            .ok_or_else(|| {
                (
                    "MissingSubjectToken".to_owned(),
                    format!(
                        "neither {TOKEN_FILE_ENV} nor {PLATFORM_TOKEN_FILE_ENV} names a token file"
                    ),
                )
            })?;
        let token = std::fs::read_to_string(&path)
            .map_err(|e| ("MissingSubjectToken".to_owned(), format!("{path}: {e}")))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(("MissingSubjectToken".into(), format!("{path} is empty")));
        }
        Ok(SecretString::from(token.to_owned()))
    }

    /// The access token to test with: federated, then impersonated.
    async fn access_token(&self, audience: &str) -> Result<SecretString, Failure> {
        let subject = self.subject_token()?;
        let sts = format!("{}/v1/token", self.cfg.sts_endpoint);
        let fed = self
            .post(
                &sts,
                None,
                &json!({
                    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                    "audience": audience,
                    "scope": SCOPE,
                    "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
                    "subject_token": subject.expose_secret(),
                    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                }),
            )
            .await
            .map_err(|(c, m)| (c, format!("STS token exchange failed: {m}")))?;
        let fed = fed["access_token"]
            .as_str()
            .map(|t| SecretString::from(t.to_owned()))
            .ok_or_else(|| {
                (
                    "MalformedResponse".to_owned(),
                    "the STS answer has no access_token".to_owned(),
                )
            })?;
        let Some(sa) = &self.cfg.service_account else {
            return Ok(fed);
        };
        let url = format!(
            "{}/v1/projects/-/serviceAccounts/{sa}:generateAccessToken",
            self.cfg.iamcredentials_endpoint
        );
        let v = self
            .post(
                &url,
                Some(&fed),
                &json!({"scope": [SCOPE], "lifetime": "900s"}),
            )
            .await
            .map_err(|(c, m)| (c, format!("impersonating {sa} failed: {m}")))?;
        v["accessToken"]
            .as_str()
            .map(|t| SecretString::from(t.to_owned()))
            .ok_or_else(|| {
                (
                    "MalformedResponse".to_owned(),
                    "the generateAccessToken answer has no accessToken".to_owned(),
                )
            })
    }
}

impl Verifier for GcpVerifier<'_> {
    async fn check(&self, checks: &[Check]) -> Report {
        let started = Instant::now();
        let c = self.cfg;
        let account = c.project_id.clone();
        let report = |outcomes| Report {
            account: account.clone(),
            region: None,
            outcomes,
        };
        let (Some(project), Some(audience)) = (&c.project_id, &c.audience) else {
            return report(all(
                checks,
                Outcome::new(Status::Error, METHOD, &c.sts_endpoint)
                    .code("MissingCredentials")
                    .message("the connector needs audience and project_id"),
            ));
        };
        let token = match self.access_token(audience).await {
            Ok(t) => t,
            Err((code, message)) => {
                return report(all(
                    checks,
                    Outcome::new(Status::Error, METHOD, &c.sts_endpoint)
                        .code(code)
                        .message(message)
                        .took(started),
                ))
            }
        };
        let url = format!(
            "{}/v1/projects/{project}:testIamPermissions",
            c.resourcemanager_endpoint
        );
        let wanted: Vec<&str> = checks
            .iter()
            .filter(|c| c.kind == Kind::Permission)
            .map(|c| c.action.as_str())
            .collect();
        let mut granted = std::collections::BTreeSet::new();
        // testIamPermissions takes at most 100 permissions a call.
        for chunk in wanted.chunks(100) {
            match self
                .post(&url, Some(&token), &json!({"permissions": chunk}))
                .await
            {
                Ok(v) => granted.extend(
                    v["permissions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_owned),
                ),
                Err((code, message)) => {
                    return report(all(
                        checks,
                        Outcome::new(status_for_error(&code), METHOD, &url)
                            .code(code)
                            .message(format!("testIamPermissions failed: {message}"))
                            .took(started),
                    ))
                }
            }
        }
        let took = started.elapsed().as_millis() as u64;
        report(
            checks
                .iter()
                .map(|ch| {
                    let mut o = match ch.kind {
                        Kind::Permission if granted.contains(&ch.action) => {
                            Outcome::new(Status::Granted, METHOD, &url)
                        }
                        Kind::Permission => Outcome::new(Status::Denied, METHOD, &url)
                            .code("PermissionNotGranted")
                            .message(format!("{} is not granted on project {project}", ch.action)),
                        _ => Outcome::new(Status::Skipped, METHOD, &url)
                            .code("UnsupportedCheck")
                            .message("policy attachment checks are AWS-only"),
                    };
                    o.duration_ms = took;
                    o
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_errors() {
        assert_eq!(
            error_of(
                400,
                r#"{"error":"invalid_grant","error_description":"The audience in ID Token does not match"}"#
            ),
            (
                "invalid_grant".into(),
                "The audience in ID Token does not match".into()
            )
        );
        assert_eq!(
            error_of(403, r#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied","status":"PERMISSION_DENIED"}}"#).0,
            "PERMISSION_DENIED"
        );
        assert_eq!(error_of(500, "").0, "HTTP500");
    }
}
