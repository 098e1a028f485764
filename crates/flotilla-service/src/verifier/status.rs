//! `fleet:verifier_status`: fold the verifier's documents into the
//! connectors being verified — only the latest run per (connector,
//! integration), statuses mapped as Kibana stores them — and decide
//! `success` or `failed`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use flotilla_domain::connector::{
    failure_summary, map_status, roll_up, CloudConnector, PermissionResult, PermissionStatus,
    PermissionSummary, VerificationStatus,
};
use flotilla_store::{DocumentQuery, Page, VerificationWrite};

use super::verify::{expected_by_connector, Expected};
use super::{chrono, teardown, VerifierConfig, DATA_STREAM, VERIFY_TASK};
use crate::tasks::{RunContext, RunResult, TaskError, TaskRunner};
use crate::{ServiceError, Services};

pub struct VerifierStatus(pub Arc<VerifierConfig>);

fn text<'a>(doc: &'a Value, path: &str) -> Option<&'a str> {
    doc.pointer(path).and_then(Value::as_str)
}

/// One integration's summary from its documents (the latest run only)
/// and what it was expected to report.
pub(crate) fn summarise(expected: &Expected, docs: &[&Value]) -> PermissionSummary {
    let pp = &expected.integration;
    let latest = docs
        .iter()
        .filter_map(|d| text(d, "/verification/verified_at"))
        .max()
        .map(str::to_owned);
    let mut permissions: Vec<PermissionResult> = Vec::new();
    for d in docs
        .iter()
        .filter(|d| text(d, "/verification/verified_at") == latest.as_deref())
    {
        let Some(action) = text(d, "/permission/action") else {
            continue;
        };
        if permissions.iter().any(|p| p.action == action) {
            continue;
        }
        let required = d
            .pointer("/permission/required")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let status = text(d, "/permission/status").unwrap_or("error");
        permissions.push(PermissionResult {
            action: action.to_owned(),
            status: map_status(status, required),
            required,
            error_code: text(d, "/permission/error_code").map(str::to_owned),
            message: text(d, "/permission/error_message").map(str::to_owned),
        });
    }
    // Expected but never reported.
    if !docs.is_empty() || !expected.unsupported {
        for (action, required) in expected.checks() {
            if !permissions.iter().any(|p| p.action == action) {
                permissions.push(PermissionResult {
                    action,
                    status: PermissionStatus::Required,
                    required,
                    error_code: None,
                    message: None,
                });
            }
        }
    }
    PermissionSummary {
        package_policy_id: pp.id.clone(),
        policy_id: pp.policy_id.clone(),
        policy_template: expected.policy_template.clone(),
        package_name: pp.package.name.clone(),
        package_version: pp.package.version.clone(),
        last_verified_at: latest,
        permissions,
    }
}

#[async_trait]
impl TaskRunner for VerifierStatus {
    async fn run(&self, ctx: RunContext) -> Result<RunResult, TaskError> {
        let cfg = &*self.0;
        let s = &ctx.services;
        let expected = expected_by_connector(s, cfg.max_integrations).await?;
        let mut folded = 0u32;
        let mut finished = 0u32;
        for (id, integrations) in &expected {
            let c = match s.store.get_connector(id).await {
                Ok(c) => c,
                Err(_) => continue,
            };
            if c.verification_status != Some(VerificationStatus::Pending) {
                continue;
            }
            let Some(vid) = c.verification_id.clone() else {
                continue;
            };
            folded += 1;
            if fold(s, cfg, &c, &vid, integrations, ctx.now).await? {
                finished += 1;
            }
        }
        if finished > 0 {
            // The next connector need not wait for the verifier's TTL.
            let _ = s.store.run_task_soon(VERIFY_TASK, ctx.now).await;
        }
        Ok(RunResult::with_state(
            json!({"pending": folded, "finished": finished}),
        ))
    }
}

/// Fold one connector's current verification; whether it finished.
async fn fold(
    s: &Services,
    cfg: &VerifierConfig,
    c: &CloudConnector,
    vid: &str,
    integrations: &[Expected],
    now: DateTime<Utc>,
) -> Result<bool, ServiceError> {
    let found = s
        .store
        .search_documents(
            DATA_STREAM,
            &DocumentQuery {
                matches: vec![
                    ("identity_federation.id".into(), c.id.clone()),
                    ("verification.id".into(), vid.to_owned()),
                ],
                ascending: false,
                ..Default::default()
            },
            Page {
                page: 1,
                per_page: 1000,
            },
        )
        .await;
    let docs = match found {
        Ok(p) => p.items,
        // No verifier has written anything yet.
        Err(flotilla_store::StoreError::NotFound { .. }) => vec![],
        Err(e) => return Err(e.into()),
    };
    let mut by_integration: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for d in &docs {
        if let Some(pp) = text(&d.source, "/package_policy/id") {
            by_integration.entry(pp).or_default().push(&d.source);
        }
    }
    // An integration for another cloud is not sent to the verifier: it is
    // an error of its own, not a silence.
    let provider = c.cloud_provider.as_str();
    let (checked, foreign): (Vec<&Expected>, Vec<&Expected>) = integrations
        .iter()
        .partition(|e| e.provider.as_deref().is_none_or(|p| p == provider));
    let mut summaries: Vec<PermissionSummary> = checked
        .iter()
        .map(|e| {
            let docs = by_integration
                .get(e.integration.id.as_str())
                .cloned()
                .unwrap_or_default();
            summarise(e, &docs)
        })
        .collect();
    for e in &foreign {
        let mut s = summarise(e, &[]);
        for p in &mut s.permissions {
            p.status = PermissionStatus::Error;
            p.error_code = Some("ProviderMismatch".into());
            p.message = Some(format!(
                "the integration needs {} permissions; the connector is {provider}",
                e.provider.as_deref().unwrap_or("other")
            ));
        }
        summaries.push(s);
    }
    let reported = checked
        .iter()
        .filter(|e| by_integration.contains_key(e.integration.id.as_str()))
        .count();
    let complete = reported == checked.len();
    let started = c.verification_started_at.unwrap_or(now);
    let expired = now >= started + chrono(cfg.ttl);
    if !complete && !expired {
        if reported > 0 {
            s.store
                .write_verification(
                    &c.id,
                    &VerificationWrite {
                        permissions: Some(summaries),
                        if_verification: Some(vid.to_owned()),
                        ..Default::default()
                    },
                )
                .await?;
        }
        return Ok(false);
    }
    let mut status = roll_up(&summaries);
    let mut message = failure_summary(&summaries);
    if !complete {
        status = VerificationStatus::Failed;
        message = Some(format!(
            "the verifier reported nothing for {} of {} integration(s) within {} (is a verifier agent online?)",
            checked.len() - reported,
            checked.len(),
            humantime::format_duration(cfg.ttl)
        ));
    }
    if let Some(m) = &mut message {
        let first_error = summaries.iter().flat_map(|s| &s.permissions).find_map(|p| {
            p.message
                .as_deref()
                .filter(|_| p.required && p.status != PermissionStatus::Verified)
        });
        if let Some(e) = first_error {
            m.push_str(&format!("; first error: {e}"));
        }
    }
    s.store
        .write_verification(
            &c.id,
            &VerificationWrite {
                status: Some(Some(status)),
                failed_at: Some((status == VerificationStatus::Failed).then_some(now)),
                message: Some(message),
                permissions: Some(summaries),
                if_verification: Some(vid.to_owned()),
                ..Default::default()
            },
        )
        .await?;
    tracing::info!(connector = %c.id, status = status.as_str(), "cloud connector verified");
    // Done: its verifier policy need not live out its TTL.
    for vp in s.store.verifier_policies().await? {
        if vp.verification_id == vid {
            teardown(s, cfg, &vp.policy_id).await?;
        }
    }
    Ok(true)
}
