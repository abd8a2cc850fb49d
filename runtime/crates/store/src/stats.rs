//! Queue depth by plugin and the dead-letter queue's age, for the metrics gauges, written once
//! over [`StatsSql`] (kept apart from the queue's hot path in `pg/queue.rs`, `sqlite/queue.rs`).

use std::collections::BTreeMap;

use crate::error::Result;
use crate::model::{QueueBreakdown, QueueStats};
use crate::rows::Columns;
use crate::sql::{Arg, On, Sql};

/// The statistics statements, one set per backend.
pub(crate) trait StatsSql: Sql {
    /// `plugin, scheduled, queued, retrying, running, dead`: live counts per plugin, and a row
    /// per plugin of dead counts (`$1` now).
    const BY_PLUGIN: &'static str;
    /// `oldest`: when the oldest dead job died.
    const OLDEST_DEAD: &'static str =
        "SELECT min(finished_at) AS oldest FROM job_history WHERE state = 'dead'";
}

/// [`crate::QueueStore::queue_breakdown`].
pub(crate) async fn queue_breakdown<S: StatsSql>(s: &S) -> Result<QueueBreakdown> {
    let found = s.rows(On::Read, S::BY_PLUGIN, &[Arg::Now]).await?;
    let oldest = s.row(On::Read, S::OLDEST_DEAD, &[]).await?;
    let mut by_plugin = BTreeMap::<String, QueueStats>::new();
    for r in &found {
        let g = |c: &str| -> Result<u64> { Ok(r.int(c)?.max(0) as u64) };
        let e = by_plugin.entry(r.text("plugin")?).or_default();
        e.scheduled += g("scheduled")?;
        e.queued += g("queued")?;
        e.retrying += g("retrying")?;
        e.running += g("running")?;
        e.dead += g("dead")?;
    }
    Ok(QueueBreakdown {
        by_plugin: by_plugin.into_iter().collect(),
        oldest_dead_at: oldest.map(|r| r.opt_time("oldest")).transpose()?.flatten(),
    })
}
