//! Operator console sessions.

use flotilla_store::{ConsoleSession, NewConsoleSession, SessionStore};

use super::prelude::*;

#[derive(sqlx::FromRow)]
struct SessionRow {
    csrf_token: String,
    created_at: i64,
    expires_at: i64,
    key_id: String,
    key_name: String,
    key_hint: String,
    key_active: bool,
    key_created_at: i64,
}

#[async_trait]
impl SessionStore for Engine {
    #[tracing::instrument(skip_all)]
    async fn create_console_session(&self, new: &NewConsoleSession) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO console_sessions (id_hash, operator_key_id, csrf_token, created_at, expires_at) \
             SELECT $1, id, $3, $4, $5 FROM operator_api_keys WHERE id = $2 AND active",
        )
        .bind(&new.id_hash)
        .bind(&new.operator_key_id)
        .bind(&new.csrf_token)
        .bind(ms(new.created_at))
        .bind(ms(new.expires_at))
        .execute(&mut *self.write_conn().await?)
        .await
        .or_conflict(|| "a console session with this id already exists".to_owned())?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(
                Entity::OperatorKey,
                &new.operator_key_id,
            ));
        }
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn find_console_session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ConsoleSession>> {
        let row = sqlx::query_as::<_, SessionRow>(
            "SELECT s.csrf_token, s.created_at, s.expires_at, k.id AS key_id, k.name AS key_name, \
             k.hint AS key_hint, k.active AS key_active, k.created_at AS key_created_at \
             FROM console_sessions s JOIN operator_api_keys k ON k.id = s.operator_key_id \
             WHERE s.id_hash = $1 AND s.expires_at > $2 AND k.active",
        )
        .bind(id_hash)
        .bind(ms(now))
        .fetch_optional(&self.pool)
        .await
        .db()?;
        Ok(row.map(|r| ConsoleSession {
            operator: OperatorApiKey {
                id: r.key_id,
                name: r.key_name,
                active: r.key_active,
                hint: r.key_hint,
                created_at: from_ms(r.key_created_at),
            },
            csrf_token: r.csrf_token,
            created_at: from_ms(r.created_at),
            expires_at: from_ms(r.expires_at),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_console_session(&self, id_hash: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&mut *self.write_conn().await?)
            .await
            .db()?;
        Ok(done.rows_affected() > 0)
    }

    #[tracing::instrument(skip_all)]
    async fn delete_expired_console_sessions(&self, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(ms(now))
            .execute(&mut *self.write_conn().await?)
            .await
            .db()?;
        Ok(done.rows_affected())
    }
}
