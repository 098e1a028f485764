//! The `Store` implementation, written once and compiled for each engine.
//!
//! The SQL is portable (see the first migration's header), so one text
//! serves SQLite and PostgreSQL. Each engine module (`sqlite.rs`,
//! `postgres.rs`) declares `Db` (its sqlx database), `Engine` (its store
//! type) and `ENGINE` (its name), provides `begin_write`, `publish` and its
//! pools, and includes this folder with `#[path]`; the code here names only
//! those, so it compiles to concrete sqlx types per engine — no ORM, no
//! generic-database bounds, no macro. One module per resource; `common`
//! holds the statements several of them share.

#[macro_use]
mod common;
mod actions;
mod agents;
mod api_keys;
mod bulk;
mod connectors;
mod console_sessions;
mod documents;
mod enrollment_keys;
mod fleet_agents;
mod integrations;
mod kuery;
mod operator_keys;
mod output_keys;
mod outputs;
mod packages;
mod policies;
mod status_history;
mod tasks;

/// What every resource module uses.
mod prelude {
    #![allow(unused_imports)]
    pub(crate) use super::super::{
        json_field_path, json_field_sql, seq_param, Db, Engine, BINARY_COLLATION, ENGINE,
        FOR_UPDATE, HOSTNAME_SQL,
    };
    pub(crate) use super::common::*;
    pub(crate) use crate::rows::*;
    pub(crate) use async_trait::async_trait;
    pub(crate) use chrono::{DateTime, Utc};
    pub(crate) use flotilla_domain::action::{Action, ActionType, AgentActionStatus};
    pub(crate) use flotilla_domain::agent::Agent;
    pub(crate) use flotilla_domain::apikey::OperatorApiKey;
    pub(crate) use flotilla_domain::enrollment::EnrollmentApiKey;
    pub(crate) use flotilla_domain::output::{NewOutput, Output, OutputUpdate};
    pub(crate) use flotilla_domain::package_policy::{NewPackagePolicy, PackagePolicy};
    pub(crate) use flotilla_domain::policy::{AgentPolicy, AgentPolicyUpdate, NewAgentPolicy};
    pub(crate) use flotilla_store::Entity;
    pub(crate) use flotilla_store::{
        ActionAck, AgentFilter, ApiKeyRecord, BulkOperation, CheckinRecord, EnrollmentKeyFilter,
        Enrolment, FleetAgent, KeyUse, NewAction, NewAgent, OutputKeyChange, PackagePolicyFilter,
        Page, Paged, PolicyFilter, Result, Store, StoreError, StoreEvent, BULK_CHUNK,
    };
}

use prelude::*;

#[async_trait]
impl Store for Engine {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.db()?;
        Ok(())
    }

    async fn create_output(&self, id: &str, new: &NewOutput, now: DateTime<Utc>) -> Result<Output> {
        outputs::create_output(self, id, new, now).await
    }

    async fn get_output(&self, id: &str) -> Result<Output> {
        outputs::get_output(self, id).await
    }

    async fn default_output(&self) -> Result<Option<Output>> {
        outputs::default_output(self).await
    }

    async fn list_outputs(&self, page: Page) -> Result<Paged<Output>> {
        outputs::list_outputs(self, page).await
    }

    async fn update_output(
        &self,
        id: &str,
        update: &OutputUpdate,
        now: DateTime<Utc>,
    ) -> Result<Output> {
        outputs::update_output(self, id, update, now).await
    }

    async fn delete_output(&self, id: &str) -> Result<()> {
        outputs::delete_output(self, id).await
    }

    async fn create_policy(&self, new: &NewAgentPolicy, now: DateTime<Utc>) -> Result<AgentPolicy> {
        policies::create_policy(self, new, now).await
    }

    async fn get_policy(&self, id: &str) -> Result<AgentPolicy> {
        policies::get_policy(self, id).await
    }

    async fn list_policies(&self, filter: &PolicyFilter, page: Page) -> Result<Paged<AgentPolicy>> {
        policies::list_policies(self, filter, page).await
    }

    async fn update_policy(
        &self,
        id: &str,
        update: &AgentPolicyUpdate,
        now: DateTime<Utc>,
    ) -> Result<AgentPolicy> {
        policies::update_policy(self, id, update, now).await
    }

    async fn delete_policy(&self, id: &str) -> Result<()> {
        policies::delete_policy(self, id).await
    }

    async fn create_package_policy(
        &self,
        new: &NewPackagePolicy,
        now: DateTime<Utc>,
    ) -> Result<PackagePolicy> {
        integrations::create_package_policy(self, new, now).await
    }

    async fn get_package_policy(&self, id: &str) -> Result<PackagePolicy> {
        integrations::get_package_policy(self, id).await
    }

    async fn list_package_policies(
        &self,
        filter: &PackagePolicyFilter,
        page: Page,
    ) -> Result<Paged<PackagePolicy>> {
        integrations::list_package_policies(self, filter, page).await
    }

    async fn policy_integrations(&self, policy_id: &str) -> Result<Vec<PackagePolicy>> {
        integrations::policy_integrations(self, policy_id).await
    }

    async fn update_package_policy(
        &self,
        id: &str,
        new: &NewPackagePolicy,
        expected: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<PackagePolicy> {
        integrations::update_package_policy(self, id, new, expected, now).await
    }

    async fn delete_package_policy(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        integrations::delete_package_policy(self, id, now).await
    }

    async fn install_package(
        &self,
        package: &flotilla_store::StoredPackage,
    ) -> Result<flotilla_store::Installed> {
        packages::install_package(self, package).await
    }

    async fn get_package(
        &self,
        name: &str,
        version: &str,
    ) -> Result<flotilla_store::StoredPackage> {
        packages::get_package(self, name, version).await
    }

    async fn package_digest(&self, name: &str, version: &str) -> Result<Option<String>> {
        packages::package_digest(self, name, version).await
    }

    async fn list_packages(&self) -> Result<Vec<flotilla_store::StoredPackage>> {
        packages::list_packages(self).await
    }

    async fn delete_package(&self, name: &str, version: &str) -> Result<()> {
        packages::delete_package(self, name, version).await
    }

    async fn policy_secrets(&self, policy_id: &str) -> Result<Vec<flotilla_store::SealedSecret>> {
        packages::policy_secrets(self, policy_id).await
    }

    async fn existing_data_streams(&self, names: &[String]) -> Result<Vec<String>> {
        documents::existing_data_streams(self, names).await
    }

    async fn insert_documents(
        &self,
        docs: &[flotilla_store::NewDocument],
        now: DateTime<Utc>,
    ) -> Result<()> {
        documents::insert_documents(self, docs, now).await
    }

    async fn list_data_streams(&self) -> Result<Vec<flotilla_store::DataStreamStats>> {
        documents::list_data_streams(self).await
    }

    async fn search_documents(
        &self,
        data_stream: &str,
        query: &flotilla_store::DocumentQuery,
        page: Page,
    ) -> Result<Paged<flotilla_store::StoredDocument>> {
        documents::search_documents(self, data_stream, query, page).await
    }

    async fn delete_documents_before(
        &self,
        data_stream: &str,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64> {
        documents::delete_documents_before(self, data_stream, before, limit).await
    }

    async fn data_stream_names(&self) -> Result<Vec<String>> {
        documents::data_stream_names(self).await
    }

    async fn set_output_key_credential(
        &self,
        output_id: &str,
        sealed: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Output> {
        outputs::set_output_key_credential(self, output_id, sealed, now).await
    }

    async fn record_policy_change_failure(
        &self,
        agent_id: &str,
        failure: &serde_json::Value,
    ) -> Result<()> {
        output_keys::record_policy_change_failure(self, agent_id, failure).await
    }

    async fn set_output_key_error(&self, agent_id: &str, error: &str) -> Result<()> {
        output_keys::set_output_key_error(self, agent_id, error).await
    }

    async fn output_key_credential(&self, output_id: &str) -> Result<Option<String>> {
        outputs::output_key_credential(self, output_id).await
    }

    async fn remote_keys_to_invalidate(&self, limit: u32) -> Result<Vec<(String, String)>> {
        outputs::remote_keys_to_invalidate(self, limit).await
    }

    async fn mark_remote_invalidated(&self, ids: &[String], now: DateTime<Utc>) -> Result<()> {
        outputs::mark_remote_invalidated(self, ids, now).await
    }

    async fn find_api_keys(
        &self,
        filter: &flotilla_store::ApiKeyFilter,
    ) -> Result<Vec<ApiKeyRecord>> {
        documents::find_api_keys(self, filter).await
    }

    async fn create_enrollment_key(
        &self,
        key: &EnrollmentApiKey,
        token_hash: &str,
    ) -> Result<EnrollmentApiKey> {
        enrollment_keys::create_enrollment_key(self, key, token_hash).await
    }

    async fn get_enrollment_key(&self, id: &str) -> Result<EnrollmentApiKey> {
        enrollment_keys::get_enrollment_key(self, id).await
    }

    async fn list_enrollment_keys(
        &self,
        filter: &EnrollmentKeyFilter,
        page: Page,
    ) -> Result<Paged<EnrollmentApiKey>> {
        enrollment_keys::list_enrollment_keys(self, filter, page).await
    }

    async fn find_enrollment_key_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<EnrollmentApiKey>> {
        enrollment_keys::find_enrollment_key_by_hash(self, token_hash).await
    }

    async fn revoke_enrollment_key(&self, id: &str) -> Result<EnrollmentApiKey> {
        enrollment_keys::revoke_enrollment_key(self, id).await
    }

    async fn insert_agent(&self, agent: &NewAgent) -> Result<Agent> {
        agents::insert_agent(self, agent).await
    }

    async fn get_agent(&self, id: &str, now: DateTime<Utc>) -> Result<Agent> {
        agents::get_agent(self, id, now).await
    }

    async fn list_agents(
        &self,
        filter: &AgentFilter,
        page: Page,
        now: DateTime<Utc>,
    ) -> Result<Paged<Agent>> {
        agents::list_agents(self, filter, page, now).await
    }

    async fn policy_rollout(
        &self,
        policy_id: &str,
        revision: i64,
    ) -> Result<flotilla_store::Rollout> {
        agents::policy_rollout(self, policy_id, revision).await
    }

    async fn policy_rollout_history(
        &self,
        policy_id: &str,
        revision: i64,
        since: DateTime<Utc>,
        buckets: u32,
    ) -> Result<flotilla_store::RolloutHistory> {
        agents::policy_rollout_history(self, policy_id, revision, since, buckets).await
    }

    async fn set_agent_tags(&self, id: &str, tags: &[String], now: DateTime<Utc>) -> Result<Agent> {
        agents::set_agent_tags(self, id, tags, now).await
    }

    async fn reassign_agent(&self, id: &str, policy_id: &str, now: DateTime<Utc>) -> Result<Agent> {
        agents::reassign_agent(self, id, policy_id, now).await
    }

    async fn start_agent_unenrollment(
        &self,
        id: &str,
        action: &NewAction,
        now: DateTime<Utc>,
    ) -> Result<Agent> {
        agents::start_agent_unenrollment(self, id, action, now).await
    }

    fn set_offline_after(&self, after: std::time::Duration) {
        self.offline_after_ms.store(
            i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    async fn get_fleet_agent(&self, id: &str) -> Result<Option<FleetAgent>> {
        fleet_agents::get_fleet_agent(self, id).await
    }

    async fn fleet_agent_and_key(
        &self,
        agent_id: &str,
        key_id: &str,
    ) -> Result<(Option<FleetAgent>, Option<ApiKeyRecord>)> {
        fleet_agents::fleet_agent_and_key(self, agent_id, key_id).await
    }

    async fn checkin_context(
        &self,
        agent_id: &str,
        key_id: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<flotilla_store::CheckinContext> {
        fleet_agents::checkin_context(self, agent_id, key_id, now, limit).await
    }

    async fn enroll_agent(
        &self,
        agent: &NewAgent,
        access_key: &ApiKeyRecord,
        replace: &[String],
    ) -> Result<Agent> {
        fleet_agents::enroll_agent(self, agent, access_key, replace, &KeyUse::None).await
    }

    async fn enroll_agents(&self, items: &[Enrolment]) -> Result<Vec<Result<()>>> {
        fleet_agents::enroll_agents(self, items).await
    }

    async fn record_checkins(&self, batch: &[CheckinRecord]) -> Result<()> {
        fleet_agents::record_checkins(self, batch).await
    }

    async fn set_output_keys(&self, changes: &[(String, OutputKeyChange)]) -> Result<Vec<bool>> {
        output_keys::set_output_keys(self, changes).await
    }

    async fn retire_output_key(
        &self,
        agent_id: &str,
        key_id: &str,
        policy_id: &str,
        revision: i64,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        output_keys::retire_output_key(self, agent_id, key_id, policy_id, revision, now).await
    }

    async fn agents_run_policies(
        &self,
        runs: &[flotilla_store::RunsPolicy],
        now: DateTime<Utc>,
    ) -> Result<Vec<Vec<String>>> {
        output_keys::agents_run_policies(self, runs, now).await
    }

    async fn unenroll_now(&self, agent_id: &str, now: DateTime<Utc>) -> Result<()> {
        fleet_agents::unenroll_now(self, agent_id, now).await
    }

    async fn audit_unenroll(
        &self,
        agent_id: &str,
        reason: &str,
        time: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        fleet_agents::audit_unenroll(self, agent_id, reason, time, now).await
    }

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        api_keys::insert_api_key(self, key).await
    }

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
        api_keys::get_api_key(self, id).await
    }

    async fn invalidate_api_keys(&self, ids: &[String], now: DateTime<Utc>) -> Result<u64> {
        api_keys::invalidate_api_keys(self, ids, now).await
    }

    async fn create_action(&self, action: &NewAction) -> Result<Action> {
        actions::create_action(self, action).await
    }

    async fn expire_actions(
        &self,
        created_before: DateTime<Utc>,
        expired_before: DateTime<Utc>,
    ) -> Result<u64> {
        actions::expire_actions(self, created_before, expired_before).await
    }

    async fn pending_actions(
        &self,
        agent_id: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Action>> {
        actions::pending_actions(self, agent_id, now, limit).await
    }

    async fn checkin_reads(
        &self,
        agent_id: &str,
        policy_id: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<(Option<i64>, Vec<Action>)> {
        actions::checkin_reads(self, agent_id, policy_id, now, limit).await
    }

    async fn mark_delivered(
        &self,
        agent_id: &str,
        action_ids: &[String],
        token: &str,
    ) -> Result<()> {
        actions::mark_delivered(self, agent_id, action_ids, token).await
    }

    async fn confirm_delivery(&self, agent_id: &str, token: &str) -> Result<()> {
        actions::confirm_delivery(self, agent_id, token).await
    }

    async fn apply_bulk_action(
        &self,
        action_id: &str,
        op: &BulkOperation,
        agent_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        bulk::apply_bulk_action(self, action_id, op, agent_ids, now).await
    }

    async fn agent_ids(
        &self,
        filter: &AgentFilter,
        after: Option<&str>,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        agent_ids(self, filter, after, limit, now).await
    }

    async fn action_progress(
        &self,
        page: Page,
        now: DateTime<Utc>,
    ) -> Result<Paged<flotilla_domain::action::ActionProgress>> {
        bulk::action_progress(self, page, now).await
    }

    async fn get_action_progress(
        &self,
        action_id: &str,
        now: DateTime<Utc>,
    ) -> Result<flotilla_domain::action::ActionProgress> {
        bulk::get_action_progress(self, action_id, now).await
    }

    async fn agent_status_counts(
        &self,
        policy_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(flotilla_domain::agent::AgentStatus, u64)>> {
        status_history::agent_status_counts(self, policy_id, now).await
    }

    async fn record_status_sample(
        &self,
        sample: &flotilla_domain::status_history::StatusSample,
    ) -> Result<bool> {
        status_history::record_status_sample(self, sample).await
    }

    async fn status_history(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<flotilla_domain::status_history::StatusSample>> {
        status_history::status_history(self, from, to, limit).await
    }

    async fn prune_status_history(&self, before: DateTime<Utc>) -> Result<u64> {
        status_history::prune_status_history(self, before).await
    }

    async fn action_targets(
        &self,
        action_id: &str,
        page: Page,
    ) -> Result<Paged<flotilla_domain::action::ActionTarget>> {
        bulk::action_targets(self, action_id, page).await
    }

    async fn agent_actions(&self, agent_id: &str, page: Page) -> Result<Paged<AgentActionStatus>> {
        actions::agent_actions(self, agent_id, page).await
    }

    async fn ack_action(
        &self,
        agent_id: &str,
        action_id: &str,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<ActionAck> {
        actions::ack_action(self, agent_id, action_id, error, now).await
    }

    async fn create_operator_key(
        &self,
        key: &OperatorApiKey,
        key_hash: &str,
    ) -> Result<OperatorApiKey> {
        operator_keys::create_operator_key(self, key, key_hash).await
    }

    async fn find_operator_key_by_hash(&self, key_hash: &str) -> Result<Option<OperatorApiKey>> {
        operator_keys::find_operator_key_by_hash(self, key_hash).await
    }

    async fn activate_operator_key(&self, key_hash: &str) -> Result<bool> {
        operator_keys::activate_operator_key(self, key_hash).await
    }

    async fn active_operator_keys(&self) -> Result<u64> {
        operator_keys::active_operator_keys(self).await
    }

    async fn list_operator_keys(&self, page: Page) -> Result<Paged<OperatorApiKey>> {
        operator_keys::list_operator_keys(self, page).await
    }

    async fn revoke_operator_key(&self, id: &str) -> Result<OperatorApiKey> {
        operator_keys::revoke_operator_key(self, id).await
    }
}
