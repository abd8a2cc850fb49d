//! Summarize a long text, map-reduce style.
//!
//! The text is split into chunks at paragraph and sentence boundaries. Each chunk is
//! summarized by the `fast` model; the calls go to the host together (`chat_all`), which runs
//! them concurrently within its rate limits. One call to the `smart` model then combines the
//! chunk summaries. A text that fits in one chunk gets a single `smart` call.
//!
//! Input: `{"text": "...", "chunk_chars": 6000, "max_words": 150}` (the last two optional).
//!
//! Output:
//! `{"summary": "...", "chunks": 4, "usage": {"input_tokens": .., "output_tokens": ..,
//! "cost_micros": ..}, "models": ["..."], "skipped_chunks": []}`.
//!
//! Partial failures: a chunk refused for its content is left out (listed in
//! `skipped_chunks`); a chunk that failed for a passing reason (rate limit, outage, timeout)
//! fails the job retryably, and the retry gets the chunks that succeeded from the journal at no
//! new cost — except on the job's last attempt, where the summary is made from what there is.
//! A refused budget or an invalid request fails the job permanently.

mod chunk;

use serde::{Deserialize, Serialize};
use sluice_sdk::models::{self, ChatRequest, ChatResponse, ModelError};
use sluice_sdk::{Context, Error, Job, events};

/// The model alias for the per-chunk summaries.
const MAP_MODEL: &str = "fast";
/// The model alias for the final summary.
const REDUCE_MODEL: &str = "smart";

const DEFAULT_CHUNK_CHARS: usize = 6_000;
const CHUNK_CHARS: std::ops::RangeInclusive<usize> = 200..=100_000;
const DEFAULT_MAX_WORDS: u32 = 150;
const MAX_WORDS: std::ops::RangeInclusive<u32> = 10..=2_000;
/// More chunks than this is a mistake (or a bill) the caller should decide on explicitly.
const MAX_CHUNKS: usize = 256;
/// Chunks sent to the host per `chat_all`, so progress is reported while a long text runs.
const WAVE: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    text: String,
    #[serde(default = "default_chunk_chars")]
    chunk_chars: usize,
    #[serde(default = "default_max_words")]
    max_words: u32,
}

fn default_chunk_chars() -> usize {
    DEFAULT_CHUNK_CHARS
}

fn default_max_words() -> u32 {
    DEFAULT_MAX_WORDS
}

#[derive(Debug, Serialize)]
struct Output {
    summary: String,
    chunks: usize,
    usage: Tally,
    /// The models that answered, in order of first use.
    models: Vec<String>,
    /// 1-based numbers of the chunks left out of the summary.
    skipped_chunks: Vec<usize>,
}

/// Tokens, cost and models over every call of the job.
#[derive(Debug, Default, Serialize)]
struct Tally {
    input_tokens: u64,
    output_tokens: u64,
    cost_micros: u64,
    #[serde(skip)]
    models: Vec<String>,
}

impl Tally {
    fn add(&mut self, reply: &ChatResponse) {
        self.input_tokens += u64::from(reply.usage.input_tokens);
        self.output_tokens += u64::from(reply.usage.output_tokens);
        self.cost_micros += reply.cost_micros;
        if !self.models.contains(&reply.model) {
            self.models.push(reply.model.clone());
        }
    }
}

fn handle(job: &Job, input: Input) -> Result<Output, Error> {
    if input.text.trim().is_empty() {
        return Err(Error::permanent("`text` is empty"));
    }
    if !CHUNK_CHARS.contains(&input.chunk_chars) {
        return Err(Error::permanent(format!(
            "`chunk_chars` must be between {} and {}, got {}",
            CHUNK_CHARS.start(),
            CHUNK_CHARS.end(),
            input.chunk_chars
        )));
    }
    if !MAX_WORDS.contains(&input.max_words) {
        return Err(Error::permanent(format!(
            "`max_words` must be between {} and {}, got {}",
            MAX_WORDS.start(),
            MAX_WORDS.end(),
            input.max_words
        )));
    }
    let chunks = chunk::split(&input.text, input.chunk_chars);
    let n = chunks.len();
    if n > MAX_CHUNKS {
        return Err(Error::permanent(format!(
            "the text makes {n} chunks of {} characters, more than {MAX_CHUNKS}; raise `chunk_chars`",
            input.chunk_chars
        )));
    }

    let mut tally = Tally::default();
    if n == 1 {
        events::progress("chunk 1/1", Some(0.0));
        let reply = direct_request(&chunks[0], input.max_words)
            .send()
            .context("summarizing the text")?;
        tally.add(&reply);
        events::progress("done", Some(1.0));
        return Ok(Output {
            summary: reply.content.trim().to_owned(),
            chunks: 1,
            models: std::mem::take(&mut tally.models),
            usage: tally,
            skipped_chunks: Vec::new(),
        });
    }

    events::log(
        events::Level::Info,
        "summarizing in chunks",
        &[
            ("chunks", &n.to_string()),
            ("chunk_chars", &input.chunk_chars.to_string()),
        ],
    );
    let chunk_words = input.max_words.clamp(40, 300);
    let mut summaries: Vec<Option<String>> = vec![None; n];
    let mut failures: Vec<(usize, ModelError)> = Vec::new();
    for (wave_index, wave) in chunks.chunks(WAVE).enumerate() {
        let first = wave_index * WAVE;
        let requests = wave
            .iter()
            .enumerate()
            .map(|(k, text)| chunk_request(first + k + 1, n, text, chunk_words));
        for (k, result) in models::chat_all(requests).into_iter().enumerate() {
            let i = first + k;
            match result {
                Ok(reply) => {
                    tally.add(&reply);
                    summaries[i] = Some(reply.content.trim().to_owned());
                }
                Err(e) => {
                    let msg = e.to_string();
                    events::log(
                        events::Level::Warn,
                        "chunk failed",
                        &[("chunk", &(i + 1).to_string()), ("error", &msg)],
                    );
                    failures.push((i, e));
                }
            }
            // The combine call is the last step of n + 1.
            events::progress(
                format!("chunk {}/{n}", i + 1),
                Some((i + 1) as f32 / (n + 1) as f32),
            );
        }
    }

    let skipped = resolve_failures(n, &failures, job.is_last_attempt())?;
    if !skipped.is_empty() {
        events::warn(format!(
            "summarizing without {} of {n} chunks",
            skipped.len()
        ));
    }
    let parts: Vec<(usize, &str)> = summaries
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_deref().map(|s| (i + 1, s)))
        .collect();

    events::progress("combining", Some(n as f32 / (n + 1) as f32));
    let combined = combine_request(&parts, n, input.max_words)
        .send()
        .context("combining the chunk summaries")?;
    tally.add(&combined);
    events::progress("done", Some(1.0));

    Ok(Output {
        summary: combined.content.trim().to_owned(),
        chunks: n,
        models: std::mem::take(&mut tally.models),
        usage: tally,
        skipped_chunks: skipped.into_iter().map(|i| i + 1).collect(),
    })
}

/// Room for `words` words of English in tokens, with some slack.
fn tokens_for(words: u32) -> u32 {
    words * 2 + 64
}

fn chunk_request(i: usize, n: usize, text: &str, words: u32) -> ChatRequest {
    models::chat(MAP_MODEL)
        .system(format!(
            "You summarize one part of a longer document. Write a faithful, dense summary of this \
             part in at most {words} words. Keep names, numbers, dates and decisions. Reply with \
             the summary only."
        ))
        .user(format!("Part {i} of {n}:\n\n{text}"))
        .max_tokens(tokens_for(words))
        .temperature(0.2)
}

fn combine_request(parts: &[(usize, &str)], n: usize, max_words: u32) -> ChatRequest {
    let mut user = format!(
        "Summaries of the parts of one document, in order ({} of {n} parts):\n\n",
        parts.len()
    );
    for (i, summary) in parts {
        user.push_str(&format!("[Part {i}]\n{summary}\n\n"));
    }
    if parts.len() < n {
        user.push_str(
            "Some parts could not be summarized and are missing; do not guess their content.\n",
        );
    }
    models::chat(REDUCE_MODEL)
        .system(format!(
            "You combine summaries of consecutive parts of one document into a single coherent \
             summary of the whole document, in at most {max_words} words. Keep the most important \
             facts, names and numbers. Do not mention parts or summaries. Reply with the summary \
             only."
        ))
        .user(user.trim_end())
        .max_tokens(tokens_for(max_words))
        .temperature(0.2)
}

fn direct_request(text: &str, max_words: u32) -> ChatRequest {
    models::chat(REDUCE_MODEL)
        .system(format!(
            "Summarize the user's document in at most {max_words} words. Keep the most important \
             facts, names and numbers. Reply with the summary only."
        ))
        .user(text)
        .max_tokens(tokens_for(max_words))
        .temperature(0.2)
}

/// Decide what the failed chunks (0-based index, error) mean for the job: an error to return,
/// or the chunks to leave out of the summary.
fn resolve_failures(
    n: usize,
    failures: &[(usize, ModelError)],
    last_attempt: bool,
) -> Result<Vec<usize>, Error> {
    let Some((first_index, first_error)) = failures.first() else {
        return Ok(Vec::new());
    };
    let describe = |(i, e): &(usize, ModelError)| format!("chunk {}: {e}", i + 1);
    let retryable: Vec<&(usize, ModelError)> =
        failures.iter().filter(|(_, e)| e.is_retryable()).collect();
    let delay = retryable.iter().filter_map(|(_, e)| e.retry_after()).max();
    let retry = |message: String| match delay {
        Some(d) => Error::retry_after(message, d),
        None => Error::retryable(message),
    };

    // Budget refusals and invalid requests will not pass, whatever the other chunks did.
    if let Some(fatal) = failures.iter().find(|(_, e)| {
        matches!(
            e,
            ModelError::BudgetExceeded(_) | ModelError::InvalidRequest(_)
        )
    }) {
        return Err(Error::permanent(describe(fatal)));
    }
    if failures.len() == n {
        let message = format!(
            "all {n} chunks failed; {}",
            describe(&(*first_index, first_error.clone()))
        );
        return Err(if retryable.is_empty() {
            Error::permanent(message)
        } else {
            retry(message)
        });
    }
    if !retryable.is_empty() && !last_attempt {
        return Err(retry(format!(
            "{} of {n} chunks failed ({}); the retry replays the others from the journal",
            retryable.len(),
            describe(retryable[0])
        )));
    }
    // Content refusals, and passing failures on the last attempt: summarize what there is.
    Ok(failures.iter().map(|(i, _)| *i).collect())
}

sluice_sdk::handler!(handle);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limited(ms: u64) -> ModelError {
        ModelError::RateLimited {
            message: "429".into(),
            retry_after: Some(Duration::from_millis(ms)),
        }
    }

    #[test]
    fn no_failures_skip_nothing() {
        assert_eq!(
            resolve_failures(3, &[], false).unwrap(),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn passing_failures_retry_with_the_longest_delay() {
        let f = [
            (1, limited(500)),
            (2, limited(2000)),
            (4, ModelError::Unavailable("down".into())),
        ];
        let e = resolve_failures(5, &f, false).unwrap_err();
        assert!(e.is_retryable());
        assert_eq!(e.retry_delay(), Some(Duration::from_millis(2000)));
        assert!(
            e.message()
                .starts_with("3 of 5 chunks failed (chunk 2: rate limited"),
            "{e}"
        );
    }

    #[test]
    fn last_attempt_summarizes_what_there_is() {
        let f = [(1, ModelError::Timeout("slow".into()))];
        assert_eq!(resolve_failures(3, &f, true).unwrap(), vec![1]);
    }

    #[test]
    fn content_refusals_are_skipped() {
        let f = [(0, ModelError::ContentFiltered("no".into()))];
        assert_eq!(resolve_failures(2, &f, false).unwrap(), vec![0]);
        let e = resolve_failures(1, &f, false).unwrap_err();
        assert!(
            !e.is_retryable(),
            "all chunks refused: nothing to summarize"
        );
    }

    #[test]
    fn budget_refusal_is_permanent() {
        let f = [
            (0, limited(10)),
            (2, ModelError::BudgetExceeded("tenant".into())),
        ];
        let e = resolve_failures(3, &f, false).unwrap_err();
        assert!(!e.is_retryable());
        assert_eq!(e.message(), "chunk 3: budget exceeded: tenant");
    }

    #[test]
    fn all_failed_passing_is_retryable() {
        let f = [
            (0, limited(10)),
            (1, ModelError::ContentFiltered("x".into())),
        ];
        let e = resolve_failures(2, &f, true).unwrap_err();
        assert!(e.is_retryable());
        assert!(
            e.message().starts_with("all 2 chunks failed; chunk 1: "),
            "{e}"
        );
    }

    #[test]
    fn requests_use_the_right_models_and_limits() {
        let r = chunk_request(2, 5, "some text", 100);
        assert_eq!(r.model, MAP_MODEL);
        assert_eq!(r.max_tokens, Some(264));
        assert!(
            r.messages[1]
                .content
                .starts_with("Part 2 of 5:\n\nsome text")
        );
        let c = combine_request(&[(1, "a"), (3, "c")], 3, 150);
        assert_eq!(c.model, REDUCE_MODEL);
        assert!(c.messages[1].content.contains("[Part 3]\nc"));
        assert!(c.messages[1].content.contains("missing"));
        assert_eq!(direct_request("t", 10).model, REDUCE_MODEL);
    }

    #[test]
    fn input_defaults_and_unknown_fields() {
        let i: Input = serde_json::from_str(r#"{"text": "x"}"#).unwrap();
        assert_eq!(
            (i.chunk_chars, i.max_words),
            (DEFAULT_CHUNK_CHARS, DEFAULT_MAX_WORDS)
        );
        let e = serde_json::from_str::<Input>(r#"{"text": "x", "max_word": 3}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `max_word`"), "{e}");
    }

    #[test]
    fn bad_options_are_permanent_errors() {
        let job = Job::new("j");
        for input in [
            Input {
                text: " ".into(),
                chunk_chars: 1000,
                max_words: 100,
            },
            Input {
                text: "x".into(),
                chunk_chars: 10,
                max_words: 100,
            },
            Input {
                text: "x".into(),
                chunk_chars: 1000,
                max_words: 1,
            },
            Input {
                text: "word ".repeat(60_000),
                chunk_chars: 200,
                max_words: 100,
            },
        ] {
            let e = handle(&job, input).unwrap_err();
            assert!(!e.is_retryable(), "{e}");
        }
    }
}
