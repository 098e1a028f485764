//! The permission verifier's tasks over a real (SQLite) store, driven
//! directly with a chosen time: one verification at a time, the verifier
//! policy's life (deployed to a tagged agent, removed when done, when it
//! expires, or when a later step fails), and the fold of results.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use flotilla_api::connectors::CreateCloudConnector;
use flotilla_api::management::{CreateAgentPolicy, CreatePackagePolicy, PackageRequest};
use flotilla_domain::connector::{CloudProvider, PermissionStatus, VerificationStatus};
use flotilla_service::crypto::Sealer;
use flotilla_service::tasks::{RunContext, RunResult, TaskRunner};
use flotilla_service::verifier::{
    ensure_home_policy, VerifierConfig, VerifierStatus, VerifyPermissions, DATA_STREAM,
    STATUS_TASK, VERIFY_TASK,
};
use flotilla_service::{FleetSettings, Services};
use flotilla_store::{AgentFilter, CheckinRecord, NewAgent, NewDocument, Page};

struct Fixture {
    services: Services,
    cfg: Arc<VerifierConfig>,
    _dir: tempfile::TempDir,
}

/// A package that declares what its template needs in its manifest.
fn write_package(dir: &Path, name: &str, provider: &str) {
    let root = dir.join(format!("{name}-1.0.0"));
    std::fs::create_dir_all(root.join("data_stream/events/agent/stream")).unwrap();
    std::fs::write(
        root.join("manifest.yml"),
        r#"format_version: 3.0.0
name: NAME
title: Cloudy
version: 1.0.0
description: A cloud integration for tests.
type: integration
owner: {github: flotilla/flotilla, type: community}
policy_templates:
  - name: audit
    title: Audit
    description: Audit events.
    inputs:
      - type: cloudy/events
        title: Events
        description: Events.
    provider_permissions:
      provider: PROVIDER
      actions:
        - action: cloudtrail:LookupEvents
        - action: s3:GetObject
        - action: sqs:ReceiveMessage
          required: false
"#
        .replace("NAME", name)
        .replace("PROVIDER", provider),
    )
    .unwrap();
    std::fs::write(
        root.join("data_stream/events/manifest.yml"),
        "type: logs\ntitle: Events\nstreams:\n  - input: cloudy/events\n    title: Events\n    description: Events.\n",
    )
    .unwrap();
    std::fs::write(
        root.join("data_stream/events/agent/stream/stream.yml.hbs"),
        "kind: events\n",
    )
    .unwrap();
}

async fn fixture(tweak: impl FnOnce(&mut VerifierConfig)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = flotilla_store_sql::open(flotilla_store_sql::Location::DataDir(dir.path()))
        .await
        .unwrap();
    let services = Services::new(
        store,
        FleetSettings::default(),
        Sealer::from_secret(b"verifier tests"),
    );
    services
        .management()
        .bootstrap(None, "http://127.0.0.1:8220")
        .await
        .unwrap();
    let mut cfg = VerifierConfig::default();
    tweak(&mut cfg);
    ensure_home_policy(&services, &cfg).await.unwrap();
    for (name, provider) in [("cloudy", "aws"), ("azurey", "azure")] {
        write_package(dir.path(), name, provider);
        services
            .management()
            .install_package_dir(&dir.path().join(format!("{name}-1.0.0")))
            .await
            .unwrap();
    }
    services
        .management()
        .create_policy(CreateAgentPolicy {
            id: Some("cloud".into()),
            name: "cloud".into(),
            namespace: None,
            description: None,
            output_id: None,
            inactivity_timeout: None,
        })
        .await
        .unwrap();
    Fixture {
        services,
        cfg: Arc::new(cfg),
        _dir: dir,
    }
}

impl Fixture {
    /// A verifier agent, online on the home policy.
    async fn verifier_agent(&self, id: &str) {
        let now = Utc::now();
        self.services
            .store
            .insert_agent(&NewAgent {
                id: id.into(),
                policy_id: self.cfg.home_policy_id.clone(),
                tags: vec![self.cfg.agent_tag.clone()],
                enrolled_at: now,
                ..Default::default()
            })
            .await
            .unwrap();
        self.services
            .store
            .record_checkins(&[CheckinRecord {
                agent_id: id.into(),
                at: now,
                status: "online".into(),
                message: String::new(),
                local_metadata: None,
                components: None,
                agent_version: None,
                reported_policy: None,
            }])
            .await
            .unwrap();
    }

    async fn connector_in_use(&self, id: &str) {
        self.connector_used_by(id, "cloudy").await
    }

    async fn connector_used_by(&self, id: &str, package: &str) {
        let m = self.services.management();
        m.create_connector(CreateCloudConnector {
            id: Some(id.into()),
            name: format!("account {id}"),
            cloud_provider: CloudProvider::Aws,
            account_type: None,
            vars: json!({"role_arn": "arn:aws:iam::123456789012:role/r", "external_id": format!("ext-{id}")})
                .as_object()
                .cloned()
                .unwrap(),
        })
        .await
        .unwrap();
        let mut pp = cloudy_integration(&format!("pp-{id}"), id);
        pp.name = format!("cloudy-{id}");
        pp.package.name = package.into();
        m.create_package_policy(pp).await.unwrap();
    }

    async fn run(&self, runner: &dyn TaskRunner, task: &str, now: DateTime<Utc>) -> RunResult {
        let (_tx, cancelled) = tokio::sync::watch::channel(false);
        runner
            .run(RunContext {
                task_id: task.into(),
                task_type: task.into(),
                params: json!({}),
                state: json!({}),
                attempt: 1,
                now,
                user: None,
                services: self.services.clone(),
                cancelled,
            })
            .await
            .unwrap()
    }

    async fn verify(&self, now: DateTime<Utc>) -> RunResult {
        self.run(&VerifyPermissions(self.cfg.clone()), VERIFY_TASK, now)
            .await
    }

    async fn fold(&self, now: DateTime<Utc>) -> RunResult {
        self.run(&VerifierStatus(self.cfg.clone()), STATUS_TASK, now)
            .await
    }

    async fn verifier_policies(&self) -> Vec<flotilla_store::VerifierPolicy> {
        self.services.store.verifier_policies().await.unwrap()
    }

    async fn policy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .services
            .store
            .list_policies(
                &Default::default(),
                Page {
                    page: 1,
                    per_page: 100,
                },
            )
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|p| p.id)
            .collect();
        ids.sort();
        ids
    }

    async fn agent_policy(&self, id: &str) -> String {
        self.services
            .store
            .get_agent(id, Utc::now())
            .await
            .unwrap()
            .policy_id
    }

    /// Documents as the verifier input writes them.
    async fn report(&self, connector: &str, verified_at: &str, results: &[(&str, &str, bool)]) {
        let c = self.services.store.get_connector(connector).await.unwrap();
        let vid = c.verification_id.unwrap();
        let docs: Vec<NewDocument> = results
            .iter()
            .map(|(action, status, required)| {
                let source = json!({
                    "@timestamp": verified_at,
                    "identity_federation": {"id": connector},
                    "verification": {"id": vid, "verified_at": verified_at},
                    "package_policy": {"id": format!("pp-{connector}")},
                    "policy": {"id": "cloud"},
                    "policy_template": "audit",
                    "permission": {"action": action, "status": status, "required": required,
                                   "error_code": if *status == "denied" { Value::from("implicitDeny") } else { Value::Null }},
                });
                NewDocument {
                    id: format!("{vid}-{action}-{verified_at}"),
                    data_stream: DATA_STREAM.into(),
                    timestamp: verified_at.parse().unwrap(),
                    source: source.to_string(),
                }
            })
            .collect();
        self.services
            .store
            .insert_documents(&docs, Utc::now())
            .await
            .unwrap();
    }
}

const ALL_GRANTED: &[(&str, &str, bool)] = &[
    ("cloudtrail:LookupEvents", "granted", true),
    ("s3:GetObject", "granted", true),
    ("sqs:ReceiveMessage", "denied", false),
];

#[tokio::test]
async fn connectors_are_verified_one_at_a_time_and_results_fold_into_them() {
    let f = fixture(|_| {}).await;
    f.verifier_agent("va").await;
    f.connector_in_use("c1").await;
    f.connector_in_use("c2").await;
    let t0 = Utc::now();

    // The first due connector gets one verifier policy, and the agent.
    let r = f.verify(t0).await;
    let vps = f.verifier_policies().await;
    assert_eq!(vps.len(), 1);
    assert_eq!(vps[0].connector_id, "c1");
    assert_eq!(f.agent_policy("va").await, vps[0].policy_id);
    let c1 = f.services.store.get_connector("c1").await.unwrap();
    assert_eq!(c1.verification_status, Some(VerificationStatus::Pending));
    let c2 = f.services.store.get_connector("c2").await.unwrap();
    assert_eq!(c2.verification_status, None, "never two at once");
    // Another is due: sooner than the interval, after TTL + grace.
    assert_eq!(r.run_at, Some(t0 + chrono::Duration::seconds(330)));
    let integrations = f
        .services
        .store
        .policy_integrations(&vps[0].policy_id)
        .await
        .unwrap();
    assert_eq!(integrations.len(), 1);
    assert_eq!(integrations[0].package.name, "flotilla_verifier");

    // Gate: while it lives, no second verification.
    let r = f.verify(t0 + chrono::Duration::seconds(10)).await;
    assert_eq!(f.verifier_policies().await.len(), 1);
    assert_eq!(
        r.run_at,
        Some(vps[0].expires_at + chrono::Duration::seconds(30))
    );

    // Partial results leave it pending; then all arrive: success, and
    // the verifier policy goes at once, its agent back home.
    f.fold(t0 + chrono::Duration::seconds(20)).await;
    assert_eq!(
        f.services
            .store
            .get_connector("c1")
            .await
            .unwrap()
            .verification_status,
        Some(VerificationStatus::Pending)
    );
    f.report("c1", "2026-12-02T12:00:01Z", ALL_GRANTED).await;
    f.fold(t0 + chrono::Duration::seconds(30)).await;
    let c1 = f.services.store.get_connector("c1").await.unwrap();
    assert_eq!(
        c1.verification_status,
        Some(VerificationStatus::Success),
        "{c1:?}"
    );
    let perms = &c1.verification_permissions[0].permissions;
    assert_eq!(perms.len(), 3);
    let sqs = perms
        .iter()
        .find(|p| p.action == "sqs:ReceiveMessage")
        .unwrap();
    assert_eq!(sqs.status, PermissionStatus::Skipped, "denied but optional");

    // The next verify run removes the finished one (the agent back home)
    // and goes on to the next connector; an older run's documents do not
    // count, only the latest run's.
    let t1 = t0 + chrono::Duration::seconds(40);
    f.verify(t1).await;
    assert!(f
        .services
        .store
        .get_policy(&vps[0].policy_id)
        .await
        .is_err());
    let vps = f.verifier_policies().await;
    assert_eq!((vps.len(), vps[0].connector_id.as_str()), (1, "c2"));
    assert_eq!(f.agent_policy("va").await, vps[0].policy_id);
    let c2 = f.services.store.get_connector("c2").await.unwrap();
    assert!(c2.verification_started_at.unwrap() > c1.verification_started_at.unwrap());
    f.report("c2", "2026-12-02T12:00:01Z", ALL_GRANTED).await;
    f.report(
        "c2",
        "2026-12-02T12:00:09Z",
        &[
            ("cloudtrail:LookupEvents", "granted", true),
            ("s3:GetObject", "denied", true),
            ("sqs:ReceiveMessage", "granted", false),
        ],
    )
    .await;
    f.fold(t1 + chrono::Duration::seconds(5)).await;
    let c2 = f.services.store.get_connector("c2").await.unwrap();
    assert_eq!(c2.verification_status, Some(VerificationStatus::Failed));
    assert!(c2.verification_failed_at.is_some());
    let s3 = c2.verification_permissions[0]
        .permissions
        .iter()
        .find(|p| p.action == "s3:GetObject")
        .unwrap();
    assert_eq!(
        (s3.status, s3.error_code.as_deref()),
        (PermissionStatus::Denied, Some("implicitDeny"))
    );
    assert!(c2.verification_message.unwrap().contains("s3:GetObject"));
    // Nothing left due: the next run does nothing, on its interval.
    let r = f.verify(t1 + chrono::Duration::seconds(50)).await;
    assert_eq!(r.run_at, None);
    assert!(f.verifier_policies().await.is_empty());
    assert_eq!(f.agent_policy("va").await, f.cfg.home_policy_id);
    assert_eq!(f.policy_ids().await, ["cloud", "flotilla-verifier"]);
}

#[tokio::test]
async fn a_failure_after_the_verifier_policy_is_created_leaves_no_orphan() {
    let f = fixture(|c| c.test_fault = Some("after_policy_created".into())).await;
    f.verifier_agent("va").await;
    f.connector_in_use("c1").await;
    let before = f.policy_ids().await;
    f.verify(Utc::now()).await;
    assert!(f.verifier_policies().await.is_empty());
    assert_eq!(f.policy_ids().await, before);
    assert_eq!(f.agent_policy("va").await, f.cfg.home_policy_id);
    let c1 = f.services.store.get_connector("c1").await.unwrap();
    assert_eq!(c1.verification_status, Some(VerificationStatus::Failed));
    assert!(c1.verification_message.unwrap().contains("injected fault"));
}

#[tokio::test]
async fn expired_verifier_policies_are_removed_and_a_silent_verifier_fails_the_connector() {
    let f = fixture(|c| c.ttl = Duration::from_secs(60)).await;
    f.verifier_agent("va").await;
    f.connector_in_use("c1").await;
    let t0 = Utc::now();
    f.verify(t0).await;
    let vp = f.verifier_policies().await.remove(0);
    // Still alive before its TTL; removed by the next run after it.
    f.verify(t0 + chrono::Duration::seconds(59)).await;
    assert_eq!(f.verifier_policies().await.len(), 1);
    f.verify(t0 + chrono::Duration::seconds(61)).await;
    assert!(f.verifier_policies().await.is_empty());
    assert!(f.services.store.get_policy(&vp.policy_id).await.is_err());
    assert_eq!(f.agent_policy("va").await, f.cfg.home_policy_id);
    // Nothing was reported: failed, saying so.
    f.fold(t0 + chrono::Duration::seconds(62)).await;
    let c1 = f.services.store.get_connector("c1").await.unwrap();
    assert_eq!(c1.verification_status, Some(VerificationStatus::Failed));
    assert!(c1
        .verification_message
        .unwrap()
        .contains("reported nothing"));
    assert!(c1.verification_permissions[0]
        .permissions
        .iter()
        .all(|p| p.status == PermissionStatus::Required));
}

#[tokio::test]
async fn without_a_verifier_agent_nothing_is_deployed_or_failed() {
    let f = fixture(|_| {}).await;
    f.connector_in_use("c1").await;
    let t0 = Utc::now();
    let r = f.verify(t0).await;
    assert!(f.verifier_policies().await.is_empty());
    assert_eq!(r.run_at, Some(t0 + chrono::Duration::seconds(15)));
    let c1 = f.services.store.get_connector("c1").await.unwrap();
    assert_eq!(c1.verification_status, None);
    // An agent of another tag does not count.
    let agents = f
        .services
        .store
        .list_agents(
            &AgentFilter::default(),
            Page {
                page: 1,
                per_page: 10,
            },
            t0,
        )
        .await
        .unwrap();
    assert_eq!(agents.total, 0);
}

#[tokio::test]
async fn connectors_keep_secrets_sealed_and_refuse_deletion_while_used() {
    let f = fixture(|_| {}).await;
    f.connector_in_use("c1").await;
    let m = f.services.management();
    let c = m.get_connector("c1").await.unwrap();
    let shown = serde_json::to_string(&c).unwrap();
    assert!(!shown.contains("ext-c1"), "{shown}");
    assert_eq!(c.vars["external_id"]["value"]["isSecretRef"], true);
    assert_eq!(c.package_policy_count, 1);
    let e = m.delete_connector("c1").await.unwrap_err();
    assert!(e.to_string().contains("used by 1 integration"), "{e}");
    // A missing connector named by an integration is the caller's 400.
    let e = m
        .create_package_policy(cloudy_integration("x", "nope"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, flotilla_service::ServiceError::Invalid(ref v) if v.field == "cloud_connector_id"),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_integration_for_another_cloud_fails_its_connector_by_name() {
    let f = fixture(|_| {}).await;
    f.verifier_agent("va").await;
    f.connector_used_by("c1", "azurey").await;
    let t0 = Utc::now();
    f.verify(t0).await;
    f.fold(t0 + chrono::Duration::seconds(1)).await;
    let c1 = f.services.store.get_connector("c1").await.unwrap();
    assert_eq!(
        c1.verification_status,
        Some(VerificationStatus::Failed),
        "{c1:?}"
    );
    let p = &c1.verification_permissions[0].permissions[0];
    assert_eq!(p.error_code.as_deref(), Some("ProviderMismatch"));
    f.verify(t0 + chrono::Duration::seconds(2)).await;
    assert!(f.verifier_policies().await.is_empty());
}

#[tokio::test]
async fn an_expired_verification_fails_at_cleanup_even_before_the_status_task_runs() {
    let f = fixture(|c| c.ttl = Duration::from_secs(60)).await;
    f.verifier_agent("va").await;
    f.connector_in_use("c1").await;
    let t0 = Utc::now();
    f.verify(t0).await;
    let first = f
        .services
        .store
        .get_connector("c1")
        .await
        .unwrap()
        .verification_id;
    // Long past TTL + window: the cleanup folds (failed), it does not
    // simply start the connector over.
    f.verify(t0 + chrono::Duration::seconds(600)).await;
    let c1 = f.services.store.get_connector("c1").await.unwrap();
    assert_eq!(
        c1.verification_status,
        Some(VerificationStatus::Failed),
        "{c1:?}"
    );
    assert_eq!(c1.verification_id, first);
    assert!(f.verifier_policies().await.is_empty());
}

fn cloudy_integration(id: &str, connector: &str) -> CreatePackagePolicy {
    CreatePackagePolicy {
        id: Some(id.into()),
        name: id.into(),
        description: None,
        policy_id: "cloud".into(),
        package: PackageRequest {
            name: "cloudy".into(),
            version: None,
        },
        namespace: None,
        vars: None,
        inputs: None,
        cloud_connector_id: Some(connector.into()),
        enabled: None,
        force: None,
    }
}

#[tokio::test]
async fn changes_to_what_uses_a_connector_are_followed() {
    let f = fixture(|_| {}).await;
    f.verifier_agent("va").await;
    f.connector_in_use("c1").await;
    let t0 = Utc::now();
    f.verify(t0).await;
    f.report("c1", "2026-12-02T12:00:01Z", ALL_GRANTED).await;
    f.fold(t0 + chrono::Duration::seconds(1)).await;
    f.verify(t0 + chrono::Duration::seconds(2)).await;
    let c1 = f.services.store.get_connector("c1").await.unwrap();
    assert_eq!(c1.verification_status, Some(VerificationStatus::Success));
    // A second integration starts using it: due again at once.
    let m = f.services.management();
    m.create_package_policy(cloudy_integration("pp-second", "c1"))
        .await
        .unwrap();
    let c1 = f.services.store.get_connector("c1").await.unwrap();
    assert_eq!(c1.verification_status, None);
    f.verify(t0 + chrono::Duration::seconds(3)).await;
    assert_eq!(f.verifier_policies().await.len(), 1);
    // Every integration removed mid-verification: it does not stay pending.
    m.delete_package_policy("pp-second").await.unwrap();
    m.delete_package_policy("pp-c1").await.unwrap();
    // While its credentials are deployed, it cannot be deleted.
    assert!(m.delete_connector("c1").await.is_err());
    f.fold(t0 + chrono::Duration::seconds(4)).await;
    let c1 = f.services.store.get_connector("c1").await.unwrap();
    assert_eq!(c1.verification_status, None, "{c1:?}");
    f.verify(t0 + chrono::Duration::seconds(5)).await;
    assert!(f.verifier_policies().await.is_empty());
    m.delete_connector("c1").await.unwrap();
}

#[tokio::test]
async fn a_long_multibyte_name_and_a_removed_home_policy_do_not_stop_the_verifier() {
    let f = fixture(|_| {}).await;
    f.verifier_agent("va").await;
    let m = f.services.management();
    m.create_connector(CreateCloudConnector {
        id: Some("c1".into()),
        name: "€".repeat(250),
        cloud_provider: CloudProvider::Aws,
        account_type: None,
        vars: json!({"access_key_id": "AKIA1", "secret_access_key": "sk"})
            .as_object()
            .cloned()
            .unwrap(),
    })
    .await
    .unwrap();
    m.create_package_policy(cloudy_integration("pp-c1", "c1"))
        .await
        .unwrap();
    let t0 = Utc::now();
    f.verify(t0).await;
    let vp = f.verifier_policies().await.remove(0);
    // The home policy is removed meanwhile (nobody is on it).
    m.delete_policy(&f.cfg.home_policy_id).await.unwrap();
    f.verify(t0 + chrono::Duration::seconds(400)).await;
    assert!(f.services.store.get_policy(&vp.policy_id).await.is_err());
    assert_eq!(f.agent_policy("va").await, f.cfg.home_policy_id);
}
