//! The scenario file (`examples/loadtest/*.toml`): what to submit, when, against which
//! simulated provider behaviour, and the SLOs the run must meet.
//!
//! Strict like the configuration: unknown keys are errors, and every number that sizes
//! memory or time has a named bound checked before the run starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Jobs one scenario may submit: the driver keeps one id per accepted job in memory.
pub const MAX_JOBS: u64 = 1_000_000;
/// Longest arrival phase.
pub const MAX_DURATION: Duration = Duration::from_secs(6 * 3600);
/// Longest drain after the arrivals.
pub const MAX_DRAIN: Duration = Duration::from_secs(6 * 3600);
/// Largest `{{text}}` of a templated input, in words.
pub const MAX_TEMPLATE_WORDS: u32 = 100_000;
/// Lines read from an input JSONL file.
pub const MAX_JSONL_LINES: usize = 100_000;
/// Bytes of an input JSONL file.
pub const MAX_JSONL_BYTES: u64 = 64 << 20;
/// Distinct users or features to spread jobs over.
pub const MAX_TAG_VALUES: usize = 10_000;
/// Windows in the provider timeline.
pub const MAX_TIMELINE: usize = 100;
/// Bytes of the scenario file itself.
pub const MAX_SCENARIO_BYTES: u64 = 1 << 20;

/// Why a scenario cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML of this schema, or a value out of its bounds.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// A parsed, checked scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, shown in the report.
    pub name: String,
    /// What it checks, in a sentence or two.
    #[serde(default)]
    pub description: String,
    /// How long jobs keep arriving (`"60s"`, `"2m"`).
    #[serde(with = "human")]
    pub duration: Duration,
    /// Seed for inputs, tags and (in-process) the simulated providers.
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// The plugin to run.
    pub plugin: PluginSpec,
    /// The jobs' inputs.
    pub input: InputSpec,
    /// When jobs arrive.
    pub arrival: Arrival,
    /// Tags to spread cost over.
    #[serde(default)]
    pub tags: TagSpec,
    /// The simulated providers by name (`sim`, `sim-b`).
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSpec>,
    /// Changes to a provider's behaviour during the run.
    #[serde(default)]
    pub timeline: Vec<Window>,
    /// The in-process node.
    #[serde(default)]
    pub node: NodeSpec,
    /// After the arrivals.
    #[serde(default)]
    pub drain: Drain,
    /// The cost the run is expected to have.
    #[serde(default)]
    pub projection: Option<Projection>,
    /// What the run must meet; a missed one makes the exit code non-zero.
    #[serde(default)]
    pub slo: Slo,
    /// Where the file was (inputs and plugin paths are relative to it).
    #[serde(skip)]
    pub dir: PathBuf,
}

fn d_seed() -> u64 {
    1
}

/// The plugin: a directory built as `sluice run` builds it (or a `.wasm`), or a name already
/// deployed on the target server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// A plugin directory or component, relative to the scenario file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The name it runs under; with no `path`, a plugin already deployed.
    #[serde(default)]
    pub name: Option<String>,
    /// Each job's attempt timeout, ms (default: the plugin's).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Each job's attempts (default: the plugin's).
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// Where inputs come from: exactly one of `json`, `jsonl`, `template`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The same input for every job.
    #[serde(default)]
    pub json: Option<serde_json::Value>,
    /// A JSONL file (relative to the scenario), one input per line, used in turn.
    #[serde(default)]
    pub jsonl: Option<PathBuf>,
    /// JSON text with `{{seq}}` (the job's number), `{{user}}`, `{{feature}}` and `{{text}}`
    /// (generated words, already escaped for a JSON string).
    #[serde(default)]
    pub template: Option<String>,
    /// Words in `{{text}}`: a number, or `[min, max]` drawn uniformly per job.
    #[serde(default)]
    pub words: Option<Words>,
}

/// A size in words.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Words {
    /// Always this many.
    Fixed(u32),
    /// Uniform in `[min, max]`.
    Range([u32; 2]),
}

/// When jobs arrive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "pattern", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Arrival {
    /// `rate` jobs per second for the whole duration.
    Constant {
        /// Jobs per second.
        rate: f64,
    },
    /// From `from` to `to` jobs per second, linearly over the duration.
    Ramp {
        /// Jobs per second at the start.
        from: f64,
        /// Jobs per second at the end.
        to: f64,
    },
    /// `jobs` jobs spread evenly over `over` starting at `at`, on top of `base_rate`.
    Burst {
        /// Jobs in the burst.
        jobs: u64,
        /// Offset of the burst from the start.
        #[serde(default, with = "human")]
        at: Duration,
        /// How long the burst lasts (`"0s"`: all at once, as fast as they can be sent).
        #[serde(with = "human")]
        over: Duration,
        /// Jobs per second for the whole duration besides the burst.
        #[serde(default)]
        base_rate: f64,
    },
    /// `multiplier` times the volume expected in production.
    Expected {
        /// Jobs per minute expected on a normal busy day.
        per_minute: f64,
        /// How many times that to send (the rule: 2 to 3).
        multiplier: f64,
    },
}

/// Tags put on the jobs, each job's values drawn from these.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagSpec {
    /// Users `user-0001` … `user-N`.
    #[serde(default)]
    pub users: Option<usize>,
    /// Features, drawn uniformly.
    #[serde(default)]
    pub features: Vec<String>,
}

/// A simulated provider: its behaviour at the start, and what Sluice is told of its limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Time to first token, ms.
    #[serde(default)]
    pub ttft_ms: Option<u64>,
    /// Output tokens per second (0: instant).
    #[serde(default)]
    pub tokens_per_sec: Option<u32>,
    /// Requests per minute the provider accepts (429 past it).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute the provider accepts.
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Fraction of requests answered 500.
    #[serde(default)]
    pub error_rate: f64,
    /// Requests per minute Sluice is configured with (default: `rpm`).
    #[serde(default)]
    pub sluice_rpm: Option<u32>,
    /// Tokens per minute Sluice is configured with (default: `tpm`).
    #[serde(default)]
    pub sluice_tpm: Option<u32>,
    /// Against a running server (`--url`): the simulator's admin URL
    /// (`http://HOST:PORT`, as `sluice sim-provider` serves it), to apply the error rate and
    /// the timeline through `PUT /admin/faults`.
    #[serde(default)]
    pub admin_url: Option<String>,
}

/// A window of changed provider behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// The provider.
    pub provider: String,
    /// Start, from the start of the run.
    #[serde(with = "human")]
    pub from: Duration,
    /// End, from the start of the run.
    #[serde(with = "human")]
    pub until: Duration,
    /// Down: every request answered 503.
    #[serde(default)]
    pub outage: bool,
    /// Latency multiplied by this (5.0: a slow day).
    #[serde(default)]
    pub latency_factor: Option<f64>,
    /// Fraction of requests answered 500.
    #[serde(default)]
    pub error_rate: Option<f64>,
}

/// The in-process node's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Worker slots (jobs run at once).
    #[serde(default = "d_slots")]
    pub slots: u32,
}

impl Default for NodeSpec {
    fn default() -> Self {
        NodeSpec { slots: d_slots() }
    }
}

fn d_slots() -> u32 {
    crate::config::WorkerConfig::default().slots
}

/// What happens after the last arrival.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// How long to wait for every accepted job to finish.
    #[serde(default = "d_drain", with = "human")]
    pub timeout: Duration,
    /// Cancel the jobs still unfinished then (reported as `unfinished`), so the store is
    /// left quiet and every accepted job accounted for.
    #[serde(default = "d_true")]
    pub cancel_unfinished: bool,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            timeout: d_drain(),
            cancel_unfinished: true,
        }
    }
}

fn d_drain() -> Duration {
    Duration::from_secs(120)
}

fn d_true() -> bool {
    true
}

/// The cost the run is expected to have.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Projection {
    /// US dollars per completed job.
    #[serde(default)]
    pub cost_per_job_usd: Option<f64>,
    /// US dollars for the whole run.
    #[serde(default)]
    pub total_usd: Option<f64>,
}

/// Service-level objectives; each one set is checked. Lost jobs are always checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// Completed jobs' 95th percentile, accepted → finished, ms.
    #[serde(default)]
    pub p95_latency_ms: Option<f64>,
    /// Completed jobs' 99th percentile, ms.
    #[serde(default)]
    pub p99_latency_ms: Option<f64>,
    /// Dead jobs over accepted jobs.
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// Accepted jobs that never reached a terminal state (default and at most: 0).
    #[serde(default)]
    pub max_lost: u64,
    /// Cost per completed job, US dollars.
    #[serde(default)]
    pub max_cost_per_job_usd: Option<f64>,
    /// Provider attempts per model call (1.0: no retry at all).
    #[serde(default)]
    pub max_retry_amplification: Option<f64>,
    /// Jobs still unfinished at the drain deadline.
    #[serde(default)]
    pub max_unfinished: Option<u64>,
    /// Submissions the server refused.
    #[serde(default)]
    pub max_rejected: Option<u64>,
    /// Completed jobs over accepted jobs.
    #[serde(default)]
    pub min_completed_fraction: Option<f64>,
}

/// Durations as `"250ms"`, `"60s"`, `"2m"`, `"1h"` (or a number of seconds).
pub mod human {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parse `"250ms"`, `"1.5s"`, `"2m"`, `"1h"`.
    pub fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (n, unit) = s.split_at(split);
        let n: f64 = n.parse().ok()?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "s" | "" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            _ => return None,
        };
        Duration::try_from_secs_f64(secs).ok()
    }

    /// Shown as whole milliseconds or seconds.
    pub fn show(d: Duration) -> String {
        if d.subsec_millis() != 0 || d.is_zero() {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}s", d.as_secs())
        }
    }

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&show(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(f64),
        }
        let bad = |what: &str| {
            serde::de::Error::custom(format!(
                "expected a duration such as \"500ms\", \"60s\" or \"2m\", not {what}"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Text(t) => parse(&t).ok_or_else(|| bad(&format!("{t:?}"))),
            Raw::Secs(n) => Duration::try_from_secs_f64(n).map_err(|_| bad(&n.to_string())),
        }
    }
}

impl Scenario {
    /// Read and check a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let read = |source| ScenarioError::Read {
            path: path.into(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        let invalid = |message: String| ScenarioError::Invalid {
            path: path.into(),
            message,
        };
        if len > MAX_SCENARIO_BYTES {
            return Err(invalid(format!(
                "the file is {len} bytes; a scenario is at most {MAX_SCENARIO_BYTES}"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let mut s: Scenario = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        s.dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        s.check().map_err(invalid)?;
        Ok(s)
    }

    /// A path from the scenario, relative to its file.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// The plugin's name on the server.
    pub fn plugin_name(&self) -> String {
        if let Some(n) = &self.plugin.name {
            return n.clone();
        }
        let path = self.plugin.path.as_deref().unwrap_or(Path::new("plugin"));
        let stem = if path.extension().is_some_and(|e| e == "wasm") {
            path.file_stem()
        } else {
            path.file_name()
        };
        stem.map(|s| s.to_string_lossy().replace('_', "-"))
            .unwrap_or_else(|| "plugin".into())
    }

    /// Jobs the arrival pattern submits.
    pub fn planned_jobs(&self) -> u64 {
        let d = self.duration.as_secs_f64();
        let n = match &self.arrival {
            Arrival::Constant { rate } => rate * d,
            Arrival::Ramp { from, to } => (from + to) / 2.0 * d,
            Arrival::Burst {
                jobs, base_rate, ..
            } => *jobs as f64 + base_rate * d,
            Arrival::Expected {
                per_minute,
                multiplier,
            } => per_minute * multiplier / 60.0 * d,
        };
        if n.is_finite() && n > 0.0 {
            n.floor() as u64
        } else {
            0
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return Err(format!(
                "duration: must be more than 0 and at most {}",
                human::show(MAX_DURATION)
            ));
        }
        if self.drain.timeout > MAX_DRAIN {
            return Err(format!("drain.timeout: at most {}", human::show(MAX_DRAIN)));
        }
        match (&self.plugin.path, &self.plugin.name) {
            (None, None) => return Err("plugin: set `path` (a plugin directory) or `name`".into()),
            (_, Some(n)) if n.is_empty() || n.len() > 128 => {
                return Err("plugin.name: 1 to 128 characters".into());
            }
            _ => {}
        }
        let rate_ok = |r: f64| r.is_finite() && r >= 0.0;
        match &self.arrival {
            Arrival::Constant { rate } if !(rate_ok(*rate) && *rate > 0.0) => {
                return Err("arrival.rate: a positive number of jobs per second".into());
            }
            Arrival::Ramp { from, to } if !(rate_ok(*from) && rate_ok(*to) && from + to > 0.0) => {
                return Err("arrival.from / arrival.to: non-negative rates, not both 0".into());
            }
            Arrival::Burst {
                at,
                over,
                base_rate,
                ..
            } => {
                if !rate_ok(*base_rate) {
                    return Err("arrival.base_rate: a non-negative rate".into());
                }
                if *at + *over > self.duration {
                    return Err(
                        "arrival: the burst (`at` + `over`) must end within `duration`".into(),
                    );
                }
            }
            Arrival::Expected {
                per_minute,
                multiplier,
            } if !(rate_ok(*per_minute)
                && *per_minute > 0.0
                && rate_ok(*multiplier)
                && *multiplier > 0.0) =>
            {
                return Err("arrival.per_minute / arrival.multiplier: positive numbers".into());
            }
            _ => {}
        }
        let jobs = self.planned_jobs();
        if jobs == 0 {
            return Err("arrival: the pattern submits no job in `duration`".into());
        }
        if jobs > MAX_JOBS {
            return Err(format!(
                "arrival: {jobs} jobs planned; a run submits at most {MAX_JOBS}"
            ));
        }
        let i = &self.input;
        let given = [i.json.is_some(), i.jsonl.is_some(), i.template.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err("input: set exactly one of `json`, `jsonl`, `template`".into());
        }
        if let Some(w) = i.words {
            let (lo, hi) = match w {
                Words::Fixed(n) => (n, n),
                Words::Range([a, b]) => (a, b),
            };
            if lo > hi || hi > MAX_TEMPLATE_WORDS {
                return Err(format!(
                    "input.words: a number or [min, max] with min <= max <= {MAX_TEMPLATE_WORDS}"
                ));
            }
        }
        if let Some(u) = self.tags.users
            && (u == 0 || u > MAX_TAG_VALUES)
        {
            return Err(format!("tags.users: 1 to {MAX_TAG_VALUES}"));
        }
        if self.tags.features.len() > MAX_TAG_VALUES
            || self
                .tags
                .features
                .iter()
                .any(|f| f.is_empty() || f.len() > 256)
        {
            return Err(format!(
                "tags.features: at most {MAX_TAG_VALUES} values of 1 to 256 bytes"
            ));
        }
        for (name, p) in &self.providers {
            let fraction = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
            if !fraction(p.error_rate) {
                return Err(format!(
                    "providers.{name}.error_rate: a fraction from 0 to 1"
                ));
            }
            if [p.rpm, p.tpm, p.sluice_rpm, p.sluice_tpm].contains(&Some(0)) {
                return Err(format!(
                    "providers.{name}: a limit of 0 allows nothing; leave it out for none"
                ));
            }
        }
        if self.timeline.len() > MAX_TIMELINE {
            return Err(format!("timeline: at most {MAX_TIMELINE} windows"));
        }
        for (n, w) in self.timeline.iter().enumerate() {
            let at = format!("timeline[{n}]");
            if w.from >= w.until {
                return Err(format!("{at}: `from` must be before `until`"));
            }
            if let Some(f) = w.latency_factor
                && !(f.is_finite() && f > 0.0 && f <= sluice_gateway::Faults::MAX_LATENCY_FACTOR)
            {
                return Err(format!(
                    "{at}.latency_factor: more than 0 and at most {}",
                    sluice_gateway::Faults::MAX_LATENCY_FACTOR
                ));
            }
            if let Some(e) = w.error_rate
                && !(e.is_finite() && (0.0..=1.0).contains(&e))
            {
                return Err(format!("{at}.error_rate: a fraction from 0 to 1"));
            }
            if !w.outage && w.latency_factor.is_none() && w.error_rate.is_none() {
                return Err(format!(
                    "{at}: set `outage`, `latency_factor` or `error_rate`"
                ));
            }
        }
        if !(1..=4096).contains(&self.node.slots) {
            return Err("node.slots: 1 to 4096".into());
        }
        if self.slo.max_lost > 0 {
            return Err("slo.max_lost: a lost job is never acceptable; leave it at 0".into());
        }
        Ok(())
    }

    /// The faults `provider` has at `t` from the start: its base error rate, with every
    /// window open at `t` applied in order (a later window wins).
    pub fn faults_at(&self, provider: &str, t: Duration) -> sluice_gateway::Faults {
        let base = self.providers.get(provider).cloned().unwrap_or_default();
        let mut f = sluice_gateway::Faults {
            error_rate: base.error_rate,
            ..sluice_gateway::Faults::default()
        };
        for w in self
            .timeline
            .iter()
            .filter(|w| w.provider == provider && w.from <= t && t < w.until)
        {
            if w.outage {
                f.fail_all = Some(503);
            }
            if let Some(x) = w.latency_factor {
                f.latency_factor = x;
            }
            if let Some(e) = w.error_rate {
                f.error_rate = e;
            }
        }
        f
    }

    /// The offsets at which the timeline changes something, sorted, without repeats.
    pub fn timeline_edges(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self
            .timeline
            .iter()
            .flat_map(|w| [w.from, w.until])
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The offset from the start at which each job is submitted, in order.
pub fn schedule(s: &Scenario) -> Vec<Duration> {
    let d = s.duration.as_secs_f64();
    let even = |n: u64, start: f64, len: f64| -> Vec<f64> {
        (0..n)
            .map(|i| start + len * i as f64 / n.max(1) as f64)
            .collect()
    };
    let mut at: Vec<f64> = match &s.arrival {
        Arrival::Constant { rate } => even((rate * d).floor() as u64, 0.0, d),
        Arrival::Expected {
            per_minute,
            multiplier,
        } => even((per_minute * multiplier / 60.0 * d).floor() as u64, 0.0, d),
        Arrival::Ramp { from, to } => {
            // Jobs by time t: from·t + (to − from)·t²/(2d); job i goes where that reaches i.
            let n = s.planned_jobs();
            let a = (to - from) / (2.0 * d);
            (0..n)
                .map(|i| {
                    let i = i as f64;
                    if a.abs() < 1e-12 {
                        i / from
                    } else {
                        (-from + (from * from + 4.0 * a * i).max(0.0).sqrt()) / (2.0 * a)
                    }
                })
                .collect()
        }
        Arrival::Burst {
            jobs,
            at,
            over,
            base_rate,
        } => {
            let mut v = even(*jobs, at.as_secs_f64(), over.as_secs_f64());
            v.extend(even((base_rate * d).floor() as u64, 0.0, d));
            v
        }
    };
    at.sort_by(f64::total_cmp);
    at.into_iter()
        .map(|t| Duration::from_secs_f64(t.clamp(0.0, d)))
        .collect()
}

#[cfg(test)]
mod tests;
