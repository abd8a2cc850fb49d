//! [`RecordSql`] on SQLite (times from the `now` argument, Unix ms).

use super::sql::query;
use super::*;
use crate::records::{RecordSql, api_key_cols, source_str};
use crate::sql::Arg;

#[async_trait]
impl RecordSql for SqliteStore {
    const JOURNAL_PUT: &'static str =
        "INSERT INTO journal (job_id, seq, fingerprint, response, usage, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (job_id, seq) DO UPDATE
            SET fingerprint = excluded.fingerprint, response = excluded.response,
                usage = excluded.usage, created_at = excluded.created_at";

    const APPEND_EVENT: &'static str = "INSERT INTO job_events (job_id, seq, event, created_at)
         SELECT $1, coalesce(max(seq), 0) + 1, $2, $3 FROM job_events WHERE job_id = $1
         RETURNING seq";

    const CREATE_API_KEY: &'static str = concat!(
        "INSERT INTO api_keys (id, tenant, name, scopes, secret_hash, created_at)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
        api_key_cols!()
    );

    const REVOKE_API_KEY: &'static str =
        "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";

    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<()> {
        let mut tx = self.begin().await?;
        for r in records {
            sqlx::query(
                "INSERT INTO usage_records (job_id, attempt, plugin, tenant, tags, provider, model,
                    input_tokens, output_tokens, cached_input_tokens, cost_micros, latency_ms, ttft_ms,
                    source, outcome, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )
            .bind(r.job_id.map(|j| j.to_string()))
            .bind(i64::from(r.attempt))
            .bind(&r.plugin)
            .bind(&r.tenant)
            .bind(util::to_json(&r.tags))
            .bind(&r.provider)
            .bind(&r.model)
            .bind(r.input_tokens.min(i64::MAX as u64) as i64)
            .bind(r.output_tokens.min(i64::MAX as u64) as i64)
            .bind(r.cached_input_tokens.min(i64::MAX as u64) as i64)
            .bind(util::signed(r.cost_micros.get()))
            .bind(i64::from(r.latency_ms))
            .bind(r.ttft_ms.map(i64::from))
            .bind(source_str(r.source))
            .bind(r.outcome.as_str())
            .bind(r.created_at.timestamp_millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn summarize_usage(&self, query: &UsageQuery) -> Result<Vec<UsageSummary>> {
        let key = match &query.group_by {
            UsageGroupBy::Plugin => "plugin",
            UsageGroupBy::Model => "model",
            UsageGroupBy::Provider => "provider",
            UsageGroupBy::Tag(_) => "(SELECT value FROM json_each(tags) WHERE key = ?4)",
        };
        let tag = match &query.group_by {
            UsageGroupBy::Tag(t) => t.as_str(),
            _ => "",
        };
        let sql = format!(
            "SELECT {key} AS key, input_tokens, output_tokens, cached_input_tokens, cost_micros, latency_ms
             FROM usage_records
             WHERE created_at >= ?1 AND created_at < ?2 AND (?3 IS NULL OR tenant = ?3) AND (?4 IS NOT NULL)"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(query.from.timestamp_millis())
            .bind(query.to.timestamp_millis())
            .bind(query.tenant.as_deref())
            .bind(tag)
            .fetch_all(&self.reader)
            .await?;
        let mut groups: HashMap<Option<String>, (UsageSummary, Vec<f64>)> = HashMap::new();
        for r in &rows {
            let key: Option<String> = r.try_get("key")?;
            let (s, lat) = groups.entry(key.clone()).or_insert_with(|| {
                (
                    UsageSummary {
                        key,
                        calls: 0,
                        input_tokens: 0,
                        output_tokens: 0,
                        cached_input_tokens: 0,
                        cost_micros: Micros::ZERO,
                        latency_p50_ms: 0.0,
                        latency_p95_ms: 0.0,
                    },
                    Vec::new(),
                )
            });
            s.calls += 1;
            s.input_tokens += r.try_get::<i64, _>("input_tokens")?.max(0) as u64;
            s.output_tokens += r.try_get::<i64, _>("output_tokens")?.max(0) as u64;
            s.cached_input_tokens += r.try_get::<i64, _>("cached_input_tokens")?.max(0) as u64;
            s.cost_micros += Micros::new(util::micros(r.try_get("cost_micros")?));
            lat.push(r.try_get::<i64, _>("latency_ms")? as f64);
        }
        let mut out: Vec<UsageSummary> = groups
            .into_values()
            .map(|(mut s, mut lat)| {
                lat.sort_by(f64::total_cmp);
                s.latency_p50_ms = util::percentile_cont(&lat, 0.5);
                s.latency_p95_ms = util::percentile_cont(&lat, 0.95);
                s
            })
            .collect();
        // Same order as Postgres: by key, absent last.
        out.sort_by(|a, b| match (&a.key, &b.key) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        Ok(out)
    }

    async fn append_event_batch(&self, events: &[(Uuid, JobEvent)]) -> Result<Vec<u64>> {
        // One transaction on the writer: one fsync for the batch, not one per event.
        let mut tx = self.writer.begin().await?;
        let now = Utc::now();
        let mut seqs = Vec::with_capacity(events.len());
        for (job, event) in events {
            let body = util::to_json(event);
            let args = [Arg::Id(*job), Arg::Json(&body), Arg::Time(now)];
            let seq: i64 = query(Self::APPEND_EVENT, &args)
                .fetch_one(&mut *tx)
                .await?
                .try_get("seq")?;
            seqs.push(seq.max(0) as u64);
        }
        tx.commit().await?;
        Ok(seqs)
    }
}
