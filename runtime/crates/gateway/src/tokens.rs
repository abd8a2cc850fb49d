//! Token counting, token bounds and pricing.
//!
//! Two different things are counted here:
//!
//! - **The simulator's tokenizer** ([`text_tokens`], [`prompt_tokens`], [`messages_tokens`]):
//!   one token per 4 characters (rounded up) of each message, plus 3 tokens of framing per
//!   message and 3 for the reply's priming, the shape of OpenAI's accounting. The simulated
//!   provider counts with it, and the OpenAI client falls back to it for the output of a stream
//!   that carried no usage. It is *not* a bound: CJK text, emoji or code take more tokens per
//!   character with real tokenizers.
//! - **The upper bound** used before a call, to reserve budget ([`prompt_upper_bound`],
//!   [`text_upper_bound`]): the byte-level BPE tokenizers of today's providers (tiktoken's
//!   `cl100k`/`o200k`, Llama 3, Claude's) and SentencePiece with byte fallback emit at most one
//!   token per UTF-8 byte of text, because every token covers at least one byte. Each message
//!   adds at most [`MESSAGE_OVERHEAD_BOUND`] tokens of chat-template framing, and the reply's
//!   priming at most [`REPLY_PRIMING_BOUND`]. The bound is loose for English (about 4 bytes a
//!   token) and tight for CJK and emoji (3-4 bytes a character, often one token each), which is
//!   where characters/4 undercounted.

use sluice_types::Micros;
use sluice_types::model::{Message, Usage};

use crate::config::ModelConfig;

/// Tokens of framing per message (the simulator's tokenizer).
pub const PER_MESSAGE_TOKENS: u32 = 3;
/// Tokens that prime the reply (the simulator's tokenizer).
pub const REPLY_PRIMING_TOKENS: u32 = 3;

/// Upper bound of the chat-template tokens one message adds around its text (role markers,
/// separators: OpenAI counts 3-4, Llama 3's template 5).
pub const MESSAGE_OVERHEAD_BOUND: u64 = 8;
/// Upper bound of the tokens that prime the reply (OpenAI counts 3).
pub const REPLY_PRIMING_BOUND: u64 = 8;

/// Tokens in a piece of text by the simulator's tokenizer: characters / 4, rounded up.
pub fn text_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// Tokens of a prompt by the simulator's tokenizer.
pub fn prompt_tokens<'a>(contents: impl IntoIterator<Item = &'a str>) -> u32 {
    contents.into_iter().fold(REPLY_PRIMING_TOKENS, |acc, c| {
        acc.saturating_add(text_tokens(c))
            .saturating_add(PER_MESSAGE_TOKENS)
    })
}

/// Tokens of a chat prompt by the simulator's tokenizer.
pub fn messages_tokens(messages: &[Message]) -> u32 {
    prompt_tokens(messages.iter().map(|m| m.content.as_str()))
}

/// At least as many tokens as any byte-level tokenizer makes of `text`: its UTF-8 length.
pub fn text_upper_bound(text: &str) -> u64 {
    text.len() as u64
}

/// At least as many prompt tokens as a provider can count for `messages`: every byte a token,
/// plus [`MESSAGE_OVERHEAD_BOUND`] per message and [`REPLY_PRIMING_BOUND`]. Saturating, so a
/// huge message count cannot overflow it.
pub fn prompt_upper_bound(messages: &[Message]) -> u64 {
    messages.iter().fold(REPLY_PRIMING_BOUND, |acc, m| {
        acc.saturating_add(text_upper_bound(&m.content))
            .saturating_add(MESSAGE_OVERHEAD_BOUND)
    })
}

/// A `u64` token count as the `u32` the wire types carry, saturating.
pub fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A model's prices per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// Per million input tokens (not served from the provider's cache).
    pub input: Micros,
    /// Per million output tokens.
    pub output: Micros,
    /// Per million cached input tokens.
    pub cached_input: Micros,
}

impl Price {
    /// Prices from a validated model config (validation rejects negative and non-finite
    /// prices; were one to slip through it would count as free, never panic).
    pub fn of(m: &ModelConfig) -> Self {
        let usd = |v: f64| Micros::from_usd(v).unwrap_or(Micros::ZERO);
        let input = usd(m.input_usd_per_mtok);
        Price {
            input,
            output: m.output_usd_per_mtok.map(usd).unwrap_or(Micros::ZERO),
            cached_input: m.cached_input_usd_per_mtok.map(usd).unwrap_or(input),
        }
    }

    /// The cost of `usage`, each part rounded up (budgets err on the safe side), saturating.
    /// `usage.input_tokens` includes `cached_input_tokens`.
    pub fn cost(&self, usage: &Usage) -> Micros {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let fresh = usage.input_tokens - cached;
        let total = u128::from(fresh) * u128::from(self.input.get())
            + u128::from(cached) * u128::from(self.cached_input.get())
            + u128::from(usage.output_tokens) * u128::from(self.output.get());
        Micros::new(u64::try_from(total.div_ceil(1_000_000)).unwrap_or(u64::MAX))
    }

    /// Worst-case cost of a call: `input_tokens` at the dearer of the fresh and cached input
    /// prices and `max_output` output tokens. Saturating: `u64::MAX` tokens cost
    /// [`Micros::MAX`], which no budget admits.
    pub fn worst_case(&self, input_tokens: u64, max_output: u64) -> Micros {
        let input = self.input.max(self.cached_input);
        Micros::per_mtok(input_tokens, input) + Micros::per_mtok(max_output, self.output)
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
            input: Micros::new(150_000),
            output: Micros::new(600_000),
            cached_input: Micros::new(75_000),
        };
        // 1000 in (400 cached), 100 out: 600*0.15 + 400*0.075 + 100*0.6 = 90+30+60 = 180 µ$.
        let u = Usage {
            input_tokens: 1000,
            output_tokens: 100,
            cached_input_tokens: 400,
        };
        assert_eq!(p.cost(&u), Micros::new(180));
        assert_eq!(
            p.cost(&Usage {
                input_tokens: 1,
                ..Usage::default()
            }),
            Micros::new(1),
            "rounds up"
        );
        assert_eq!(p.worst_case(0, 0), Micros::ZERO);
        let max = Usage {
            input_tokens: u32::MAX,
            output_tokens: u32::MAX,
            cached_input_tokens: u32::MAX,
        };
        let dear = Price {
            input: Micros::MAX,
            output: Micros::MAX,
            cached_input: Micros::MAX,
        };
        assert_eq!(dear.cost(&max), Micros::MAX, "saturates");
        assert_eq!(dear.worst_case(u64::MAX, u64::MAX), Micros::MAX);
        assert_eq!(
            p.worst_case(u64::from(u32::MAX), u64::from(u32::MAX)),
            Micros::new(3_221_225_472)
        );
    }

    #[test]
    fn the_bound_covers_multibyte_text_and_huge_prompts() {
        // Characters/4 says 1 token; a tokenizer may well make 4 of these 4 CJK characters
        // (3 bytes each), and byte fallback up to 12.
        assert_eq!(text_tokens("日本語文"), 1);
        assert_eq!(text_upper_bound("日本語文"), 12);
        assert_eq!(text_upper_bound("🦀"), 4);
        assert_eq!(prompt_upper_bound(&[Message::user("ab")]), 8 + 2 + 8);
        let many = vec![Message::user(""); 100_000];
        assert_eq!(prompt_upper_bound(&many), 8 + 8 * 100_000);
        assert_eq!(clamp_u32(u64::MAX), u32::MAX);
    }
}
