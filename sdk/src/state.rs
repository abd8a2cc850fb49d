//! Key/value state that outlives jobs, scoped to the job's tenant and plugin.
//!
//! Values are stored as JSON text: the typed functions serialize with `serde_json`, the `*_raw`
//! functions take the text as is. Use state for conversation history ([`Conversation`]),
//! caches and counters ([`update`]).
//!
//! ```no_run
//! use sluice_sdk::state;
//!
//! # fn run() -> sluice_sdk::Result<()> {
//! let seen: u64 = state::get("docs-seen")?.unwrap_or(0);
//! state::set("docs-seen", &(seen + 1))?; // last writer wins
//! let now = state::update("docs-seen", |n: Option<u64>| n.unwrap_or(0) + 1)?; // atomic
//! # let _ = now; Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bindings::state as wit;
use crate::error::{Error, millis};
use crate::models::{Message, Role};

/// Why a state operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The key is empty, too long (over 512 bytes) or not valid text.
    InvalidKey(String),
    /// The value is over the host's size limit.
    TooLarge(String),
    /// The store could not be reached; the operation may succeed if retried.
    Unavailable(String),
    /// A concurrent writer kept changing the key (see [`update`] and [`Conversation::save`]).
    Conflict(String),
    /// A value could not be turned into JSON, or stored JSON did not fit the expected type.
    Json(String),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::InvalidKey(m) => write!(f, "invalid state key: {m}"),
            StateError::TooLarge(m) => write!(f, "state value too large: {m}"),
            StateError::Unavailable(m) => write!(f, "state store unavailable: {m}"),
            StateError::Conflict(m) => write!(f, "state write conflict: {m}"),
            StateError::Json(m) => write!(f, "state value is not the expected JSON: {m}"),
        }
    }
}

impl std::error::Error for StateError {}

impl From<wit::StateError> for StateError {
    fn from(e: wit::StateError) -> Self {
        match e {
            wit::StateError::InvalidKey(m) => StateError::InvalidKey(m),
            wit::StateError::TooLarge(m) => StateError::TooLarge(m),
            wit::StateError::Unavailable(m) => StateError::Unavailable(m),
        }
    }
}

impl From<StateError> for Error {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Unavailable(_) | StateError::Conflict(_) => Error::retryable(e.to_string()),
            StateError::InvalidKey(_) | StateError::TooLarge(_) | StateError::Json(_) => {
                Error::permanent(e.to_string())
            }
        }
    }
}

fn decode<T: DeserializeOwned>(key: &str, text: &str) -> Result<T, StateError> {
    serde_json::from_str(text).map_err(|e| StateError::Json(format!("{key}: {e}")))
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<String, StateError> {
    serde_json::to_string(value).map_err(|e| StateError::Json(format!("{key}: {e}")))
}

/// Read a key and parse its JSON as `T`; `None` when absent or expired.
pub fn get<T: DeserializeOwned>(key: &str) -> Result<Option<T>, StateError> {
    get_raw(key)?.map(|text| decode(key, &text)).transpose()
}

/// Read a key's text as stored; `None` when absent or expired.
pub fn get_raw(key: &str) -> Result<Option<String>, StateError> {
    Ok(wit::get(key)?)
}

/// Write `value` as JSON, replacing any earlier value (last writer wins; see [`update`] and
/// [`compare_and_swap`] for safe concurrent changes).
pub fn set<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), StateError> {
    set_raw(key, &encode(key, value)?, None)
}

/// Write `value` as JSON; the key expires after `ttl`.
pub fn set_with_ttl<T: Serialize + ?Sized>(
    key: &str,
    value: &T,
    ttl: Duration,
) -> Result<(), StateError> {
    set_raw(key, &encode(key, value)?, Some(ttl))
}

/// Write text as is, optionally expiring after `ttl`.
pub fn set_raw(key: &str, value: &str, ttl: Option<Duration>) -> Result<(), StateError> {
    Ok(wit::set(key, value, ttl.map(millis))?)
}

/// Delete a key; `true` when it existed.
pub fn delete(key: &str) -> Result<bool, StateError> {
    Ok(wit::delete(key)?)
}

/// Keys that start with `prefix`, in key order, at most `limit` of them.
pub fn list_keys(prefix: &str, limit: u32) -> Result<Vec<String>, StateError> {
    Ok(wit::list_keys(prefix, limit)?)
}

/// Atomically write `value` when the key currently holds `expected` (`None`: the key must be
/// absent). Returns whether the swap happened.
///
/// The comparison is on the stored text, so `expected` must serialize exactly as the stored
/// value does. That holds for values this SDK wrote from the same type, but not for maps with
/// unordered keys such as `HashMap`; when in doubt use [`update`] or
/// [`compare_and_swap_raw`] with the text from [`get_raw`].
pub fn compare_and_swap<T: Serialize + ?Sized>(
    key: &str,
    expected: Option<&T>,
    value: &T,
) -> Result<bool, StateError> {
    let expected = expected.map(|e| encode(key, e)).transpose()?;
    compare_and_swap_raw(key, expected.as_deref(), &encode(key, value)?)
}

/// Atomically write `value` when the key's stored text equals `expected` (`None`: the key
/// must be absent). Returns whether the swap happened.
pub fn compare_and_swap_raw(
    key: &str,
    expected: Option<&str>,
    value: &str,
) -> Result<bool, StateError> {
    Ok(wit::compare_and_swap(key, expected, value)?)
}

/// How many times [`update`] re-reads and retries when another writer got in first.
pub const UPDATE_ATTEMPTS: u32 = 8;

/// Atomically change a key: read it, compute the new value with `f`, and write it only if no
/// one else wrote in between, retrying with the fresh value otherwise (up to
/// [`UPDATE_ATTEMPTS`] times, then [`StateError::Conflict`], which is retryable). Returns the
/// value written. `f` may run more than once, so it should not have side effects.
pub fn update<T, F>(key: &str, mut f: F) -> Result<T, StateError>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(Option<T>) -> T,
{
    for _ in 0..UPDATE_ATTEMPTS {
        let current = get_raw(key)?;
        let old = current
            .as_deref()
            .map(|text| decode(key, text))
            .transpose()?;
        let new = f(old);
        if compare_and_swap_raw(key, current.as_deref(), &encode(key, &new)?)? {
            return Ok(new);
        }
    }
    Err(StateError::Conflict(format!(
        "{key} changed {UPDATE_ATTEMPTS} times while being updated"
    )))
}

/// A chat history kept in state under `conversation/<id>`, oldest message first.
///
/// Load it, read [`messages`](Self::messages), [`push`](Self::push) the new turn and
/// [`save`](Self::save). Saving is a compare-and-swap against what was loaded, so two jobs
/// writing the same conversation at once cannot silently drop each other's turns: the second
/// gets [`StateError::Conflict`] (retryable) and its job runs again on the fresh history.
///
/// A saved conversation remembers the id of the job that saved it
/// ([`saved_by`](Self::saved_by)): a job that is retried after it saved (its worker died before
/// the job completed) can see that its turn is already there instead of appending it twice.
///
/// ```no_run
/// use sluice_sdk::models::{self, Message};
/// use sluice_sdk::state::Conversation;
///
/// # fn run(message: &str) -> sluice_sdk::Result<String> {
/// let mut conv = Conversation::load("support-42")?.keep_last(20);
/// let reply = models::chat("smart")
///     .system("You are a helpful support agent.")
///     .messages(conv.messages().iter().cloned())
///     .user(message)
///     .send()?;
/// conv.push(Message::user(message));
/// conv.push(Message::assistant(&reply.content));
/// conv.save()?;
/// # Ok(reply.content) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    id: String,
    key: String,
    doc: ConversationDoc,
    /// The stored text as loaded, for the compare-and-swap in `save`.
    loaded: Option<String>,
    keep_last: Option<usize>,
}

/// What is stored under the conversation's key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ConversationDoc {
    messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    saved_by: Option<String>,
}

impl Conversation {
    /// The prefix of every conversation's state key.
    pub const KEY_PREFIX: &'static str = "conversation/";

    /// An empty conversation that has never been saved (no state access).
    pub fn new(id: impl Into<String>) -> Self {
        let id = id.into();
        Conversation {
            key: format!("{}{id}", Self::KEY_PREFIX),
            id,
            doc: ConversationDoc::default(),
            loaded: None,
            keep_last: None,
        }
    }

    /// Load a conversation; an empty one when it does not exist yet.
    pub fn load(id: impl Into<String>) -> Result<Self, StateError> {
        let mut conv = Conversation::new(id);
        if let Some(text) = get_raw(&conv.key)? {
            conv.doc = decode(&conv.key, &text)?;
            conv.loaded = Some(text);
        }
        Ok(conv)
    }

    /// Keep at most the last `n` messages: older ones are dropped now and on every save.
    #[must_use]
    pub fn keep_last(mut self, n: usize) -> Self {
        self.keep_last = Some(n);
        self.trim();
        self
    }

    /// The conversation's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The state key it is stored under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The messages, oldest first.
    pub fn messages(&self) -> &[Message] {
        &self.doc.messages
    }

    /// How many messages there are.
    pub fn len(&self) -> usize {
        self.doc.messages.len()
    }

    /// Whether there are no messages.
    pub fn is_empty(&self) -> bool {
        self.doc.messages.is_empty()
    }

    /// The text of the last assistant message, if any.
    pub fn last_reply(&self) -> Option<&str> {
        self.doc
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .map(|m| m.content.as_str())
    }

    /// The id of the job that last saved this conversation, if it was saved from a handler.
    pub fn saved_by(&self) -> Option<&str> {
        self.doc.saved_by.as_deref()
    }

    /// Append a message (kept in memory until [`save`](Self::save)).
    pub fn push(&mut self, message: Message) {
        self.doc.messages.push(message);
        self.trim();
    }

    /// Drop every message (kept in memory until [`save`](Self::save)).
    pub fn clear(&mut self) {
        self.doc.messages.clear();
    }

    /// Write the conversation back, if nobody else wrote it since it was loaded or last saved.
    /// Records the running job's id (see [`saved_by`](Self::saved_by)).
    pub fn save(&mut self) -> Result<(), StateError> {
        self.save_inner(None)
    }

    /// Like [`save`](Self::save), and the conversation expires after `ttl` without a save.
    ///
    /// The compare-and-swap the host offers cannot set an expiry, so this checks that the
    /// conversation is unchanged and then writes it with the expiry; a writer that slips in
    /// between those two steps loses its turn.
    pub fn save_with_ttl(&mut self, ttl: Duration) -> Result<(), StateError> {
        self.save_inner(Some(ttl))
    }

    fn save_inner(&mut self, ttl: Option<Duration>) -> Result<(), StateError> {
        self.trim();
        self.doc.saved_by = crate::job::current_job_id();
        let text = encode(&self.key, &self.doc)?;
        let swapped = match ttl {
            None => compare_and_swap_raw(&self.key, self.loaded.as_deref(), &text)?,
            Some(ttl) => {
                let unchanged = get_raw(&self.key)? == self.loaded;
                if unchanged {
                    set_raw(&self.key, &text, Some(ttl))?;
                }
                unchanged
            }
        };
        if !swapped {
            return Err(StateError::Conflict(format!(
                "{} was changed by another job since it was loaded",
                self.key
            )));
        }
        self.loaded = Some(text);
        Ok(())
    }

    /// Delete the stored conversation; `true` when it existed.
    pub fn delete(self) -> Result<bool, StateError> {
        delete(&self.key)
    }

    fn trim(&mut self) {
        if let Some(n) = self.keep_last {
            let len = self.doc.messages.len();
            if len > n {
                self.doc.messages.drain(..len - n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_errors_classify() {
        for (e, retryable) in [
            (
                StateError::from(wit::StateError::Unavailable("db down".into())),
                true,
            ),
            (StateError::Conflict("k".into()), true),
            (
                StateError::from(wit::StateError::InvalidKey("".into())),
                false,
            ),
            (
                StateError::from(wit::StateError::TooLarge("2 MiB".into())),
                false,
            ),
            (StateError::Json("k: expected u64".into()), false),
        ] {
            assert_eq!(Error::from(e.clone()).is_retryable(), retryable, "{e:?}");
        }
        assert_eq!(
            Error::from(StateError::Unavailable("db down".into())).message(),
            "state store unavailable: db down"
        );
    }

    #[test]
    fn typed_values_round_trip() {
        assert_eq!(encode("k", &vec![1, 2]).unwrap(), "[1,2]");
        assert_eq!(decode::<Vec<u8>>("k", "[1,2]").unwrap(), vec![1, 2]);
        let err = decode::<u64>("counter", "\"x\"").unwrap_err();
        assert!(
            matches!(&err, StateError::Json(m) if m.starts_with("counter: ")),
            "{err:?}"
        );
    }

    #[test]
    fn conversation_trims_to_the_last_n() {
        let mut conv = Conversation::new("c1");
        assert_eq!(conv.key(), "conversation/c1");
        assert!(conv.is_empty());
        for i in 0..5 {
            conv.push(Message::user(format!("q{i}")));
            conv.push(Message::assistant(format!("a{i}")));
        }
        assert_eq!(conv.len(), 10);
        let mut conv = conv.keep_last(4);
        assert_eq!(conv.messages().first().unwrap().content, "q3");
        conv.push(Message::user("q5"));
        assert_eq!(conv.len(), 4);
        assert_eq!(conv.messages()[0].content, "a3");
        assert_eq!(conv.last_reply(), Some("a4"));
        conv.clear();
        assert_eq!(conv.last_reply(), None);
    }

    #[test]
    fn conversation_document_format() {
        let doc = ConversationDoc {
            messages: vec![Message::user("hi")],
            saved_by: Some("job-1".into()),
        };
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(
            text,
            r#"{"messages":[{"role":"user","content":"hi"}],"saved_by":"job-1"}"#
        );
        let old: ConversationDoc = serde_json::from_str(r#"{"messages":[]}"#).unwrap();
        assert_eq!(old.saved_by, None);
    }
}
