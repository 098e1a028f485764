//! The storage conformance suite: the same cases, run against every engine.
//!
//! An engine's test file expands [`conformance_suite!`] with an async
//! expression that yields `Option<Arc<dyn Store>>` (`None` skips, for an
//! engine that is not available). Each case takes a fresh, empty store.

use std::sync::Arc;

use chrono::{Duration, Utc};
use serde_json::{json, Map};

use flotilla_domain::agent::AgentStatus;
use flotilla_domain::apikey::OperatorApiKey;
use flotilla_domain::enrollment::EnrollmentApiKey;
use flotilla_domain::output::{NewOutput, OutputType, OutputUpdate};
use flotilla_domain::package_policy::{NewPackagePolicy, PackageRef};
use flotilla_domain::policy::{AgentPolicyUpdate, NewAgentPolicy};

use flotilla_domain::action::ActionType;

use crate::{
    ActionAck, AgentFilter, ApiKeyRecord, CheckinRecord, EnrollmentKeyFilter, NewAction, NewAgent,
    OutputKeyChange, PackagePolicyFilter, Page, PolicyFilter, Store, StoreError, StoreEvent,
};

/// Expands to one `#[tokio::test]` per conformance case.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@cases $make;
            outputs_keep_exactly_one_default,
            output_changes_bump_the_policies_that_use_them,
            policies_crud_and_paging,
            policy_revision_counts_every_change,
            concurrent_policy_updates_lose_nothing,
            integrations_bump_their_policy,
            deleting_a_policy_removes_its_integrations_and_keys,
            enrollment_keys_lookup_and_revoke,
            agents_filter_reassign_and_unenroll,
            operator_keys_lookup_and_revoke,
            enrolment_output_keys_and_retirement,
            actions_are_delivered_until_confirmed_and_acked,
            checkins_are_recorded_in_batches,
            changes_reach_subscribers,
            revisions_never_repeat_across_delete_and_recreate,
            one_active_agent_per_enrollment_id,
            concurrent_enrolments_with_one_enrollment_id_leave_one_agent,
            a_key_less_output_retires_the_agents_key,
            unenrolment_and_its_action_are_one_transaction,
            deleting_an_output_races_making_it_default,
            deleting_an_integration_races_moving_it,
            concurrent_acks_have_one_first,
            concurrent_orphaned_reports_have_one_winner
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store: Option<std::sync::Arc<dyn $crate::Store>> = $make.await;
                let Some(store) = store else { return };
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

type S = Arc<dyn Store>;

fn output(name: &str, is_default: bool) -> NewOutput {
    NewOutput {
        id: None,
        name: name.into(),
        output_type: OutputType::Elasticsearch,
        hosts: vec!["https://es:9200".into()],
        is_default,
    }
}

fn policy(id: &str, name: &str) -> NewAgentPolicy {
    NewAgentPolicy {
        id: id.into(),
        name: name.into(),
        namespace: "default".into(),
        description: None,
        output_id: None,
        inactivity_timeout: 3600,
    }
}

fn integration(id: &str, policy_id: &str) -> NewPackagePolicy {
    NewPackagePolicy {
        id: id.into(),
        name: format!("nginx-{id}"),
        description: None,
        policy_id: policy_id.into(),
        package: PackageRef {
            name: "nginx".into(),
            version: "1.20.0".into(),
        },
        namespace: None,
        vars: Map::new(),
        inputs: vec![],
        cloud_connector_id: None,
    }
}

fn agent(id: &str, policy_id: &str, tags: &[&str]) -> NewAgent {
    NewAgent {
        id: id.into(),
        policy_id: policy_id.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        local_metadata: json!({"host": {"hostname": id}}),
        enrolled_at: Utc::now(),
        ..Default::default()
    }
}

fn page(page: u32, per_page: u32) -> Page {
    Page { page, per_page }
}

pub async fn outputs_keep_exactly_one_default(s: S) {
    let now = Utc::now();
    let a = s
        .create_output("a", &output("a", false), now)
        .await
        .unwrap();
    assert!(a.is_default, "the first output becomes the default");
    let b = s.create_output("b", &output("b", true), now).await.unwrap();
    assert!(b.is_default);
    assert!(!s.get_output("a").await.unwrap().is_default);
    assert_eq!(s.default_output().await.unwrap().unwrap().id, "b");

    assert!(matches!(
        s.create_output("c", &output("a", false), now).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_output("a", &output("zz", false), now).await,
        Err(StoreError::Conflict(_))
    ));

    let unset = OutputUpdate {
        is_default: Some(false),
        ..Default::default()
    };
    assert!(matches!(
        s.update_output("b", &unset, now).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.delete_output("b").await,
        Err(StoreError::Conflict(_))
    ));

    let make_a_default = OutputUpdate {
        is_default: Some(true),
        ..Default::default()
    };
    s.update_output("a", &make_a_default, now).await.unwrap();
    assert_eq!(s.default_output().await.unwrap().unwrap().id, "a");
    s.delete_output("b").await.unwrap();
    assert!(matches!(
        s.get_output("b").await,
        Err(StoreError::NotFound { .. })
    ));

    let listed = s.list_outputs(page(1, 10)).await.unwrap();
    assert_eq!(listed.total, 1);
    assert_eq!(listed.items[0].hosts, ["https://es:9200"]);
}

pub async fn output_changes_bump_the_policies_that_use_them(s: S) {
    let now = Utc::now();
    s.create_output("def", &output("def", true), now)
        .await
        .unwrap();
    s.create_output("other", &output("other", false), now)
        .await
        .unwrap();
    s.create_policy(&policy("p-default", "on default"), now)
        .await
        .unwrap();
    let mut explicit = policy("p-other", "on other");
    explicit.output_id = Some("other".into());
    s.create_policy(&explicit, now).await.unwrap();
    let mut missing = policy("p-missing", "missing output");
    missing.output_id = Some("nope".into());
    assert!(matches!(
        s.create_policy(&missing, now).await,
        Err(StoreError::NotFound { .. })
    ));

    let hosts = OutputUpdate {
        hosts: Some(vec!["https://es2:9200".into()]),
        ..Default::default()
    };
    s.update_output("other", &hosts, now).await.unwrap();
    assert_eq!(s.get_policy("p-other").await.unwrap().revision, 2);
    assert_eq!(s.get_policy("p-default").await.unwrap().revision, 1);

    s.update_output("def", &hosts, now).await.unwrap();
    assert_eq!(s.get_policy("p-default").await.unwrap().revision, 2);

    // Moving the default flag changes where default-output policies send.
    let make_default = OutputUpdate {
        is_default: Some(true),
        ..Default::default()
    };
    s.update_output("other", &make_default, now).await.unwrap();
    assert_eq!(s.get_policy("p-default").await.unwrap().revision, 3);

    assert!(matches!(s.delete_output("def").await, Ok(())));
    assert!(matches!(
        s.delete_output("other").await,
        Err(StoreError::Conflict(_))
    ));
}

pub async fn policies_crud_and_paging(s: S) {
    let now = Utc::now();
    for i in 0..5 {
        s.create_policy(
            &policy(&format!("p{i}"), &format!("Policy {i}")),
            now + Duration::milliseconds(i),
        )
        .await
        .unwrap();
    }
    assert!(matches!(
        s.create_policy(&policy("p0", "another"), now).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_policy(&policy("px", "Policy 1"), now).await,
        Err(StoreError::Conflict(_))
    ));

    let p = s.get_policy("p3").await.unwrap();
    assert_eq!(
        (p.name.as_str(), p.namespace.as_str(), p.revision),
        ("Policy 3", "default", 1)
    );
    assert!(matches!(
        s.get_policy("nope").await,
        Err(StoreError::NotFound { .. })
    ));

    let second = s
        .list_policies(&PolicyFilter::default(), page(2, 2))
        .await
        .unwrap();
    assert_eq!(second.total, 5);
    let ids: Vec<_> = second.items.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["p2", "p3"]);
    let past = s
        .list_policies(&PolicyFilter::default(), page(9, 2))
        .await
        .unwrap();
    assert!(past.items.is_empty());

    let filtered = s
        .list_policies(
            &PolicyFilter {
                name: Some("policy 4".into()),
            },
            page(1, 10),
        )
        .await
        .unwrap();
    assert_eq!(filtered.total, 1);
    let percent = s
        .list_policies(
            &PolicyFilter {
                name: Some("%".into()),
            },
            page(1, 10),
        )
        .await
        .unwrap();
    assert_eq!(percent.total, 0, "LIKE wildcards in a filter are literal");

    s.delete_policy("p4").await.unwrap();
    assert!(matches!(
        s.delete_policy("p4").await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn policy_revision_counts_every_change(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    let update = AgentPolicyUpdate {
        namespace: Some("prod".into()),
        description: Some(Some("d".into())),
        ..Default::default()
    };
    let p = s.update_policy("p", &update, now).await.unwrap();
    assert_eq!(
        (p.revision, p.namespace.as_str(), p.description.as_deref()),
        (2, "prod", Some("d"))
    );
    let clear = AgentPolicyUpdate {
        description: Some(None),
        ..Default::default()
    };
    let p = s.update_policy("p", &clear, now).await.unwrap();
    assert_eq!((p.revision, p.description), (3, None));

    let rename = AgentPolicyUpdate {
        name: Some("Q".into()),
        ..Default::default()
    };
    assert!(matches!(
        s.update_policy("p", &rename, now).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.get_policy("p").await.unwrap().revision,
        3,
        "a refused update changes nothing"
    );
    let bad_output = AgentPolicyUpdate {
        output_id: Some(Some("none".into())),
        ..Default::default()
    };
    assert!(matches!(
        s.update_policy("p", &bad_output, now).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.update_policy("zz", &clear, now).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn concurrent_policy_updates_lose_nothing(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let u = AgentPolicyUpdate {
                    description: Some(Some(format!("d{i}"))),
                    ..Default::default()
                };
                s.update_policy("p", &u, Utc::now()).await.map(|_| ())
            } else {
                s.create_package_policy(&integration(&format!("i{i}"), "p"), Utc::now())
                    .await
                    .map(|_| ())
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(s.get_policy("p").await.unwrap().revision, 17);
}

pub async fn integrations_bump_their_policy(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    assert!(matches!(
        s.create_package_policy(&integration("x", "missing"), now)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let mut new = integration("i1", "p");
    new.vars.insert("k".into(), json!("v"));
    new.namespace = Some("prod".into());
    let pp = s.create_package_policy(&new, now).await.unwrap();
    assert_eq!(pp.vars["k"], "v");
    assert_eq!(pp.namespace.as_deref(), Some("prod"));
    assert_eq!(s.get_policy("p").await.unwrap().revision, 2);
    let mut dup = integration("i2", "p");
    dup.name = pp.name.clone();
    assert!(matches!(
        s.create_package_policy(&dup, now).await,
        Err(StoreError::Conflict(_))
    ));

    s.create_package_policy(&integration("i2", "p"), now + Duration::milliseconds(1))
        .await
        .unwrap();
    let ids: Vec<_> = s
        .policy_integrations("p")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, ["i1", "i2"]);

    let mut moved = integration("i1", "q");
    moved.name = pp.name.clone();
    let stale = now - Duration::seconds(60);
    assert!(
        matches!(
            s.update_package_policy("i1", &moved, Some(stale), now)
                .await,
            Err(StoreError::Conflict(_))
        ),
        "an update based on a stale read is refused"
    );
    let current = s.get_package_policy("i1").await.unwrap().updated_at;
    s.update_package_policy("i1", &moved, Some(current), now)
        .await
        .unwrap();
    assert_eq!(s.get_policy("p").await.unwrap().revision, 4);
    assert_eq!(s.get_policy("q").await.unwrap().revision, 2);

    let on_q = s
        .list_package_policies(
            &PackagePolicyFilter {
                policy_id: Some("q".into()),
                ..Default::default()
            },
            page(1, 10),
        )
        .await
        .unwrap();
    assert_eq!(on_q.total, 1);

    s.delete_package_policy("i1", now).await.unwrap();
    assert_eq!(s.get_policy("q").await.unwrap().revision, 3);
    assert!(matches!(
        s.get_package_policy("i1").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete_package_policy("i1", now).await,
        Err(StoreError::NotFound { .. })
    ));
}

fn enrollment_key(id: &str, policy_id: &str) -> EnrollmentApiKey {
    EnrollmentApiKey {
        id: id.into(),
        name: format!("key {id}"),
        policy_id: policy_id.into(),
        active: true,
        hint: "abcd".into(),
        created_at: Utc::now(),
    }
}

pub async fn deleting_a_policy_removes_its_integrations_and_keys(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_package_policy(&integration("i", "p"), now)
        .await
        .unwrap();
    s.create_enrollment_key(&enrollment_key("k", "p"), "hash-k")
        .await
        .unwrap();
    s.insert_agent(&agent("a", "p", &[])).await.unwrap();
    assert!(
        matches!(s.delete_policy("p").await, Err(StoreError::Conflict(_))),
        "active agents block deletion"
    );
    s.unenroll_now("a", now).await.unwrap();
    s.delete_policy("p").await.unwrap();
    assert!(matches!(
        s.get_package_policy("i").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(s
        .find_enrollment_key_by_hash("hash-k")
        .await
        .unwrap()
        .is_none());
    // The unenrolled agent's record survives its policy.
    assert_eq!(
        s.get_agent("a", now).await.unwrap().status,
        AgentStatus::Unenrolled
    );
}

pub async fn enrollment_keys_lookup_and_revoke(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    assert!(matches!(
        s.create_enrollment_key(&enrollment_key("x", "none"), "h")
            .await,
        Err(StoreError::NotFound { .. })
    ));
    s.create_enrollment_key(&enrollment_key("k1", "p"), "hash-1")
        .await
        .unwrap();
    s.create_enrollment_key(&enrollment_key("k2", "q"), "hash-2")
        .await
        .unwrap();
    assert!(matches!(
        s.create_enrollment_key(&enrollment_key("k3", "q"), "hash-2")
            .await,
        Err(StoreError::Conflict(_))
    ));
    let found = s
        .find_enrollment_key_by_hash("hash-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.id.as_str(), found.policy_id.as_str(), found.active),
        ("k1", "p", true)
    );
    assert!(s
        .find_enrollment_key_by_hash("hash-x")
        .await
        .unwrap()
        .is_none());

    let on_q = s
        .list_enrollment_keys(
            &EnrollmentKeyFilter {
                policy_id: Some("q".into()),
            },
            page(1, 10),
        )
        .await
        .unwrap();
    assert_eq!(
        on_q.items.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["k2"]
    );

    let revoked = s.revoke_enrollment_key("k1").await.unwrap();
    assert!(!revoked.active);
    assert!(
        !s.find_enrollment_key_by_hash("hash-1")
            .await
            .unwrap()
            .unwrap()
            .active
    );
    assert!(matches!(
        s.revoke_enrollment_key("nope").await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn agents_filter_reassign_and_unenroll(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    s.insert_agent(&agent("a1", "p", &["eu", "web"]))
        .await
        .unwrap();
    s.insert_agent(&agent("a2", "p", &["us"])).await.unwrap();
    s.insert_agent(&agent("a3", "q", &["eu"])).await.unwrap();
    assert!(matches!(
        s.insert_agent(&agent("a1", "p", &[])).await,
        Err(StoreError::Conflict(_))
    ));

    let a1 = s.get_agent("a1", now).await.unwrap();
    assert_eq!(a1.tags, ["eu", "web"]);
    assert_eq!(a1.status, AgentStatus::Enrolling);
    assert_eq!(a1.local_metadata["host"]["hostname"], "a1");
    assert!(matches!(
        s.get_agent("zz", now).await,
        Err(StoreError::NotFound { .. })
    ));

    let by_policy = s
        .list_agents(
            &AgentFilter {
                policy_id: Some("p".into()),
                ..Default::default()
            },
            page(1, 10),
            now,
        )
        .await
        .unwrap();
    assert_eq!(by_policy.total, 2);
    let by_tag = s
        .list_agents(
            &AgentFilter {
                tag: Some("eu".into()),
                ..Default::default()
            },
            page(1, 10),
            now,
        )
        .await
        .unwrap();
    let mut ids: Vec<_> = by_tag.items.iter().map(|a| a.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["a1", "a3"]);
    let paged = s
        .list_agents(&AgentFilter::default(), page(2, 2), now)
        .await
        .unwrap();
    assert_eq!((paged.total, paged.items.len()), (3, 1));

    let moved = s.reassign_agent("a2", "q", now).await.unwrap();
    assert_eq!(
        (moved.policy_id.as_str(), moved.policy_revision),
        ("q", None)
    );
    assert!(matches!(
        s.reassign_agent("a2", "none", now).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.reassign_agent("zz", "q", now).await,
        Err(StoreError::NotFound { .. })
    ));

    let tagged = s.set_agent_tags("a2", &["blue".into()], now).await.unwrap();
    assert_eq!(tagged.tags, ["blue"]);

    let leaving = s
        .start_agent_unenrollment("a3", &unenroll_action("u-a3", "a3"), now)
        .await
        .unwrap();
    assert_eq!(leaving.status, AgentStatus::Unenrolling);
    s.unenroll_now("a3", now).await.unwrap();
    let gone = s.get_agent("a3", now).await.unwrap();
    assert_eq!(gone.status, AgentStatus::Unenrolled);
    assert!(gone.unenrolled_at.is_some());
    s.unenroll_now("a3", now).await.unwrap();
    assert_eq!(
        s.get_agent("a3", now).await.unwrap().unenrolled_at,
        gone.unenrolled_at,
        "idempotent"
    );
    assert!(matches!(
        s.unenroll_now("zz", now).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.reassign_agent("a3", "p", now).await,
        Err(StoreError::Conflict(_))
    ));

    let active = s
        .list_agents(&AgentFilter::default(), page(1, 10), now)
        .await
        .unwrap();
    assert_eq!(active.total, 2, "unenrolled agents are hidden by default");
    let all = s
        .list_agents(
            &AgentFilter {
                show_inactive: true,
                ..Default::default()
            },
            page(1, 10),
            now,
        )
        .await
        .unwrap();
    assert_eq!(all.total, 3);
    let unenrolled = s
        .list_agents(
            &AgentFilter {
                status: Some(AgentStatus::Unenrolled),
                ..Default::default()
            },
            page(1, 10),
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        unenrolled
            .items
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        ["a3"]
    );
}

pub async fn operator_keys_lookup_and_revoke(s: S) {
    let key = OperatorApiKey {
        id: "k1".into(),
        name: "admin".into(),
        active: true,
        hint: "flt_".into(),
        created_at: Utc::now(),
    };
    s.create_operator_key(&key, "h1").await.unwrap();
    let dup = OperatorApiKey {
        id: "k2".into(),
        ..key.clone()
    };
    assert!(matches!(
        s.create_operator_key(&dup, "h2").await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.find_operator_key_by_hash("h1").await.unwrap().unwrap().id,
        "k1"
    );
    assert!(s.find_operator_key_by_hash("h2").await.unwrap().is_none());
    assert_eq!(s.list_operator_keys(page(1, 10)).await.unwrap().total, 1);
    s.revoke_operator_key("k1").await.unwrap();
    assert!(s.find_operator_key_by_hash("h1").await.unwrap().is_none());
    assert!(matches!(
        s.revoke_operator_key("zz").await,
        Err(StoreError::NotFound { .. })
    ));
}

fn key(id: &str, agent: &str, kind: &str) -> ApiKeyRecord {
    let kind = crate::KeyKind::parse(kind).expect("a key kind");
    ApiKeyRecord {
        id: id.into(),
        name: format!("{agent}:{}", kind.as_str()),
        kind,
        agent_id: Some(agent.into()),
        secret_hash: format!("hash-{id}"),
        role_descriptors: json!({}),
        metadata: json!({"agent_id": agent}),
        created_at: Utc::now(),
        retire_pending: false,
        invalidated_at: None,
    }
}

fn output_change(id: &str, agent: &str, revision: i64, replaces: Option<&str>) -> OutputKeyChange {
    OutputKeyChange {
        key: key(id, agent, "output"),
        replaces: replaces.map(Into::into),
        sealed_secret: format!("sealed-{id}"),
        permissions_hash: format!("perm-{id}"),
        policy_id: "p".into(),
        revision,
    }
}

pub async fn enrolment_output_keys_and_retirement(s: S) {
    let now = Utc::now();
    let mut a = agent("a", "missing", &["t"]);
    a.access_api_key_id = Some("acc".into());
    assert!(matches!(
        s.enroll_agent(&a, &key("acc", "a", "access"), &[]).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        s.get_fleet_agent("a").await.unwrap().is_none(),
        "nothing recorded against a missing policy"
    );
    assert!(s.get_api_key("acc").await.unwrap().is_none());

    s.create_policy(&policy("p", "P"), now).await.unwrap();
    a.policy_id = "p".into();
    a.enrollment_id = Some("e1".into());
    let enrolled = s
        .enroll_agent(&a, &key("acc", "a", "access"), &[])
        .await
        .unwrap();
    assert_eq!(enrolled.tags, ["t"]);
    let fa = s.get_fleet_agent("a").await.unwrap().unwrap();
    assert_eq!(fa.access_api_key_id.as_deref(), Some("acc"));
    assert_eq!(
        s.find_agent_by_enrollment_id("e1")
            .await
            .unwrap()
            .unwrap()
            .id,
        "a"
    );

    s.set_output_key("a", &output_change("o1", "a", 2, None))
        .await
        .unwrap();
    assert!(
        matches!(
            s.set_output_key("a", &output_change("lost", "a", 2, None))
                .await,
            Err(StoreError::Conflict(_))
        ),
        "a rotation racing another loses instead of overwriting it"
    );
    assert!(s.get_api_key("lost").await.unwrap().is_none());
    s.set_output_key("a", &output_change("o2", "a", 3, Some("o1")))
        .await
        .unwrap();
    let fa = s.get_fleet_agent("a").await.unwrap().unwrap();
    assert_eq!(
        (fa.output_api_key_id.as_deref(), fa.output_key_revision),
        (Some("o2"), Some(3))
    );
    assert_eq!(fa.output_api_key_sealed.as_deref(), Some("sealed-o2"));
    assert!(s.get_api_key("o1").await.unwrap().unwrap().retire_pending);
    assert!(!s.get_api_key("o2").await.unwrap().unwrap().retire_pending);

    // A revision the policy never reached is not believed.
    assert!(s
        .agent_runs_policy("a", "p", 99, now)
        .await
        .unwrap()
        .is_empty());
    let fa = s.get_fleet_agent("a").await.unwrap().unwrap();
    assert_eq!(fa.policy_revision, None);
    // Bring the policy to revision 3.
    for d in ["x", "y"] {
        let u = AgentPolicyUpdate {
            description: Some(Some(d.into())),
            ..Default::default()
        };
        s.update_policy("p", &u, now).await.unwrap();
    }
    // Running an older revision retires nothing; the new one retires o1.
    assert!(s
        .agent_runs_policy("a", "p", 2, now)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.get_fleet_agent("a")
            .await
            .unwrap()
            .unwrap()
            .policy_revision,
        Some(2)
    );
    assert_eq!(s.agent_runs_policy("a", "p", 3, now).await.unwrap(), ["o1"]);
    assert!(s
        .get_api_key("o1")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());
    assert!(s
        .get_api_key("o2")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_none());
    assert!(s
        .agent_runs_policy("a", "other", 9, now)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.get_fleet_agent("a")
            .await
            .unwrap()
            .unwrap()
            .policy_revision,
        Some(3)
    );

    // Replacing the agent removes it and its keys; unenrolling invalidates all.
    let mut b = agent("a", "p", &[]);
    b.access_api_key_id = Some("acc2".into());
    s.enroll_agent(&b, &key("acc2", "a", "access"), &["a".to_string()])
        .await
        .unwrap();
    assert!(s
        .get_api_key("acc")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());
    assert!(s
        .get_api_key("o2")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());
    s.unenroll_now("a", now).await.unwrap();
    assert!(s
        .get_api_key("acc2")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());
    assert!(!s.get_fleet_agent("a").await.unwrap().unwrap().active);
    assert_eq!(
        s.invalidate_api_keys(&["acc2".into()], now).await.unwrap(),
        0,
        "idempotent"
    );

    s.audit_unenroll("a", "orphaned", now, now).await.unwrap();
    assert!(matches!(
        s.audit_unenroll("a", "uninstall", now, now).await,
        Err(StoreError::Conflict(_))
    ));
}

pub async fn actions_are_delivered_until_confirmed_and_acked(s: S) {
    let now = Utc::now();
    let new = |id: &str, agents: &[&str], expiration| NewAction {
        id: id.into(),
        action_type: ActionType::Settings,
        data: json!({"log_level": "debug"}),
        created_at: now,
        expiration,
        agent_ids: agents.iter().map(|a| a.to_string()).collect(),
    };
    s.create_action(&new("x1", &["a", "b"], None))
        .await
        .unwrap();
    s.create_action(&new("x2", &["a"], Some(now - Duration::seconds(1))))
        .await
        .unwrap();
    let pending = s.pending_actions("a", now, 100).await.unwrap();
    assert_eq!(
        pending.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["x1"],
        "expired actions are not delivered"
    );
    assert_eq!(pending[0].data["log_level"], "debug");

    s.mark_delivered("a", &["x1".into()], "tok1").await.unwrap();
    assert_eq!(
        s.pending_actions("a", now, 100).await.unwrap().len(),
        1,
        "unconfirmed deliveries are resent"
    );
    s.confirm_delivery("a", "tok1").await.unwrap();
    assert!(s.pending_actions("a", now, 100).await.unwrap().is_empty());
    assert_eq!(
        s.pending_actions("b", now, 100).await.unwrap().len(),
        1,
        "per agent"
    );

    assert_eq!(
        s.ack_action("b", "x1", None, now).await.unwrap(),
        ActionAck::Acked {
            action_type: ActionType::Settings,
            first_time: true
        }
    );
    assert!(
        s.pending_actions("b", now, 100).await.unwrap().is_empty(),
        "acked actions are done"
    );
    assert_eq!(
        s.ack_action("b", "x1", None, now).await.unwrap(),
        ActionAck::Acked {
            action_type: ActionType::Settings,
            first_time: false
        }
    );
    assert_eq!(
        s.ack_action("c", "x1", None, now).await.unwrap(),
        ActionAck::OtherAgent
    );
    assert_eq!(
        s.ack_action("a", "nope", None, now).await.unwrap(),
        ActionAck::NotFound
    );

    // The operator's view: delivery and acknowledgement per agent.
    s.ack_action("a", "x1", Some("could not apply"), now)
        .await
        .unwrap();
    let a = s.agent_actions("a", page(1, 10)).await.unwrap();
    assert_eq!(a.total, 2);
    let x1 = a.items.iter().find(|i| i.action.id == "x1").unwrap();
    assert!(x1.delivered && x1.acked_at.is_some());
    assert_eq!(x1.ack_error.as_deref(), Some("could not apply"));
    let x2 = a.items.iter().find(|i| i.action.id == "x2").unwrap();
    assert!(!x2.delivered && x2.acked_at.is_none());
    assert_eq!(s.agent_actions("b", page(1, 10)).await.unwrap().total, 1);
}

pub async fn checkins_are_recorded_in_batches(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.insert_agent(&agent("a", "p", &[])).await.unwrap();
    s.insert_agent(&agent("b", "p", &[])).await.unwrap();
    let rec = |id: &str, status: &str| CheckinRecord {
        agent_id: id.into(),
        at: now,
        status: status.into(),
        message: "m".into(),
        local_metadata: Some(json!({"host": {"hostname": format!("{id}-new")}})),
        components: None,
        agent_version: Some("9.6.0".into()),
        reported_policy: Some(("p".into(), 1)),
    };
    s.record_checkins(&[
        rec("a", "online"),
        rec("b", "error"),
        rec("ghost", "online"),
    ])
    .await
    .unwrap();
    let a = s.get_agent("a", now).await.unwrap();
    assert_eq!(a.status, AgentStatus::Online);
    assert_eq!(a.local_metadata["host"]["hostname"], "a-new");
    assert_eq!(a.agent_version.as_deref(), Some("9.6.0"));
    assert_eq!(
        (a.reported_policy_id.as_deref(), a.reported_policy_revision),
        (Some("p"), Some(1))
    );
    assert_eq!(
        s.get_agent("b", now).await.unwrap().status,
        AgentStatus::Error
    );
    let later = now + Duration::seconds(600);
    assert_eq!(
        s.get_agent("a", later).await.unwrap().status,
        AgentStatus::Offline
    );
    let much_later = now + Duration::seconds(7200);
    assert_eq!(
        s.get_agent("a", much_later).await.unwrap().status,
        AgentStatus::Inactive
    );
    let online = s
        .list_agents(
            &AgentFilter {
                status: Some(AgentStatus::Online),
                ..Default::default()
            },
            page(1, 10),
            now,
        )
        .await
        .unwrap();
    assert_eq!(online.total, 1);
}

pub async fn changes_reach_subscribers(s: S) {
    let now = Utc::now();
    let mut events = s.subscribe();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_package_policy(&integration("i", "p"), now)
        .await
        .unwrap();
    let wanted = StoreEvent::PolicyChanged {
        policy_id: Some("p".into()),
    };
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(e) if e == wanted => return e,
                Ok(_) => continue,
                Err(e) => panic!("subscription failed: {e}"),
            }
        }
    })
    .await
    .expect("the change event arrives");
    assert!(got.concerns("any-agent", "p"));
    assert!(!got.concerns("any-agent", "q"));
}

/// (id, revision) names one content for ever: caches and action ids trust it.
pub async fn revisions_never_repeat_across_delete_and_recreate(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    let u = AgentPolicyUpdate {
        description: Some(Some("x".into())),
        ..Default::default()
    };
    assert_eq!(s.update_policy("q", &u, now).await.unwrap().revision, 2);
    s.delete_policy("q").await.unwrap();
    let again = s.create_policy(&policy("q", "Q"), now).await.unwrap();
    assert_eq!(
        again.revision, 3,
        "a recreated policy starts above the deleted one"
    );
    s.update_policy("q", &u, now).await.unwrap();
    s.delete_policy("q").await.unwrap();
    assert_eq!(
        s.create_policy(&policy("q", "Q"), now)
            .await
            .unwrap()
            .revision,
        5
    );
    // Other ids are unaffected.
    assert_eq!(
        s.create_policy(&policy("r", "R"), now)
            .await
            .unwrap()
            .revision,
        1
    );
}

fn enrolling(id: &str, policy_id: &str, enrollment_id: &str) -> (NewAgent, ApiKeyRecord) {
    let mut a = agent(id, policy_id, &[]);
    a.enrollment_id = Some(enrollment_id.into());
    let access = key(&format!("acc-{id}"), id, "access");
    a.access_api_key_id = Some(access.id.clone());
    (a, access)
}

pub async fn one_active_agent_per_enrollment_id(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_policy(&policy("p2", "P2"), now).await.unwrap();
    // Never checked in: the next enrolment with its enrollment id removes it.
    let (a, k) = enrolling("a", "p", "e");
    s.enroll_agent(&a, &k, &[]).await.unwrap();
    let (b, k) = enrolling("b", "p", "e");
    s.enroll_agent(&b, &k, &[]).await.unwrap();
    assert!(s.get_fleet_agent("a").await.unwrap().is_none());
    assert!(s
        .get_api_key("acc-a")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());
    // Checked in: unenrolled (kept as a record), its keys invalidated.
    s.record_checkins(&[CheckinRecord {
        agent_id: "b".into(),
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
    let (c, k) = enrolling("c", "p2", "e");
    s.enroll_agent(&c, &k, &[]).await.unwrap();
    let b = s.get_fleet_agent("b").await.unwrap().unwrap();
    assert!(
        !b.active,
        "the older agent with the enrollment id is unenrolled"
    );
    assert!(s
        .get_api_key("acc-b")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());
    let active = s
        .list_agents(&AgentFilter::default(), Page::default(), now)
        .await
        .unwrap();
    assert_eq!(
        active
            .items
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        ["c"]
    );
}

/// Two connections enrol with one enrollment id at once, many times: at
/// most one active agent remains each time (PostgreSQL's READ COMMITTED
/// lets both transactions miss each other; the unique index catches it).
pub async fn concurrent_enrolments_with_one_enrollment_id_leave_one_agent(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    for round in 0..10 {
        let eid = format!("e{round}");
        let mut tasks = Vec::new();
        for n in 0..4 {
            let s = s.clone();
            let (a, k) = enrolling(&format!("r{round}-{n}"), "p", &eid);
            tasks.push(tokio::spawn(
                async move { s.enroll_agent(&a, &k, &[]).await },
            ));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(StoreError::Conflict(_)) | Err(StoreError::Busy) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert!(ok >= 1, "one enrolment succeeds");
        let active = s
            .list_agents(
                &AgentFilter::default(),
                Page {
                    page: 1,
                    per_page: 1000,
                },
                now,
            )
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|a| a.id.starts_with(&format!("r{round}-")))
            .count();
        assert_eq!(
            active, 1,
            "round {round}: one active agent per enrollment id"
        );
    }
}

pub async fn a_key_less_output_retires_the_agents_key(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    let mut a = agent("a", "p", &[]);
    a.access_api_key_id = Some("acc".into());
    s.enroll_agent(&a, &key("acc", "a", "access"), &[])
        .await
        .unwrap();
    s.set_output_key("a", &output_change("o1", "a", 1, None))
        .await
        .unwrap();
    s.agent_runs_policy("a", "p", 1, now).await.unwrap();
    let u = AgentPolicyUpdate {
        description: Some(Some("to logstash".into())),
        ..Default::default()
    };
    s.update_policy("p", &u, now).await.unwrap();
    assert!(
        !s.retire_output_key("a", "other", "p", 2, now)
            .await
            .unwrap(),
        "not its current key"
    );
    assert!(s.retire_output_key("a", "o1", "p", 2, now).await.unwrap());
    let fa = s.get_fleet_agent("a").await.unwrap().unwrap();
    assert_eq!(fa.output_api_key_id, None);
    let o1 = s.get_api_key("o1").await.unwrap().unwrap();
    assert!(
        o1.retire_pending && o1.invalidated_at.is_none(),
        "valid until the agent runs revision 2"
    );
    assert_eq!(s.agent_runs_policy("a", "p", 2, now).await.unwrap(), ["o1"]);
    assert!(s
        .get_api_key("o1")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());

    // An agent already running the revision loses the key at once.
    s.set_output_key("a", &output_change("o2", "a", 2, None))
        .await
        .unwrap();
    assert!(s.retire_output_key("a", "o2", "p", 2, now).await.unwrap());
    assert!(s
        .get_api_key("o2")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());
    assert!(s
        .get_api_key("acc")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_none());
}

fn unenroll_action(id: &str, agent: &str) -> NewAction {
    NewAction {
        id: id.into(),
        action_type: ActionType::Unenroll,
        data: json!(null),
        created_at: Utc::now(),
        expiration: None,
        agent_ids: vec![agent.into()],
    }
}

async fn enrolled(s: &S, id: &str, policy_id: &str) {
    let mut a = agent(id, policy_id, &[]);
    let access = key(&format!("acc-{id}"), id, "access");
    a.access_api_key_id = Some(access.id.clone());
    s.enroll_agent(&a, &access, &[]).await.unwrap();
}

pub async fn unenrolment_and_its_action_are_one_transaction(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    enrolled(&s, "a", "p").await;
    enrolled(&s, "b", "p").await;
    s.create_action(&unenroll_action("taken", "b"))
        .await
        .unwrap();
    // The action cannot be stored: the agent is not left "unenrolling".
    assert!(matches!(
        s.start_agent_unenrollment("a", &unenroll_action("taken", "a"), now)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.get_agent("a", now).await.unwrap().status,
        AgentStatus::Enrolling
    );
    let leaving = s
        .start_agent_unenrollment("a", &unenroll_action("u-a", "a"), now)
        .await
        .unwrap();
    assert_eq!(leaving.status, AgentStatus::Unenrolling);
    let pending = s.pending_actions("a", now, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].action_type, ActionType::Unenroll);
}

/// Races for the read-modify-write paths. On SQLite the single writer
/// serialises them; on PostgreSQL (READ COMMITTED) each would lose a change
/// if it trusted a read taken before its write.
const RACES: usize = 30;

pub async fn deleting_an_output_races_making_it_default(s: S) {
    let now = Utc::now();
    s.create_output("a", &output("a", true), now).await.unwrap();
    for round in 0..RACES {
        let id = format!("b{round}");
        s.create_output(&id, &output(&id, false), now)
            .await
            .unwrap();
        let (s1, s2, id1, id2) = (s.clone(), s.clone(), id.clone(), id.clone());
        let delete = tokio::spawn(async move { s1.delete_output(&id1).await });
        let promote = tokio::spawn(async move {
            let u = OutputUpdate {
                is_default: Some(true),
                ..Default::default()
            };
            s2.update_output(&id2, &u, now).await
        });
        let _ = delete.await.unwrap();
        let _ = promote.await.unwrap();
        let defaults = s
            .list_outputs(page(1, 1000))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|o| o.is_default)
            .count();
        assert_eq!(defaults, 1, "round {round}: exactly one default output");
    }
}

pub async fn deleting_an_integration_races_moving_it(s: S) {
    let now = Utc::now();
    for round in 0..RACES {
        let (from, to, id) = (
            format!("f{round}"),
            format!("t{round}"),
            format!("i{round}"),
        );
        s.create_policy(&policy(&from, &from), now).await.unwrap();
        s.create_policy(&policy(&to, &to), now).await.unwrap();
        let pp = s
            .create_package_policy(&integration(&id, &from), now)
            .await
            .unwrap();
        let to_before = s.get_policy(&to).await.unwrap().revision;
        let (s1, s2, id1, id2) = (s.clone(), s.clone(), id.clone(), id.clone());
        let mut moved = integration(&id, &to);
        moved.name = pp.name.clone();
        // The move starts first, so the delete may read while it is under way.
        let mv =
            tokio::spawn(async move { s2.update_package_policy(&id2, &moved, None, now).await });
        let delete = tokio::spawn(async move { s1.delete_package_policy(&id1, now).await });
        let deleted = delete.await.unwrap();
        let moved = mv.await.unwrap();
        let to_after = s.get_policy(&to).await.unwrap().revision;
        if deleted.is_ok() && moved.is_ok() {
            // Moved, then deleted from where it was moved to: that policy
            // changed twice.
            assert!(
                to_after >= to_before + 2,
                "round {round}: the policy the integration was deleted from got no new revision"
            );
        }
        if moved.is_ok() {
            assert!(to_after > to_before, "round {round}");
        }
    }
}

pub async fn concurrent_acks_have_one_first(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    enrolled(&s, "a", "p").await;
    for round in 0..RACES {
        let mut action = unenroll_action(&format!("s{round}"), "a");
        action.action_type = ActionType::Settings;
        s.create_action(&action).await.unwrap();
        let acks: Vec<_> = (0..2)
            .map(|_| {
                let (s, id) = (s.clone(), action.id.clone());
                tokio::spawn(async move { s.ack_action("a", &id, None, now).await })
            })
            .collect();
        let mut firsts = 0;
        for a in acks {
            match a.await.unwrap() {
                Ok(ActionAck::Acked { first_time, .. }) => firsts += usize::from(first_time),
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(firsts, 1, "round {round}: one ack is the first");
    }
}

pub async fn concurrent_orphaned_reports_have_one_winner(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    for round in 0..RACES {
        let id = format!("o{round}");
        enrolled(&s, &id, "p").await;
        let reports: Vec<_> = (0..2)
            .map(|_| {
                let (s, id) = (s.clone(), id.clone());
                tokio::spawn(async move { s.audit_unenroll(&id, "orphaned", now, now).await })
            })
            .collect();
        let mut ok = 0;
        for r in reports {
            match r.await.unwrap() {
                Ok(()) => ok += 1,
                Err(StoreError::Conflict(_)) => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(
            ok, 1,
            "round {round}: a second orphaned report is a conflict"
        );
    }
}
