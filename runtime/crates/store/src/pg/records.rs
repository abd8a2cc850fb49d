//! [`RecordSql`] on Postgres (times from the database's clock; the `now` argument is unused).

use super::*;
use crate::records::{RecordSql, api_key_cols, source_str};

#[async_trait]
impl RecordSql for PgStore {
    const JOURNAL_PUT: &'static str =
        "INSERT INTO journal (job_id, seq, fingerprint, response, usage)
         VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)
         ON CONFLICT (job_id, seq) DO UPDATE
            SET fingerprint = EXCLUDED.fingerprint, response = EXCLUDED.response,
                usage = EXCLUDED.usage, created_at = now()";

    const APPEND_EVENT: &'static str = "INSERT INTO job_events (job_id, seq, event)
         SELECT $1, coalesce(max(seq), 0) + 1, $2::jsonb FROM job_events WHERE job_id = $1
         RETURNING seq";

    const CREATE_API_KEY: &'static str = concat!(
        "INSERT INTO api_keys (id, tenant, name, scopes, secret_hash)
         VALUES ($1, $2, $3, $4::jsonb, $5) RETURNING ",
        api_key_cols!()
    );

    const REVOKE_API_KEY: &'static str =
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL";

    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<()> {
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
            "INSERT INTO usage_records (job_id, attempt, plugin, tenant, tags, provider, model,
                input_tokens, output_tokens, cached_input_tokens, cost_micros, latency_ms, ttft_ms,
                source, outcome, created_at) ",
        );
        qb.push_values(records, |mut b, r| {
            b.push_bind(r.job_id)
                .push_bind(r.attempt.min(i32::MAX as u32) as i32)
                .push_bind(util::pg_text(&r.plugin).into_owned())
                .push_bind(util::pg_text(&r.tenant).into_owned())
                .push_bind(util::to_pg_json(&r.tags))
                .push_unseparated("::jsonb")
                .push_bind(util::pg_text(&r.provider).into_owned())
                .push_bind(util::pg_text(&r.model).into_owned())
                .push_bind(r.input_tokens.min(i64::MAX as u64) as i64)
                .push_bind(r.output_tokens.min(i64::MAX as u64) as i64)
                .push_bind(r.cached_input_tokens.min(i64::MAX as u64) as i64)
                .push_bind(util::signed(r.cost_micros.get()))
                .push_bind(r.latency_ms.min(i32::MAX as u32) as i32)
                .push_bind(r.ttft_ms.map(|t| t.min(i32::MAX as u32) as i32))
                .push_bind(source_str(r.source))
                .push_bind(r.outcome.as_str())
                .push_bind(r.created_at);
        });
        qb.build().execute(&self.pool).await?;
        Ok(())
    }

    async fn summarize_usage(&self, query: &UsageQuery) -> Result<Vec<UsageSummary>> {
        let key = match &query.group_by {
            UsageGroupBy::Plugin => "plugin",
            UsageGroupBy::Model => "model",
            UsageGroupBy::Provider => "provider",
            UsageGroupBy::Tag(_) => "tags->>$4",
        };
        let tag = match &query.group_by {
            UsageGroupBy::Tag(t) => t.as_str(),
            _ => "",
        };
        let sql = format!(
            "SELECT {key} AS key, count(*) AS calls,
                coalesce(sum(input_tokens), 0)::int8 AS input_tokens,
                coalesce(sum(output_tokens), 0)::int8 AS output_tokens,
                coalesce(sum(cached_input_tokens), 0)::int8 AS cached_input_tokens,
                coalesce(sum(cost_micros), 0)::int8 AS cost_micros,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
                percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95
             FROM usage_records
             WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR tenant = $3)
               AND ($4::text IS NOT NULL OR true)
             GROUP BY 1 ORDER BY 1 NULLS LAST"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(query.from)
            .bind(query.to)
            .bind(query.tenant.as_deref())
            .bind(tag)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageSummary {
                    key: r.try_get("key")?,
                    calls: r.try_get::<i64, _>("calls")?.max(0) as u64,
                    input_tokens: r.try_get::<i64, _>("input_tokens")?.max(0) as u64,
                    output_tokens: r.try_get::<i64, _>("output_tokens")?.max(0) as u64,
                    cached_input_tokens: r.try_get::<i64, _>("cached_input_tokens")?.max(0) as u64,
                    cost_micros: Micros::new(util::micros(r.try_get("cost_micros")?)),
                    latency_p50_ms: r.try_get::<Option<f64>, _>("p50")?.unwrap_or(0.0),
                    latency_p95_ms: r.try_get::<Option<f64>, _>("p95")?.unwrap_or(0.0),
                })
            })
            .collect()
    }

    async fn append_event_batch(&self, events: &[(Uuid, JobEvent)]) -> Result<Vec<u64>> {
        let jobs: Vec<Uuid> = events.iter().map(|(j, _)| *j).collect();
        let bodies: Vec<String> = events.iter().map(|(_, e)| util::to_pg_json(e)).collect();
        let mut tries = 0;
        let rows: Vec<(Uuid, i64)> = loop {
            // One statement for the whole batch: each job's events numbered after its last
            // stored one, in input order.
            let res = sqlx::query_as(
                "WITH input AS (
                    SELECT u.job_id, u.event::jsonb AS event, u.ord
                    FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS u(job_id, event, ord)
                 ),
                 numbered AS (
                    SELECT i.job_id, i.event, i.ord,
                           coalesce((SELECT max(x.seq) FROM job_events x WHERE x.job_id = i.job_id), 0)
                             + row_number() OVER (PARTITION BY i.job_id ORDER BY i.ord) AS seq
                    FROM input i
                 )
                 INSERT INTO job_events (job_id, seq, event)
                 SELECT job_id, seq, event FROM numbered ORDER BY ord
                 RETURNING job_id, seq",
            )
            .bind(&jobs)
            .bind(&bodies)
            .fetch_all(&self.pool)
            .await;
            match res {
                Ok(rows) => break rows,
                Err(e) if is_unique_violation(&e) && tries < 20 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        };
        Ok(util::seqs_in_input_order(&jobs, rows))
    }
}
