//! Cloud connectors, their sealed secrets and the verifier policies.

use serde_json::{Map, Value};

use flotilla_domain::connector::{
    AccountType, CloudConnector, CloudProvider, PermissionSummary, VerificationStatus,
};
use flotilla_store::{
    ConnectorSecret, ConnectorStore, ConnectorUpdate, NewConnector, VerificationWrite,
    VerifierPolicy,
};

use super::prelude::*;

const CONN_COLS: &str = "id, name, cloud_provider, account_type, namespace, vars, \
     verification_status, verification_started_at, verification_failed_at, verification_id, \
     verification_message, verification_permissions, created_at, updated_at, \
     (SELECT COUNT(*) FROM package_policies p WHERE p.cloud_connector_id = cloud_connectors.id) \
     AS package_policy_count";

#[derive(sqlx::FromRow)]
struct ConnectorRow {
    id: String,
    name: String,
    cloud_provider: String,
    account_type: Option<String>,
    namespace: Option<String>,
    vars: String,
    verification_status: Option<String>,
    verification_started_at: Option<i64>,
    verification_failed_at: Option<i64>,
    verification_id: Option<String>,
    verification_message: Option<String>,
    verification_permissions: String,
    created_at: i64,
    updated_at: i64,
    package_policy_count: i64,
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("corrupt {what} in storage: {detail}").into())
}

impl TryFrom<ConnectorRow> for CloudConnector {
    type Error = StoreError;
    fn try_from(r: ConnectorRow) -> Result<Self> {
        let vars: Map<String, Value> =
            serde_json::from_str(&r.vars).map_err(|e| corrupt("connector vars", e))?;
        let permissions: Vec<PermissionSummary> = serde_json::from_str(&r.verification_permissions)
            .map_err(|e| corrupt("connector permissions", e))?;
        Ok(CloudConnector {
            cloud_provider: CloudProvider::parse(&r.cloud_provider)
                .ok_or_else(|| corrupt("connector provider", &r.cloud_provider))?,
            account_type: r.account_type.as_deref().and_then(AccountType::parse),
            verification_status: r
                .verification_status
                .as_deref()
                .and_then(VerificationStatus::parse),
            id: r.id,
            name: r.name,
            namespace: r.namespace,
            vars,
            package_policy_count: r.package_policy_count.max(0) as u64,
            created_at: from_ms(r.created_at),
            updated_at: from_ms(r.updated_at),
            verification_started_at: r.verification_started_at.map(from_ms),
            verification_failed_at: r.verification_failed_at.map(from_ms),
            verification_id: r.verification_id,
            verification_message: r.verification_message,
            verification_permissions: permissions,
        })
    }
}

#[derive(sqlx::FromRow)]
struct VerifierRow {
    policy_id: String,
    connector_id: String,
    verification_id: String,
    created_at: i64,
    expires_at: i64,
}

async fn fetch_connector(conn: &mut Conn, id: &str) -> Result<CloudConnector> {
    row_by::<ConnectorRow, _, _>(
        &mut *conn,
        sql!("SELECT {CONN_COLS} FROM cloud_connectors WHERE id = $1"),
        id.to_owned(),
    )
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::CloudConnector, id))?
    .try_into()
}

/// Whether the connector exists, holding its row lock until the
/// transaction ends (see `policy_exists`).
pub(crate) async fn lock_connector(conn: &mut Conn, id: &str) -> Result<bool> {
    let done = sqlx::query("UPDATE cloud_connectors SET id = id WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .db()?;
    Ok(done.rows_affected() > 0)
}

async fn insert_secrets(conn: &mut Conn, id: &str, secrets: &[ConnectorSecret]) -> Result<()> {
    for s in secrets {
        sqlx::query(
            "INSERT INTO cloud_connector_secrets (connector_id, id, sealed) VALUES ($1, $2, $3)",
        )
        .bind(id)
        .bind(&s.id)
        .bind(&s.sealed)
        .execute(&mut *conn)
        .await
        .or_conflict(|| format!("secret '{}' already exists", s.id))?;
    }
    Ok(())
}

#[async_trait]
impl ConnectorStore for Engine {
    #[tracing::instrument(skip_all)]
    async fn create_connector(
        &self,
        new: &NewConnector,
        now: DateTime<Utc>,
    ) -> Result<CloudConnector> {
        let now = ms(now);
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO cloud_connectors (id, name, cloud_provider, account_type, namespace, vars, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&new.id)
        .bind(&new.name)
        .bind(new.cloud_provider.as_str())
        .bind(new.account_type.map(AccountType::as_str))
        .bind(&new.namespace)
        .bind(to_json(&new.vars))
        .bind(now)
        .execute(&mut *tx)
        .await
        .or_conflict(|| {
            format!(
                "a cloud connector named '{}' or with id '{}' already exists",
                new.name, new.id
            )
        })?;
        insert_secrets(&mut tx, &new.id, &new.secrets).await?;
        let c = fetch_connector(&mut tx, &new.id).await?;
        tx.commit().await.db()?;
        Ok(c)
    }

    #[tracing::instrument(skip_all)]
    async fn get_connector(&self, id: &str) -> Result<CloudConnector> {
        fetch_connector(&mut *self.pool.acquire().await.db()?, id).await
    }

    #[tracing::instrument(skip_all)]
    async fn list_connectors(&self, page: Page) -> Result<Paged<CloudConnector>> {
        let (rows, total) = page_of::<ConnectorRow>(
            &self.pool,
            &format!("SELECT {CONN_COLS} FROM cloud_connectors ORDER BY created_at, id"),
            "SELECT COUNT(*) FROM cloud_connectors",
            Args::default(),
            page,
        )
        .await?;
        Ok(Paged {
            items: rows
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_>>()?,
            total,
        })
    }

    #[tracing::instrument(skip_all)]
    async fn update_connector(
        &self,
        id: &str,
        update: &ConnectorUpdate,
        now: DateTime<Utc>,
    ) -> Result<CloudConnector> {
        let mut tx = self.begin_write().await?;
        if !lock_connector(&mut tx, id).await? {
            return Err(StoreError::not_found(Entity::CloudConnector, id));
        }
        let current = fetch_connector(&mut tx, id).await?;
        if let Some(read_at) = update.read_at {
            if current.updated_at != read_at {
                return Err(StoreError::Conflict(format!(
                    "cloud connector '{id}' changed concurrently; retry"
                )));
            }
        }
        let name = update.name.clone().unwrap_or(current.name);
        let account_type = update.account_type.unwrap_or(current.account_type);
        let vars = update.vars.clone().unwrap_or(current.vars);
        sqlx::query(
            "UPDATE cloud_connectors SET name = $2, account_type = $3, vars = $4, updated_at = $5 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(&name)
        .bind(account_type.map(AccountType::as_str))
        .bind(to_json(&vars))
        .bind(ms(now).max(ms(current.updated_at) + 1))
        .execute(&mut *tx)
        .await
        .or_conflict(|| format!("a cloud connector named '{name}' already exists"))?;
        for s in &update.drop_secrets {
            sqlx::query("DELETE FROM cloud_connector_secrets WHERE connector_id = $1 AND id = $2")
                .bind(id)
                .bind(s)
                .execute(&mut *tx)
                .await
                .db()?;
        }
        insert_secrets(&mut tx, id, &update.add_secrets).await?;
        let c = fetch_connector(&mut tx, id).await?;
        tx.commit().await.db()?;
        Ok(c)
    }

    #[tracing::instrument(skip_all)]
    async fn delete_connector(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if !lock_connector(&mut tx, id).await? {
            return Err(StoreError::not_found(Entity::CloudConnector, id));
        }
        // A new statement under the lock: an integration saved meanwhile
        // committed before the lock was granted, and is seen.
        let used = count(
            &mut tx,
            "SELECT COUNT(*) FROM package_policies WHERE cloud_connector_id = $1",
            id,
        )
        .await?;
        if used > 0 {
            return Err(StoreError::InUse(format!(
                "cloud connector '{id}' is used by {used} integration(s); remove them or their cloud_connector_id first"
            )));
        }
        // Its credentials are deployed to a verifier agent until the
        // verification's policy is removed (at most its TTL).
        let verifying = count(
            &mut tx,
            "SELECT COUNT(*) FROM verifier_policies WHERE connector_id = $1",
            id,
        )
        .await?;
        if verifying > 0 {
            return Err(StoreError::InUse(format!(
                "cloud connector '{id}' is being verified; retry once its verifier policy is removed"
            )));
        }
        execute_with_id(&mut tx, "DELETE FROM cloud_connectors WHERE id = $1", id).await?;
        tx.commit().await.db()?;
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn connector_secrets(&self, id: &str) -> Result<Vec<ConnectorSecret>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, sealed FROM cloud_connector_secrets WHERE connector_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .db()?;
        Ok(rows
            .into_iter()
            .map(|(id, sealed)| ConnectorSecret { id, sealed })
            .collect())
    }

    #[tracing::instrument(skip_all)]
    async fn write_verification(&self, id: &str, w: &VerificationWrite) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        if !lock_connector(&mut tx, id).await? {
            return Err(StoreError::not_found(Entity::CloudConnector, id));
        }
        let c = fetch_connector(&mut tx, id).await?;
        if let Some(v) = &w.if_verification {
            if c.verification_id.as_deref() != Some(v.as_str()) {
                return Ok(false);
            }
        }
        let status = w.status.unwrap_or(c.verification_status);
        let started = w.started_at.unwrap_or(c.verification_started_at);
        let failed = w.failed_at.unwrap_or(c.verification_failed_at);
        let vid = w.verification_id.clone().unwrap_or(c.verification_id);
        let message = w.message.clone().unwrap_or(c.verification_message);
        let permissions = w.permissions.clone().unwrap_or(c.verification_permissions);
        sqlx::query(
            "UPDATE cloud_connectors SET verification_status = $2, verification_started_at = $3, \
             verification_failed_at = $4, verification_id = $5, verification_message = $6, \
             verification_permissions = $7 WHERE id = $1",
        )
        .bind(id)
        .bind(status.map(VerificationStatus::as_str))
        .bind(started.map(ms))
        .bind(failed.map(ms))
        .bind(vid)
        .bind(message)
        .bind(to_json(&permissions))
        .execute(&mut *tx)
        .await
        .db()?;
        tx.commit().await.db()?;
        Ok(true)
    }

    #[tracing::instrument(skip_all)]
    async fn connector_integrations(&self, limit: u32) -> Result<Vec<PackagePolicy>> {
        let rows: Vec<PackagePolicyRow> = sqlx::query_as(sql!(
            "SELECT {PP_COLS} FROM package_policies WHERE cloud_connector_id IS NOT NULL \
             ORDER BY created_at, id LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    #[tracing::instrument(skip_all)]
    async fn create_verifier_policy(
        &self,
        policy: &NewAgentPolicy,
        v: &VerifierPolicy,
        now: DateTime<Utc>,
    ) -> Result<AgentPolicy> {
        let mut tx = self.begin_write().await?;
        let created = super::policies::insert_policy(&mut tx, policy, ms(now)).await?;
        sqlx::query(
            "INSERT INTO verifier_policies (policy_id, connector_id, verification_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&policy.id)
        .bind(&v.connector_id)
        .bind(&v.verification_id)
        .bind(ms(v.created_at))
        .bind(ms(v.expires_at))
        .execute(&mut *tx)
        .await
        .or_conflict(|| format!("verification '{}' already has a policy", v.verification_id))?;
        tx.commit().await.db()?;
        Ok(created)
    }

    #[tracing::instrument(skip_all)]
    async fn verifier_policies(&self) -> Result<Vec<VerifierPolicy>> {
        let rows: Vec<VerifierRow> = sqlx::query_as(
            "SELECT policy_id, connector_id, verification_id, created_at, expires_at \
             FROM verifier_policies ORDER BY created_at, policy_id",
        )
        .fetch_all(&self.pool)
        .await
        .db()?;
        Ok(rows
            .into_iter()
            .map(|r| VerifierPolicy {
                policy_id: r.policy_id,
                connector_id: r.connector_id,
                verification_id: r.verification_id,
                created_at: from_ms(r.created_at),
                expires_at: from_ms(r.expires_at),
            })
            .collect())
    }
}
