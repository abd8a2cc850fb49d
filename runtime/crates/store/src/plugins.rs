//! [`PluginStore`] written once over [`PluginSql`]: components by digest, plugins and their
//! versions.
//!
//! The flow (checks, the version-creating transaction, "not found" errors, grouping versions
//! under their plugin) and the arguments are here; a backend supplies only the SQL text that
//! differs ([`crate::sql`]), and rows decode through [`Columns`], so both backends return the
//! same records.

use async_trait::async_trait;

use crate::error::{Result, StoreError};
use crate::model::{PluginCap, PluginInfo, PluginSettings, PluginVersion};
use crate::rows::{self, Columns};
use crate::sql::{Arg, On, Sql};
use crate::store::PluginStore;
use crate::util;

/// The plugin statements, one set per backend (a default is the SQL both run). Each names
/// the arguments it binds.
pub(crate) trait PluginSql: Sql {
    /// Store component bytes `$2` (`$3` long) under digest `$1` unless stored (`$4` now).
    const INSERT_COMPONENT: &'static str;
    /// `bytes` of component `$1`.
    const COMPONENT: &'static str = "SELECT bytes FROM components WHERE digest = $1";
    /// A row when component `$1` is stored.
    const COMPONENT_EXISTS: &'static str = "SELECT 1 AS one FROM components WHERE digest = $1";
    /// Create plugin `$2` of tenant `$1` if needed; `version`: its next version number
    /// (`$3` now).
    const NEXT_VERSION: &'static str;
    /// Insert version `$3` of `$1`/`$2` running digest `$4` with settings `$5` (`$6` now),
    /// returning the columns [`rows::plugin_version`] reads.
    const INSERT_VERSION: &'static str;
    /// Make version `$3` (just inserted) of `$1`/`$2` the active one.
    const SET_ACTIVE: &'static str =
        "UPDATE plugins SET active_version = $3 WHERE tenant = $1 AND name = $2";
    /// Make existing version `$3` of `$1`/`$2` the active one (`$4` now).
    const ACTIVATE: &'static str;
    /// Version `$3` of `$1`/`$2`.
    const VERSION: &'static str =
        "SELECT tenant, name, version, digest, settings, created_at FROM plugin_versions
         WHERE tenant = $1 AND name = $2 AND version = $3";
    /// Tenant `$1`'s plugins (or plugin `$2`) left-joined with their versions, by name, then
    /// version: `tenant, name, active_version` and the version's columns, NULL without one.
    const PLUGINS: &'static str;
    /// Delete plugin `$2` of tenant `$1` and its versions.
    const DELETE: &'static str = "DELETE FROM plugins WHERE tenant = $1 AND name = $2";
    /// `tenant, name, cap` of every active version with a `concurrency` setting, in order.
    const CONCURRENCY: &'static str;
}

/// The row of a statement that always returns one.
fn one<R>(rows: Vec<R>) -> Result<R> {
    rows.into_iter()
        .next()
        .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
}

/// Versions grouped under their plugin ([`PluginSql::PLUGINS`]' rows).
fn plugins<R: Columns>(found: &[R]) -> Result<Vec<PluginInfo>> {
    let mut out: Vec<PluginInfo> = Vec::new();
    for r in found {
        let name = r.text("name")?;
        if out.last().is_none_or(|p| p.name != name) {
            out.push(PluginInfo {
                tenant: r.text("tenant")?,
                name: name.clone(),
                active_version: r.opt_int("active_version")?,
                versions: Vec::new(),
            });
        }
        if r.opt_int("version")?.is_some()
            && let Some(info) = out.last_mut()
        {
            info.versions.push(rows::plugin_version(r)?);
        }
    }
    Ok(out)
}

#[async_trait]
impl<S: PluginSql> PluginStore for S {
    async fn put_component(&self, bytes: &[u8]) -> Result<String> {
        let digest = util::component_digest(bytes);
        let size = Arg::Int(bytes.len() as i64);
        let args = [Arg::Text(&digest), Arg::Bytes(bytes), size, Arg::Now];
        self.exec(On::Write, Self::INSERT_COMPONENT, &args).await?;
        Ok(digest)
    }

    async fn get_component(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let row = self
            .row(On::Read, Self::COMPONENT, &[Arg::Text(digest)])
            .await?;
        row.map(|r| r.bytes("bytes")).transpose()
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
        let mut tx = self.begin().await?;
        let found = self
            .rows_in(&mut tx, Self::COMPONENT_EXISTS, &[Arg::Text(digest)])
            .await?;
        if found.is_empty() {
            return Err(StoreError::NotFound {
                what: "component",
                name: digest.to_owned(),
            });
        }
        let (t, p) = (Arg::Text(tenant), Arg::Text(plugin));
        let next = self
            .rows_in(&mut tx, Self::NEXT_VERSION, &[t, p, Arg::Now])
            .await?;
        let version = one(next)?.int("version")?;
        let v = Arg::Int(version);
        let settings = util::to_json(settings);
        let args = [t, p, v, Arg::Text(digest), Arg::Json(&settings), Arg::Now];
        let row = one(self.rows_in(&mut tx, Self::INSERT_VERSION, &args).await?)?;
        if activate {
            self.exec_in(&mut tx, Self::SET_ACTIVE, &[t, p, v]).await?;
        }
        let out = rows::plugin_version(&row)?;
        self.commit(tx).await?;
        Ok(out)
    }

    async fn activate_plugin_version(
        &self,
        tenant: &str,
        plugin: &str,
        version: i64,
    ) -> Result<()> {
        let args = [
            Arg::Text(tenant),
            Arg::Text(plugin),
            Arg::Int(version),
            Arg::Now,
        ];
        if self.exec(On::Write, Self::ACTIVATE, &args).await? == 0 {
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
        let args = [Arg::Text(tenant), Arg::Text(plugin), Arg::Int(version)];
        let row = self.row(On::Read, Self::VERSION, &args).await?;
        row.as_ref().map(rows::plugin_version).transpose()
    }

    async fn get_plugin(&self, tenant: &str, plugin: &str) -> Result<Option<PluginInfo>> {
        let args = [Arg::Text(tenant), Arg::OptText(Some(plugin))];
        Ok(plugins(&self.rows(On::Read, Self::PLUGINS, &args).await?)?.pop())
    }

    async fn list_plugins(&self, tenant: &str) -> Result<Vec<PluginInfo>> {
        let args = [Arg::Text(tenant), Arg::OptText(None)];
        plugins(&self.rows(On::Read, Self::PLUGINS, &args).await?)
    }

    async fn delete_plugin(&self, tenant: &str, plugin: &str) -> Result<bool> {
        let args = [Arg::Text(tenant), Arg::Text(plugin)];
        Ok(self.exec(On::Write, Self::DELETE, &args).await? > 0)
    }

    async fn concurrency_caps(&self) -> Result<Vec<PluginCap>> {
        let found = self.rows(On::Read, Self::CONCURRENCY, &[]).await?;
        found
            .iter()
            .map(|r| {
                Ok(PluginCap {
                    tenant: r.text("tenant")?,
                    plugin: r.text("name")?,
                    max_running: r.int("cap")?.clamp(0, i64::from(u32::MAX)) as u32,
                })
            })
            .collect()
    }
}
