//! A host-less test double, so a handler can be tested with `cargo test` on the build machine.
//!
//! Enable the `testing` feature in `[dev-dependencies]` and run handler code inside
//! [`FakeHost::run`]: model calls get scripted replies (per model alias; an unscripted model is
//! an `invalid request` error, as an unknown alias is on a real host), state and effects live
//! in memory with the host's key rules, and events, reported costs and calls are recorded for
//! the test to check.
//!
//! ```ignore
//! use sluice_sdk::testing::FakeHost;
//!
//! let host = FakeHost::new().reply("fast", r#"{"label": "bug", "confidence": 0.9}"#);
//! let out = host.run(|| handle(&Job::new("j1"), input)).unwrap();
//! assert_eq!(host.calls()[0].model, "fast");
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use crate::events::Level;
use crate::models::{Message, ModelError};

/// The longest key the host accepts, in bytes.
const MAX_KEY_BYTES: usize = 512;

/// A model call the handler made.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The alias or `provider/model` asked for.
    pub model: String,
    /// The conversation sent.
    pub messages: Vec<Message>,
    /// Whether JSON mode was asked for.
    pub json: bool,
    /// The token limit, if any.
    pub max_tokens: Option<u32>,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `events::progress`.
    Progress(String, Option<f32>),
    /// `events::log` and its shorthands.
    Log(Level, String, Vec<(String, String)>),
}

enum Reply {
    Text(String),
    Fail(ModelError),
}

#[derive(Default)]
struct Inner {
    replies: HashMap<String, VecDeque<Reply>>,
    calls: Vec<Call>,
    state: BTreeMap<String, String>,
    effects: BTreeMap<String, String>,
    events: Vec<Event>,
    costs: Vec<(String, u64)>,
    budget: Option<u64>,
    spent: u64,
    tokens: (u64, u64),
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<RefCell<Inner>>>> = const { RefCell::new(None) };
}

/// A fake Sluice host; see the [module docs](self).
#[derive(Clone, Default)]
pub struct FakeHost {
    inner: Rc<RefCell<Inner>>,
}

impl FakeHost {
    /// A host with no replies, empty state and no budget.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reply `content` to the next call to `model`. Several replies for one model are used in
    /// order; the last one repeats.
    pub fn reply(self, model: &str, content: impl Into<String>) -> Self {
        self.push(model, Reply::Text(content.into()))
    }

    /// Fail the next call to `model` with `error` (for example
    /// `ModelError::Unavailable("down".into())`, which the SDK treats as retryable).
    pub fn fail(self, model: &str, error: ModelError) -> Self {
        self.push(model, Reply::Fail(error))
    }

    fn push(self, model: &str, reply: Reply) -> Self {
        self.inner
            .borrow_mut()
            .replies
            .entry(model.to_owned())
            .or_default()
            .push_back(reply);
        self
    }

    /// A hard budget of `micros` µ$ left: reported costs beyond it are refused.
    pub fn budget(self, micros: u64) -> Self {
        self.inner.borrow_mut().budget = Some(micros);
        self
    }

    /// A state key present before the handler runs (`value` is JSON text).
    pub fn with_state(self, key: &str, value: &str) -> Self {
        self.inner
            .borrow_mut()
            .state
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// An effect already committed by an "earlier attempt", with its recorded result.
    pub fn with_effect(self, key: &str, outcome: &str) -> Self {
        self.inner
            .borrow_mut()
            .effects
            .insert(key.to_owned(), outcome.to_owned());
        self
    }

    /// Run `f` with this host serving every SDK call made on this thread.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Restore(Option<Rc<RefCell<Inner>>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| *c.borrow_mut() = self.0.take());
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(self.inner.clone())));
        f()
    }

    /// The model calls made, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.borrow().calls.clone()
    }

    /// Every event, in order.
    pub fn events(&self) -> Vec<Event> {
        self.inner.borrow().events.clone()
    }

    /// The messages of the log lines, in order.
    pub fn logs(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Log(_, m, _) => Some(m),
                Event::Progress(..) => None,
            })
            .collect()
    }

    /// A state key's value (JSON text) now.
    pub fn state(&self, key: &str) -> Option<String> {
        self.inner.borrow().state.get(key).cloned()
    }

    /// The committed effects: key → recorded result.
    pub fn effects(&self) -> BTreeMap<String, String> {
        self.inner.borrow().effects.clone()
    }

    /// The costs reported with `usage::report_cost` and accepted.
    pub fn costs(&self) -> Vec<(String, u64)> {
        self.inner.borrow().costs.clone()
    }
}

fn with<T>(f: impl FnOnce(&mut Inner) -> T) -> T {
    let inner = CURRENT.with(|c| c.borrow().clone()).expect(
        "a Sluice host call outside a host: run the handler inside `FakeHost::run` in tests",
    );
    let mut inner = inner.borrow_mut();
    f(&mut inner)
}

fn bad_key(key: &str) -> Option<String> {
    (key.is_empty() || key.len() > MAX_KEY_BYTES)
        .then(|| format!("keys are 1 to {MAX_KEY_BYTES} bytes, got {}", key.len()))
}

/// The host's functions, with the generated bindings' names and signatures.
#[allow(missing_docs)]
pub(crate) mod host {
    pub mod models {
        pub use crate::bindings::sluice::plugin::models::*;

        use super::super::{Call, Reply, with};

        pub fn chat(request: &ChatRequest) -> Result<ChatResponse, ModelError> {
            with(|h| {
                h.calls.push(Call {
                    model: request.model.clone(),
                    messages: request
                        .messages
                        .iter()
                        .map(|m| crate::models::Message {
                            role: match m.role {
                                Role::System => crate::models::Role::System,
                                Role::User => crate::models::Role::User,
                                Role::Assistant => crate::models::Role::Assistant,
                            },
                            content: m.content.clone(),
                        })
                        .collect(),
                    json: request.response_format == ResponseFormat::Json,
                    max_tokens: request.max_tokens,
                });
                let queue = h.replies.get_mut(&request.model);
                let reply = match queue {
                    Some(q) if q.len() > 1 => q.pop_front(),
                    Some(q) => q.front().map(|r| match r {
                        Reply::Text(t) => Reply::Text(t.clone()),
                        Reply::Fail(e) => Reply::Fail(e.clone()),
                    }),
                    None => None,
                };
                match reply {
                    None => Err(ModelError::InvalidRequest(format!(
                        "no reply scripted for model {:?} (FakeHost::reply)",
                        request.model
                    ))),
                    Some(Reply::Fail(e)) => Err(to_wit(e)),
                    Some(Reply::Text(content)) => {
                        let input = request
                            .messages
                            .iter()
                            .map(|m| m.content.len() as u32 / 4 + 1)
                            .sum::<u32>();
                        let output = content.len() as u32 / 4 + 1;
                        h.tokens.0 += u64::from(input);
                        h.tokens.1 += u64::from(output);
                        h.spent += 1;
                        Ok(ChatResponse {
                            content,
                            model: request.model.clone(),
                            provider: "fake".into(),
                            usage: Usage {
                                input_tokens: input,
                                output_tokens: output,
                                cached_input_tokens: 0,
                            },
                            cost_micros: 1,
                            latency_ms: 0,
                            source: ResponseSource::Provider,
                            finish_reason: "stop".into(),
                        })
                    }
                }
            })
        }

        fn to_wit(e: crate::models::ModelError) -> ModelError {
            use crate::models::ModelError as E;
            match e {
                E::BudgetExceeded(m) => ModelError::BudgetExceeded(m),
                E::RateLimited {
                    message,
                    retry_after,
                } => ModelError::RateLimited(RateLimited {
                    message,
                    retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
                }),
                E::Unavailable(m) => ModelError::Unavailable(m),
                E::InvalidRequest(m) => ModelError::InvalidRequest(m),
                E::Timeout(m) => ModelError::Timeout(m),
                E::ContentFiltered(m) => ModelError::ContentFiltered(m),
            }
        }

        pub fn chat_batch(requests: &[ChatRequest]) -> Vec<Result<ChatResponse, ModelError>> {
            requests.iter().map(chat).collect()
        }

        pub fn embed(request: &EmbedRequest) -> Result<EmbedResponse, ModelError> {
            Ok(EmbedResponse {
                vectors: request
                    .inputs
                    .iter()
                    .map(|t| vec![t.len() as f32, 1.0])
                    .collect(),
                model: request.model.clone(),
                provider: "fake".into(),
                usage: Usage {
                    input_tokens: 0,
                    output_tokens: 0,
                    cached_input_tokens: 0,
                },
                cost_micros: 0,
                source: ResponseSource::Provider,
            })
        }
    }

    pub mod state {
        pub use crate::bindings::sluice::plugin::state::*;

        use super::super::{bad_key, with};

        fn check(key: &str) -> Result<(), StateError> {
            bad_key(key).map_or(Ok(()), |m| Err(StateError::InvalidKey(m)))
        }

        pub fn get(key: &str) -> Result<Option<String>, StateError> {
            check(key)?;
            Ok(with(|h| h.state.get(key).cloned()))
        }

        pub fn set(key: &str, value: &str, _ttl_ms: Option<u64>) -> Result<(), StateError> {
            check(key)?;
            with(|h| h.state.insert(key.to_owned(), value.to_owned()));
            Ok(())
        }

        pub fn delete(key: &str) -> Result<bool, StateError> {
            check(key)?;
            Ok(with(|h| h.state.remove(key).is_some()))
        }

        pub fn list_keys(prefix: &str, limit: u32) -> Result<Vec<String>, StateError> {
            Ok(with(|h| {
                h.state
                    .keys()
                    .filter(|k| k.starts_with(prefix))
                    .take(limit as usize)
                    .cloned()
                    .collect()
            }))
        }

        pub fn compare_and_swap(
            key: &str,
            expected: Option<&str>,
            value: &str,
        ) -> Result<bool, StateError> {
            check(key)?;
            Ok(with(|h| {
                if h.state.get(key).map(String::as_str) != expected {
                    return false;
                }
                h.state.insert(key.to_owned(), value.to_owned());
                true
            }))
        }
    }

    pub mod effects {
        pub use crate::bindings::sluice::plugin::effects::*;

        use super::super::{bad_key, with};

        pub fn begin(key: &str) -> Result<EffectStatus, EffectError> {
            if let Some(m) = bad_key(key) {
                return Err(EffectError::InvalidKey(m));
            }
            Ok(with(|h| match h.effects.get(key) {
                Some(v) => EffectStatus::Committed(v.clone()),
                None => EffectStatus::Pending,
            }))
        }

        pub fn commit(key: &str, outcome: &str) -> Result<(), EffectError> {
            if let Some(m) = bad_key(key) {
                return Err(EffectError::InvalidKey(m));
            }
            with(|h| {
                h.effects
                    .entry(key.to_owned())
                    .or_insert_with(|| outcome.to_owned());
            });
            Ok(())
        }
    }

    pub mod events {
        pub use crate::bindings::sluice::plugin::events::*;

        use super::super::{Event, with};

        pub fn progress(message: &str, fraction: Option<f32>) {
            with(|h| h.events.push(Event::Progress(message.to_owned(), fraction)));
        }

        pub fn log(level: Level, message: &str, fields: &[(String, String)]) {
            let level = match level {
                Level::Trace => crate::events::Level::Trace,
                Level::Debug => crate::events::Level::Debug,
                Level::Info => crate::events::Level::Info,
                Level::Warn => crate::events::Level::Warn,
                Level::Error => crate::events::Level::Error,
            };
            with(|h| {
                h.events
                    .push(Event::Log(level, message.to_owned(), fields.to_vec()))
            });
        }
    }

    pub mod usage {
        pub use crate::bindings::sluice::plugin::usage::*;

        use super::super::with;

        pub fn report_cost(description: &str, cost_micros: u64) -> Result<(), String> {
            with(|h| {
                if let Some(left) = h.budget {
                    if cost_micros > left {
                        return Err(format!("{left} µ$ left"));
                    }
                    h.budget = Some(left - cost_micros);
                }
                h.costs.push((description.to_owned(), cost_micros));
                h.spent += cost_micros;
                Ok(())
            })
        }

        pub fn job_spend() -> Spend {
            with(|h| Spend {
                cost_micros: h.spent,
                input_tokens: h.tokens.0,
                output_tokens: h.tokens.1,
                calls: h.calls.len() as u32,
            })
        }

        pub fn budget_remaining() -> Option<u64> {
            with(|h| h.budget)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, effects, events, models, state, usage};

    #[test]
    fn scripted_replies_state_effects_events_and_costs() {
        let host = FakeHost::new()
            .reply("fast", "one")
            .reply("fast", "two")
            .fail("smart", ModelError::Unavailable("down".into()))
            .budget(10);
        host.run(|| {
            assert_eq!(
                models::chat("fast").user("a").send().unwrap().content,
                "one"
            );
            assert_eq!(
                models::chat("fast").user("b").send().unwrap().content,
                "two"
            );
            // The last reply repeats.
            assert_eq!(models::chat("fast").send().unwrap().content, "two");
            let e = Error::from(models::chat("smart").send().unwrap_err());
            assert!(e.is_retryable());
            let e = Error::from(models::chat("other").send().unwrap_err());
            assert!(
                !e.is_retryable(),
                "an unscripted model is an invalid request"
            );

            state::set("k", &41).unwrap();
            let n: u64 = state::get("k").unwrap().unwrap();
            assert_eq!(n, 41);
            assert!(state::get_raw("").is_err());
            let mut runs = 0;
            for _ in 0..2 {
                let r: String = effects::once("send", || {
                    runs += 1;
                    Ok("sent".to_string())
                })
                .unwrap();
                assert_eq!(r, "sent");
            }
            assert_eq!(runs, 1, "an effect runs once per job");
            events::progress("half", Some(0.5));
            events::info("hello");
            usage::report_cost("api", 4).unwrap();
            assert!(usage::report_cost("api", 7).is_err(), "past the budget");
            assert_eq!(usage::budget_remaining(), Some(6));
        });
        assert_eq!(host.calls().len(), 5);
        assert_eq!(host.calls()[0].messages, vec![Message::user("a")]);
        assert_eq!(host.state("k").as_deref(), Some("41"));
        assert_eq!(
            host.effects().get("send").map(String::as_str),
            Some("\"sent\"")
        );
        assert_eq!(host.logs(), vec!["hello".to_string()]);
        assert_eq!(host.costs(), vec![("api".to_string(), 4)]);
    }

    #[test]
    #[should_panic(expected = "outside a host")]
    fn a_call_outside_run_says_what_to_do() {
        let _ = state::get_raw("k");
    }
}
