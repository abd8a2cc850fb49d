//! Benchmark handler for `bench/peers/model-overhead.sh`: one chat call to the `fast` alias with
//! the job's input (raw JSON text) as the user message, at most 16 tokens back; returns the reply
//! as a JSON string. No state, no effects: a job is exactly one model call through the gateway,
//! the smallest thing a user can do to call a model through Sluice.

use sluice_sdk::{Error, Job, models};

fn handle(_job: &Job, input: String) -> Result<String, Error> {
    let reply = models::chat("fast").user(input).max_tokens(16).send()?;
    Ok(serde_json::to_string(&reply.content)?)
}

sluice_sdk::handler!(raw handle);
