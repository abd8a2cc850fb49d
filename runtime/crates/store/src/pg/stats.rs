//! [`StatsSql`] on Postgres (counted at the database's `now()`).

use super::*;
use crate::stats::StatsSql;

impl StatsSql for PgStore {
    const BY_PLUGIN: &'static str = "SELECT plugin,
            count(*) FILTER (WHERE state = 'available' AND attempt = 0 AND run_at > now()) AS scheduled,
            count(*) FILTER (WHERE state = 'available' AND attempt = 0 AND run_at <= now()) AS queued,
            count(*) FILTER (WHERE state = 'available' AND attempt > 0) AS retrying,
            count(*) FILTER (WHERE state = 'running') AS running,
            0::bigint AS dead
         FROM jobs GROUP BY plugin
         UNION ALL
         SELECT plugin, 0, 0, 0, 0, count(*) FROM job_history WHERE state = 'dead' GROUP BY plugin";
}

pub(super) async fn queue_breakdown(store: &PgStore) -> Result<QueueBreakdown> {
    crate::stats::queue_breakdown(store).await
}
