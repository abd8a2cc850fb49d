//! One turn of a chat, with the conversation's history kept in state.
//!
//! Loads the conversation's history, asks the `smart` model with the system prompt, the
//! history and the new message (streaming the reply's tokens to the job's events), appends the
//! message and the reply, and saves the last 20 messages. The first turn of a conversation
//! records a "new conversation" notification exactly once, however often the job runs.
//!
//! Input: `{"conversation_id": "support-42", "message": "...", "system": "..."}` (`system`
//! optional).
//!
//! Output: `{"reply": "...", "turns": 3, "notified": false}`: `turns` counts every turn the
//! conversation has had (not only those still in the kept history); `notified` is true on the
//! turn that started the conversation.
//!
//! Retries: the model call is journaled by the host, the turn counter and the notification are
//! effects, and the saved history remembers which job saved it, so a job that runs again after
//! saving its turn returns the saved reply instead of appending the turn twice.

use serde::{Deserialize, Serialize};
use sluice_sdk::models::{self, Message};
use sluice_sdk::state::{self, Conversation};
use sluice_sdk::{Error, Job, effects, events};

const MODEL: &str = "smart";
const KEEP_MESSAGES: usize = 20;
const DEFAULT_SYSTEM: &str = "You are a helpful assistant. Answer clearly and concisely.";
const MAX_ID_CHARS: usize = 200;
const MAX_MESSAGE_CHARS: usize = 32_000;
/// The notification record of a conversation is stored under this prefix.
const NOTIFICATION_PREFIX: &str = "notifications/";
/// The turn counter of a conversation is stored under this prefix.
const TURNS_PREFIX: &str = "turns/";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    conversation_id: String,
    message: String,
    #[serde(default)]
    system: Option<String>,
}

#[derive(Debug, Serialize)]
struct Output {
    reply: String,
    turns: u64,
    notified: bool,
}

/// What the notification effect records.
#[derive(Debug, Serialize, Deserialize)]
struct Notification {
    conversation_id: String,
    job_id: String,
    first_message: String,
}

fn handle(job: &Job, input: Input) -> Result<Output, Error> {
    let id = input.conversation_id.trim();
    if id.is_empty() || id.chars().count() > MAX_ID_CHARS {
        return Err(Error::permanent(format!(
            "`conversation_id` must be 1 to {MAX_ID_CHARS} characters"
        )));
    }
    if input.message.trim().is_empty() {
        return Err(Error::permanent("`message` is empty"));
    }
    if input.message.chars().count() > MAX_MESSAGE_CHARS {
        return Err(Error::permanent(format!(
            "`message` is longer than {MAX_MESSAGE_CHARS} characters"
        )));
    }

    let mut conv = Conversation::load(id)?.keep_last(KEEP_MESSAGES);
    let (reply, started) = if conv.saved_by() == Some(job.id()) {
        // An earlier attempt of this job saved its turn and then died: do not add it again.
        events::info("this turn was already saved by an earlier attempt");
        let reply = conv.last_reply().unwrap_or_default().to_owned();
        (reply, conv.len() <= 2)
    } else {
        let started = conv.is_empty();
        let system = input
            .system
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or(DEFAULT_SYSTEM);
        let response = models::chat(MODEL)
            .system(system)
            .messages(conv.messages().iter().cloned())
            .user(&input.message)
            .max_tokens(1024)
            .stream()
            .send()?;
        let reply = response.content.trim().to_owned();
        conv.push(Message::user(&input.message));
        conv.push(Message::assistant(&reply));
        // Another job saved the same conversation meanwhile: retry on the fresh history.
        conv.save()?;
        (reply, started)
    };

    let turns_key = format!("{TURNS_PREFIX}{id}");
    let turns: u64 = effects::once("count-turn", || {
        Ok(state::update(&turns_key, |n: Option<u64>| {
            n.unwrap_or(0) + 1
        })?)
    })?;

    let notified = started && {
        let notification: Notification = effects::once("notify", || {
            let notification = Notification {
                conversation_id: id.to_owned(),
                job_id: job.id().to_owned(),
                first_message: preview(&input.message, 200),
            };
            state::set(&format!("{NOTIFICATION_PREFIX}{id}"), &notification)?;
            events::log(
                events::Level::Info,
                "new conversation",
                &[
                    ("conversation_id", id),
                    ("first_message", &notification.first_message),
                ],
            );
            Ok(notification)
        })?;
        notification.job_id == job.id()
    };

    Ok(Output {
        reply,
        turns,
        notified,
    })
}

/// The first `max` characters of `s`, with an ellipsis when cut.
fn preview(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

sluice_sdk::handler!(handle);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_cut_at_characters() {
        assert_eq!(preview("héllo", 2), "hé…");
        assert_eq!(preview("hi", 2), "hi");
    }

    #[test]
    fn bad_input_is_permanent() {
        let job = Job::new("j");
        for (id, message) in [("", "hi"), ("c", "  "), (&*"x".repeat(201), "hi")] {
            let input = Input {
                conversation_id: id.into(),
                message: message.into(),
                system: None,
            };
            let e = handle(&job, input).unwrap_err();
            assert!(!e.is_retryable(), "{e}");
        }
        let e = serde_json::from_str::<Input>(r#"{"conversation_id":"c"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `message`"));
    }
}
