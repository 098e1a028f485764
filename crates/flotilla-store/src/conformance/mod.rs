//! The storage conformance suite: the same cases, run against every engine.
//!
//! An engine's test file expands [`conformance_suite!`] with an async
//! expression that yields `Option<Arc<dyn Store>>` (`None` skips, for an
//! engine that is not available). Each case takes a fresh, empty store.

use std::sync::Arc;

use chrono::{Duration, Utc};
use serde_json::json;

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
            concurrent_orphaned_reports_have_one_winner,
            packages_install_once_and_are_removed_only_when_unused,
            integration_secrets_follow_their_references,
            documents_are_stored_searched_and_expired,
            removing_a_package_races_saving_an_integration_on_it,
            security_api_keys_are_found_by_id_name_and_owner,
            tasks_are_scheduled_once_per_id,
            claims_take_due_tasks_in_order_up_to_capacity,
            expired_leases_are_taken_over_and_stale_runs_change_nothing,
            finished_runs_reschedule_fail_or_delete,
            deleted_tasks_queue_every_key_they_held,
            concurrent_claims_never_share_a_task,
            the_offline_threshold_is_a_setting,
            connectors_keep_their_secrets_and_verification,
            a_connector_in_use_cannot_be_deleted,
            deleting_a_connector_races_saving_an_integration_on_it,
            verifier_policies_live_and_die_with_their_policy,
            revisions_run_are_written_in_one_batch,
            key_rotations_are_written_in_one_batch,
            enrolments_are_written_in_one_batch,
            an_agent_and_a_key_read_together_as_apart,
            checkin_reads_give_the_policy_revision_and_pending_actions,
            the_checkin_context_is_the_agent_the_key_and_the_checkin_reads,
            console_sessions_expire_end_with_their_key_and_sign_out,
            policy_rollout_counts_active_agents_on_the_revision,
            rollout_history_counts_when_agents_reached_the_revision,
            agents_are_sorted_by_each_field_missing_values_last,
            enrollment_keys_count_their_uses_and_refuse_once_spent_or_expired,
            concurrent_enrolments_never_exceed_max_uses,
            agents_are_searched_by_kuery,
            bulk_reassign_tracks_each_agent_from_delivery_to_ack,
            bulk_tags_settings_and_unenrolment_apply_per_agent,
            bulk_targets_by_kuery_are_read_a_chunk_at_a_time,
            agent_status_counts_and_history_samples,
            concurrent_status_samples_write_one_row
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

mod bulk;
mod connectors;
mod documents;
mod fleet;
mod management;
mod operations;
mod packages;
mod races;
mod sessions;
mod status_history;
mod tasks;

pub use bulk::*;
pub use connectors::*;
pub use documents::*;
pub use fleet::*;
pub use management::*;
pub use operations::*;
pub use packages::*;
pub use races::*;
pub use sessions::*;
pub use status_history::*;
pub use tasks::*;

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

/// A policy fixture (also for engine-specific tests).
pub fn policy(id: &str, name: &str) -> NewAgentPolicy {
    NewAgentPolicy {
        id: id.into(),
        name: name.into(),
        namespace: "default".into(),
        description: None,
        output_id: None,
        inactivity_timeout: 3600,
    }
}

/// Install the package the integration fixture names (integrations need
/// their package version installed).
pub async fn install_nginx(s: &dyn Store) {
    let p = crate::StoredPackage {
        name: "nginx".into(),
        version: "1.20.0".into(),
        title: "Nginx".into(),
        package_type: "integration".into(),
        source: "builtin".into(),
        digest: "d-nginx".into(),
        files: Default::default(),
        installed_at: Utc::now(),
    };
    s.install_package(&p).await.unwrap();
}

/// An nginx integration fixture (also for engine-specific tests).
pub fn integration(id: &str, policy_id: &str) -> NewPackagePolicy {
    NewPackagePolicy {
        id: id.into(),
        name: format!("nginx-{id}"),
        description: None,
        policy_id: policy_id.into(),
        package: PackageRef {
            name: "nginx".into(),
            version: "1.20.0".into(),
            title: None,
        },
        namespace: None,
        vars: Default::default(),
        inputs: vec![],
        cloud_connector_id: None,
        secret_references: vec![],
        new_secrets: vec![],
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
        owner: None,
        expires_at: None,
        remote_output: None,
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

fn enrolling(id: &str, policy_id: &str, enrollment_id: &str) -> (NewAgent, ApiKeyRecord) {
    let mut a = agent(id, policy_id, &[]);
    a.enrollment_id = Some(enrollment_id.into());
    let access = key(&format!("acc-{id}"), id, "access");
    a.access_api_key_id = Some(access.id.clone());
    (a, access)
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
