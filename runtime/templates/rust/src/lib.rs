//! {{name}}: a Sluice job handler. Input `{"text": "..."}`; output a one-sentence summary,
//! the model that wrote it and what it cost.

use serde::{Deserialize, Serialize};
use sluice_sdk::{Error, Job, events, models};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    text: String,
}

#[derive(Debug, Serialize, PartialEq)]
struct Output {
    summary: String,
    model: String,
    cost_micros: u64,
}

fn handle(job: &Job, input: Input) -> Result<Output, Error> {
    if input.text.trim().is_empty() {
        // Retrying will not help: the job fails at once.
        return Err(Error::permanent("`text` is empty"));
    }
    events::progress("asking the fast model", Some(0.5));
    // A rate limit or an outage is a retryable error, a refused budget a permanent one: `?`
    // passes either on with its class.
    let reply = models::chat("fast")
        .system("Summarize the user's text in one sentence.")
        .user(&input.text)
        .max_tokens(80)
        .send()?;
    events::info(format!("job {} summarized by {}", job.id(), reply.model));
    Ok(Output {
        summary: reply.content.trim().to_owned(),
        model: reply.model,
        cost_micros: reply.cost_micros,
    })
}

sluice_sdk::handler!(handle);

#[cfg(test)]
mod tests {
    use sluice_sdk::testing::FakeHost;

    use super::*;

    #[test]
    fn summarizes_with_the_fast_model() {
        let host = FakeHost::new().reply("fast", "A short summary.");
        let input = Input {
            text: "A long text.".into(),
        };
        let out = host.run(|| handle(&Job::new("j1"), input)).unwrap();
        assert_eq!(out.summary, "A short summary.");
        assert_eq!(host.calls()[0].model, "fast");
        assert!(host.logs().iter().any(|l| l.contains("summarized by")));
    }

    #[test]
    fn empty_text_is_permanent() {
        let host = FakeHost::new();
        let input = Input { text: " ".into() };
        let err = host.run(|| handle(&Job::new("j1"), input)).unwrap_err();
        assert!(!err.is_retryable());
        assert!(host.calls().is_empty());
    }
}
