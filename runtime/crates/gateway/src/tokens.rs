//! Token counting and pricing.
//!
//! The gateway needs a token count *before* a call, to reserve rate-limit capacity and budget;
//! it uses this crate's simple tokenizer: one token per 4 characters (rounded up) of each
//! message, plus 3 tokens of framing per message and 3 for the reply's priming, the shape of
//! OpenAI's accounting. The simulator counts tokens with exactly the same functions, so against
//! the simulator estimates are exact; against real providers they are estimates that the
//! provider's reported usage reconciles after the call.

use sluice_types::model::{Message, Usage};

use crate::config::{ModelConfig, usd_to_micros};

/// Tokens of framing per message.
pub const PER_MESSAGE_TOKENS: u32 = 3;
/// Tokens that prime the reply.
pub const REPLY_PRIMING_TOKENS: u32 = 3;

/// Tokens in a piece of text: characters / 4, rounded up.
pub fn text_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// Tokens of a prompt.
pub fn prompt_tokens<'a>(contents: impl IntoIterator<Item = &'a str>) -> u32 {
    contents.into_iter().fold(REPLY_PRIMING_TOKENS, |acc, c| {
        acc.saturating_add(text_tokens(c))
            .saturating_add(PER_MESSAGE_TOKENS)
    })
}

/// Tokens of a chat prompt.
pub fn messages_tokens(messages: &[Message]) -> u32 {
    prompt_tokens(messages.iter().map(|m| m.content.as_str()))
}

/// A model's prices in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// Per million input tokens (not served from the provider's cache).
    pub input: u64,
    /// Per million output tokens.
    pub output: u64,
    /// Per million cached input tokens.
    pub cached_input: u64,
}

impl Price {
    /// Prices from a validated model config.
    pub fn of(m: &ModelConfig) -> Self {
        let input = usd_to_micros(m.input_usd_per_mtok);
        Price {
            input,
            output: m.output_usd_per_mtok.map(usd_to_micros).unwrap_or(0),
            cached_input: m
                .cached_input_usd_per_mtok
                .map(usd_to_micros)
                .unwrap_or(input),
        }
    }

    /// The cost of `usage` in micro-dollars, rounded up (budgets err on the safe side).
    /// `usage.input_tokens` includes `cached_input_tokens`.
    pub fn cost(&self, usage: &Usage) -> u64 {
        let cached = u128::from(usage.cached_input_tokens.min(usage.input_tokens));
        let fresh = u128::from(usage.input_tokens) - cached;
        let total = fresh * u128::from(self.input)
            + cached * u128::from(self.cached_input)
            + u128::from(usage.output_tokens) * u128::from(self.output);
        u64::try_from(total.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }

    /// Worst-case cost of a call: every input token fresh and `max_output` output tokens.
    pub fn worst_case(&self, input_tokens: u32, max_output: u32) -> u64 {
        self.cost(&Usage {
            input_tokens,
            output_tokens: max_output,
            cached_input_tokens: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_costs() {
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("abcd"), 1);
        assert_eq!(text_tokens("abcde"), 2);
        assert_eq!(messages_tokens(&[Message::user("abcd")]), 3 + 1 + 3);
        let p = Price {
            input: 150_000,
            output: 600_000,
            cached_input: 75_000,
        };
        // 1000 in (400 cached), 100 out: 600*0.15 + 400*0.075 + 100*0.6 = 90+30+60 = 180 µ$.
        let u = Usage {
            input_tokens: 1000,
            output_tokens: 100,
            cached_input_tokens: 400,
        };
        assert_eq!(p.cost(&u), 180);
        assert_eq!(
            p.cost(&Usage {
                input_tokens: 1,
                ..Usage::default()
            }),
            1,
            "rounds up"
        );
        assert_eq!(p.worst_case(0, 0), 0);
    }
}
