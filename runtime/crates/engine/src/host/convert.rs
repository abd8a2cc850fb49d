//! Conversions between the generated WIT types and `sluice-types`.

use sluice_types::model as t;

use crate::bindings::{models as w, types as wt};

pub(crate) fn chat_request(r: w::ChatRequest) -> t::ChatRequest {
    t::ChatRequest {
        model: r.model,
        messages: r
            .messages
            .into_iter()
            .map(|m| t::Message {
                role: match m.role {
                    w::Role::System => t::Role::System,
                    w::Role::User => t::Role::User,
                    w::Role::Assistant => t::Role::Assistant,
                },
                content: m.content,
            })
            .collect(),
        max_tokens: r.max_tokens,
        temperature: r.temperature,
        response_format: match r.response_format {
            w::ResponseFormat::Text => t::ResponseFormat::Text,
            w::ResponseFormat::Json => t::ResponseFormat::Json,
        },
        no_cache: r.no_cache,
        stream_events: r.stream_events,
    }
}

pub(crate) fn usage(u: t::Usage) -> w::Usage {
    w::Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cached_input_tokens: u.cached_input_tokens,
    }
}

pub(crate) fn source(s: t::ResponseSource) -> w::ResponseSource {
    match s {
        t::ResponseSource::Provider => w::ResponseSource::Provider,
        t::ResponseSource::Cache => w::ResponseSource::Cache,
        t::ResponseSource::Journal => w::ResponseSource::Journal,
    }
}

pub(crate) fn chat_response(r: t::ChatResponse) -> w::ChatResponse {
    w::ChatResponse {
        content: r.content,
        model: r.model,
        provider: r.provider,
        usage: usage(r.usage),
        cost_micros: r.cost_micros,
        latency_ms: r.latency_ms,
        source: source(r.source),
        finish_reason: r.finish_reason,
    }
}

pub(crate) fn embed_response(r: t::EmbedResponse) -> w::EmbedResponse {
    w::EmbedResponse {
        vectors: r.vectors,
        model: r.model,
        provider: r.provider,
        usage: usage(r.usage),
        cost_micros: r.cost_micros,
        source: source(r.source),
    }
}

pub(crate) fn model_error(e: t::ModelError) -> w::ModelError {
    match e {
        t::ModelError::BudgetExceeded { message } => w::ModelError::BudgetExceeded(message),
        t::ModelError::RateLimited {
            message,
            retry_after_ms,
        } => w::ModelError::RateLimited(w::RateLimited {
            message,
            retry_after_ms,
        }),
        t::ModelError::Unavailable { message } => w::ModelError::Unavailable(message),
        t::ModelError::InvalidRequest { message } => w::ModelError::InvalidRequest(message),
        t::ModelError::Timeout { message } => w::ModelError::Timeout(message),
        t::ModelError::ContentFiltered { message } => w::ModelError::ContentFiltered(message),
    }
}

pub(crate) fn job_info(j: &sluice_types::JobInfo) -> wt::JobInfo {
    wt::JobInfo {
        id: j.id.to_string(),
        plugin: j.plugin.clone(),
        tenant: j.tenant.clone(),
        attempt: j.attempt,
        max_attempts: j.max_attempts,
        idempotency_key: j.idempotency_key.clone(),
        tags: j
            .tags
            .iter()
            .map(|(k, v)| wt::Tag {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        deadline_unix_ms: j.deadline_unix_ms,
    }
}
