//! `[gateway.models."provider/model"]`: one model at one provider, with its prices.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ProviderConfig, ProviderKind, Wire};

/// One model at one provider, with its prices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The provider's name for the model; defaults to the part of the id after `/`.
    #[serde(default)]
    pub name: Option<String>,
    /// US dollars per million input tokens (decimal). Required.
    pub input_usd_per_mtok: f64,
    /// US dollars per million output tokens. Required for chat models.
    #[serde(default)]
    pub output_usd_per_mtok: Option<f64>,
    /// US dollars per million cached input tokens; defaults to the input price.
    #[serde(default)]
    pub cached_input_usd_per_mtok: Option<f64>,
    /// Output-token cap used when a request sets none.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Context window (input + output tokens); a request that cannot fit skips this model.
    #[serde(default)]
    pub context_tokens: Option<u32>,
    /// Requests per minute for this model, on top of the provider's limit.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute for this model, on top of the provider's limit.
    #[serde(default)]
    pub tpm: Option<u32>,
    /// An embeddings model (no output price needed).
    #[serde(default)]
    pub embedding: bool,
}

impl ModelConfig {
    /// A chat model with these prices (USD per million tokens).
    pub fn chat(input: f64, output: f64) -> Self {
        ModelConfig {
            name: None,
            input_usd_per_mtok: input,
            output_usd_per_mtok: Some(output),
            cached_input_usd_per_mtok: None,
            max_tokens: None,
            context_tokens: None,
            rpm: None,
            tpm: None,
            embedding: false,
        }
    }

    /// An embeddings model with this input price.
    pub fn embedding(input: f64) -> Self {
        ModelConfig {
            embedding: true,
            output_usd_per_mtok: None,
            ..ModelConfig::chat(input, 0.0)
        }
    }
}

impl ModelConfig {
    /// Check model `id` against its provider in `providers`; the message says what is wrong.
    pub(super) fn validate(
        &self,
        id: &str,
        providers: &BTreeMap<String, ProviderConfig>,
    ) -> Result<(), String> {
        let Some((provider, rest)) = id.split_once('/') else {
            return Err("a model id is `provider/model`".into());
        };
        if rest.is_empty() {
            return Err("a model id is `provider/model`".into());
        }
        let Some(p) = providers.get(provider) else {
            return Err(format!("unknown provider {provider:?}"));
        };
        let price_ok = |v: f64| v.is_finite() && v >= 0.0;
        if !price_ok(self.input_usd_per_mtok)
            || !self.output_usd_per_mtok.is_none_or(price_ok)
            || !self.cached_input_usd_per_mtok.is_none_or(price_ok)
        {
            return Err("prices must be finite and non-negative".into());
        }
        if !self.embedding && self.output_usd_per_mtok.is_none() {
            return Err(
                "output_usd_per_mtok is required for a chat model (an unknown \
                price is an error; write 0 for a free model)"
                    .into(),
            );
        }
        if self.embedding {
            let wire = match p.kind {
                ProviderKind::Anthropic => Wire::Anthropic,
                ProviderKind::OpenAi => Wire::OpenAi,
                ProviderKind::Simulated => p.simulator.as_ref().map(|s| s.wire).unwrap_or_default(),
            };
            if wire == Wire::Anthropic {
                return Err("the Anthropic wire format has no embeddings endpoint".into());
            }
        }
        if self.max_tokens == Some(0) || self.context_tokens == Some(0) {
            return Err("max_tokens and context_tokens must be positive".into());
        }
        if self.rpm == Some(0) || self.tpm == Some(0) {
            return Err("rpm and tpm must be positive (omit them for no limit)".into());
        }
        Ok(())
    }
}
