//! Queue depth by plugin and the dead-letter queue's age, for the metrics gauges (kept apart
//! from `queue.rs`, the claim/complete hot path).

use super::*;

pub(super) async fn queue_breakdown(store: &SqliteStore) -> Result<QueueBreakdown> {
    let rows = sqlx::query(
        "SELECT plugin,
            coalesce(sum(state = 'available' AND attempt = 0 AND run_at > ?1), 0) AS scheduled,
            coalesce(sum(state = 'available' AND attempt = 0 AND run_at <= ?1), 0) AS queued,
            coalesce(sum(state = 'available' AND attempt > 0), 0) AS retrying,
            coalesce(sum(state = 'running'), 0) AS running,
            0 AS dead
         FROM jobs GROUP BY plugin
         UNION ALL
         SELECT plugin, 0, 0, 0, 0, count(*) FROM job_history WHERE state = 'dead' GROUP BY plugin",
    )
    .bind(now_ms())
    .fetch_all(&store.reader)
    .await?;
    let oldest: Option<i64> =
        sqlx::query_scalar("SELECT min(finished_at) FROM job_history WHERE state = 'dead'")
            .fetch_one(&store.reader)
            .await?;
    let mut by_plugin = std::collections::BTreeMap::<String, QueueStats>::new();
    for r in &rows {
        let g = |c: &str| -> Result<u64> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
        let e = by_plugin.entry(r.try_get("plugin")?).or_default();
        e.scheduled += g("scheduled")?;
        e.queued += g("queued")?;
        e.retrying += g("retrying")?;
        e.running += g("running")?;
        e.dead += g("dead")?;
    }
    Ok(QueueBreakdown {
        by_plugin: by_plugin.into_iter().collect(),
        oldest_dead_at: oldest.map(ts),
    })
}
