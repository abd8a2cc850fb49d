//! [`StateSql`] on SQLite: expiry is judged by this node's clock (the `now` argument, Unix ms).

use super::*;
use crate::state::{StateSql, state_backends};
use crate::util::TenantTally;

state_backends!(SqliteStore);

impl StateSql for SqliteStore {
    fn state_config(&self) -> &StoreConfig {
        &self.config
    }

    fn state_tally(&self) -> &TenantTally {
        &self.state_bytes
    }

    const TENANT_BYTES: &'static str =
        "SELECT coalesce(sum(length(CAST(key AS BLOB)) + length(CAST(value AS BLOB))), 0) AS n
         FROM kv_state WHERE tenant = $1";

    const VALUE: &'static str =
        "SELECT value FROM kv_state WHERE tenant = $1 AND plugin = $2 AND key = $3
           AND (expires_at IS NULL OR expires_at > $4)";

    const PUT: &'static str = "INSERT INTO kv_state (tenant, plugin, key, value, expires_at, updated_at)
         VALUES ($1, $2, $3, $4, $6 + $5, $6)
         ON CONFLICT (tenant, plugin, key) DO UPDATE
            SET value = excluded.value, expires_at = excluded.expires_at, updated_at = excluded.updated_at";

    const DELETE: &'static str =
        "DELETE FROM kv_state WHERE tenant = $1 AND plugin = $2 AND key = $3
         RETURNING (expires_at IS NULL OR expires_at > $4) AS live";

    const KEYS: &'static str = "SELECT key FROM kv_state WHERE tenant = $1 AND plugin = $2
           AND key >= $3 AND ($4 IS NULL OR key < $4) AND substr(key, 1, length($3)) = $3
           AND (expires_at IS NULL OR expires_at > $5)
         ORDER BY key LIMIT $6";

    const INSERT_IF_ABSENT: &'static str =
        "INSERT INTO kv_state (tenant, plugin, key, value, expires_at, updated_at)
         VALUES ($1, $2, $3, $4, NULL, $5)
         ON CONFLICT (tenant, plugin, key) DO UPDATE
            SET value = excluded.value, expires_at = NULL, updated_at = excluded.updated_at
            WHERE kv_state.expires_at IS NOT NULL AND kv_state.expires_at <= $5
         RETURNING 1 AS one";

    const SWAP: &'static str = "UPDATE kv_state SET value = $4, updated_at = $6
         WHERE tenant = $1 AND plugin = $2 AND key = $3 AND value = $5
           AND (expires_at IS NULL OR expires_at > $6)
         RETURNING 1 AS one";

    const RECORD_EFFECT: &'static str =
        "INSERT INTO effects (job_id, key, result, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (job_id, key) DO NOTHING";
}
