//! [`PluginSql`] on SQLite (times from the `now` argument, Unix ms).

use super::*;
use crate::plugins::PluginSql;

impl PluginSql for SqliteStore {
    const INSERT_COMPONENT: &'static str =
        "INSERT INTO components (digest, bytes, size, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (digest) DO NOTHING";

    const NEXT_VERSION: &'static str =
        "INSERT INTO plugins (tenant, name, next_version, created_at, updated_at)
         VALUES ($1, $2, 2, $3, $3)
         ON CONFLICT (tenant, name) DO UPDATE
            SET next_version = plugins.next_version + 1, updated_at = $3
         RETURNING next_version - 1 AS version";

    const INSERT_VERSION: &'static str =
        "INSERT INTO plugin_versions (tenant, name, version, digest, settings, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING tenant, name, version, digest, settings, created_at";

    const ACTIVATE: &'static str = "UPDATE plugins SET active_version = $3, updated_at = $4
         WHERE tenant = $1 AND name = $2 AND EXISTS (
            SELECT 1 FROM plugin_versions v WHERE v.tenant = $1 AND v.name = $2 AND v.version = $3)";

    const PLUGINS: &'static str =
        "SELECT p.tenant, p.name, p.active_version, v.version, v.digest, v.settings, v.created_at
         FROM plugins p LEFT JOIN plugin_versions v ON v.tenant = p.tenant AND v.name = p.name
         WHERE p.tenant = $1 AND ($2 IS NULL OR p.name = $2)
         ORDER BY p.name, v.version";

    const CONCURRENCY: &'static str =
        "SELECT p.tenant, p.name, json_extract(v.settings, '$.concurrency') AS cap
         FROM plugins p JOIN plugin_versions v
           ON v.tenant = p.tenant AND v.name = p.name AND v.version = p.active_version
         WHERE json_extract(v.settings, '$.concurrency') IS NOT NULL ORDER BY p.tenant, p.name";
}
