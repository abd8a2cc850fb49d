//! Hostile handlers (`plugins/fixtures/`, see its README) against the engine's per-job
//! limits. Each test runs one hostile job next to 100 well-behaved jobs of another tenant and
//! checks that: the hostile job ends with its classified error or its capped effect, every
//! other job succeeds on its first attempt, and the process's resident memory grows by less
//! than [`RSS_GROWTH_BOUND`] while it all runs.
//!
//! Resident memory is per process, so the tests here run one at a time ([`SERIAL`]).

#[path = "support/plugins.rs"]
mod plugins;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_engine::{Engine, EngineConfig, JobLimits, RunError, memory};
use sluice_types::{CallContext, HostServices, JobEvent, JobInfo};

/// The most the process's resident set may grow while one hostile job and 100 noop jobs
/// run. It includes the hostile guest's own linear memory (up to its 64 MiB cap) and the
/// noop instances. Measured peaks (debug build, 2-core machine, sampled every 2 ms):
/// huge-output 28 MiB (mostly the guest's own 30 MB string), huge-chat-batch of 100,000
/// 15 MiB, event-flood of 2,000,000 5 MiB, every other fixture 1 MiB or less. Before the
/// limits, the event flood alone took the host to 10 GiB.
const RSS_GROWTH_BOUND: u64 = 256 << 20;

/// One hostile test at a time: they measure the same process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn engine() -> Engine {
    Engine::new(EngineConfig {
        // Room for the hostile job and its 100 neighbours at once.
        max_instances: 128,
        ..EngineConfig::default()
    })
    .unwrap()
}

fn ctx(plugin: &str, tenant: &str, timeout: Duration) -> CallContext {
    let job = JobInfo {
        id: uuid::Uuid::new_v4(),
        plugin: plugin.into(),
        tenant: tenant.into(),
        attempt: 1,
        max_attempts: 3,
        idempotency_key: None,
        tags: Default::default(),
        deadline_unix_ms: sluice_types::job::now_unix_ms() + timeout.as_millis() as u64,
    };
    CallContext::new(job, "test")
}

/// Limits for a hostile job: the defaults, with a timeout short enough to keep the suite
/// fast and long enough for the flood to finish on a slow machine.
fn limits(timeout: Duration) -> JobLimits {
    JobLimits {
        timeout,
        ..JobLimits::default()
    }
}

/// The process's resident set size in bytes, from `/proc/self/statm`.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("reading /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm's second field is the resident page count");
    // The page size of every Linux target this runs on in CI.
    pages * 4096
}

/// Samples the resident set every 2 ms on its own thread, and keeps the peak.
struct RssWatch {
    baseline: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start() -> Self {
        let baseline = rss_bytes();
        let peak = Arc::new(AtomicU64::new(baseline));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        RssWatch {
            baseline,
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// Stop sampling; the peak growth over the baseline, in bytes.
    fn growth(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.peak
            .load(Ordering::Relaxed)
            .max(rss_bytes())
            .saturating_sub(self.baseline)
    }
}

/// What a hostile run gives back.
struct Run {
    result: Result<String, RunError>,
    job: uuid::Uuid,
    rss_growth: u64,
}

/// Run fixture `name` with `input` next to 100 noop jobs of another tenant, and check the
/// neighbours and the memory bound. `cancel_after` cancels the hostile job that long after
/// it starts.
async fn hostile(
    name: &str,
    input: &str,
    limits: JobLimits,
    services: HostServices,
    cancel_after: Option<Duration>,
) -> Run {
    let e = engine();
    let plugin = e.load(&plugins::component(name)).unwrap();
    let noop = e.load(&plugins::component("noop")).unwrap();
    // Warm up the pool and the allocator so the baseline is not a cold process.
    e.run(
        &noop,
        ctx("noop", "neighbour", Duration::from_secs(10)),
        "{}",
        JobLimits::default(),
        memory::services(),
    )
    .await
    .unwrap();

    let watch = RssWatch::start();
    // The job's own deadline is later than its limit, so the limit is what stops it.
    let hostile_ctx = ctx(name, "attacker", limits.timeout + Duration::from_secs(10));
    let job = hostile_ctx.job.id;
    if let Some(after) = cancel_after {
        let flag = hostile_ctx.cancelled.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            flag.store(true, Ordering::Relaxed);
        });
    }
    let attacker = {
        let (e, plugin, input) = (e.clone(), plugin.clone(), input.to_string());
        tokio::spawn(async move { e.run(&plugin, hostile_ctx, &input, limits, services).await })
    };
    let neighbours: Vec<_> = (0..100)
        .map(|i| {
            let (e, noop) = (e.clone(), noop.clone());
            tokio::spawn(async move {
                let input = format!(r#"{{"neighbour":{i}}}"#);
                let out = e
                    .run(
                        &noop,
                        ctx("noop", "neighbour", Duration::from_secs(60)),
                        &input,
                        JobLimits {
                            timeout: Duration::from_secs(60),
                            ..JobLimits::default()
                        },
                        memory::services(),
                    )
                    .await;
                (input, out)
            })
        })
        .collect();
    for n in neighbours {
        let (input, out) = n.await.unwrap();
        assert_eq!(
            out.as_deref(),
            Ok(input.as_str()),
            "a neighbour of `{name}` failed its first attempt"
        );
    }
    let result = attacker.await.unwrap();
    let rss_growth = watch.growth();
    eprintln!(
        "{name}: resident set grew by at most {} MiB; result {:?}",
        rss_growth >> 20,
        result.as_ref().map(|o| o.len()).map_err(|e| e.to_string())
    );
    assert!(
        rss_growth < RSS_GROWTH_BOUND,
        "`{name}` grew the host's resident set by {} MiB (bound {} MiB)",
        rss_growth >> 20,
        RSS_GROWTH_BOUND >> 20
    );
    Run {
        result,
        job,
        rss_growth,
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_flood_keeps_a_capped_prefix_and_reports_the_rest() {
    let _serial = SERIAL.lock().await;
    const SENT: u64 = 2_000_000;
    let events = Arc::new(memory::RecordedEvents::default());
    let services = memory::services_with(events.clone(), Duration::ZERO);
    let run = hostile(
        "event-flood",
        &format!(r#"{{"n":{SENT},"bytes":1024}}"#),
        limits(Duration::from_secs(120)),
        services,
        None,
    )
    .await;
    assert_eq!(json(&run.result.unwrap())["sent"], SENT);
    let seen = events.of(run.job);
    let defaults = JobLimits::default();
    let (last, kept) = seen.split_last().unwrap();
    let kept_bytes: usize = kept
        .iter()
        .map(|e| match e {
            JobEvent::Log {
                message, fields, ..
            } => {
                assert!(fields.is_empty());
                message.len()
            }
            other => panic!("unexpected event {other:?}"),
        })
        .sum();
    assert!(kept.len() <= defaults.max_events as usize);
    assert!(kept_bytes <= defaults.max_event_bytes);
    // The byte cap binds first: 4 MiB of 1 KiB lines.
    assert_eq!(kept.len(), defaults.max_event_bytes / 1024);
    match last {
        JobEvent::EventsTruncated {
            attempt,
            dropped,
            dropped_bytes,
            max_events,
            max_bytes,
        } => {
            assert_eq!(*attempt, 1);
            assert_eq!(*dropped + kept.len() as u64, SENT);
            assert_eq!(*dropped_bytes, *dropped * 1024);
            assert_eq!(*max_events, defaults.max_events);
            assert_eq!(*max_bytes, defaults.max_event_bytes as u64);
        }
        other => panic!("expected events_truncated last, got {other:?}"),
    }
    let truncations = seen
        .iter()
        .filter(|e| matches!(e, JobEvent::EventsTruncated { .. }))
        .count();
    assert_eq!(truncations, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_output_fails_its_job_with_its_size() {
    let _serial = SERIAL.lock().await;
    let run = hostile(
        "huge-output",
        r#"{"bytes":30000000}"#,
        limits(Duration::from_secs(30)),
        memory::services(),
        None,
    )
    .await;
    let err = run.result.unwrap_err();
    assert_eq!(
        err,
        RunError::OutputTooLarge {
            limit: 1 << 20,
            size: 30_000_000
        }
    );
    assert_eq!(err.kind(), "output_too_large");
    assert!(!err.to_job_error().is_retryable(), "retrying cannot help");
}

#[tokio::test]
async fn output_at_the_cap_passes_and_one_byte_over_does_not() {
    let _serial = SERIAL.lock().await;
    let e = engine();
    let plugin = e.load(&plugins::component("huge-output")).unwrap();
    let cap = JobLimits::default().max_output_bytes;
    let at = e
        .run(
            &plugin,
            ctx("huge-output", "attacker", Duration::from_secs(10)),
            &format!(r#"{{"bytes":{cap}}}"#),
            limits(Duration::from_secs(10)),
            memory::services(),
        )
        .await
        .unwrap();
    assert_eq!(at.len(), cap);
    let over = e
        .run(
            &plugin,
            ctx("huge-output", "attacker", Duration::from_secs(10)),
            &format!(r#"{{"bytes":{}}}"#, cap + 1),
            limits(Duration::from_secs(10)),
            memory::services(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        over,
        RunError::OutputTooLarge {
            limit: cap,
            size: cap + 1
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_costs_are_capped_and_never_overflow() {
    let _serial = SERIAL.lock().await;
    let services = memory::services();
    let usage = services.usage.clone();
    let run = hostile(
        "cost-overflow",
        "{}",
        limits(Duration::from_secs(10)),
        services,
        None,
    )
    .await;
    let out = json(&run.result.unwrap());
    for report in ["first", "second"] {
        let message = out[report].as_str().unwrap_or_default();
        assert!(
            message.contains("max_cost_per_report_micros"),
            "u64::MAX is refused with an error value: {out}"
        );
    }
    assert!(out["small"].is_null(), "an honest report passes: {out}");
    assert_eq!(out["spend_micros"], 1_000);
    // The backend recorded only the honest report.
    let probe = ctx("cost-overflow", "attacker", Duration::from_secs(1));
    let mut job = (*probe.job).clone();
    job.id = run.job;
    let spend = usage.job_spend(&CallContext::new(job, "test")).await;
    assert_eq!(spend.cost_micros, 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_amplification_stops_at_the_hostcall_argument_cap() {
    let _serial = SERIAL.lock().await;
    // 64 fields, each pointing at the same 1 MiB: 64 MiB if lifted naively.
    let run = hostile(
        "list-amplification",
        r#"{"entries":64,"value_bytes":1048576}"#,
        limits(Duration::from_secs(10)),
        memory::services(),
        None,
    )
    .await;
    let err = run.result.unwrap_err();
    assert_eq!(
        err,
        RunError::HostCallTooLarge {
            limit: JobLimits::default().max_hostcall_bytes
        },
        "the fuel trap is classified (if this is a Trap, wasmtime's message changed)"
    );
    assert_eq!(err.kind(), "hostcall_too_large");
    assert!(!err.to_job_error().is_retryable());
    assert!(run.rss_growth < RSS_GROWTH_BOUND);
}

#[tokio::test]
async fn the_same_raw_call_under_the_cap_goes_through_and_is_cut() {
    let _serial = SERIAL.lock().await;
    let e = engine();
    let events = Arc::new(memory::RecordedEvents::default());
    let plugin = e.load(&plugins::component("list-amplification")).unwrap();
    let c = ctx("list-amplification", "attacker", Duration::from_secs(10));
    let job = c.job.id;
    // 3 × 1 MiB: under the 4 MiB argument cap, so the hand-written ABI call is accepted.
    let out = e
        .run(
            &plugin,
            c,
            r#"{"entries":3,"value_bytes":1048576}"#,
            limits(Duration::from_secs(10)),
            memory::services_with(events.clone(), Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(json(&out)["entries"], 3);
    match events.of(job).as_slice() {
        [
            JobEvent::Log {
                message, fields, ..
            },
        ] => {
            assert_eq!(message, "amplified");
            assert_eq!(fields.len(), 3);
            assert!(
                fields
                    .iter()
                    .all(|(k, v)| k == "k" && v.len() <= 8 * 1024 + 3)
            );
        }
        other => panic!("expected one log event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_pass_through_the_engine() {
    let _serial = SERIAL.lock().await;
    let run = hostile(
        "nul-output",
        "{}",
        limits(Duration::from_secs(10)),
        memory::services(),
        None,
    )
    .await;
    let out = run.result.unwrap();
    assert!(out.contains(r"\u0000"), "{out}");
    let out = json(&out);
    assert_eq!(out["text"], "before\0after");
    let chat_error = out["chat_error"].as_str().unwrap();
    assert!(chat_error.contains("unknown model"), "{chat_error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_asleep_in_wasi_is_stopped_at_its_deadline() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let run = hostile(
        "sleep-forever",
        "{}",
        limits(Duration::from_millis(500)),
        memory::services(),
        None,
    )
    .await;
    assert_eq!(run.result.unwrap_err(), RunError::Timeout(500));
    assert!(started.elapsed() < Duration::from_secs(30), "hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_interrupts_a_guest_asleep_in_wasi() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    // An hour of sleep and a minute of timeout: only the cancel can end this quickly.
    let run = hostile(
        "sleep-forever",
        "{}",
        limits(Duration::from_secs(60)),
        memory::services(),
        Some(Duration::from_millis(200)),
    )
    .await;
    assert_eq!(run.result.unwrap_err(), RunError::Cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the cancel was not seen while the guest slept: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_chat_batch_is_refused_with_values_before_any_call() {
    let _serial = SERIAL.lock().await;
    let run = hostile(
        "huge-chat-batch",
        r#"{"n":1000}"#,
        limits(Duration::from_secs(20)),
        memory::services(),
        None,
    )
    .await;
    let out = json(&run.result.unwrap());
    assert_eq!(out["ok"], 0, "{out}");
    assert!(
        out["first_error"]
            .as_str()
            .unwrap()
            .contains("max_chat_batch"),
        "{out}"
    );
    assert_eq!(out["calls"], 0, "no provider call was made: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_batch_too_large_to_copy_stops_at_the_argument_cap() {
    let _serial = SERIAL.lock().await;
    // 100,000 requests: their list alone is over the 4 MiB argument cap, so the host refuses
    // to copy it at all (a value cannot be returned for a call whose arguments never arrived).
    let run = hostile(
        "huge-chat-batch",
        r#"{"n":100000}"#,
        limits(Duration::from_secs(20)),
        memory::services(),
        None,
    )
    .await;
    assert_eq!(
        run.result.unwrap_err(),
        RunError::HostCallTooLarge {
            limit: JobLimits::default().max_hostcall_bytes
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_traps_its_own_job() {
    let _serial = SERIAL.lock().await;
    let run = hostile(
        "stack-overflow",
        "{}",
        limits(Duration::from_secs(10)),
        memory::services(),
        None,
    )
    .await;
    match run.result.unwrap_err() {
        RunError::Trap(message) => eprintln!("stack-overflow trapped: {message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
}
