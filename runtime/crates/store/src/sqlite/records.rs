//! [`RecordStore`] on SQLite: journal, traces, usage, events and API keys.

use super::*;

fn source_str(s: sluice_types::model::ResponseSource) -> &'static str {
    use sluice_types::model::ResponseSource;
    match s {
        ResponseSource::Provider => "provider",
        ResponseSource::Cache => "cache",
        ResponseSource::Journal => "journal",
    }
}

#[async_trait]
impl RecordStore for SqliteStore {
    async fn journal_put(&self, entry: &JournalEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO journal (job_id, seq, fingerprint, response, usage, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (job_id, seq) DO UPDATE
                SET fingerprint = excluded.fingerprint, response = excluded.response,
                    usage = excluded.usage, created_at = excluded.created_at",
        )
        .bind(entry.job_id.to_string())
        .bind(i64::from(entry.seq))
        .bind(&entry.fingerprint)
        .bind(util::to_json(&entry.response))
        .bind(util::to_json(&entry.usage))
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn set_job_trace(&self, job: Uuid, traceparent: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO job_traces (job_id, traceparent) VALUES (?1, ?2)
             ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(job.to_string())
        .bind(traceparent)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn job_trace(&self, job: Uuid) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT traceparent FROM job_traces WHERE job_id = ?1")
                .bind(job.to_string())
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn journal_get(&self, job: Uuid, seq: u32) -> Result<Option<JournalEntry>> {
        let row = sqlx::query(
            "SELECT job_id, seq, fingerprint, response, usage FROM journal WHERE job_id = ?1 AND seq = ?2",
        )
        .bind(job.to_string())
        .bind(i64::from(seq))
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(rows::journal_entry).transpose()
    }

    async fn journal_list(&self, job: Uuid) -> Result<Vec<JournalEntry>> {
        let rows = sqlx::query(
            "SELECT job_id, seq, fingerprint, response, usage FROM journal WHERE job_id = ?1 ORDER BY seq",
        )
        .bind(job.to_string())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rows::journal_entry).collect()
    }

    async fn record_usage(&self, records: &[UsageRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
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

    async fn usage_summary(&self, query: &UsageQuery) -> Result<Vec<UsageSummary>> {
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

    async fn append_event(&self, job: Uuid, event: &JobEvent) -> Result<u64> {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO job_events (job_id, seq, event, created_at)
             SELECT ?1, coalesce(max(seq), 0) + 1, ?2, ?3 FROM job_events WHERE job_id = ?1
             RETURNING seq",
        )
        .bind(job.to_string())
        .bind(util::to_json(event))
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await?;
        Ok(seq.max(0) as u64)
    }

    async fn append_events(&self, events: &[(Uuid, JobEvent)]) -> Result<Vec<u64>> {
        // One transaction on the writer: one fsync for the batch, not one per event.
        let mut tx = self.writer.begin().await?;
        let now = now_ms();
        let mut seqs = Vec::with_capacity(events.len());
        for (job, event) in events {
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO job_events (job_id, seq, event, created_at)
                 SELECT ?1, coalesce(max(seq), 0) + 1, ?2, ?3 FROM job_events WHERE job_id = ?1
                 RETURNING seq",
            )
            .bind(job.to_string())
            .bind(util::to_json(event))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            seqs.push(seq.max(0) as u64);
        }
        tx.commit().await?;
        Ok(seqs)
    }

    async fn events_after(&self, job: Uuid, after: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT job_id, seq, event, created_at FROM job_events
             WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(job.to_string())
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    job_id: uuid_of(&r.try_get::<String, _>("job_id")?)?,
                    seq: r.try_get::<i64, _>("seq")?.max(0) as u64,
                    event: util::from_json(&r.try_get::<String, _>("event")?)?,
                    created_at: ts(r.try_get("created_at")?),
                })
            })
            .collect()
    }

    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKey> {
        let row = sqlx::query(
            "INSERT INTO api_keys (id, tenant, name, scopes, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             RETURNING id, tenant, name, scopes, secret_hash, created_at, revoked_at",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(&key.tenant)
        .bind(&key.name)
        .bind(util::to_json(&key.scopes))
        .bind(&key.secret_hash)
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await
        .map_err(|e| {
            if crate::error::is_unique_violation(&e) {
                StoreError::Invalid("an API key with this secret already exists".into())
            } else {
                e.into()
            }
        })?;
        rows::api_key(&row)
    }

    async fn api_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(
            "SELECT id, tenant, name, scopes, secret_hash, created_at, revoked_at FROM api_keys
             WHERE secret_hash = ?1 AND revoked_at IS NULL",
        )
        .bind(secret_hash)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(rows::api_key).transpose()
    }

    async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(
            "SELECT id, tenant, name, scopes, secret_hash, created_at, revoked_at FROM api_keys
             WHERE tenant = ?1 ORDER BY created_at, id",
        )
        .bind(tenant)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rows::api_key).collect()
    }

    async fn list_all_api_keys(&self) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(
            "SELECT id, tenant, name, scopes, secret_hash, created_at, revoked_at FROM api_keys
             ORDER BY tenant, created_at, id",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rows::api_key).collect()
    }

    async fn api_key(&self, id: Uuid) -> Result<Option<ApiKey>> {
        let row = sqlx::query(
            "SELECT id, tenant, name, scopes, secret_hash, created_at, revoked_at FROM api_keys
             WHERE id = ?1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(rows::api_key).transpose()
    }

    async fn revoke_api_key(&self, id: Uuid) -> Result<bool> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")
                .bind(id.to_string())
                .bind(now_ms())
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn count_api_keys(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
            .fetch_one(&self.reader)
            .await?;
        Ok(n as u64)
    }
}
