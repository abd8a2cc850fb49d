//! A model call's span (OpenTelemetry GenAI attributes) and metrics, filled from its
//! [`CallRecord`] once it is known how the call ended.

use sluice_types::model::ResponseSource;
use sluice_types::{CallContext, Micros};
use tracing::field::Empty;

use super::record::CallRecord;

fn source_label(source: ResponseSource) -> &'static str {
    match source {
        ResponseSource::Provider => "provider",
        ResponseSource::Cache => "cache",
        ResponseSource::Journal => "journal",
    }
}

/// The span of one model call (`chat <model>` / `embeddings <model>`, kind client) with the
/// OpenTelemetry GenAI attributes; what is known only at the end is filled by `record_span`.
pub(super) fn call_span(
    operation: &'static str,
    ctx: &CallContext,
    model: &str,
    max_tokens: Option<u32>,
) -> tracing::Span {
    tracing::info_span!(
        "gen_ai.call",
        otel.name = %format!("{operation} {model}"),
        otel.kind = "client",
        gen_ai.operation.name = operation,
        gen_ai.request.model = %model,
        gen_ai.request.max_tokens = max_tokens,
        gen_ai.provider.name = Empty,
        gen_ai.response.model = Empty,
        gen_ai.response.finish_reasons = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        sluice.job.id = %ctx.job.id,
        sluice.tenant = %ctx.job.tenant,
        sluice.plugin = %ctx.job.plugin,
        sluice.tags = ?ctx.job.tags,
        sluice.model = Empty,
        sluice.cost_micros = Empty,
        sluice.cache_hit = Empty,
        sluice.source = Empty,
        sluice.journal_replay = Empty,
        sluice.attempts = Empty,
        sluice.retries = Empty,
        sluice.fallbacks = Empty,
        sluice.rate_limit_wait_ms = Empty,
        sluice.outcome = Empty,
    )
}

pub(super) fn finish_metrics(r: &CallRecord) {
    let provider = r.provider.clone().unwrap_or_else(|| "none".into());
    // Never the requested name: a guest chooses it, and an unknown one must not become a label.
    let model = r.model.clone().unwrap_or_else(|| "unresolved".into());
    let source = source_label(r.source);
    metrics::counter!("sluice_model_calls_total", "operation" => r.operation.clone(), "provider" => provider.clone(), "model" => model.clone(), "outcome" => r.outcome.as_str(), "source" => source).increment(1);
    metrics::histogram!("sluice_model_call_duration_seconds", "operation" => r.operation.clone(), "provider" => provider.clone(), "model" => model.clone()).record(f64::from(r.latency_ms) / 1000.0);
    if let Some(t) = r.ttft_ms {
        metrics::histogram!("sluice_model_ttft_seconds", "provider" => provider.clone(), "model" => model.clone()).record(f64::from(t) / 1000.0);
    }
    if r.source == ResponseSource::Provider && r.outcome.is_ok() {
        let u = r.usage;
        metrics::counter!("sluice_model_tokens_total", "provider" => provider.clone(), "model" => model.clone(), "kind" => "input").increment(u64::from(u.input_tokens));
        metrics::counter!("sluice_model_tokens_total", "provider" => provider.clone(), "model" => model.clone(), "kind" => "output").increment(u64::from(u.output_tokens));
        metrics::counter!("sluice_model_tokens_total", "provider" => provider.clone(), "model" => model.clone(), "kind" => "cached_input").increment(u64::from(u.cached_input_tokens));
        metrics::counter!("sluice_model_cost_micros_total", "provider" => provider.clone(), "model" => model.clone()).increment(r.cost_micros);
        // OpenTelemetry GenAI semantic conventions (gen_ai.client.token.usage, in tokens).
        metrics::histogram!("gen_ai_client_token_usage", "gen_ai_operation_name" => r.operation.clone(), "gen_ai_provider_name" => provider.clone(), "gen_ai_request_model" => model.clone(), "gen_ai_token_type" => "input").record(f64::from(u.input_tokens));
        metrics::histogram!("gen_ai_client_token_usage", "gen_ai_operation_name" => r.operation.clone(), "gen_ai_provider_name" => provider.clone(), "gen_ai_request_model" => model.clone(), "gen_ai_token_type" => "output").record(f64::from(u.output_tokens));
        // Cost per call in US dollars; the histogram's _sum is the total spend.
        metrics::histogram!("sluice_model_cost_usd", "gen_ai_provider_name" => provider.clone(), "gen_ai_request_model" => model.clone()).record(Micros::new(r.cost_micros).to_usd());
    }
    // gen_ai.client.operation.duration, in seconds; `error_type` is empty on success.
    let error_type = if r.outcome.is_ok() {
        ""
    } else {
        r.outcome.as_str()
    };
    metrics::histogram!("gen_ai_client_operation_duration_seconds", "gen_ai_operation_name" => r.operation.clone(), "gen_ai_provider_name" => provider, "gen_ai_request_model" => model, "error_type" => error_type).record(f64::from(r.latency_ms) / 1000.0);
}

pub(super) fn record_span(r: &CallRecord, finish: Option<&str>) {
    let span = tracing::Span::current();
    if let Some(p) = &r.provider {
        span.record("gen_ai.provider.name", p.as_str());
    }
    if let Some(m) = &r.model {
        span.record("sluice.model", m.as_str());
    }
    if let Some(m) = &r.response_model {
        span.record("gen_ai.response.model", m.as_str());
    }
    if let Some(f) = finish {
        span.record("gen_ai.response.finish_reasons", f);
    }
    if r.outcome.is_ok() {
        span.record("gen_ai.usage.input_tokens", r.usage.input_tokens);
        span.record("gen_ai.usage.output_tokens", r.usage.output_tokens);
    }
    span.record("sluice.cost_micros", r.cost_micros);
    span.record("sluice.cache_hit", r.source == ResponseSource::Cache);
    span.record("sluice.source", source_label(r.source));
    span.record("sluice.journal_replay", r.source == ResponseSource::Journal);
    span.record("sluice.retries", r.retries);
    span.record("sluice.rate_limit_wait_ms", r.rate_limit_wait_ms);
    span.record("sluice.attempts", r.attempts.len());
    span.record("sluice.fallbacks", r.fallbacks);
    span.record("sluice.outcome", r.outcome.as_str());
}
