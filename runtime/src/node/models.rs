//! The `models` backend of a node: journal replay in front of the gateway, and a usage
//! record for every call (including replays and failures).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sluice_gateway::{AbandonedCall, CallRecord, Gateway};
use sluice_store::{JobStore, JournalEntry, UsageRecord};
use sluice_types::model::{
    ChatRequest, ChatResponse, EmbedRequest, EmbedResponse, ModelError, ResponseSource,
};
use sluice_types::{CallContext, EventSink, JobEvent, Micros, ModelBackend};
use tokio::sync::mpsc;

use super::{EventHub, SpendTracker, WriteBacklog};

/// Journal → gateway → journal + usage + events.
pub struct GatewayModels {
    gateway: Gateway,
    store: Arc<dyn JobStore>,
    events: EventHub,
    spend: SpendTracker,
    usage_tx: UsageSender,
}

impl GatewayModels {
    pub(crate) fn new(
        gateway: Gateway,
        store: Arc<dyn JobStore>,
        events: EventHub,
        spend: SpendTracker,
        backlog: WriteBacklog,
    ) -> Self {
        let usage_tx = spawn_usage_writer(store.clone(), backlog);
        // A call cut off by its job's timeout or cancel never returns here: the gateway's drop
        // guard reports what it charged, and it gets its usage row and spend all the same.
        let (tx, tracker) = (usage_tx.clone(), spend.clone());
        gateway.set_abandoned_sink(Arc::new(move |a: AbandonedCall| {
            tx.send(usage_row(&a.ctx, &a.record));
            tracker.add(a.ctx.job.id, a.record.usage, a.record.cost_micros);
        }));
        GatewayModels {
            gateway,
            store,
            events,
            spend,
            usage_tx,
        }
    }

    fn record(&self, ctx: &CallContext, record: &CallRecord, seq: u32) {
        let job = &ctx.job;
        self.usage_tx.send(usage_row(ctx, record));
        // A failed call can cost too (text streamed before the failure).
        if record.outcome.is_ok() || record.cost_micros > 0 {
            self.spend.add(job.id, record.usage, record.cost_micros);
        }
        let outcome = if record.outcome.is_ok() {
            match record.source {
                ResponseSource::Provider => "provider",
                ResponseSource::Cache => "cache",
                ResponseSource::Journal => "journal",
            }
        } else {
            record.outcome.as_str()
        };
        self.events.emit(
            job.id,
            JobEvent::ModelCall {
                call: seq,
                model: record
                    .model
                    .clone()
                    .unwrap_or_else(|| record.requested_model.clone()),
                provider: record.provider.clone().unwrap_or_default(),
                input_tokens: record.usage.input_tokens,
                output_tokens: record.usage.output_tokens,
                cost_micros: record.cost_micros,
                outcome: outcome.to_string(),
            },
        );
    }

    /// The journaled response for this call position, if the request matches it.
    async fn replay(
        &self,
        ctx: &CallContext,
        seq: u32,
        fingerprint: &str,
    ) -> Option<serde_json::Value> {
        // A fresh job has no journal: spare the lookup. A retry or a redriven job may.
        if !ctx.replay_journal {
            return None;
        }
        match self.store.journal_get(ctx.job.id, seq).await {
            Ok(Some(entry)) if entry.fingerprint == fingerprint => Some(entry.response),
            Ok(_) => None,
            Err(e) => {
                // Without the journal the call is made again (and charged again): degrade,
                // don't fail the handler.
                tracing::warn!(job = %ctx.job.id, seq, error = %e, "journal lookup failed");
                None
            }
        }
    }

    async fn journal(
        &self,
        ctx: &CallContext,
        seq: u32,
        fingerprint: String,
        response: serde_json::Value,
        usage: sluice_types::model::Usage,
    ) {
        let entry = JournalEntry {
            job_id: ctx.job.id,
            seq,
            fingerprint,
            response,
            usage,
        };
        if let Err(e) = self.store.journal_put(&entry).await {
            tracing::warn!(job = %ctx.job.id, seq, error = %e, "could not journal a model call");
        }
    }
}

#[async_trait]
impl ModelBackend for GatewayModels {
    async fn chat(
        &self,
        ctx: &CallContext,
        seq: u32,
        request: ChatRequest,
    ) -> Result<ChatResponse, ModelError> {
        allowed(ctx, &request.model)?;
        let fingerprint = request.fingerprint();
        if let Some(recorded) = self.replay(ctx, seq, &fingerprint).await
            && let Ok(mut response) = serde_json::from_value::<ChatResponse>(recorded)
        {
            response.source = ResponseSource::Journal;
            response.cost_micros = 0;
            let record = CallRecord::replayed(&request, &response);
            self.gateway.observe_replay(
                ctx,
                &record,
                request.max_tokens,
                Some(&response.finish_reason),
            );
            self.record(ctx, &record, seq);
            return Ok(response);
        }

        let job = ctx.job.id;
        let events = self.events.clone();
        let on_delta = move |delta: &str| {
            events.emit(
                job,
                JobEvent::TokenDelta {
                    call: seq,
                    delta: delta.to_string(),
                },
            );
        };
        let streaming = request.stream_events;
        let result = self
            .gateway
            .chat(ctx, request, if streaming { Some(&on_delta) } else { None })
            .await;
        match result {
            Ok(outcome) => {
                self.record(ctx, &outcome.record, seq);
                let value = serde_json::to_value(&outcome.response).unwrap_or_default();
                self.journal(ctx, seq, fingerprint, value, outcome.response.usage)
                    .await;
                Ok(outcome.response)
            }
            Err(e) => {
                self.record(ctx, &e.record, seq);
                Err(e.error)
            }
        }
    }

    async fn embed(
        &self,
        ctx: &CallContext,
        seq: u32,
        request: EmbedRequest,
    ) -> Result<EmbedResponse, ModelError> {
        allowed(ctx, &request.model)?;
        let fingerprint = request.fingerprint();
        if let Some(recorded) = self.replay(ctx, seq, &fingerprint).await
            && let Ok(mut response) = serde_json::from_value::<EmbedResponse>(recorded)
        {
            response.source = ResponseSource::Journal;
            response.cost_micros = 0;
            let record = CallRecord::replayed_embed(&request, &response);
            self.gateway.observe_replay(ctx, &record, None, None);
            self.record(ctx, &record, seq);
            return Ok(response);
        }
        match self.gateway.embed(ctx, request).await {
            Ok(outcome) => {
                self.record(ctx, &outcome.record, seq);
                let value = serde_json::to_value(&outcome.response).unwrap_or_default();
                self.journal(ctx, seq, fingerprint, value, outcome.response.usage)
                    .await;
                Ok(outcome.response)
            }
            Err(e) => {
                self.record(ctx, &e.record, seq);
                Err(e.error)
            }
        }
    }
}

/// The usage row of one call.
fn usage_row(ctx: &CallContext, record: &CallRecord) -> UsageRecord {
    let job = &ctx.job;
    UsageRecord {
        job_id: Some(job.id),
        attempt: job.attempt,
        plugin: job.plugin.clone(),
        tenant: job.tenant.clone(),
        tags: job.tags.clone(),
        provider: record.provider.clone().unwrap_or_default(),
        model: record
            .model
            .clone()
            .unwrap_or_else(|| record.requested_model.clone()),
        input_tokens: u64::from(record.usage.input_tokens),
        output_tokens: u64::from(record.usage.output_tokens),
        cached_input_tokens: u64::from(record.usage.cached_input_tokens),
        cost_micros: Micros::new(record.cost_micros),
        latency_ms: record.latency_ms,
        ttft_ms: record.ttft_ms,
        source: record.source,
        outcome: record.outcome,
        created_at: Utc::now(),
    }
}

/// Refuse a model the plugin's `allowed_models` setting leaves out, before anything is
/// reserved or sent. Fails closed: when the settings could not be read (store failure, plugin
/// deleted) every model is refused.
fn allowed(ctx: &CallContext, model: &str) -> Result<(), ModelError> {
    if let Some(reason) = &ctx.models_refused {
        return Err(ModelError::invalid(format!(
            "model `{model}` refused for plugin `{}`: its allowed_models are unknown ({reason})",
            ctx.job.plugin
        )));
    }
    if ctx.may_call(model) {
        return Ok(());
    }
    let list = ctx.allowed_models.as_deref().unwrap_or_default().join(", ");
    Err(ModelError::invalid(format!(
        "model `{model}` is not allowed for plugin `{}` (allowed_models: {list})",
        ctx.job.plugin
    )))
}

/// Hands usage rows to the writer task, counting them in the node's backlog until written.
#[derive(Clone)]
struct UsageSender {
    tx: mpsc::UnboundedSender<UsageRecord>,
    backlog: WriteBacklog,
}

impl UsageSender {
    fn send(&self, row: UsageRecord) {
        self.backlog.add(1);
        // The writer lives as long as the runtime; an error means shutdown.
        if self.tx.send(row).is_err() {
            self.backlog.done(1);
        }
    }
}

/// Usage rows are written in batches by one task: a burst of calls costs one insert.
///
/// Each row stands for a call a provider answered (and billed): a database outage must delay
/// it, not drop it. A batch is retried for as long as the failure is an outage (the rows wait
/// in memory meanwhile, counted in `backlog`, which stops the worker claiming new jobs when
/// full); only a batch the database refuses outright is dropped, logged.
fn spawn_usage_writer(store: Arc<dyn JobStore>, backlog: WriteBacklog) -> UsageSender {
    let (tx, mut rx) = mpsc::unbounded_channel::<UsageRecord>();
    let held = backlog.clone();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(256);
        while rx.recv_many(&mut batch, 256).await > 0 {
            let mut delay = Duration::from_millis(200);
            loop {
                match store.record_usage(&batch).await {
                    Ok(()) => break,
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %e, rows = batch.len(), retry_in = ?delay, "could not write usage records; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_STORE_RETRY_DELAY);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, rows = batch.len(), "dropping usage records the store refused");
                        break;
                    }
                }
            }
            held.done(batch.len());
            batch.clear();
        }
    });
    UsageSender { tx, backlog }
}

/// The longest wait between two tries of a write that must survive a database outage.
pub(crate) const MAX_STORE_RETRY_DELAY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_types::JobInfo;

    fn ctx() -> CallContext {
        CallContext::new(
            JobInfo {
                id: uuid::Uuid::new_v4(),
                plugin: "summarize".into(),
                tenant: "acme".into(),
                attempt: 1,
                max_attempts: 1,
                idempotency_key: None,
                tags: Default::default(),
                deadline_unix_ms: 0,
            },
            "sha256:test",
        )
    }

    /// A call cut off by its job's timeout or cancel (its future dropped) is written as a
    /// usage row and added to the job's spend at what the gateway's drop guard charged.
    #[tokio::test]
    async fn a_call_cut_off_mid_way_gets_its_usage_row_and_spend() {
        use sluice_store::{StoreConfig, UsageGroupBy, UsageQuery};
        let store = sluice_store::open("sqlite::memory:", StoreConfig::default())
            .await
            .unwrap();
        let mut cfg = sluice_gateway::GatewayConfig::simulated();
        for p in cfg.providers.values_mut() {
            if let Some(sim) = p.simulator.as_mut() {
                sim.config.ttft_ms = 10_000;
            }
        }
        let gateway = Gateway::new(cfg).await.unwrap();
        let spend = SpendTracker::default();
        let models = Arc::new(GatewayModels::new(
            gateway.clone(),
            store.clone(),
            EventHub::new(store.clone()),
            spend.clone(),
            WriteBacklog::default(),
        ));
        let ctx = ctx();
        let (m, c) = (models.clone(), ctx.clone());
        let call = tokio::spawn(async move {
            let r = ChatRequest::new("fast", vec![sluice_types::model::Message::user("Hi")]);
            m.chat(&c, 0, r).await
        });
        let sim = gateway.simulator("sim").unwrap();
        let t0 = std::time::Instant::now();
        while sim.stats().requests == 0 {
            assert!(t0.elapsed() < Duration::from_secs(10), "hang guard");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        let query = UsageQuery {
            tenant: Some("acme".into()),
            from: Utc::now() - chrono::Duration::hours(1),
            to: Utc::now() + chrono::Duration::hours(1),
            group_by: UsageGroupBy::Plugin,
        };
        let t0 = std::time::Instant::now();
        let row = loop {
            let rows = store.usage_summary(&query).await.unwrap();
            if let Some(r) = rows.into_iter().next() {
                break r;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "hang guard");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(row.calls, 1);
        assert!(row.cost_micros > Micros::ZERO, "never free: {row:?}");
        let spent = spend.get(ctx.job.id);
        assert_eq!(spent.cost_micros, row.cost_micros.get());
        assert_eq!(spent.calls, 1);
    }

    #[test]
    fn allowed_models_fail_closed_when_the_settings_are_unknown() {
        // Settings read, no list: any model.
        assert!(allowed(&ctx(), "fast").is_ok());
        // Settings read, a list: only those.
        let listed = ctx().with_allowed_models(Some(vec!["fast".into()]));
        assert!(allowed(&listed, "fast").is_ok());
        assert!(matches!(
            allowed(&listed, "smart"),
            Err(ModelError::InvalidRequest { .. })
        ));
        // Settings unknown (store failure, plugin deleted): nothing, with the reason.
        let unknown = ctx().with_models_refused("the plugin was deleted");
        for model in ["fast", "smart", "sim/any"] {
            let err = allowed(&unknown, model).unwrap_err();
            assert!(
                matches!(&err, ModelError::InvalidRequest { message }
                    if message.contains("allowed_models are unknown")
                        && message.contains("the plugin was deleted")),
                "{err}"
            );
        }
        // Even a list that would allow it does not: the refusal wins.
        let both = ctx()
            .with_allowed_models(Some(vec!["fast".into()]))
            .with_models_refused("store unavailable");
        assert!(allowed(&both, "fast").is_err());
    }
}
