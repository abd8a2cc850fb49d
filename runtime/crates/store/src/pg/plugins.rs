//! [`PluginSql`] on Postgres (times from the database's clock; the `now` argument is unused).

use super::*;
use crate::plugins::PluginSql;

impl PluginSql for PgStore {
    const INSERT_COMPONENT: &'static str =
        "INSERT INTO components (digest, bytes, size) VALUES ($1, $2, $3)
         ON CONFLICT (digest) DO NOTHING";

    const NEXT_VERSION: &'static str =
        "INSERT INTO plugins (tenant, name, next_version) VALUES ($1, $2, 2)
         ON CONFLICT (tenant, name) DO UPDATE
            SET next_version = plugins.next_version + 1, updated_at = now()
         RETURNING next_version - 1 AS version";

    const INSERT_VERSION: &'static str =
        "INSERT INTO plugin_versions (tenant, name, version, digest, settings)
         VALUES ($1, $2, $3, $4, $5::jsonb)
         RETURNING tenant, name, version, digest, settings, created_at";

    const ACTIVATE: &'static str = "UPDATE plugins p SET active_version = $3, updated_at = now()
         WHERE p.tenant = $1 AND p.name = $2 AND EXISTS (
            SELECT 1 FROM plugin_versions v WHERE v.tenant = $1 AND v.name = $2 AND v.version = $3)";

    const PLUGINS: &'static str =
        "SELECT p.tenant, p.name, p.active_version, v.version, v.digest, v.settings, v.created_at
         FROM plugins p LEFT JOIN plugin_versions v ON v.tenant = p.tenant AND v.name = p.name
         WHERE p.tenant = $1 AND ($2::text IS NULL OR p.name = $2)
         ORDER BY p.name, v.version";

    const CONCURRENCY: &'static str =
        "SELECT p.tenant, p.name, (v.settings->>'concurrency')::int8 AS cap
         FROM plugins p JOIN plugin_versions v
           ON v.tenant = p.tenant AND v.name = p.name AND v.version = p.active_version
         WHERE v.settings ? 'concurrency' ORDER BY p.tenant, p.name";
}
