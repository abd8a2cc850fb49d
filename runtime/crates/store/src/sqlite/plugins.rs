//! [`PluginStore`] on SQLite: components by digest, plugins and their versions.

use super::*;

impl SqliteStore {
    pub(super) async fn list_plugins_where(
        &self,
        tenant: &str,
        plugin: Option<&str>,
    ) -> Result<Vec<PluginInfo>> {
        let rows = sqlx::query(
            "SELECT p.tenant, p.name, p.active_version, v.version, v.digest, v.settings, v.created_at
             FROM plugins p LEFT JOIN plugin_versions v ON v.tenant = p.tenant AND v.name = p.name
             WHERE p.tenant = ?1 AND (?2 IS NULL OR p.name = ?2)
             ORDER BY p.name, v.version",
        )
        .bind(tenant)
        .bind(plugin)
        .fetch_all(&self.reader)
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
                let settings: String = r.try_get("settings")?;
                info.versions.push(PluginVersion {
                    tenant: info.tenant.clone(),
                    plugin: name,
                    version,
                    digest: r.try_get("digest")?,
                    settings: util::from_json(&settings)?,
                    created_at: ts(r.try_get("created_at")?),
                });
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl PluginStore for SqliteStore {
    async fn put_component(&self, bytes: &[u8]) -> Result<String> {
        let digest = util::component_digest(bytes);
        sqlx::query(
            "INSERT INTO components (digest, bytes, size, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(&digest)
        .bind(bytes)
        .bind(bytes.len() as i64)
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(digest)
    }

    async fn get_component(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT bytes FROM components WHERE digest = ?1")
                .bind(digest)
                .fetch_optional(&self.reader)
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
        let now = now_ms();
        let mut tx = self.begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM components WHERE digest = ?1")
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
            "INSERT INTO plugins (tenant, name, next_version, created_at, updated_at) VALUES (?1, ?2, 2, ?3, ?3)
             ON CONFLICT (tenant, name) DO UPDATE
                SET next_version = plugins.next_version + 1, updated_at = ?3
             RETURNING next_version - 1",
        )
        .bind(tenant)
        .bind(plugin)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let row = sqlx::query(
            "INSERT INTO plugin_versions (tenant, name, version, digest, settings, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             RETURNING tenant, name, version, digest, settings, created_at",
        )
        .bind(tenant)
        .bind(plugin)
        .bind(version)
        .bind(digest)
        .bind(util::to_json(settings))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        if activate {
            sqlx::query("UPDATE plugins SET active_version = ?3 WHERE tenant = ?1 AND name = ?2")
                .bind(tenant)
                .bind(plugin)
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        let out = rows::plugin_version(&row)?;
        tx.commit().await?;
        Ok(out)
    }

    async fn activate_plugin_version(
        &self,
        tenant: &str,
        plugin: &str,
        version: i64,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE plugins SET active_version = ?3, updated_at = ?4
             WHERE tenant = ?1 AND name = ?2 AND EXISTS (
                SELECT 1 FROM plugin_versions v WHERE v.tenant = ?1 AND v.name = ?2 AND v.version = ?3)",
        )
        .bind(tenant)
        .bind(plugin)
        .bind(version)
        .bind(now_ms())
        .execute(&self.writer)
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
             WHERE tenant = ?1 AND name = ?2 AND version = ?3",
        )
        .bind(tenant)
        .bind(plugin)
        .bind(version)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(rows::plugin_version).transpose()
    }

    async fn get_plugin(&self, tenant: &str, plugin: &str) -> Result<Option<PluginInfo>> {
        Ok(self.list_plugins_where(tenant, Some(plugin)).await?.pop())
    }

    async fn list_plugins(&self, tenant: &str) -> Result<Vec<PluginInfo>> {
        self.list_plugins_where(tenant, None).await
    }

    async fn delete_plugin(&self, tenant: &str, plugin: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM plugins WHERE tenant = ?1 AND name = ?2")
            .bind(tenant)
            .bind(plugin)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn concurrency_caps(&self) -> Result<Vec<PluginCap>> {
        let rows = sqlx::query(
            "SELECT p.tenant, p.name, json_extract(v.settings, '$.concurrency') AS cap
             FROM plugins p JOIN plugin_versions v
               ON v.tenant = p.tenant AND v.name = p.name AND v.version = p.active_version
             WHERE json_extract(v.settings, '$.concurrency') IS NOT NULL ORDER BY p.tenant, p.name",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PluginCap {
                    tenant: r.try_get("tenant")?,
                    plugin: r.try_get("name")?,
                    max_running: u32_of(r.try_get("cap")?),
                })
            })
            .collect()
    }
}
