//! [`StatsSql`] on SQLite (counted at the `now` argument).

use super::*;
use crate::stats::StatsSql;

impl StatsSql for SqliteStore {
    const BY_PLUGIN: &'static str = "SELECT plugin,
            coalesce(sum(state = 'available' AND attempt = 0 AND run_at > $1), 0) AS scheduled,
            coalesce(sum(state = 'available' AND attempt = 0 AND run_at <= $1), 0) AS queued,
            coalesce(sum(state = 'available' AND attempt > 0), 0) AS retrying,
            coalesce(sum(state = 'running'), 0) AS running,
            0 AS dead
         FROM jobs GROUP BY plugin
         UNION ALL
         SELECT plugin, 0, 0, 0, 0, count(*) FROM job_history WHERE state = 'dead' GROUP BY plugin";
}

pub(super) async fn queue_breakdown(store: &SqliteStore) -> Result<QueueBreakdown> {
    crate::stats::queue_breakdown(store).await
}
