//! In-memory backends: enough to run a job with no database and no provider (`sluice run`,
//! engine tests). A node wires the real store and gateway instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sluice_types::backend::Spend;
use sluice_types::model::{
    ChatRequest, ChatResponse, EmbedRequest, EmbedResponse, ModelError, ResponseFormat,
    ResponseSource, Role, Usage,
};
use sluice_types::{
    CallContext, EffectError, EffectsBackend, EventSink, HostServices, JobEvent, ModelBackend,
    StateBackend, StateError, StateScope, UsageBackend,
};
use uuid::Uuid;

/// Largest state value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

fn check_key(key: &str) -> Result<(), StateError> {
    sluice_types::backend::check_state_key(key)
}

fn check_value(value: &str) -> Result<(), StateError> {
    sluice_types::backend::check_state_value(value, MAX_VALUE_BYTES)
}

type StateMap = HashMap<StateScope, BTreeMap<String, (String, Option<Instant>)>>;

/// Key/value state in a map, with TTLs.
#[derive(Default)]
pub struct MemoryState {
    map: Mutex<StateMap>,
}

fn live(entry: &(String, Option<Instant>)) -> bool {
    entry.1.is_none_or(|exp| exp > Instant::now())
}

#[async_trait]
impl StateBackend for MemoryState {
    async fn get(&self, scope: &StateScope, key: &str) -> Result<Option<String>, StateError> {
        check_key(key)?;
        let map = self.map.lock().expect("state poisoned");
        Ok(map
            .get(scope)
            .and_then(|m| m.get(key))
            .filter(|e| live(e))
            .map(|e| e.0.clone()))
    }

    async fn set(
        &self,
        scope: &StateScope,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        check_key(key)?;
        check_value(value)?;
        let expires = ttl.map(|t| Instant::now() + t);
        let mut map = self.map.lock().expect("state poisoned");
        map.entry(scope.clone())
            .or_default()
            .insert(key.to_string(), (value.to_string(), expires));
        Ok(())
    }

    async fn delete(&self, scope: &StateScope, key: &str) -> Result<bool, StateError> {
        check_key(key)?;
        let mut map = self.map.lock().expect("state poisoned");
        Ok(map
            .get_mut(scope)
            .and_then(|m| m.remove(key))
            .is_some_and(|e| live(&e)))
    }

    async fn list_keys(
        &self,
        scope: &StateScope,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, StateError> {
        let map = self.map.lock().expect("state poisoned");
        Ok(map
            .get(scope)
            .map(|m| {
                m.range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .filter(|(_, e)| live(e))
                    .take(limit as usize)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn compare_and_swap(
        &self,
        scope: &StateScope,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StateError> {
        check_key(key)?;
        check_value(value)?;
        let mut map = self.map.lock().expect("state poisoned");
        let m = map.entry(scope.clone()).or_default();
        let current = m.get(key).filter(|e| live(e)).map(|e| e.0.as_str());
        if current != expected {
            return Ok(false);
        }
        m.insert(key.to_string(), (value.to_string(), None));
        Ok(true)
    }
}

/// Effect results in a map.
#[derive(Default)]
pub struct MemoryEffects {
    map: Mutex<HashMap<(Uuid, String), String>>,
}

#[async_trait]
impl EffectsBackend for MemoryEffects {
    async fn lookup(&self, job: Uuid, key: &str) -> Result<Option<String>, EffectError> {
        sluice_types::backend::check_effect_key(key)?;
        Ok(self
            .map
            .lock()
            .expect("effects poisoned")
            .get(&(job, key.to_string()))
            .cloned())
    }

    async fn commit(&self, job: Uuid, key: &str, result: &str) -> Result<(), EffectError> {
        sluice_types::backend::check_effect_key(key)?;
        self.map
            .lock()
            .expect("effects poisoned")
            .entry((job, key.to_string()))
            .or_insert_with(|| result.to_string());
        Ok(())
    }
}

/// Spend per job, without budgets.
#[derive(Default)]
pub struct MemoryUsage {
    spend: Mutex<HashMap<Uuid, Spend>>,
}

impl MemoryUsage {
    /// Add a model call's usage to a job's spend.
    pub fn record(&self, job: Uuid, usage: Usage, cost_micros: u64) {
        let mut map = self.spend.lock().expect("usage poisoned");
        // Saturating, not `Spend::add_call`'s `+=`: an overflow under the lock would panic
        // (debug) and poison it for every later job, or wrap (release).
        let spend = map.entry(job).or_default();
        spend.cost_micros = spend.cost_micros.saturating_add(cost_micros);
        spend.input_tokens = spend
            .input_tokens
            .saturating_add(u64::from(usage.input_tokens));
        spend.output_tokens = spend
            .output_tokens
            .saturating_add(u64::from(usage.output_tokens));
        spend.calls = spend.calls.saturating_add(1);
    }

    /// A job's spend so far.
    pub fn spend(&self, job: Uuid) -> Spend {
        self.spend
            .lock()
            .expect("usage poisoned")
            .get(&job)
            .copied()
            .unwrap_or_default()
    }
}

#[async_trait]
impl UsageBackend for MemoryUsage {
    async fn report_cost(
        &self,
        ctx: &CallContext,
        _description: &str,
        cost_micros: u64,
    ) -> Result<(), String> {
        let mut map = self.spend.lock().expect("usage poisoned");
        let spend = map.entry(ctx.job.id).or_default();
        spend.cost_micros = spend.cost_micros.saturating_add(cost_micros);
        Ok(())
    }

    async fn job_spend(&self, ctx: &CallContext) -> Spend {
        self.spend(ctx.job.id)
    }

    async fn budget_remaining(&self, _ctx: &CallContext) -> Option<u64> {
        None
    }
}

/// Keeps every event in order (and logs it at debug level).
#[derive(Default)]
pub struct RecordedEvents {
    events: Mutex<Vec<(Uuid, JobEvent)>>,
}

impl RecordedEvents {
    /// The events of `job`, in order.
    pub fn of(&self, job: Uuid) -> Vec<JobEvent> {
        let events = self.events.lock().expect("events poisoned");
        events
            .iter()
            .filter(|(j, _)| *j == job)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

impl EventSink for RecordedEvents {
    fn emit(&self, job: Uuid, event: JobEvent) {
        tracing::debug!(%job, ?event, "job event");
        self.events
            .lock()
            .expect("events poisoned")
            .push((job, event));
    }
}

/// A deterministic in-process model: plausible text built from the prompt, exact token
/// counts (one token per four bytes, rounded up, plus four per message), and a price table.
/// Aliases `fast`, `smart` and `embed`, or `sim/<model>`.
pub struct SimulatedModels {
    usage: Arc<MemoryUsage>,
    latency: Duration,
}

/// Prices in micro-dollars per million tokens: (input, output).
fn price(model: &str) -> (u64, u64) {
    match model {
        "sim-smart" => (2_500_000, 10_000_000),
        "sim-embed" => (20_000, 0),
        _ => (150_000, 600_000),
    }
}

/// Token count the simulator charges for `text`.
pub fn count_tokens(text: &str) -> u32 {
    text.len().div_ceil(4) as u32
}

impl SimulatedModels {
    /// A simulator recording spend into `usage`, answering after `latency`.
    pub fn new(usage: Arc<MemoryUsage>, latency: Duration) -> Self {
        SimulatedModels { usage, latency }
    }

    fn resolve(name: &str) -> Result<&'static str, ModelError> {
        match name {
            "fast" | "sim/sim-fast" => Ok("sim-fast"),
            "smart" | "sim/sim-smart" => Ok("sim-smart"),
            "embed" | "sim/sim-embed" => Ok("sim-embed"),
            other => Err(ModelError::invalid(format!(
                "unknown model or alias `{other}` (known: fast, smart, embed)"
            ))),
        }
    }
}

fn reply_text(request: &ChatRequest, budget: u32) -> String {
    let prompt = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .unwrap_or_default();
    if request.response_format == ResponseFormat::Json {
        // Pick the first quoted or comma-separated label the prompt offers, if any.
        let label = prompt
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Labels:")
                    .or_else(|| l.trim().strip_prefix("labels:"))
            })
            .and_then(|l| l.split(',').next())
            .map(|l| l.trim().trim_matches('"').to_string())
            .unwrap_or_else(|| "other".into());
        let seed = Sha256::digest(prompt.as_bytes())[0];
        let confidence = 0.5 + f64::from(seed % 50) / 100.0;
        return serde_json::json!({ "label": label, "confidence": confidence }).to_string();
    }
    // "Summarise" by keeping every few words of the prompt, up to the token budget.
    let words: Vec<&str> = prompt.split_whitespace().collect();
    let step = (words.len() / 40).max(1);
    let mut out = String::new();
    for w in words.iter().step_by(step) {
        if count_tokens(&out) + count_tokens(w) + 1 > budget {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    if out.is_empty() {
        "(empty)".into()
    } else {
        out
    }
}

#[async_trait]
impl ModelBackend for SimulatedModels {
    async fn chat(
        &self,
        ctx: &CallContext,
        _seq: u32,
        request: ChatRequest,
    ) -> Result<ChatResponse, ModelError> {
        let started = Instant::now();
        let model = Self::resolve(&request.model)?;
        if model == "sim-embed" {
            return Err(ModelError::invalid(
                "`embed` is an embedding model; use embed()",
            ));
        }
        if request.messages.is_empty() {
            return Err(ModelError::invalid(
                "a chat request needs at least one message",
            ));
        }
        let input_tokens: u32 = request
            .messages
            .iter()
            .map(|m| count_tokens(&m.content) + 4)
            .sum();
        let budget = request.max_tokens.unwrap_or(256).max(1);
        let content = reply_text(&request, budget);
        let output_tokens = count_tokens(&content).min(budget);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let (pin, pout) = price(model);
        let cost = (u64::from(input_tokens) * pin + u64::from(output_tokens) * pout) / 1_000_000;
        let usage = Usage {
            input_tokens,
            output_tokens,
            cached_input_tokens: 0,
        };
        self.usage.record(ctx.job.id, usage, cost);
        Ok(ChatResponse {
            content,
            model: model.to_string(),
            provider: "sim".into(),
            usage,
            cost_micros: cost,
            latency_ms: started.elapsed().as_millis() as u32,
            source: ResponseSource::Provider,
            finish_reason: "stop".into(),
        })
    }

    async fn embed(
        &self,
        ctx: &CallContext,
        _seq: u32,
        request: EmbedRequest,
    ) -> Result<EmbedResponse, ModelError> {
        let model = Self::resolve(&request.model)?;
        if model != "sim-embed" {
            return Err(ModelError::invalid(format!(
                "`{}` is not an embedding model",
                request.model
            )));
        }
        let vectors = request
            .inputs
            .iter()
            .map(|t| {
                Sha256::digest(t.as_bytes())
                    .iter()
                    .map(|b| f32::from(*b) / 255.0)
                    .collect()
            })
            .collect();
        let input_tokens: u32 = request.inputs.iter().map(|t| count_tokens(t)).sum();
        let cost = u64::from(input_tokens) * price(model).0 / 1_000_000;
        let usage = Usage {
            input_tokens,
            output_tokens: 0,
            cached_input_tokens: 0,
        };
        self.usage.record(ctx.job.id, usage, cost);
        Ok(EmbedResponse {
            vectors,
            model: model.into(),
            provider: "sim".into(),
            usage,
            cost_micros: cost,
            source: ResponseSource::Provider,
        })
    }
}

/// A full set of in-memory backends with the simulated model and no latency.
pub fn services() -> HostServices {
    services_with(Arc::new(RecordedEvents::default()), Duration::ZERO)
}

/// In-memory backends publishing events to `events`, with simulated model latency.
pub fn services_with(events: Arc<dyn EventSink>, latency: Duration) -> HostServices {
    let usage = Arc::new(MemoryUsage::default());
    HostServices {
        models: Arc::new(SimulatedModels::new(usage.clone(), latency)),
        state: Arc::new(MemoryState::default()),
        effects: Arc::new(MemoryEffects::default()),
        usage,
        events,
    }
}
