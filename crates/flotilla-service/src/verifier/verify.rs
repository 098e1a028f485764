//! `fleet:verify_permissions`: cleanup, the one-at-a-time gate, the
//! pre-filter, and the deployment of one verifier policy.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use flotilla_api::management::{CreatePackagePolicy, PackageRequest, ReassignAgent};
use flotilla_domain::agent::Agent;
use flotilla_domain::connector::{eligibility, CloudConnector, Eligibility, VerificationStatus};
use flotilla_domain::package_policy::PackagePolicy;
use flotilla_domain::policy::{NewAgentPolicy, DEFAULT_INACTIVITY_TIMEOUT_SECS};
use flotilla_packages::provider_permissions::{self, ActionCheck, AttachmentCheck, Lookup};
use flotilla_store::{StoreError, VerificationWrite, VerifierPolicy};

use super::{chrono, endpoint_vars, idle_verifier_agent, teardown, VerifierConfig, PACKAGE};
use crate::tasks::{RunContext, RunResult, TaskError, TaskRunner};
use crate::{ServiceError, Services};

/// What one integration using a connector needs checked.
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    pub integration: PackagePolicy,
    pub policy_name: String,
    pub policy_template: String,
    pub provider: Option<String>,
    pub actions: Vec<ActionCheck>,
    pub attachments: Vec<AttachmentCheck>,
    /// The registry knows nothing for this package version or template.
    pub unsupported: bool,
}

impl Expected {
    /// The checks as the verifier reports them (`attached:` for policies).
    pub(crate) fn checks(&self) -> Vec<(String, bool)> {
        self.actions
            .iter()
            .map(|a| (a.action.clone(), a.required))
            .chain(
                self.attachments
                    .iter()
                    .map(|a| (format!("attached:{}", a.policy_arn), a.required)),
            )
            .collect()
    }
}

fn template_of(pp: &PackagePolicy) -> String {
    pp.inputs
        .iter()
        .filter(|i| i.enabled)
        .chain(pp.inputs.iter())
        .find_map(|i| i.policy_template.clone())
        .unwrap_or_else(|| pp.package.name.clone())
}

/// The integrations using each connector, with what they need.
pub(crate) async fn expected_by_connector(
    services: &Services,
    limit: u32,
) -> Result<BTreeMap<String, Vec<Expected>>, ServiceError> {
    let integrations = services.store.connector_integrations(limit).await?;
    if integrations.len() as u64 >= u64::from(limit) {
        tracing::warn!(
            limit,
            "more integrations use cloud connectors than the verifier reads per run; the newest are not verified"
        );
    }
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<Expected>> = BTreeMap::new();
    for pp in integrations {
        let Some(cid) = pp.cloud_connector_id.clone() else {
            continue;
        };
        let policy_name = match names.get(&pp.policy_id) {
            Some(n) => n.clone(),
            None => {
                let n = match services.store.get_policy(&pp.policy_id).await {
                    Ok(p) => p.name,
                    Err(StoreError::NotFound { .. }) => String::new(),
                    Err(e) => return Err(e.into()),
                };
                names.insert(pp.policy_id.clone(), n.clone());
                n
            }
        };
        let template = template_of(&pp);
        let declared = services
            .packages
            .get(&*services.store, &pp.package.name, &pp.package.version)
            .await
            .ok()
            .and_then(|p| provider_permissions::declared(&p, &template));
        let lookup = provider_permissions::requirements(
            &pp.package.name,
            &template,
            &pp.package.version,
            declared.as_ref(),
        );
        let (provider, actions, attachments, unsupported) = match lookup {
            Lookup::Declared(r) | Lookup::Registry(r) => {
                (Some(r.provider), r.actions, r.attachments, false)
            }
            Lookup::UnsupportedVersion | Lookup::Unknown => (None, vec![], vec![], true),
        };
        out.entry(cid).or_default().push(Expected {
            integration: pp,
            policy_name,
            policy_template: template,
            provider,
            actions,
            attachments,
            unsupported,
        });
    }
    Ok(out)
}

/// The verifier input's `policies`: the connector's integrations grouped
/// by agent policy, each with its checks.
pub(crate) fn policies_var(expected: &[Expected]) -> Value {
    let mut by_policy: BTreeMap<&str, (String, Vec<Value>)> = BTreeMap::new();
    for e in expected {
        let pp = &e.integration;
        let entry = by_policy
            .entry(pp.policy_id.as_str())
            .or_insert_with(|| (e.policy_name.clone(), vec![]));
        entry.1.push(json!({
            "package_policy_id": pp.id,
            "policy_template": e.policy_template,
            "package_name": pp.package.name,
            "package_title": pp.package.title.clone().unwrap_or_else(|| pp.package.name.clone()),
            "package_version": pp.package.version,
            "permissions": e.actions,
            "attachments": e.attachments,
            "unsupported_version": e.unsupported,
        }));
    }
    Value::Array(
        by_policy
            .into_iter()
            .map(|(id, (name, integrations))| {
                json!({"policy_id": id, "policy_name": name, "integrations": integrations})
            })
            .collect(),
    )
}

pub struct VerifyPermissions(pub Arc<VerifierConfig>);

#[async_trait]
impl TaskRunner for VerifyPermissions {
    async fn run(&self, ctx: RunContext) -> Result<RunResult, TaskError> {
        let cfg = &*self.0;
        let s = &ctx.services;
        let now = ctx.now;
        // 1. Cleanup: verifier policies past their TTL, or whose
        // verification finished, with what was deployed for them. Only this
        // task tears down and deploys (one run at a time), so a teardown
        // never races a deployment. An expired verification is folded
        // first, so a silent verifier fails its connector rather than
        // leaving it due again.
        let policies = s.store.verifier_policies().await?;
        if policies.iter().any(|vp| vp.expires_at <= now) {
            super::status::fold_pending(s, cfg, now).await?;
        }
        let mut live = Vec::new();
        let mut removed = 0u32;
        for vp in policies {
            let current = match s.store.get_connector(&vp.connector_id).await {
                Ok(c) => {
                    c.verification_status == Some(VerificationStatus::Pending)
                        && c.verification_id.as_deref() == Some(vp.verification_id.as_str())
                }
                Err(StoreError::NotFound { .. }) => false,
                Err(e) => return Err(e.into()),
            };
            if vp.expires_at <= now || !current {
                match teardown(s, cfg, &vp.policy_id).await {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        // Logged and retried next run; never blocks the rest.
                        tracing::warn!(policy = %vp.policy_id, error = %e, "could not remove a verifier policy");
                        live.push(vp);
                    }
                }
            } else {
                live.push(vp);
            }
        }
        // 2. Gate: one verification at a time.
        if let Some(vp) = live.iter().max_by_key(|v| v.expires_at) {
            return Ok(RunResult {
                state: Some(json!({"skipped": "a verification is in flight", "removed": removed})),
                run_at: Some(vp.expires_at + chrono(cfg.grace)),
                ..Default::default()
            });
        }
        // 3. Pre-filter: only connectors in use are candidates.
        let expected = expected_by_connector(s, cfg.max_integrations).await?;
        let mut due: Vec<(CloudConnector, Eligibility)> = Vec::new();
        for id in expected.keys() {
            let c = match s.store.get_connector(id).await {
                Ok(c) => c,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(why) = eligibility(&c.verification(), now, &cfg.windows) {
                due.push((c, why));
            }
        }
        due.sort_by_key(|(c, _)| (c.verification_started_at, c.created_at));
        let Some((connector, why)) = due.first().cloned() else {
            return Ok(RunResult::with_state(json!({"due": 0, "removed": removed})));
        };
        // 4. Verify the first eligible connector.
        let Some(agent) = idle_verifier_agent(s, cfg, now).await? else {
            tracing::warn!(
                connector = %connector.id,
                tag = %cfg.agent_tag,
                "a cloud connector is due for verification, but no verifier agent is online"
            );
            return Ok(RunResult {
                state: Some(json!({"due": due.len(), "waiting_for": "a verifier agent"})),
                run_at: Some(now + chrono::Duration::seconds(15)),
                ..Default::default()
            });
        };
        let integrations = &expected[&connector.id];
        let verification_id = uuid::Uuid::new_v4().to_string();
        s.store
            .write_verification(
                &connector.id,
                &VerificationWrite {
                    status: Some(Some(VerificationStatus::Pending)),
                    started_at: Some(Some(now)),
                    verification_id: Some(Some(verification_id.clone())),
                    message: Some(None),
                    ..Default::default()
                },
            )
            .await?;
        tracing::info!(connector = %connector.id, reason = ?why, verification = %verification_id, agent = %agent.id, "verifying a cloud connector");
        let outcome = deploy(
            s,
            cfg,
            &connector,
            integrations,
            &agent,
            &verification_id,
            now,
        )
        .await;
        let deployed = match &outcome {
            Ok(policy_id) => Some(policy_id.clone()),
            Err(e) => {
                tracing::warn!(connector = %connector.id, error = %e, "could not deploy the verifier");
                s.store
                    .write_verification(
                        &connector.id,
                        &VerificationWrite {
                            status: Some(Some(VerificationStatus::Failed)),
                            failed_at: Some(Some(now)),
                            message: Some(Some(format!("could not deploy the verifier: {e}"))),
                            if_verification: Some(verification_id.clone()),
                            ..Default::default()
                        },
                    )
                    .await?;
                None
            }
        };
        // 5. Reschedule sooner when another connector is due (this one
        // excluded, or it would loop).
        let others = due.len() - 1;
        let run_at = (others > 0 || deployed.is_some()).then(|| now + chrono(cfg.ttl + cfg.grace));
        Ok(RunResult {
            state: Some(json!({
                "connector": connector.id,
                "verification_id": verification_id,
                "policy_id": deployed,
                "due_after": others,
                "removed": removed,
            })),
            run_at,
            ..Default::default()
        })
    }
}

/// Create the verifier policy, its integration, and move the agent onto
/// it; if any step after the policy exists fails, remove what was made.
async fn deploy(
    s: &Services,
    cfg: &VerifierConfig,
    c: &CloudConnector,
    integrations: &[super::verify::Expected],
    agent: &Agent,
    verification_id: &str,
    now: DateTime<Utc>,
) -> Result<String, ServiceError> {
    let short = &verification_id[..8];
    let policy_id = format!("verifier-{verification_id}");
    let name: String = format!("Verifier-Agent-Policy-{}", c.name)
        .chars()
        .take(200)
        .collect();
    let name = format!("{name}-{short}");
    let policy = NewAgentPolicy {
        id: policy_id.clone(),
        name,
        namespace: "default".into(),
        description: Some(format!(
            "Verifies cloud connector '{}'; removed after {}",
            c.id,
            humantime::format_duration(cfg.ttl)
        )),
        output_id: cfg.output_id.clone(),
        inactivity_timeout: DEFAULT_INACTIVITY_TIMEOUT_SECS,
    };
    let record = VerifierPolicy {
        policy_id: policy_id.clone(),
        connector_id: c.id.clone(),
        verification_id: verification_id.to_owned(),
        created_at: now,
        expires_at: now + chrono(cfg.ttl),
    };
    s.store
        .create_verifier_policy(&policy, &record, now)
        .await?;
    let result = async {
        if cfg.test_fault.as_deref() == Some("after_policy_created") {
            return Err(ServiceError::Unavailable(
                "injected fault after the verifier policy was created (verifier.test_fault)".into(),
            ));
        }
        let vars = verifier_vars(s, cfg, c, integrations, verification_id).await?;
        let inputs = json!({
            "verifier-permission_verifier": {
                "streams": {"flotilla_verifier.permission": {"vars": vars}}
            }
        });
        let m = s.management();
        m.create_package_policy(CreatePackagePolicy {
            id: None,
            name: format!("verifier-{verification_id}"),
            description: Some(format!("Permission checks for cloud connector '{}'", c.id)),
            policy_id: policy_id.clone(),
            package: PackageRequest {
                name: PACKAGE.into(),
                version: None,
            },
            namespace: None,
            vars: None,
            inputs: Some(inputs),
            cloud_connector_id: None,
            enabled: None,
            force: None,
        })
        .await?;
        m.reassign_agent(
            &agent.id,
            ReassignAgent {
                policy_id: policy_id.clone(),
            },
        )
        .await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(policy_id),
        Err(e) => {
            // No orphans: everything made for this verification goes.
            if let Err(t) = teardown(s, cfg, &policy_id).await {
                tracing::error!(policy = %policy_id, error = %t, "could not remove a failed verifier policy; the next run's cleanup will");
            }
            Err(e)
        }
    }
}

/// The verifier stream's variables: the connector's identity and
/// credentials (secrets in plaintext here; the integration seals its own
/// copies), the endpoints, and what to check.
async fn verifier_vars(
    s: &Services,
    cfg: &VerifierConfig,
    c: &CloudConnector,
    integrations: &[Expected],
    verification_id: &str,
) -> Result<Value, ServiceError> {
    let secrets = s.management().connector_secret_values(&c.id).await?;
    let mut vars = endpoint_vars(&cfg.endpoints);
    vars.insert("identity_federation_id".into(), json!(c.id));
    vars.insert("identity_federation_name".into(), json!(c.name));
    if let Some(a) = c.account_type {
        vars.insert("account_type".into(), json!(a.as_str()));
    }
    vars.insert("verification_id".into(), json!(verification_id));
    vars.insert("provider".into(), json!(c.cloud_provider.as_str()));
    vars.insert("simulation".into(), json!(cfg.simulation));
    for (name, v) in &c.vars {
        let value = v.get("value");
        let plain = match value {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o
                .get("id")
                .and_then(Value::as_str)
                .and_then(|id| secrets.get(id).cloned()),
            _ => None,
        };
        let Some(plain) = plain else {
            if value.is_some_and(Value::is_object) {
                // The secret changed under us: deploying without it would
                // report a missing credential, not the truth.
                return Err(ServiceError::Conflict(format!(
                    "cloud connector '{}' changed during the deployment (secret {name}); it is verified again",
                    c.id
                )));
            }
            continue;
        };
        let key = match name.as_str() {
            "role_arn" | "external_id" | "access_key_id" | "secret_access_key"
            | "default_region" | "tenant_id" | "client_id" | "client_secret"
            | "subscription_id" | "service_account" | "audience" | "project_id" => name.as_str(),
            _ => continue,
        };
        vars.insert(key.into(), json!(plain));
    }
    let relevant: Vec<Expected> = integrations
        .iter()
        .filter(|e| {
            e.provider
                .as_deref()
                .is_none_or(|p| p == c.cloud_provider.as_str())
        })
        .cloned()
        .collect();
    vars.insert(
        "policies".into(),
        json!(serde_json::to_string(&policies_var(&relevant)).unwrap_or_default()),
    );
    Ok(Value::Object(vars))
}
