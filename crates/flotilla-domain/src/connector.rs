//! Cloud connectors: one cloud account's credentials, which integrations
//! reference by `cloud_connector_id`, and the rules of verifying that they
//! hold the permissions those integrations need — which connector is due
//! ([`eligibility`]), how the verifier's answers are stored
//! ([`map_status`]) and what they add up to ([`roll_up`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use crate::{validate_name, ValidationError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CloudProvider {
    Aws,
    Azure,
    Gcp,
}

impl CloudProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            CloudProvider::Aws => "aws",
            CloudProvider::Azure => "azure",
            CloudProvider::Gcp => "gcp",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "aws" => Some(CloudProvider::Aws),
            "azure" => Some(CloudProvider::Azure),
            "gcp" => Some(CloudProvider::Gcp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AccountType {
    SingleAccount,
    OrganizationAccount,
}

impl AccountType {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountType::SingleAccount => "single-account",
            AccountType::OrganizationAccount => "organization-account",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "single-account" => Some(AccountType::SingleAccount),
            "organization-account" => Some(AccountType::OrganizationAccount),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerificationStatus {
    Pending,
    Success,
    Failed,
}

impl VerificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationStatus::Pending => "pending",
            VerificationStatus::Success => "success",
            VerificationStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(VerificationStatus::Pending),
            "success" => Some(VerificationStatus::Success),
            "failed" => Some(VerificationStatus::Failed),
            _ => None,
        }
    }
}

/// A permission as stored on the connector (the verifier's status mapped
/// by [`map_status`]; `required` when expected and never reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PermissionStatus {
    Verified,
    Denied,
    Skipped,
    Error,
    Required,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PermissionResult {
    pub action: String,
    pub status: PermissionStatus,
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The latest results for one integration using the connector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PermissionSummary {
    pub package_policy_id: String,
    pub policy_id: String,
    pub policy_template: String,
    pub package_name: String,
    #[serde(default)]
    pub package_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_at: Option<String>,
    pub permissions: Vec<PermissionResult>,
}

/// A connector as the API shows it (Kibana's field names): secrets only
/// as references.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CloudConnector {
    pub id: String,
    pub name: String,
    #[serde(rename = "cloudProvider")]
    pub cloud_provider: CloudProvider,
    #[serde(rename = "accountType", skip_serializing_if = "Option::is_none")]
    pub account_type: Option<AccountType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[schema(value_type = Object)]
    pub vars: Map<String, Value>,
    /// Integrations using it.
    #[serde(rename = "packagePolicyCount")]
    pub package_policy_count: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_status: Option<VerificationStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_failed_at: Option<DateTime<Utc>>,
    /// The verification in progress or last finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_id: Option<String>,
    /// Why the last verification failed, when it did not get as far as
    /// checking permissions (or a one-line summary when it did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_message: Option<String>,
    pub verification_permissions: Vec<PermissionSummary>,
}

impl CloudConnector {
    pub fn verification(&self) -> VerificationState {
        VerificationState {
            created_at: self.created_at,
            updated_at: self.updated_at,
            status: self.verification_status,
            started_at: self.verification_started_at,
            failed_at: self.verification_failed_at,
        }
    }
}

pub fn validate_connector_name(name: &str) -> Result<String, ValidationError> {
    validate_name("name", name, 255)
}

// --- variables --------------------------------------------------------------

/// One variable a provider's connector may hold.
#[derive(Debug, Clone, Copy)]
pub struct VarSpec {
    pub name: &'static str,
    pub secret: bool,
}

const fn text(name: &'static str) -> VarSpec {
    VarSpec {
        name,
        secret: false,
    }
}
const fn secret(name: &'static str) -> VarSpec {
    VarSpec { name, secret: true }
}

/// The variables of each provider's connectors (Kibana's names, plus the
/// access-key pair and Azure's client secret and subscription, which the
/// verifier needs).
pub fn provider_vars(provider: CloudProvider) -> &'static [VarSpec] {
    const AWS: &[VarSpec] = &[
        text("role_arn"),
        secret("external_id"),
        text("access_key_id"),
        secret("secret_access_key"),
        text("default_region"),
    ];
    const AZURE: &[VarSpec] = &[
        secret("tenant_id"),
        secret("client_id"),
        secret("client_secret"),
        text("subscription_id"),
        text("azure_credentials_cloud_connector_id"),
    ];
    const GCP: &[VarSpec] = &[
        text("service_account"),
        text("audience"),
        text("project_id"),
        secret("gcp_credentials_cloud_connector_id"),
    ];
    match provider {
        CloudProvider::Aws => AWS,
        CloudProvider::Azure => AZURE,
        CloudProvider::Gcp => GCP,
    }
}

/// A secret to seal: its new id and plaintext.
#[derive(Debug, Clone, PartialEq)]
pub struct NewConnectorSecret {
    pub id: String,
    pub value: String,
}

/// Variables as stored: `{type, value}`, each secret's value a reference
/// `{isSecretRef: true, id}`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedVars {
    pub vars: Map<String, Value>,
    pub new_secrets: Vec<NewConnectorSecret>,
    /// Ids of the current secrets no longer referenced.
    pub dropped_secrets: Vec<String>,
}

fn secret_ref(v: &Value) -> Option<&str> {
    let o = v.as_object()?;
    if o.get("isSecretRef").and_then(Value::as_bool) == Some(true) {
        o.get("id").and_then(Value::as_str)
    } else {
        None
    }
}

/// A var's value as given: a bare string, or Kibana's `{type, value}`.
fn given_value(name: &str, v: &Value) -> Result<Option<Value>, ValidationError> {
    let field = format!("vars.{name}");
    let value = match v {
        Value::Object(o) if o.contains_key("value") || o.contains_key("type") => {
            for k in o.keys() {
                if k != "value" && k != "type" && k != "frozen" {
                    return Err(ValidationError::new(
                        &field,
                        format!("unknown key '{k}' (expected type and value)"),
                    ));
                }
            }
            o.get("value").cloned().unwrap_or(Value::Null)
        }
        other => other.clone(),
    };
    match &value {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) if s.chars().count() > 4096 => Err(ValidationError::new(
            &field,
            "must be at most 4096 characters",
        )),
        Value::String(s) if s.chars().any(char::is_control) => Err(ValidationError::new(
            &field,
            "must not contain control characters",
        )),
        Value::String(_) => Ok(Some(value)),
        Value::Object(_) if secret_ref(&value).is_some() => Ok(Some(value)),
        _ => Err(ValidationError::new(&field, "must be a string")),
    }
}

/// Check a create's (`current: None`) or an update's variables: names the
/// provider knows, plaintext secrets replaced by references to new secrets,
/// a reference only to a secret the connector already holds, an update
/// starting from the current values (`null` or `""` removes one), and what
/// the provider needs present.
pub fn check_vars(
    provider: CloudProvider,
    given: &Map<String, Value>,
    current: Option<&Map<String, Value>>,
    new_id: &mut dyn FnMut() -> String,
) -> Result<CheckedVars, ValidationError> {
    let specs = provider_vars(provider);
    let mut vars = current.cloned().unwrap_or_default();
    let mut new_secrets = Vec::new();
    for (name, v) in given {
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
            return Err(ValidationError::new(
                format!("vars.{name}"),
                format!(
                    "unknown variable for {} connectors (known: {})",
                    provider.as_str(),
                    known.join(", ")
                ),
            ));
        };
        let field = format!("vars.{name}");
        match given_value(name, v)? {
            None => {
                vars.remove(name.as_str());
            }
            Some(value) => {
                if let Some(id) = secret_ref(&value) {
                    let held = current
                        .and_then(|c| c.get(name.as_str()))
                        .and_then(|c| c.get("value"))
                        .and_then(secret_ref);
                    if !spec.secret || held != Some(id) {
                        return Err(ValidationError::new(
                            &field,
                            "a secret reference must name the secret this connector holds",
                        ));
                    }
                    continue;
                }
                let s = value.as_str().unwrap_or_default().to_owned();
                if spec.secret {
                    let id = new_id();
                    vars.insert(
                        name.clone(),
                        json!({"type": "password", "value": {"isSecretRef": true, "id": id}}),
                    );
                    new_secrets.push(NewConnectorSecret { id, value: s });
                } else {
                    vars.insert(name.clone(), json!({"type": "text", "value": s}));
                }
            }
        }
    }
    let plain = |n: &str| -> Option<String> {
        vars.get(n)
            .and_then(|v| v.get("value"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let has = |n: &str| vars.get(n).is_some();
    let new_plain = |n: &str| -> Option<&str> {
        new_secrets
            .iter()
            .find(|s| {
                vars.get(n)
                    .and_then(|v| v.get("value"))
                    .and_then(secret_ref)
                    == Some(s.id.as_str())
            })
            .map(|s| s.value.as_str())
    };
    let need = |names: &[&str]| -> Result<(), ValidationError> {
        for n in names {
            if !has(n) {
                return Err(ValidationError::new(
                    format!("vars.{n}"),
                    format!("is required for {} connectors", provider.as_str()),
                ));
            }
        }
        Ok(())
    };
    match provider {
        CloudProvider::Aws => {
            let role = has("role_arn");
            let keys = has("access_key_id") || has("secret_access_key");
            if !role && !keys {
                return Err(ValidationError::new(
                    "vars.role_arn",
                    "an AWS connector needs role_arn and external_id, or access_key_id and secret_access_key",
                ));
            }
            if keys {
                need(&["access_key_id", "secret_access_key"])?;
            }
            if role {
                // The confused-deputy defence: a role is only ever assumed
                // with the external ID its trust policy demands.
                need(&["external_id"])?;
                let arn = plain("role_arn").unwrap_or_default();
                validate_role_arn(&arn)?;
            }
            if let Some(x) = new_plain("external_id") {
                validate_external_id(x)?;
            }
            if let Some(r) = plain("default_region") {
                validate_region(&r)?;
            }
        }
        CloudProvider::Azure => {
            need(&["tenant_id", "client_id", "client_secret", "subscription_id"])?
        }
        CloudProvider::Gcp => need(&["service_account", "audience", "project_id"])?,
    }
    let dropped_secrets = current
        .map(|c| {
            c.values()
                .filter_map(|v| v.get("value").and_then(secret_ref))
                .filter(|id| {
                    !vars
                        .values()
                        .any(|v| v.get("value").and_then(secret_ref) == Some(*id))
                })
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(CheckedVars {
        vars,
        new_secrets,
        dropped_secrets,
    })
}

/// `arn:<partition>:iam::<12 digits>:role/<path and name>`.
pub fn validate_role_arn(arn: &str) -> Result<(), ValidationError> {
    let bad = || {
        ValidationError::new(
            "vars.role_arn",
            "must be an IAM role ARN (arn:aws:iam::<account id>:role/<name>)",
        )
    };
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    let name = resource.strip_prefix("role/").ok_or_else(bad)?;
    if !partition.starts_with("aws")
        || account.len() != 12
        || !account.bytes().all(|b| b.is_ascii_digit())
        || name.is_empty()
        || name.len() > 512
    {
        return Err(bad());
    }
    Ok(())
}

/// An AWS region name (`us-east-1`, `us-gov-west-1`, `cn-north-1`): it
/// becomes part of a host name, so nothing else gets through.
pub fn validate_region(r: &str) -> Result<(), ValidationError> {
    let ok = (4..=32).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !r.starts_with('-')
        && !r.ends_with('-')
        && r.contains('-');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "vars.default_region",
            "must be an AWS region name such as us-east-1",
        ))
    }
}

/// STS's rule: 2–1224 characters of `[\w+=,.@:/-]`.
pub fn validate_external_id(x: &str) -> Result<(), ValidationError> {
    let ok = (2..=1224).contains(&x.len())
        && x.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b'+' | b'=' | b',' | b'.' | b'@' | b':' | b'/' | b'-'
                )
        });
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "vars.external_id",
            "must be 2-1224 characters of letters, digits and _+=,.@:/-",
        ))
    }
}

// --- eligibility ------------------------------------------------------------

/// How often and how soon connectors are verified.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerifierWindows {
    /// A change this recent, or a verification started longer ago than
    /// this without an outcome, makes a connector due (Kibana: 5 min).
    pub window: Duration,
    /// A failed connector is retried this long after it failed.
    pub failed_cooldown: Duration,
    /// A verified connector is verified again this long after its last
    /// verification started.
    pub reverify_after: Duration,
}

impl Default for VerifierWindows {
    fn default() -> Self {
        VerifierWindows {
            window: Duration::from_secs(300),
            failed_cooldown: Duration::from_secs(3600),
            reverify_after: Duration::from_secs(86_400),
        }
    }
}

/// What eligibility reads of a connector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerificationState {
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub status: Option<VerificationStatus>,
    pub started_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
}

/// Why a connector is due, the first rule that holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    /// 1. Never started.
    NeverStarted,
    /// 2. Created within the window, after the last start (a connector
    ///    re-created under the same id).
    Created,
    /// 3. Updated within the window, after the last start.
    Updated,
    /// 4. Pending, started longer ago than the window: its outcome never
    ///    came (a server stopped mid-way).
    StalePending,
    /// 5. Failed longer ago than the cooldown.
    RetryFailed,
    /// 6. No status (started, but its status was cleared).
    NoStatus,
    /// Verified, longer ago than the re-verification period.
    Periodic,
}

fn older_than(t: DateTime<Utc>, now: DateTime<Utc>, d: Duration) -> bool {
    now.signed_duration_since(t)
        .to_std()
        .is_ok_and(|age| age > d)
}

fn within(t: DateTime<Utc>, now: DateTime<Utc>, d: Duration) -> bool {
    !older_than(t, now, d)
}

/// Kibana's six rules, refined so that none fires again on its own
/// outcome: "created or updated within the window" also needs the change
/// to be newer than the last start (Kibana re-verifies a connector updated
/// a minute ago on every run for five minutes); "started longer ago than
/// the window and not failed" applies to `pending` only (applied to
/// `success` too it would re-verify every connector on every run, leaving
/// nothing for the re-verification period to decide). Writing the
/// verification status never moves `updated_at`.
pub fn eligibility(
    s: &VerificationState,
    now: DateTime<Utc>,
    w: &VerifierWindows,
) -> Option<Eligibility> {
    let Some(started) = s.started_at else {
        return Some(Eligibility::NeverStarted);
    };
    if s.created_at > started && within(s.created_at, now, w.window) {
        return Some(Eligibility::Created);
    }
    if s.updated_at > started && within(s.updated_at, now, w.window) {
        return Some(Eligibility::Updated);
    }
    match s.status {
        Some(VerificationStatus::Pending) if older_than(started, now, w.window) => {
            Some(Eligibility::StalePending)
        }
        Some(VerificationStatus::Failed)
            if s.failed_at
                .is_none_or(|f| older_than(f, now, w.failed_cooldown)) =>
        {
            Some(Eligibility::RetryFailed)
        }
        None => Some(Eligibility::NoStatus),
        Some(VerificationStatus::Success) if older_than(started, now, w.reverify_after) => {
            Some(Eligibility::Periodic)
        }
        _ => None,
    }
}

// --- results ----------------------------------------------------------------

/// The verifier's per-permission status as stored (Kibana's table).
pub fn map_status(receiver_status: &str, required: bool) -> PermissionStatus {
    match receiver_status {
        "granted" => PermissionStatus::Verified,
        "denied" if required => PermissionStatus::Denied,
        "denied" => PermissionStatus::Skipped,
        "skipped" => PermissionStatus::Skipped,
        _ => PermissionStatus::Error,
    }
}

/// `success` when every required permission was verified; `failed` when
/// one was denied, could not be checked or never reported.
pub fn roll_up(summaries: &[PermissionSummary]) -> VerificationStatus {
    let bad = summaries.iter().flat_map(|s| &s.permissions).any(|p| {
        p.required
            && matches!(
                p.status,
                PermissionStatus::Denied | PermissionStatus::Error | PermissionStatus::Required
            )
    });
    if bad {
        VerificationStatus::Failed
    } else {
        VerificationStatus::Success
    }
}

/// A one-line account of what failed, for `verification_message`.
pub fn failure_summary(summaries: &[PermissionSummary]) -> Option<String> {
    let failed: Vec<String> = summaries
        .iter()
        .flat_map(|s| s.permissions.iter().map(move |p| (s, p)))
        .filter(|(_, p)| {
            p.required
                && matches!(
                    p.status,
                    PermissionStatus::Denied | PermissionStatus::Error | PermissionStatus::Required
                )
        })
        .map(|(s, p)| {
            let status = match p.status {
                PermissionStatus::Denied => "denied",
                PermissionStatus::Error => "error",
                _ => "not reported",
            };
            match &p.error_code {
                Some(c) => format!(
                    "{}/{} {} {status} ({c})",
                    s.package_name, s.policy_template, p.action
                ),
                None => format!(
                    "{}/{} {} {status}",
                    s.package_name, s.policy_template, p.action
                ),
            }
        })
        .collect();
    if failed.is_empty() {
        return None;
    }
    let n = failed.len();
    let mut shown: Vec<String> = failed.into_iter().take(5).collect();
    if n > 5 {
        shown.push(format!("and {} more", n - 5));
    }
    Some(format!(
        "{n} required permission(s) missing: {}",
        shown.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn state() -> VerificationState {
        VerificationState {
            created_at: t(0),
            updated_at: t(0),
            status: Some(VerificationStatus::Success),
            started_at: Some(t(10)),
            failed_at: None,
        }
    }

    const MIN: i64 = 60;

    #[test]
    fn rule_1_never_started_is_due() {
        let s = VerificationState {
            started_at: None,
            status: None,
            ..state()
        };
        assert_eq!(
            eligibility(&s, t(1), &VerifierWindows::default()),
            Some(Eligibility::NeverStarted)
        );
    }

    #[test]
    fn rule_2_created_within_the_window_after_the_last_start() {
        let w = VerifierWindows::default();
        // Re-created under the same id after a start: due while recent.
        let s = VerificationState {
            created_at: t(100),
            updated_at: t(100),
            started_at: Some(t(50)),
            ..state()
        };
        assert_eq!(
            eligibility(&s, t(100 + 4 * MIN), &w),
            Some(Eligibility::Created)
        );
        assert_eq!(eligibility(&s, t(100 + 6 * MIN), &w), None);
        // Created recently but started since: not due again.
        let s = VerificationState {
            created_at: t(0),
            started_at: Some(t(1)),
            ..state()
        };
        assert_eq!(eligibility(&s, t(2 * MIN), &w), None);
    }

    #[test]
    fn rule_3_updated_within_the_window_after_the_last_start() {
        let w = VerifierWindows::default();
        let s = VerificationState {
            updated_at: t(20),
            started_at: Some(t(10)),
            ..state()
        };
        assert_eq!(eligibility(&s, t(20 + MIN), &w), Some(Eligibility::Updated));
        // Outside the window the change no longer counts by itself.
        assert_eq!(eligibility(&s, t(20 + 6 * MIN), &w), None);
        // Started after the update: the change is being verified.
        let s = VerificationState {
            updated_at: t(20),
            started_at: Some(t(30)),
            ..state()
        };
        assert_eq!(eligibility(&s, t(20 + MIN), &w), None);
    }

    #[test]
    fn rule_4_a_pending_verification_older_than_the_window_is_due() {
        let w = VerifierWindows::default();
        let s = VerificationState {
            status: Some(VerificationStatus::Pending),
            ..state()
        };
        assert_eq!(eligibility(&s, t(10 + 4 * MIN), &w), None);
        assert_eq!(
            eligibility(&s, t(10 + 6 * MIN), &w),
            Some(Eligibility::StalePending)
        );
        // A success as old is not (that is the re-verification period's call).
        let s = state();
        assert_eq!(eligibility(&s, t(10 + 6 * MIN), &w), None);
    }

    #[test]
    fn rule_5_failed_longer_ago_than_the_cooldown_is_due() {
        let w = VerifierWindows {
            failed_cooldown: Duration::from_secs(3600),
            ..Default::default()
        };
        let s = VerificationState {
            status: Some(VerificationStatus::Failed),
            failed_at: Some(t(20)),
            ..state()
        };
        assert_eq!(eligibility(&s, t(20 + 59 * MIN), &w), None);
        assert_eq!(
            eligibility(&s, t(20 + 61 * MIN), &w),
            Some(Eligibility::RetryFailed)
        );
    }

    #[test]
    fn rule_6_no_status_is_due() {
        let s = VerificationState {
            status: None,
            ..state()
        };
        assert_eq!(
            eligibility(&s, t(11), &VerifierWindows::default()),
            Some(Eligibility::NoStatus)
        );
    }

    #[test]
    fn a_verified_connector_is_verified_again_after_the_period() {
        let w = VerifierWindows {
            reverify_after: Duration::from_secs(86_400),
            ..Default::default()
        };
        let s = state();
        assert_eq!(eligibility(&s, t(10 + 86_000), &w), None);
        assert_eq!(
            eligibility(&s, t(10 + 86_401), &w),
            Some(Eligibility::Periodic)
        );
    }

    #[test]
    fn statuses_map_as_kibana_stores_them() {
        assert_eq!(map_status("granted", true), PermissionStatus::Verified);
        assert_eq!(map_status("granted", false), PermissionStatus::Verified);
        assert_eq!(map_status("denied", true), PermissionStatus::Denied);
        assert_eq!(map_status("denied", false), PermissionStatus::Skipped);
        assert_eq!(map_status("error", false), PermissionStatus::Error);
        assert_eq!(map_status("skipped", true), PermissionStatus::Skipped);
        assert_eq!(map_status("nonsense", true), PermissionStatus::Error);
    }

    fn summary(perms: Vec<(&str, PermissionStatus, bool)>) -> PermissionSummary {
        PermissionSummary {
            package_policy_id: "pp".into(),
            policy_id: "p".into(),
            policy_template: "cloudtrail".into(),
            package_name: "aws".into(),
            package_version: "2.0.0".into(),
            last_verified_at: None,
            permissions: perms
                .into_iter()
                .map(|(a, status, required)| PermissionResult {
                    action: a.into(),
                    status,
                    required,
                    error_code: None,
                    message: None,
                })
                .collect(),
        }
    }

    #[test]
    fn roll_up_fails_on_any_required_permission_not_verified() {
        use PermissionStatus::*;
        let ok = summary(vec![
            ("a", Verified, true),
            ("b", Skipped, false),
            ("c", Denied, false),
        ]);
        assert_eq!(
            roll_up(std::slice::from_ref(&ok)),
            VerificationStatus::Success
        );
        assert_eq!(failure_summary(&[ok]), None);
        for bad in [Denied, Error, Required] {
            let s = summary(vec![("a", Verified, true), ("s3:GetObject", bad, true)]);
            assert_eq!(
                roll_up(std::slice::from_ref(&s)),
                VerificationStatus::Failed
            );
            assert!(failure_summary(&[s]).unwrap().contains("s3:GetObject"));
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("s{n}")
        }
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn aws_vars_seal_the_external_id_and_need_it_with_a_role() {
        let given = map(json!({
            "role_arn": {"type": "text", "value": "arn:aws:iam::123456789012:role/flotilla"},
            "external_id": {"type": "password", "value": "tenant-secret-1"}
        }));
        let c = check_vars(CloudProvider::Aws, &given, None, &mut ids()).unwrap();
        assert_eq!(
            c.vars["external_id"]["value"],
            json!({"isSecretRef": true, "id": "s1"})
        );
        assert_eq!(
            c.new_secrets,
            vec![NewConnectorSecret {
                id: "s1".into(),
                value: "tenant-secret-1".into()
            }]
        );
        assert!(!serde_json::to_string(&c.vars)
            .unwrap()
            .contains("tenant-secret-1"));

        let no_ext = map(json!({"role_arn": "arn:aws:iam::123456789012:role/flotilla"}));
        let e = check_vars(CloudProvider::Aws, &no_ext, None, &mut ids()).unwrap_err();
        assert_eq!(e.field, "vars.external_id");
        let bad_arn = map(json!({"role_arn": "arn:aws:iam::12:user/x", "external_id": "abc"}));
        assert_eq!(
            check_vars(CloudProvider::Aws, &bad_arn, None, &mut ids())
                .unwrap_err()
                .field,
            "vars.role_arn"
        );
        let unknown = map(json!({"password": "x"}));
        assert_eq!(
            check_vars(CloudProvider::Aws, &unknown, None, &mut ids())
                .unwrap_err()
                .field,
            "vars.password"
        );
        let keys = map(json!({"access_key_id": "AKIA1", "secret_access_key": "sk"}));
        assert!(check_vars(CloudProvider::Aws, &keys, None, &mut ids()).is_ok());
        let hostile = map(
            json!({"access_key_id": "AKIA1", "secret_access_key": "sk", "default_region": "@attacker.example/x#"}),
        );
        assert_eq!(
            check_vars(CloudProvider::Aws, &hostile, None, &mut ids())
                .unwrap_err()
                .field,
            "vars.default_region"
        );
        let half = map(json!({"access_key_id": "AKIA1"}));
        assert!(check_vars(CloudProvider::Aws, &half, None, &mut ids()).is_err());
    }

    #[test]
    fn an_update_keeps_held_secrets_and_refuses_foreign_references() {
        let created = check_vars(
            CloudProvider::Aws,
            &map(
                json!({"role_arn": "arn:aws:iam::123456789012:role/a", "external_id": "first-id"}),
            ),
            None,
            &mut ids(),
        )
        .unwrap();
        // Renaming the role keeps the external ID.
        let u = check_vars(
            CloudProvider::Aws,
            &map(json!({"role_arn": "arn:aws:iam::123456789012:role/b"})),
            Some(&created.vars),
            &mut ids(),
        )
        .unwrap();
        assert!(u.new_secrets.is_empty() && u.dropped_secrets.is_empty());
        assert_eq!(u.vars["external_id"], created.vars["external_id"]);
        // A new value replaces it; the old one is dropped.
        let mut next = || "s9".to_owned();
        let u = check_vars(
            CloudProvider::Aws,
            &map(json!({"external_id": "second-id"})),
            Some(&created.vars),
            &mut next,
        )
        .unwrap();
        assert_eq!(u.dropped_secrets, vec!["s1".to_owned()]);
        // Echoing the reference back is a no-op; another id is refused.
        let echo = map(json!({"external_id": created.vars["external_id"].clone()}));
        assert!(check_vars(CloudProvider::Aws, &echo, Some(&created.vars), &mut ids()).is_ok());
        let forged = map(
            json!({"external_id": {"type": "password", "value": {"isSecretRef": true, "id": "other"}}}),
        );
        assert!(check_vars(CloudProvider::Aws, &forged, Some(&created.vars), &mut ids()).is_err());
    }

    #[test]
    fn azure_and_gcp_need_their_credentials() {
        let az = map(
            json!({"tenant_id": "t", "client_id": "c", "client_secret": "s", "subscription_id": "sub"}),
        );
        let c = check_vars(CloudProvider::Azure, &az, None, &mut ids()).unwrap();
        assert_eq!(c.new_secrets.len(), 3);
        assert!(check_vars(
            CloudProvider::Azure,
            &map(json!({"tenant_id": "t"})),
            None,
            &mut ids()
        )
        .is_err());
        let gcp = map(
            json!({"service_account": "v@p.iam.gserviceaccount.com", "audience": "//iam.googleapis.com/x", "project_id": "p"}),
        );
        assert!(check_vars(CloudProvider::Gcp, &gcp, None, &mut ids())
            .unwrap()
            .new_secrets
            .is_empty());
    }
}
