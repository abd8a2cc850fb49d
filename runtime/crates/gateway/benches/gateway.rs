//! Gateway benchmarks (`harness = false`):
//!
//! ```text
//! cargo bench -p sluice-gateway --bench gateway                 # both
//! cargo bench -p sluice-gateway --bench gateway -- overhead     # or: overload
//! SLUICE_BENCH_SECS=10 cargo bench -p sluice-gateway --bench gateway
//! SLUICE_BENCH_RATE=10000 cargo bench -p sluice-gateway --bench gateway -- overhead
//! ```
//!
//! **overhead** — the same calls at `SLUICE_BENCH_RATE` calls/s (default 1,000; open loop),
//! first straight to the simulator with a plain reqwest client, then through the gateway (alias
//! resolution, cache miss + put, budget reserve/settle, RPM/TPM limiters, breaker, span,
//! metrics, usage record), then through the gateway to an in-process provider that answers at
//! once (no HTTP: the gateway's own code alone, without the simulator and the HTTP client
//! competing with it for the two cores). Reports end-to-end latency percentiles, and the
//! gateway's own overhead per call measured exactly: end-to-end time minus the time inside the
//! provider client (timed by a wrapper). Calls are started on tokio's timer, whose resolution
//! is 1 ms: above 1,000 calls/s they start in bursts of `rate / 1000` each millisecond.
//!
//! **overload** — calls offered at 3× the simulator's TPM limit, each with a 10 s deadline
//! (a job attempt's); the gateway is configured with the provider's limit. Reports goodput
//! (tokens the provider accepted per second ÷ its limit, in steady state after the first 5 s),
//! provider 429s, retries, calls refused by the gateway's limiter (returned to the handler as
//! `rate-limited` with a retry-after, so the job is retried later), and lost calls (neither a
//! response nor an error: must be 0). A second run without the gateway's limiter shows what
//! relying on the provider's 429s alone does.
//!
//! The simulator runs on its own single-threaded runtime in its own thread; the gateway and
//! the load generator on a two-worker runtime (the machine has 2 cores).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sluice_gateway::provider::{
    DeltaFn, OpenAiProvider, Provider, ProviderChatReply, ProviderChatRequest, ProviderEmbedReply,
    ProviderError,
};
use sluice_gateway::sim::{self, SimConfig, SimControl};
use sluice_gateway::{
    BudgetConfig, BudgetScope, Gateway, GatewayConfig, ModelConfig, Period, ProviderConfig,
    ProviderKind,
};
use sluice_types::model::{ChatRequest, Message, ModelError};
use sluice_types::{CallContext, JobInfo};

/// Start a simulator on its own runtime thread; returns its base URL and control.
fn spawn_sim(cfg: SimConfig) -> (String, SimControl) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let h = sim::start(cfg).await.expect("simulator");
            tx.send((h.base_url(), h.control().clone())).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

/// Times the provider client per request (keyed by the last message's text).
struct Timed {
    inner: Arc<dyn Provider>,
    times: Arc<Mutex<HashMap<String, Duration>>>,
}

/// A provider that answers at once, in-process: what is left of a call is the gateway's own work.
struct Instant0;

#[async_trait]
impl Provider for Instant0 {
    async fn chat(
        &self,
        req: &ProviderChatRequest,
        _on_delta: Option<&DeltaFn<'_>>,
    ) -> Result<ProviderChatReply, ProviderError> {
        let input: usize = req.messages.iter().map(|m| m.content.len() / 4 + 3).sum();
        Ok(ProviderChatReply {
            content: "The export fails on large workspaces; a fix is scheduled.".into(),
            model: req.model.clone(),
            usage: sluice_types::model::Usage {
                input_tokens: input as u32,
                output_tokens: 12,
                cached_input_tokens: 0,
            },
            finish_reason: "stop".into(),
            ttft: None,
        })
    }

    async fn embed(
        &self,
        _model: &str,
        _inputs: &[String],
    ) -> Result<ProviderEmbedReply, ProviderError> {
        Err(ProviderError::new(
            sluice_gateway::provider::FailureKind::InvalidRequest,
            "not used by this bench",
        ))
    }
}

#[async_trait]
impl Provider for Timed {
    async fn chat(
        &self,
        req: &ProviderChatRequest,
        on_delta: Option<&DeltaFn<'_>>,
    ) -> Result<ProviderChatReply, ProviderError> {
        let t = Instant::now();
        let r = self.inner.chat(req, on_delta).await;
        let key = req
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        self.times.lock().unwrap().insert(key, t.elapsed());
        r
    }

    async fn embed(
        &self,
        model: &str,
        inputs: &[String],
    ) -> Result<ProviderEmbedReply, ProviderError> {
        self.inner.embed(model, inputs).await
    }
}

fn ctx(deadline_ms: u64) -> CallContext {
    CallContext::new(
        JobInfo {
            id: uuid::Uuid::new_v4(),
            plugin: "bench".into(),
            tenant: "acme".into(),
            attempt: 1,
            max_attempts: 3,
            idempotency_key: None,
            tags: Default::default(),
            deadline_unix_ms: sluice_types::job::now_unix_ms() + deadline_ms,
        },
        "sha256:bench",
    )
}

fn gateway_config(
    base_url: &str,
    rpm: Option<u32>,
    tpm: Option<u32>,
    burst_secs: f64,
) -> GatewayConfig {
    let mut cfg = GatewayConfig::empty();
    let mut p = ProviderConfig::with_url(ProviderKind::OpenAi, base_url);
    p.rpm = rpm;
    p.tpm = tpm;
    p.burst_secs = burst_secs;
    p.max_retries = 3;
    cfg.providers.insert("sim".into(), p);
    cfg.models
        .insert("sim/m".into(), ModelConfig::chat(0.15, 0.60));
    cfg.aliases.insert("fast".into(), vec!["sim/m".into()]);
    cfg.budgets.push(BudgetConfig {
        name: None,
        scope: BudgetScope::Tenant,
        tag: None,
        value: None,
        tenant: None,
        period: Period::Day,
        limit_usd: 1_000_000.0,
        alerts: vec![0.5, 0.8, 1.0],
    });
    cfg
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut v: Vec<u64>) -> (u64, u64) {
    v.sort_unstable();
    println!(
        "  {name:<34} n={:<6} p50={:>6} µs  p90={:>6} µs  p99={:>6} µs  p99.9={:>6} µs  max={:>6} µs",
        v.len(),
        pct(&v, 0.5),
        pct(&v, 0.9),
        pct(&v, 0.99),
        pct(&v, 0.999),
        v.last().copied().unwrap_or(0)
    );
    (pct(&v, 0.5), pct(&v, 0.99))
}

fn prompt(i: u64) -> String {
    format!(
        "Summarize support ticket {i}: the customer reports that the export button fails on large workspaces."
    )
}

async fn overhead(secs: u64, rate: u64) {
    println!("== overhead: {rate} calls/s for {secs} s per path (simulator with zero latency)");
    let (base, _ctl) = spawn_sim(SimConfig::instant());
    let n = rate * secs;

    // Direct: the same request body, a plain client, the response parsed.
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let url = format!("{base}/chat/completions");
    let direct = run_open_loop(n, rate, {
        let client = client.clone();
        let url = url.clone();
        move |i| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let body = serde_json::json!({
                    "model": "m", "max_tokens": 32,
                    "messages": [{"role": "user", "content": prompt(1_000_000 + i)}],
                });
                let t = Instant::now();
                let resp = client.post(&url).json(&body).send().await.unwrap();
                let v: serde_json::Value = resp.json().await.unwrap();
                assert!(v["choices"][0]["message"]["content"].is_string());
                t.elapsed().as_micros() as u64
            }
        }
    })
    .await;
    let mut pcfg = ProviderConfig::with_url(ProviderKind::OpenAi, &base);
    pcfg.timeout_ms = 10_000;
    let http: Arc<dyn Provider> = Arc::new(OpenAiProvider::new(&pcfg).unwrap());
    let (through, overheads) = through_gateway(&base, http, n, rate).await;
    let (_, in_process) = through_gateway(&base, Arc::new(Instant0), n, rate).await;

    let (d50, d99) = summary("direct to simulator (e2e)", direct);
    let (g50, g99) = summary("through the gateway (e2e)", through);
    let (o50, o99) = summary("gateway overhead per call", overheads);
    let (i50, i99) = summary("… with an in-process provider", in_process);
    println!(
        "  e2e difference: p50 {:+} µs, p99 {:+} µs",
        g50 as i64 - d50 as i64,
        g99 as i64 - d99 as i64
    );
    println!(
        "  RESULT overhead at {rate} calls/s p50 = {o50} µs, p99 = {o99} µs (target p99 ≤ 1000 µs); \
         in-process provider p50 = {i50} µs, p99 = {i99} µs"
    );
}

/// `n` calls at `rate` through a fresh gateway whose one provider is `client` (timed);
/// returns each call's end-to-end time and its overhead (end-to-end minus provider time), µs.
async fn through_gateway(
    base: &str,
    client: Arc<dyn Provider>,
    n: u64,
    rate: u64,
) -> (Vec<u64>, Vec<u64>) {
    let times = Arc::new(Mutex::new(HashMap::new()));
    let timed = Timed {
        inner: client,
        times: times.clone(),
    };
    let gw = Gateway::builder(gateway_config(
        base,
        Some(10_000_000),
        Some(100_000_000),
        60.0,
    ))
    .provider_client("sim", Arc::new(timed))
    .build()
    .await
    .unwrap();
    let overheads = Arc::new(Mutex::new(Vec::with_capacity(n as usize)));
    let through = run_open_loop(n, rate, {
        let overheads = overheads.clone();
        move |i| {
            let gw = gw.clone();
            let times = times.clone();
            let overheads = overheads.clone();
            async move {
                let text = prompt(i);
                let mut r = ChatRequest::new("fast", vec![Message::user(text.clone())]);
                r.max_tokens = Some(32);
                let c = ctx(30_000);
                let t = Instant::now();
                let out = gw.chat(&c, r, None).await.expect("gateway call");
                let total = t.elapsed();
                debug_assert!(!out.response.content.is_empty());
                let inner = times.lock().unwrap().remove(&text).unwrap_or_default();
                overheads
                    .lock()
                    .unwrap()
                    .push(total.saturating_sub(inner).as_micros() as u64);
                total.as_micros() as u64
            }
        }
    })
    .await;
    let overheads = std::mem::take(&mut *overheads.lock().unwrap());
    (through, overheads)
}

/// Start call `i` at `i / rate` seconds, all concurrently; collect each call's result.
async fn run_open_loop<F, Fut, T>(n: u64, rate: u64, f: F) -> Vec<T>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = start + Duration::from_micros(i * 1_000_000 / rate);
        tokio::time::sleep_until(at).await;
        tasks.push(tokio::spawn(f(i)));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    refused: u64,
    other_errors: u64,
    retries: u64,
    kinds: HashMap<String, u64>,
}

async fn overload(secs: u64, gateway_limits: bool) {
    let tpm = 600_000u32; // 10,000 tokens/s
    let burst = 1.0;
    println!(
        "== overload: 3× a {tpm}-TPM provider for {secs} s, gateway limiter {} (buckets hold {burst} s)",
        if gateway_limits { "ON" } else { "OFF" }
    );
    let (base, ctl) = spawn_sim(SimConfig {
        ttft_ms: 50,
        tokens_per_sec: 500,
        tpm: Some(tpm),
        burst_secs: burst,
        ..SimConfig::default()
    });
    let cfg = gateway_config(&base, None, gateway_limits.then_some(tpm), burst);
    let gw = Gateway::new(cfg).await.unwrap();

    // Measure one call's actual tokens to size the offered load.
    let mut probe = ChatRequest::new("fast", vec![Message::user(long_prompt(0))]);
    probe.max_tokens = Some(64);
    probe.no_cache = true;
    let sample = gw.chat(&ctx(10_000), probe, None).await.unwrap();
    let per_call =
        f64::from(sample.response.usage.input_tokens + sample.response.usage.output_tokens);
    tokio::time::sleep(Duration::from_millis(1_200)).await; // let the buckets refill
    ctl.reset_stats();

    let limit_per_sec = f64::from(tpm) / 60.0;
    let rate = ((3.0 * limit_per_sec / per_call).round() as u64).max(1);
    println!("  ~{per_call:.0} tokens per call, offering {rate} calls/s (3× the limit)");
    let n = rate * secs;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let ctl2 = ctl.clone();
    let t0 = Instant::now();
    let sampler = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let a = (Instant::now(), ctl2.stats());
        tokio::time::sleep_until((t0 + Duration::from_secs(secs)).into()).await;
        let b = (Instant::now(), ctl2.stats());
        (a, b)
    });
    let started = Instant::now();
    let results = run_open_loop(n, rate, {
        let gw = gw.clone();
        let tally = tally.clone();
        move |i| {
            let gw = gw.clone();
            let tally = tally.clone();
            async move {
                let mut r = ChatRequest::new("fast", vec![Message::user(long_prompt(i + 1))]);
                r.max_tokens = Some(64);
                r.no_cache = true;
                let res = gw.chat(&ctx(10_000), r, None).await;
                let mut t = tally.lock().unwrap();
                match res {
                    Ok(o) => {
                        t.ok += 1;
                        t.retries += u64::from(o.record.retries);
                    }
                    Err(e) => {
                        t.retries += u64::from(e.record.retries);
                        match e.error {
                            ModelError::RateLimited { .. } => t.refused += 1,
                            ref other => {
                                t.other_errors += 1;
                                let k = format!(
                                    "{}: {}",
                                    other.kind(),
                                    e.record
                                        .attempts
                                        .last()
                                        .map(|a| a.outcome.as_str())
                                        .unwrap_or("-")
                                );
                                *t.kinds.entry(k).or_default() += 1;
                            }
                        }
                    }
                }
                1u64
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    let ((ta, sa), (tb, sb)) = sampler.await.unwrap();
    let all = ctl.stats();
    let t = tally.lock().unwrap();
    let returned: u64 = results.iter().sum();
    let steady = (sb.input_tokens + sb.output_tokens - sa.input_tokens - sa.output_tokens) as f64
        / tb.duration_since(ta).as_secs_f64();
    let whole = (sb.input_tokens + sb.output_tokens) as f64 / tb.duration_since(t0).as_secs_f64();
    println!(
        "  offered {n} calls; all returned after {:.1} s: ok {}, rate-limited (returned to the handler with a retry-after) {}, other errors {}, lost {}",
        elapsed.as_secs_f64(),
        t.ok,
        t.refused,
        t.other_errors,
        n - returned
    );
    if !t.kinds.is_empty() {
        println!("  other errors by kind: {:?}", t.kinds);
    }
    println!(
        "  provider: {} ok, {} × 429, {} 5xx; gateway retries {}",
        all.ok, all.rate_limited, all.server_errors, t.retries
    );
    println!(
        "  RESULT goodput while offered, steady state (5 s..{secs} s) = {:.1}% of the limit; from 0 s incl. the {burst} s initial burst = {:.1}%",
        100.0 * steady / limit_per_sec,
        100.0 * whole / limit_per_sec
    );
}

fn long_prompt(i: u64) -> String {
    let body = "The quarterly operations review covers warehouse throughput, carrier delays, \
        staffing changes and the rollout of the new scanning system across three regions. ";
    format!("Summarize document {i}. {}", body.repeat(3))
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let which = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    let secs: u64 = std::env::var("SLUICE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if which("overhead") {
            let rate: u64 = std::env::var("SLUICE_BENCH_RATE")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1_000);
            overhead(if secs > 0 { secs } else { 10 }, rate).await;
        }
        if which("overload") {
            let s = if secs > 0 { secs } else { 25 };
            overload(s, true).await;
            overload(s, false).await;
        }
    });
}
