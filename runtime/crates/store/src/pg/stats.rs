//! Queue depth by plugin and the dead-letter queue's age, for the metrics gauges (kept apart
//! from `queue.rs`, the claim/complete hot path).

use super::*;

pub(super) async fn queue_breakdown(store: &PgStore) -> Result<QueueBreakdown> {
    let rows = sqlx::query(
        "SELECT plugin,
            count(*) FILTER (WHERE state = 'available' AND attempt = 0 AND run_at > now()) AS scheduled,
            count(*) FILTER (WHERE state = 'available' AND attempt = 0 AND run_at <= now()) AS queued,
            count(*) FILTER (WHERE state = 'available' AND attempt > 0) AS retrying,
            count(*) FILTER (WHERE state = 'running') AS running,
            0::bigint AS dead
         FROM jobs GROUP BY plugin
         UNION ALL
         SELECT plugin, 0, 0, 0, 0, count(*) FROM job_history WHERE state = 'dead' GROUP BY plugin",
    )
    .fetch_all(&store.pool)
    .await?;
    let oldest_dead_at: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT min(finished_at) FROM job_history WHERE state = 'dead'")
            .fetch_one(&store.pool)
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
        oldest_dead_at,
    })
}
