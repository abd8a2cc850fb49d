//! [`StateSql`] on Postgres: expiry is judged by the database's clock (`now()`; the `now`
//! argument is unused).

use super::*;
use crate::state::{StateSql, state_backends};
use crate::util::TenantTally;

state_backends!(PgStore);

impl StateSql for PgStore {
    fn state_config(&self) -> &StoreConfig {
        &self.config
    }

    fn state_tally(&self) -> &TenantTally {
        &self.state_bytes
    }

    const TENANT_BYTES: &'static str =
        "SELECT coalesce(sum(octet_length(key) + octet_length(value)), 0) AS n
         FROM kv_state WHERE tenant = $1";

    const VALUE: &'static str =
        "SELECT value FROM kv_state WHERE tenant = $1 AND plugin = $2 AND key = $3
           AND (expires_at IS NULL OR expires_at > now())";

    const PUT: &'static str =
        "INSERT INTO kv_state (tenant, plugin, key, value, expires_at, updated_at)
         VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond', now())
         ON CONFLICT (tenant, plugin, key) DO UPDATE
            SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, updated_at = now()";

    const DELETE: &'static str =
        "DELETE FROM kv_state WHERE tenant = $1 AND plugin = $2 AND key = $3
         RETURNING (expires_at IS NULL OR expires_at > now()) AS live";

    const KEYS: &'static str = "SELECT key FROM kv_state WHERE tenant = $1 AND plugin = $2
           AND key >= $3 AND ($4::text IS NULL OR key < $4) AND starts_with(key, $3)
           AND (expires_at IS NULL OR expires_at > now())
         ORDER BY key LIMIT $6";

    const INSERT_IF_ABSENT: &'static str =
        "INSERT INTO kv_state (tenant, plugin, key, value, expires_at, updated_at)
         VALUES ($1, $2, $3, $4, NULL, now())
         ON CONFLICT (tenant, plugin, key) DO UPDATE
            SET value = EXCLUDED.value, expires_at = NULL, updated_at = now()
            WHERE kv_state.expires_at IS NOT NULL AND kv_state.expires_at <= now()
         RETURNING 1 AS one";

    const SWAP: &'static str = "UPDATE kv_state SET value = $4, updated_at = now()
         WHERE tenant = $1 AND plugin = $2 AND key = $3 AND value = $5
           AND (expires_at IS NULL OR expires_at > now())
         RETURNING 1 AS one";

    const RECORD_EFFECT: &'static str =
        "INSERT INTO effects (job_id, key, result) VALUES ($1, $2, $3)
         ON CONFLICT (job_id, key) DO NOTHING";
}
