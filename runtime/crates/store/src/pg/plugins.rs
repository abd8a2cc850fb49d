//! [`PluginStore`] on Postgres: components by digest, plugins and their versions.

use super::*;

impl PgStore {
    pub(super) async fn list_plugins_where(
        &self,
        tenant: &str,
        plugin: Option<&str>,
    ) -> Result<Vec<PluginInfo>> {
        let rows = sqlx::query(
            "SELECT p.tenant, p.name, p.active_version, v.version, v.digest, v.settings, v.created_at
             FROM plugins p LEFT JOIN plugin_versions v ON v.tenant = p.tenant AND v.name = p.name
             WHERE p.tenant = $1 AND ($2::text IS NULL OR p.name = $2)
             ORDER BY p.name, v.version",
        )
        .bind(tenant)
        .bind(plugin)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<PluginInfo> = Vec::new();
        for r in &rows {
            let name: String = r.try_get("name")?;
            if out.last().is_none_or(|p| p.name != name) {
                out.push(PluginInfo {
                    tenant: r.try_get("tenant")?,
                    name: name.clone(),
                    active_version: r.try_get("active_version")?,
                    versions: Vec::new(),
                });
            }
            if let Some(version) = r.try_get::<Option<i64>, _>("version")?
                && let Some(info) = out.last_mut()
            {
                info.versions.push(PluginVersion {
                    tenant: info.tenant.clone(),
                    plugin: name,
                    version,
                    digest: r.try_get("digest")?,
                    settings: r.try_get::<Json<PluginSettings>, _>("settings")?.0,
                    created_at: r.try_get("created_at")?,
                });
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl PluginStore for PgStore {
    async fn put_component(&self, bytes: &[u8]) -> Result<String> {
        let digest = util::component_digest(bytes);
        sqlx::query(
            "INSERT INTO components (digest, bytes, size) VALUES ($1, $2, $3)
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(&digest)
        .bind(bytes)
        .bind(bytes.len() as i64)
        .execute(&self.pool)
        .await?;
        Ok(digest)
    }

    async fn get_component(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT bytes FROM components WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn create_plugin_version(
        &self,
        tenant: &str,
        plugin: &str,
        digest: &str,
        settings: &PluginSettings,
        activate: bool,
    ) -> Result<PluginVersion> {
        if tenant.is_empty() || plugin.is_empty() {
            return Err(StoreError::Invalid(
                "tenant and plugin name must not be empty".into(),
            ));
        }
        let mut tx = self.pool.begin().await?;
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM components WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound {
                what: "component",
                name: digest.to_owned(),
            });
        }
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO plugins (tenant, name, next_version) VALUES ($1, $2, 2)
             ON CONFLICT (tenant, name) DO UPDATE
                SET next_version = plugins.next_version + 1, updated_at = now()
             RETURNING next_version - 1",
        )
        .bind(tenant)
        .bind(plugin)
        .fetch_one(&mut *tx)
        .await?;
        let row = sqlx::query(
            "INSERT INTO plugin_versions (tenant, name, version, digest, settings)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING tenant, name, version, digest, settings, created_at",
        )
        .bind(tenant)
        .bind(plugin)
        .bind(version)
        .bind(digest)
        .bind(Json(settings))
        .fetch_one(&mut *tx)
        .await?;
        if activate {
            sqlx::query("UPDATE plugins SET active_version = $3 WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(plugin)
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        rows::plugin_version(&row)
    }

    async fn activate_plugin_version(
        &self,
        tenant: &str,
        plugin: &str,
        version: i64,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE plugins p SET active_version = $3, updated_at = now()
             WHERE p.tenant = $1 AND p.name = $2 AND EXISTS (
                SELECT 1 FROM plugin_versions v WHERE v.tenant = $1 AND v.name = $2 AND v.version = $3)",
        )
        .bind(tenant)
        .bind(plugin)
        .bind(version)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "plugin version",
                name: format!("`{plugin}` v{version} of tenant `{tenant}`"),
            });
        }
        Ok(())
    }

    async fn get_plugin_version(
        &self,
        tenant: &str,
        plugin: &str,
        version: i64,
    ) -> Result<Option<PluginVersion>> {
        let row = sqlx::query(
            "SELECT tenant, name, version, digest, settings, created_at FROM plugin_versions
             WHERE tenant = $1 AND name = $2 AND version = $3",
        )
        .bind(tenant)
        .bind(plugin)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::plugin_version).transpose()
    }

    async fn get_plugin(&self, tenant: &str, plugin: &str) -> Result<Option<PluginInfo>> {
        let mut all = self.list_plugins_where(tenant, Some(plugin)).await?;
        Ok(all.pop())
    }

    async fn list_plugins(&self, tenant: &str) -> Result<Vec<PluginInfo>> {
        self.list_plugins_where(tenant, None).await
    }

    async fn delete_plugin(&self, tenant: &str, plugin: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM plugins WHERE tenant = $1 AND name = $2")
            .bind(tenant)
            .bind(plugin)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn concurrency_caps(&self) -> Result<Vec<PluginCap>> {
        let rows = sqlx::query(
            "SELECT p.tenant, p.name, (v.settings->>'concurrency')::int8 AS cap
             FROM plugins p JOIN plugin_versions v
               ON v.tenant = p.tenant AND v.name = p.name AND v.version = p.active_version
             WHERE v.settings ? 'concurrency' ORDER BY p.tenant, p.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PluginCap {
                    tenant: r.try_get("tenant")?,
                    plugin: r.try_get("name")?,
                    max_running: r.try_get::<i64, _>("cap")?.clamp(0, u32::MAX as i64) as u32,
                })
            })
            .collect()
    }
}
