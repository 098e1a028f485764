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
use super::{chrono, VerifierConfig, DATA_STREAM, VERIFY_TASK};
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

/// Connectors with a verification in flight.
pub(crate) async fn pending_connectors(s: &Services) -> Result<Vec<CloudConnector>, ServiceError> {
    let mut out = Vec::new();
    let mut page = 1;
    loop {
        let p = s
            .store
            .list_connectors(Page {
                page,
                per_page: Page::MAX_PER_PAGE,
            })
            .await?;
        let n = p.items.len();
        out.extend(
            p.items
                .into_iter()
                .filter(|c| c.verification_status == Some(VerificationStatus::Pending)),
        );
        if n < Page::MAX_PER_PAGE as usize {
            return Ok(out);
        }
        page += 1;
    }
}

/// Fold every pending connector; how many finished.
pub(crate) async fn fold_pending(
    s: &Services,
    cfg: &VerifierConfig,
    now: DateTime<Utc>,
) -> Result<(usize, u32), ServiceError> {
    let pending = pending_connectors(s).await?;
    if pending.is_empty() {
        return Ok((0, 0));
    }
    let expected = expected_by_connector(s, cfg.max_integrations).await?;
    let mut finished = 0u32;
    for c in &pending {
        let Some(vid) = c.verification_id.clone() else {
            continue;
        };
        let integrations = expected.get(&c.id).map(Vec::as_slice).unwrap_or(&[]);
        if fold(s, cfg, c, &vid, integrations, now).await? {
            finished += 1;
        }
    }
    Ok((pending.len(), finished))
}

#[async_trait]
impl TaskRunner for VerifierStatus {
    async fn run(&self, ctx: RunContext) -> Result<RunResult, TaskError> {
        let (pending, finished) = fold_pending(&ctx.services, &self.0, ctx.now).await?;
        if finished > 0 {
            // The verify task removes what was deployed and goes on to the
            // next connector: it need not wait for the verifier's TTL.
            let _ = ctx.services.store.run_task_soon(VERIFY_TASK, ctx.now).await;
        }
        Ok(RunResult::with_state(
            json!({"pending": pending, "finished": finished}),
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
    if integrations.is_empty() {
        // No integration uses it any more: nothing to verify.
        s.store
            .write_verification(
                &c.id,
                &VerificationWrite {
                    status: Some(None),
                    message: Some(Some("no integration uses this connector".into())),
                    permissions: Some(vec![]),
                    if_verification: Some(vid.to_owned()),
                    ..Default::default()
                },
            )
            .await?;
        return Ok(true);
    }
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
    let unknown: Vec<String> = checked
        .iter()
        .filter(|e| e.unsupported)
        .map(|e| {
            format!(
                "{} {} ({})",
                e.integration.package.name, e.integration.package.version, e.policy_template
            )
        })
        .collect();
    if message.is_none() && !unknown.is_empty() {
        message = Some(format!(
            "not checked: no permission rules are known for {}",
            unknown.join(", ")
        ));
    }
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
    Ok(true)
}
