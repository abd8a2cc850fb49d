//! The engine's state and effects backends on Postgres.

use super::*;

fn state_err(e: sqlx::Error) -> StateError {
    StateError::Unavailable(e.to_string())
}

fn effect_err(e: sqlx::Error) -> EffectError {
    EffectError::Unavailable(e.to_string())
}

impl PgStore {
    /// Check a state write against the tenant's state quota; the bytes to tally after it.
    pub(super) async fn admit_state(
        &self,
        scope: &StateScope,
        key: &str,
        value: &str,
    ) -> std::result::Result<u64, StateError> {
        util::admit_state(
            &self.state_bytes,
            self.config.max_state_bytes_per_tenant,
            &scope.tenant,
            key,
            value,
            |tenant| async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT coalesce(sum(octet_length(key) + octet_length(value)), 0) FROM kv_state WHERE tenant = $1",
                )
                .bind(tenant)
                .fetch_one(&self.pool)
                .await?;
                Ok(n.max(0) as u64)
            },
        )
        .await
    }
}

#[async_trait]
impl StateBackend for PgStore {
    async fn get(&self, scope: &StateScope, key: &str) -> Result<Option<String>, StateError> {
        util::check_state_key(key)?;
        sqlx::query_scalar(
            "SELECT value FROM kv_state WHERE tenant = $1 AND plugin = $2 AND key = $3
               AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind(&scope.tenant)
        .bind(&scope.plugin)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(state_err)
    }

    async fn set(
        &self,
        scope: &StateScope,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        util::check_state_key(key)?;
        util::check_state_value(value, self.config.max_state_value_bytes)?;
        let tally = self.admit_state(scope, key, value).await?;
        sqlx::query(
            "INSERT INTO kv_state (tenant, plugin, key, value, expires_at, updated_at)
             VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond', now())
             ON CONFLICT (tenant, plugin, key) DO UPDATE
                SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, updated_at = now()",
        )
        .bind(&scope.tenant)
        .bind(&scope.plugin)
        .bind(key)
        .bind(value)
        .bind(ttl.map(Self::ms))
        .execute(&self.pool)
        .await
        .map_err(state_err)?;
        self.state_bytes.add(&scope.tenant, tally);
        Ok(())
    }

    async fn delete(&self, scope: &StateScope, key: &str) -> Result<bool, StateError> {
        util::check_state_key(key)?;
        let live: Option<bool> = sqlx::query_scalar(
            "DELETE FROM kv_state WHERE tenant = $1 AND plugin = $2 AND key = $3
             RETURNING (expires_at IS NULL OR expires_at > now())",
        )
        .bind(&scope.tenant)
        .bind(&scope.plugin)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(state_err)?;
        Ok(live.unwrap_or(false))
    }

    async fn list_keys(
        &self,
        scope: &StateScope,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, StateError> {
        sqlx::query_scalar(
            "SELECT key FROM kv_state WHERE tenant = $1 AND plugin = $2
               AND key >= $3 AND ($4::text IS NULL OR key < $4) AND starts_with(key, $3)
               AND (expires_at IS NULL OR expires_at > now())
             ORDER BY key LIMIT $5",
        )
        .bind(&scope.tenant)
        .bind(&scope.plugin)
        .bind(prefix)
        .bind(util::prefix_upper_bound(prefix))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(state_err)
    }

    async fn compare_and_swap(
        &self,
        scope: &StateScope,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StateError> {
        util::check_state_key(key)?;
        util::check_state_value(value, self.config.max_state_value_bytes)?;
        let tally = self.admit_state(scope, key, value).await?;
        let swapped: Option<i32> = match expected {
            None => sqlx::query_scalar(
                "INSERT INTO kv_state (tenant, plugin, key, value, expires_at, updated_at)
                 VALUES ($1, $2, $3, $4, NULL, now())
                 ON CONFLICT (tenant, plugin, key) DO UPDATE
                    SET value = EXCLUDED.value, expires_at = NULL, updated_at = now()
                    WHERE kv_state.expires_at IS NOT NULL AND kv_state.expires_at <= now()
                 RETURNING 1",
            )
            .bind(&scope.tenant)
            .bind(&scope.plugin)
            .bind(key)
            .bind(value)
            .fetch_optional(&self.pool)
            .await
            .map_err(state_err)?,
            Some(old) => sqlx::query_scalar(
                "UPDATE kv_state SET value = $4, updated_at = now()
                 WHERE tenant = $1 AND plugin = $2 AND key = $3 AND value = $5
                   AND (expires_at IS NULL OR expires_at > now())
                 RETURNING 1",
            )
            .bind(&scope.tenant)
            .bind(&scope.plugin)
            .bind(key)
            .bind(value)
            .bind(old)
            .fetch_optional(&self.pool)
            .await
            .map_err(state_err)?,
        };
        if swapped.is_some() {
            self.state_bytes.add(&scope.tenant, tally);
        }
        Ok(swapped.is_some())
    }
}

#[async_trait]
impl EffectsBackend for PgStore {
    async fn lookup(&self, job: Uuid, key: &str) -> Result<Option<String>, EffectError> {
        util::check_effect_key(key)?;
        sqlx::query_scalar("SELECT result FROM effects WHERE job_id = $1 AND key = $2")
            .bind(job)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(effect_err)
    }

    async fn commit(&self, job: Uuid, key: &str, result: &str) -> Result<(), EffectError> {
        util::check_effect_key(key)?;
        sqlx::query(
            "INSERT INTO effects (job_id, key, result) VALUES ($1, $2, $3)
             ON CONFLICT (job_id, key) DO NOTHING",
        )
        .bind(job)
        .bind(key)
        .bind(result)
        .execute(&self.pool)
        .await
        .map_err(effect_err)?;
        Ok(())
    }
}
