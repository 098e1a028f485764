//! Azure: a client-credentials token from `<login>/<tenant>/oauth2/v2.0/token`
//! (scope `<management>/.default`), then the caller's effective permissions
//! on the subscription (`Microsoft.Authorization/permissions`), evaluated
//! here: an action is granted when one permission entry matches it in
//! `actions` (or `dataActions`) and not in `notActions` (`notDataActions`),
//! with Azure's wildcard (`*`, any run of characters) and no regard to case.

use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::{
    all, endpoint, secret, status_for_error, text, Check, Kind, Outcome, Report, Status, Verifier,
};

pub const METHOD: &str = "azure_permissions";
pub const API_VERSION: &str = "2022-04-01";

/// The `azure` block of a stream. Holds a secret: no `Debug`.
pub struct AzureConfig {
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub subscription_id: Option<String>,
    pub login_endpoint: String,
    pub management_endpoint: String,
}

impl AzureConfig {
    pub fn parse(v: &Value) -> Result<AzureConfig, String> {
        Ok(AzureConfig {
            tenant_id: text(v, "/tenant_id"),
            client_id: text(v, "/client_id"),
            client_secret: secret(v, "/client_secret"),
            subscription_id: text(v, "/subscription_id"),
            login_endpoint: endpoint(
                v,
                "/login_endpoint",
                "https://login.microsoftonline.com".into(),
            )?,
            management_endpoint: endpoint(
                v,
                "/management_endpoint",
                "https://management.azure.com".into(),
            )?,
        })
    }
}

/// Azure's action wildcard: `*` is any run of characters (`/` included);
/// case-insensitive.
pub fn matches(pattern: &str, action: &str) -> bool {
    let p = pattern.to_ascii_lowercase();
    let a = action.to_ascii_lowercase();
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == a;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !a.starts_with(first) || a.len() < first.len() + last.len() || !a.ends_with(last) {
        return false;
    }
    let mut rest = &a[first.len()..a.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// One entry of the permissions answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PermissionEntry {
    pub actions: Vec<String>,
    pub not_actions: Vec<String>,
    pub data_actions: Vec<String>,
    pub not_data_actions: Vec<String>,
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

pub fn entries(answer: &Value) -> Vec<PermissionEntry> {
    answer
        .get("value")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| PermissionEntry {
            actions: strings(e, "actions"),
            not_actions: strings(e, "notActions"),
            data_actions: strings(e, "dataActions"),
            not_data_actions: strings(e, "notDataActions"),
        })
        .collect()
}

/// Whether the permission entries grant `action`.
pub fn granted(entries: &[PermissionEntry], action: &str) -> bool {
    let any = |list: &[String]| list.iter().any(|p| matches(p, action));
    entries.iter().any(|e| {
        (any(&e.actions) && !any(&e.not_actions))
            || (any(&e.data_actions) && !any(&e.not_data_actions))
    })
}

/// An Azure error answer: `{"error": {"code", "message"}}` (ARM) or
/// `{"error": "...", "error_description": "..."}` (the token endpoint).
fn error_of(status: u16, body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    match &v["error"] {
        Value::Object(e) => (
            e.get("code")
                .and_then(Value::as_str)
                .unwrap_or("Error")
                .to_owned(),
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

pub struct AzureVerifier<'a> {
    cfg: &'a AzureConfig,
    http: reqwest::Client,
}

impl<'a> AzureVerifier<'a> {
    pub fn new(cfg: &'a AzureConfig, http: reqwest::Client) -> AzureVerifier<'a> {
        AzureVerifier { cfg, http }
    }

    async fn token(
        &self,
        tenant: &str,
        client: &str,
        secret: &SecretString,
    ) -> Result<SecretString, (String, String)> {
        // The tenant and client ids are secrets of the connector: never in
        // a message (Azure's own errors repeat them, reqwest's the URL).
        self.token_inner(tenant, client, secret)
            .await
            .map_err(|(code, msg)| {
                (
                    code,
                    msg.replace(tenant, "<tenant_id>")
                        .replace(client, "<client_id>"),
                )
            })
    }

    async fn token_inner(
        &self,
        tenant: &str,
        client: &str,
        secret: &SecretString,
    ) -> Result<SecretString, (String, String)> {
        let url = format!("{}/{tenant}/oauth2/v2.0/token", self.cfg.login_endpoint);
        let scope = format!("{}/.default", self.cfg.management_endpoint);
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", client)
            .append_pair("client_secret", secret.expose_secret())
            .append_pair("scope", &scope)
            .finish();
        let resp = self
            .http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| ("RequestFailed".to_owned(), format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(error_of(status, &text));
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        v["access_token"]
            .as_str()
            .map(|t| SecretString::from(t.to_owned()))
            .ok_or_else(|| {
                (
                    "MalformedResponse".into(),
                    "the token answer has no access_token".into(),
                )
            })
    }

    async fn permissions(
        &self,
        url: &str,
        token: &SecretString,
    ) -> Result<Vec<PermissionEntry>, (String, String)> {
        let mut out = Vec::new();
        let mut next = Some(url.to_owned());
        let mut pages = 0;
        while let Some(u) = next.take() {
            pages += 1;
            if pages > 50 {
                return Err((
                    "TooManyPages".into(),
                    "the permissions listing did not end after 50 pages".into(),
                ));
            }
            let resp = self
                .http
                .get(&u)
                .bearer_auth(token.expose_secret())
                .send()
                .await
                .map_err(|e| ("RequestFailed".to_owned(), format!("{url}: {e}")))?;
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            if !(200..300).contains(&status) {
                return Err(error_of(status, &text));
            }
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                (
                    "MalformedResponse".to_owned(),
                    format!("permissions answer: {e}"),
                )
            })?;
            out.extend(entries(&v));
            next = v["nextLink"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
        }
        Ok(out)
    }
}

impl Verifier for AzureVerifier<'_> {
    async fn check(&self, checks: &[Check]) -> Report {
        let started = Instant::now();
        let c = self.cfg;
        let account = c.subscription_id.clone();
        let url = format!(
            "{}/subscriptions/{}/providers/Microsoft.Authorization/permissions?api-version={API_VERSION}",
            c.management_endpoint,
            c.subscription_id.as_deref().unwrap_or("-")
        );
        let report = |outcomes| Report {
            account: account.clone(),
            region: None,
            outcomes,
        };
        let (Some(tenant), Some(client), Some(secret), Some(_)) = (
            &c.tenant_id,
            &c.client_id,
            &c.client_secret,
            &c.subscription_id,
        ) else {
            return report(all(
                checks,
                Outcome::new(Status::Error, METHOD, &c.login_endpoint)
                    .code("MissingCredentials")
                    .message("the connector needs tenant_id, client_id, client_secret and subscription_id"),
            ));
        };
        let token = match self.token(tenant, client, secret).await {
            Ok(t) => t,
            Err((code, message)) => {
                return report(all(
                    checks,
                    Outcome::new(Status::Error, METHOD, &c.login_endpoint)
                        .code(code)
                        .message(format!("Azure token request failed: {message}"))
                        .took(started),
                ))
            }
        };
        let entries = match self.permissions(&url, &token).await {
            Ok(e) => e,
            Err((code, message)) => {
                return report(all(
                    checks,
                    Outcome::new(status_for_error(&code), METHOD, &url)
                        .code(code)
                        .message(format!(
                            "reading the subscription's permissions failed: {message}"
                        ))
                        .took(started),
                ))
            }
        };
        let took = started.elapsed().as_millis() as u64;
        report(
            checks
                .iter()
                .map(|ch| {
                    let mut o = match ch.kind {
                        Kind::Permission if granted(&entries, &ch.action) => {
                            Outcome::new(Status::Granted, METHOD, &url)
                        }
                        Kind::Permission => Outcome::new(Status::Denied, METHOD, &url)
                            .code("ActionNotPermitted")
                            .message(format!(
                                "no role assignment on the subscription grants {}",
                                ch.action
                            )),
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
    fn azure_wildcards() {
        assert!(matches("*", "Microsoft.Compute/virtualMachines/read"));
        assert!(matches(
            "Microsoft.Compute/*",
            "microsoft.compute/virtualMachines/read"
        ));
        assert!(matches(
            "*/read",
            "Microsoft.Insights/eventtypes/values/Read"
        ));
        assert!(matches(
            "Microsoft.Compute/*/read",
            "Microsoft.Compute/disks/read"
        ));
        assert!(!matches(
            "Microsoft.Compute/*/read",
            "Microsoft.Compute/disks/write"
        ));
        assert!(!matches(
            "Microsoft.Compute/*",
            "Microsoft.Storage/storageAccounts/read"
        ));
        assert!(matches(
            "Microsoft.Storage/storageAccounts/read",
            "MICROSOFT.STORAGE/storageaccounts/READ"
        ));
        assert!(!matches(
            "Microsoft.Storage/storageAccounts/read",
            "Microsoft.Storage/storageAccounts/readx"
        ));
        assert!(!matches("a*b*c", "ac"));
        assert!(matches("a*b*c", "abc"));
    }

    #[test]
    fn not_actions_subtract_per_entry() {
        let answer = serde_json::json!({"value": [
            {"actions": ["*/read"], "notActions": ["Microsoft.Authorization/*"]},
            {"actions": ["Microsoft.Insights/*"], "notActions": [], "dataActions": ["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"]},
        ]});
        let e = entries(&answer);
        assert!(granted(&e, "Microsoft.Compute/virtualMachines/read"));
        assert!(
            !granted(&e, "Microsoft.Authorization/roleAssignments/read"),
            "excluded by notActions"
        );
        assert!(granted(&e, "Microsoft.Insights/diagnosticSettings/write"));
        assert!(!granted(&e, "Microsoft.Compute/virtualMachines/write"));
        assert!(granted(
            &e,
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"
        ));
        // One role's notActions does not take away what another grants.
        let two = entries(&serde_json::json!({"value": [
            {"actions": ["*"], "notActions": ["Microsoft.Authorization/*/write"]},
            {"actions": ["Microsoft.Authorization/roleAssignments/write"]},
        ]}));
        assert!(granted(
            &two,
            "Microsoft.Authorization/roleAssignments/write"
        ));
        assert_eq!(
            error_of(
                401,
                r#"{"error":"invalid_client","error_description":"AADSTS7000215"}"#
            )
            .0,
            "invalid_client"
        );
        assert_eq!(
            error_of(
                403,
                r#"{"error":{"code":"AuthorizationFailed","message":"no"}}"#
            )
            .0,
            "AuthorizationFailed"
        );
        assert_eq!(error_of(502, "bad gateway").0, "HTTP502");
    }
}
