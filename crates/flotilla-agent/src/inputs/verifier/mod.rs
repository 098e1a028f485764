//! `permission_verifier`: checks once, per `verification.id`, that a cloud
//! connector's identity holds the permissions its integrations need, and
//! ships one document per check to the stream's data stream
//! (`logs-flotilla_verifier.permission-<namespace>`).
//!
//! - [`aws`]: AssumeRole (External ID always sent), GetCallerIdentity, then
//!   `iam:SimulatePrincipalPolicy` per action, or a local evaluation of the
//!   role's policies ([`local_eval`]) where simulation is not available;
//!   attachment checks with `iam:ListAttachedRolePolicies`.
//! - [`azure`]: client-credentials token, then the subscription's
//!   `Microsoft.Authorization/permissions`, evaluated with Azure wildcards.
//! - [`gcp`]: a subject token exchanged at STS, the service account
//!   impersonated, then `projects.testIamPermissions`.
//!
//! Each provider is a [`Verifier`]: it gets the checks and returns one
//! [`Outcome`] per check; this module parses the stream (the contract is in
//! ARCHITECTURE.md), builds the documents, ships them and writes the
//! per-verification marker once the output accepted every one, so a restart
//! of the same verification does not check again. No secret (external ID,
//! keys, client secret, tokens) goes in a document, a log line or the
//! marker.

pub mod aws;
mod aws_xml;
pub mod azure;
pub mod gcp;
pub mod local_eval;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{data_stream, doc_id, Context, Health, Resolved, Spawn};
use crate::output::{Doc, Output};

/// The dataset the server's verifier policies name (used when a stream
/// gives none).
pub const DATASET: &str = "flotilla_verifier.permission";

/// How a variable of the agent's environment is read (the process
/// environment in the agent; a map in tests).
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The agent process's environment.
pub fn process_env() -> Env {
    Arc::new(|k: &str| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// What one check came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Granted,
    Denied,
    Error,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Granted => "granted",
            Status::Denied => "denied",
            Status::Error => "error",
            Status::Skipped => "skipped",
        }
    }
}

/// Cloud API error codes that mean "this identity may not": `denied`. Any
/// other API error is `error`.
pub const DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedAccess",
    "UnauthorizedOperation",
    "AuthorizationError",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
];

/// Codes that mean the service or operation is not supported: `skipped`.
pub const SKIPPED_CODES: &[&str] = &["UnsupportedOperation", "InvalidAction", "UnsupportedAction"];

/// The status an API error code maps to.
pub fn status_for_error(code: &str) -> Status {
    if DENIED_CODES.contains(&code) {
        Status::Denied
    } else if SKIPPED_CODES.contains(&code) {
        Status::Skipped
    } else {
        Status::Error
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Status,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// `simulate_principal_policy`, `local_simulation`, … (`verification.method`).
    pub method: String,
    /// The URL the answer came from (no credential in it).
    pub endpoint: String,
    pub duration_ms: u64,
}

impl Outcome {
    pub fn new(status: Status, method: &str, endpoint: &str) -> Outcome {
        Outcome {
            status,
            error_code: None,
            error_message: None,
            method: method.to_owned(),
            endpoint: endpoint.to_owned(),
            duration_ms: 0,
        }
    }
    pub fn code(mut self, code: impl Into<String>) -> Outcome {
        self.error_code = Some(code.into());
        self
    }
    pub fn message(mut self, message: impl Into<String>) -> Outcome {
        self.error_message = Some(message.into());
        self
    }
    pub fn took(mut self, since: std::time::Instant) -> Outcome {
        self.duration_ms = since.elapsed().as_millis() as u64;
        self
    }
}

/// What a check asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// May the identity do this action?
    Permission,
    /// Is this managed policy (an ARN) attached to the role?
    Attachment(String),
    /// The integration's version is not supported: no check is made.
    UnsupportedVersion,
}

/// One check of one integration.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Index into [`StreamConfig::integrations`].
    pub integration: usize,
    /// `permission.action`: the action, `attached:<policy arn>`, or `*` for
    /// an unsupported version.
    pub action: String,
    pub kind: Kind,
    pub required: bool,
}

/// A provider's answers: one outcome per check given, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The AWS account, Azure subscription or GCP project, when known.
    pub account: Option<String>,
    pub region: Option<String>,
    pub outcomes: Vec<Outcome>,
}

/// One cloud provider's way of checking permissions.
pub trait Verifier {
    /// One outcome per check, in order. Never fails as a whole: a failure
    /// to get a session is an `error` outcome for every check.
    fn check(&self, checks: &[Check]) -> impl Future<Output = Report> + Send;
}

/// Every check gets the same outcome (a session that could not be had).
pub fn all(checks: &[Check], outcome: Outcome) -> Vec<Outcome> {
    checks.iter().map(|_| outcome.clone()).collect()
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Federation {
    pub id: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub account_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Permission {
    pub action: String,
    pub required: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Integration {
    pub policy_id: Option<String>,
    pub policy_name: Option<String>,
    pub package_policy_id: String,
    pub policy_template: Option<String>,
    pub package_name: Option<String>,
    pub package_title: Option<String>,
    pub package_version: Option<String>,
    pub permissions: Vec<Permission>,
    /// Managed policy ARNs that must be attached, with `required`.
    pub attachments: Vec<Permission>,
    pub unsupported_version: bool,
}

/// The provider block named by `provider`; the others are ignored.
pub enum Provider {
    Aws(aws::AwsConfig),
    Azure(azure::AzureConfig),
    Gcp(gcp::GcpConfig),
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Aws(_) => "aws",
            Provider::Azure(_) => "azure",
            Provider::Gcp(_) => "gcp",
        }
    }
}

/// One stream of a `permission_verifier` input, parsed.
pub struct StreamConfig {
    pub id: String,
    pub data_stream: Value,
    pub index: String,
    pub federation: Federation,
    pub verification_id: String,
    pub verification_type: String,
    pub provider: Provider,
    pub integrations: Vec<Integration>,
}

/// A string field: absent, null, non-string and empty are all `None`.
pub(crate) fn text(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

pub(crate) fn secret(v: &Value, pointer: &str) -> Option<SecretString> {
    text(v, pointer).map(SecretString::from)
}

/// An endpoint: the given URL (checked, no trailing slash) or the default.
pub(crate) fn endpoint(v: &Value, pointer: &str, default: String) -> Result<String, String> {
    let url = text(v, pointer).unwrap_or(default);
    let parsed = reqwest::Url::parse(&url).map_err(|e| format!("{pointer} {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("{pointer} {url:?} is not an http(s) URL"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "{pointer} {url:?} must not hold credentials or a fragment"
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn permissions(v: &Value, list: &str, field: &str) -> Vec<Permission> {
    v.get(list)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    // A bare string is taken as a required item.
                    let action = p
                        .as_str()
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .or_else(|| text(p, &format!("/{field}")))?;
                    Some(Permission {
                        action,
                        required: p.get("required").and_then(Value::as_bool).unwrap_or(true),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn parse(
    input: &Value,
    stream: &Value,
    namespace: &str,
    index: usize,
) -> Result<StreamConfig, String> {
    let id = super::stream_id(input, stream, index);
    let mut with_dataset = stream.clone();
    if text(stream, "/data_stream/dataset").is_none() {
        with_dataset["data_stream"] = json!({"type": "logs", "dataset": DATASET});
    }
    let (ds, index_name) = data_stream(&with_dataset, "logs", namespace)?;
    let verification_id = text(stream, "/verification/id")
        .ok_or_else(|| format!("stream {id}: verification.id is missing"))?;
    let provider = match text(stream, "/provider").as_deref() {
        Some("aws") => Provider::Aws(aws::AwsConfig::parse(
            stream.get("aws").unwrap_or(&Value::Null),
        )?),
        Some("azure") => Provider::Azure(azure::AzureConfig::parse(
            stream.get("azure").unwrap_or(&Value::Null),
        )?),
        Some("gcp") => Provider::Gcp(gcp::GcpConfig::parse(
            stream.get("gcp").unwrap_or(&Value::Null),
        )?),
        Some(other) => {
            return Err(format!(
                "stream {id}: provider {other:?} is not supported (aws, azure, gcp)"
            ))
        }
        None => return Err(format!("stream {id}: provider is missing")),
    };
    let mut integrations = Vec::new();
    for policy in stream
        .get("policies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for (n, i) in policy
            .get("integrations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let policy_id = text(policy, "/policy_id");
            integrations.push(Integration {
                package_policy_id: text(i, "/package_policy_id")
                    .unwrap_or_else(|| format!("{}-{n}", policy_id.as_deref().unwrap_or("policy"))),
                policy_id,
                policy_name: text(policy, "/policy_name"),
                policy_template: text(i, "/policy_template"),
                package_name: text(i, "/package_name"),
                package_title: text(i, "/package_title"),
                package_version: text(i, "/package_version"),
                permissions: permissions(i, "permissions", "action"),
                attachments: permissions(i, "attachments", "policy_arn"),
                unsupported_version: i
                    .get("unsupported_version")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            });
        }
    }
    if integrations.is_empty() {
        return Err(format!(
            "stream {id}: no policies with integrations to verify"
        ));
    }
    Ok(StreamConfig {
        id,
        data_stream: ds,
        index: index_name,
        federation: Federation {
            id: text(stream, "/identity_federation/id"),
            name: text(stream, "/identity_federation/name"),
            namespace: text(stream, "/identity_federation/namespace"),
            account_type: text(stream, "/identity_federation/account_type"),
        },
        verification_id,
        verification_type: text(stream, "/verification/type").unwrap_or_else(|| "on_demand".into()),
        provider,
        integrations,
    })
}

impl StreamConfig {
    /// Every check, in document order: per integration, its permissions,
    /// then its attachments; an unsupported version is one check.
    pub fn checks(&self) -> Vec<Check> {
        let mut out = Vec::new();
        for (n, i) in self.integrations.iter().enumerate() {
            if i.unsupported_version {
                out.push(Check {
                    integration: n,
                    action: "*".into(),
                    kind: Kind::UnsupportedVersion,
                    required: true,
                });
                continue;
            }
            for p in &i.permissions {
                out.push(Check {
                    integration: n,
                    action: p.action.clone(),
                    kind: Kind::Permission,
                    required: p.required,
                });
            }
            for a in &i.attachments {
                out.push(Check {
                    integration: n,
                    action: format!("attached:{}", a.action),
                    kind: Kind::Attachment(a.action.clone()),
                    required: a.required,
                });
            }
        }
        out
    }
}

pub fn start(ctx: &Arc<Context>, input: &Value) -> Spawn {
    let ctx = ctx.clone();
    let input = input.clone();
    Box::new(move |r: &Resolved, health: &Health| {
        let streams = input
            .get("streams")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if streams.is_empty() {
            return Err("the permission_verifier input has no streams".into());
        }
        let configs = streams
            .iter()
            .enumerate()
            .map(|(i, s)| parse(&input, s, &r.namespace, i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(configs
            .into_iter()
            .map(|c| {
                let ctx = ctx.clone();
                let output = r.output.clone();
                let health = health.clone();
                tokio::spawn(async move {
                    // Runs once, then the task ends: the input idles with
                    // its health until the policy changes.
                    run_stream(&ctx, &c, &output, &health, &process_env()).await;
                })
            })
            .collect())
    })
}

/// What a run of one stream did.
#[derive(Debug, Clone, PartialEq)]
pub enum RunResult {
    /// This verification was done before (its marker says so): nothing sent.
    AlreadyDone(String),
    /// Checked and shipped; the summary, and whether the marker was written
    /// (every document accepted).
    Checked { summary: String, complete: bool },
}

fn marker_path(ctx: &Context, cfg: &StreamConfig) -> (PathBuf, String) {
    let mut h = Sha256::new();
    h.update(cfg.id.as_bytes());
    h.update([0]);
    h.update(cfg.verification_id.as_bytes());
    let name = format!("verifier-{}.done", hex::encode(&h.finalize()[..8]));
    (ctx.state_dir.join(&name), name)
}

/// How long a verification's marker is kept: verifier policies live
/// minutes, so a week-old one cannot be run again.
const MARKER_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// Remove markers older than [`MARKER_KEEP`], so they do not pile up.
fn prune_markers(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > MARKER_KEEP);
        if old && name.starts_with("verifier-") && name.ends_with(".done") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The HTTP client of the cloud calls (rustls, bounded).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// Check one stream once per verification id: the provider's checks, one
/// document each, shipped; then the marker.
pub async fn run_stream(
    ctx: &Context,
    cfg: &StreamConfig,
    output: &Output,
    health: &Health,
    env: &Env,
) -> RunResult {
    prune_markers(&ctx.state_dir);
    let (marker, marker_name) = marker_path(ctx, cfg);
    let record = std::fs::read(&marker)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or(Value::Null);
    if record["state"] == "done" {
        let message = format!(
            "verification {} already done: {}",
            cfg.verification_id,
            record["summary"].as_str().unwrap_or_default()
        );
        health.healthy(message.clone());
        return RunResult::AlreadyDone(message);
    }
    health.healthy(format!("verifying ({})", cfg.verification_id));
    let checks = cfg.checks();
    // A run cut off before its marker said done keeps its `verified_at`:
    // documents it shipped and those of the re-run are one run.
    let verified_at = record["verified_at"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let write_marker = |state: &str, summary: &str| {
        let record = json!({"state": state, "stream_id": cfg.id, "verification_id": cfg.verification_id,
            "verified_at": verified_at, "summary": summary});
        if let Err(e) = crate::state::write_atomic(
            &ctx.state_dir,
            &marker_name,
            &serde_json::to_vec(&record).unwrap_or_default(),
        ) {
            tracing::warn!(error = %e, stream = %cfg.id, "cannot write the verification marker; a restart checks again");
        }
    };
    write_marker("started", "");
    let asked: Vec<Check> = checks
        .iter()
        .filter(|c| c.kind != Kind::UnsupportedVersion)
        .cloned()
        .collect();
    let http = http_client();
    let report = if asked.is_empty() {
        Report::default()
    } else {
        match &cfg.provider {
            Provider::Aws(c) => {
                aws::AwsVerifier::new(c, env.clone(), http)
                    .check(&asked)
                    .await
            }
            Provider::Azure(c) => azure::AzureVerifier::new(c, http).check(&asked).await,
            Provider::Gcp(c) => {
                gcp::GcpVerifier::new(c, env.clone(), http)
                    .check(&asked)
                    .await
            }
        }
    };
    let mut answers = report.outcomes.iter();
    let mut docs = Vec::with_capacity(checks.len());
    let mut counts = [0usize; 4];
    for check in &checks {
        let outcome = match check.kind {
            Kind::UnsupportedVersion => {
                let i = &cfg.integrations[check.integration];
                Outcome::new(Status::Skipped, "none", "")
                    .code("UnsupportedVersion")
                    .message(format!(
                        "{} {} is not a version this verifier has rules for",
                        i.package_name.as_deref().unwrap_or("the package"),
                        i.package_version.as_deref().unwrap_or("(no version)")
                    ))
            }
            _ => answers.next().cloned().unwrap_or_else(|| {
                Outcome::new(Status::Error, "none", "")
                    .code("NoResult")
                    .message("the provider gave no answer for this check")
            }),
        };
        counts[outcome.status as usize] += 1;
        docs.push(document(ctx, cfg, check, &outcome, &report, &verified_at));
    }
    let mut summary = format!(
        "checked {} permissions: {} granted, {} denied, {} error",
        checks.len(),
        counts[Status::Granted as usize],
        counts[Status::Denied as usize],
        counts[Status::Error as usize],
    );
    if counts[Status::Skipped as usize] > 0 {
        summary.push_str(&format!(", {} skipped", counts[Status::Skipped as usize]));
    }
    let sent = docs.len() as u64;
    let shipped = output.ship(docs, health).await;
    health.add_shipped(shipped.accepted, shipped.rejected);
    let complete = shipped.rejected == 0 && shipped.accepted == sent;
    if complete {
        write_marker("done", &summary);
        health.healthy(summary.clone());
    } else {
        health.degraded(format!(
            "{summary}; the output rejected {} of {sent} documents",
            shipped.rejected
        ));
    }
    tracing::info!(stream = %cfg.id, verification = %cfg.verification_id, %summary, "permission verification done");
    RunResult::Checked { summary, complete }
}

fn put(map: &mut Map<String, Value>, key: &str, value: &Option<String>) {
    if let Some(v) = value {
        map.insert(key.into(), json!(v));
    }
}

fn document(
    ctx: &Context,
    cfg: &StreamConfig,
    check: &Check,
    o: &Outcome,
    report: &Report,
    verified_at: &str,
) -> Doc {
    let i = &cfg.integrations[check.integration];
    let provider = cfg.provider.name();
    let mut federation = Map::new();
    put(&mut federation, "id", &cfg.federation.id);
    put(&mut federation, "name", &cfg.federation.name);
    put(&mut federation, "namespace", &cfg.federation.namespace);
    put(
        &mut federation,
        "account_type",
        &cfg.federation.account_type,
    );
    let mut policy = Map::new();
    put(&mut policy, "id", &i.policy_id);
    put(&mut policy, "name", &i.policy_name);
    let mut package = Map::new();
    put(&mut package, "name", &i.package_name);
    put(&mut package, "title", &i.package_title);
    put(&mut package, "version", &i.package_version);
    let mut prov = Map::new();
    prov.insert("type".into(), json!(provider));
    put(&mut prov, "account", &report.account);
    put(&mut prov, "region", &report.region);
    let mut permission = Map::new();
    permission.insert("action".into(), json!(check.action));
    permission.insert("status".into(), json!(o.status.as_str()));
    permission.insert("required".into(), json!(check.required));
    put(&mut permission, "error_code", &o.error_code);
    put(&mut permission, "error_message", &o.error_message);
    let mut src = Map::new();
    src.insert("@timestamp".into(), json!(verified_at));
    src.insert(
        "message".into(),
        json!(format!(
            "Permission check: {provider}/{} - {}",
            check.action,
            o.status.as_str()
        )),
    );
    src.insert("data_stream".into(), cfg.data_stream.clone());
    src.insert("service".into(), json!({"name": "permission-verifier"}));
    src.insert("identity_federation".into(), Value::Object(federation));
    src.insert(
        "verification".into(),
        json!({"id": cfg.verification_id, "type": cfg.verification_type, "method": o.method,
               "endpoint": o.endpoint, "duration_ms": o.duration_ms, "verified_at": verified_at}),
    );
    src.insert("policy".into(), Value::Object(policy));
    if let Some(t) = &i.policy_template {
        src.insert("policy_template".into(), json!(t));
    }
    src.insert("package".into(), Value::Object(package));
    src.insert("package_policy".into(), json!({"id": i.package_policy_id}));
    src.insert("provider".into(), Value::Object(prov));
    src.insert("permission".into(), Value::Object(permission));
    src.insert("agent".into(), json!({"id": ctx.agent_id}));
    src.insert("host".into(), json!({"name": ctx.host_name}));
    Doc {
        index: cfg.index.clone(),
        id: doc_id(&[&cfg.verification_id, &i.package_policy_id, &check.action]),
        source: Value::Object(src),
    }
}

#[cfg(test)]
mod tests;
