//! The engine against real components built from `plugins/`: good handlers work, bad ones
//! fail their own job with a classified error, and the engine keeps serving.

#[path = "support/plugins.rs"]
mod plugins;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_engine::{Engine, EngineConfig, JobLimits, LoadError, RunError, memory};
use sluice_types::{CallContext, HostServices, JobEvent, JobInfo};

fn engine() -> Engine {
    Engine::new(EngineConfig {
        max_instances: 64,
        ..EngineConfig::default()
    })
    .unwrap()
}

fn ctx(plugin: &str, timeout: Duration) -> CallContext {
    let job = JobInfo {
        id: uuid::Uuid::new_v4(),
        plugin: plugin.into(),
        tenant: "acme".into(),
        attempt: 1,
        max_attempts: 3,
        idempotency_key: None,
        tags: Default::default(),
        deadline_unix_ms: sluice_types::job::now_unix_ms() + timeout.as_millis() as u64,
    };
    CallContext::new(job, "test")
}

async fn run(
    engine: &Engine,
    name: &str,
    input: &str,
    limits: JobLimits,
    services: HostServices,
) -> Result<String, RunError> {
    let plugin = engine.load(&plugins::component(name)).unwrap();
    engine
        .run(&plugin, ctx(name, limits.timeout), input, limits, services)
        .await
}

fn limits(timeout_ms: u64) -> JobLimits {
    JobLimits {
        memory_bytes: 32 << 20,
        timeout: Duration::from_millis(timeout_ms),
        ..JobLimits::default()
    }
}

#[tokio::test]
async fn noop_echoes_its_input() {
    let e = engine();
    let out = run(
        &e,
        "noop",
        r#"{"a":[1,2,3]}"#,
        limits(5_000),
        memory::services(),
    )
    .await
    .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["a"][2],
        3
    );
}

/// The output is read before the guest frees it (its post-return runs inside the call):
/// every length comes back byte for byte.
#[tokio::test]
async fn outputs_of_every_small_length_come_back_whole() {
    let e = engine();
    let plugin = e.load(&plugins::component("noop")).unwrap();
    for n in 0..300 {
        let input = serde_json::json!({ "i": n, "pad": "x".repeat(n % 37) }).to_string();
        let out = e
            .run(
                &plugin,
                ctx("noop", Duration::from_secs(5)),
                &input,
                limits(5_000),
                memory::services(),
            )
            .await
            .unwrap();
        assert_eq!(out, input);
    }
}

#[tokio::test]
async fn rejects_bytes_that_are_not_wasm() {
    let err = engine().load(b"this is not wasm at all").unwrap_err();
    assert!(matches!(err, LoadError::NotWasm), "{err}");
}

#[tokio::test]
async fn rejects_a_core_module_and_says_how_to_fix_it() {
    // The smallest valid core module: magic + version 1.
    let err = engine().load(b"\0asm\x01\0\0\0").unwrap_err();
    assert!(matches!(err, LoadError::CoreModule), "{err}");
    assert!(err.to_string().contains("wasm32-wasip2"));
}

#[tokio::test]
async fn rejects_a_component_of_another_world() {
    let err = engine()
        .load(&plugins::component("not-a-plugin"))
        .unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld(_)), "{err}");
    assert!(
        err.to_string().contains("handle"),
        "the reason names the missing export: {err}"
    );
}

#[tokio::test]
async fn rejects_a_truncated_component() {
    let mut bytes = plugins::component("noop");
    bytes.truncate(bytes.len() / 2);
    let err = engine().load(&bytes).unwrap_err();
    assert!(matches!(err, LoadError::Invalid(_)), "{err}");
}

#[tokio::test]
async fn a_trap_fails_the_job() {
    let err = run(&engine(), "trap", "{}", limits(5_000), memory::services())
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::Trap(_)), "{err:?}");
    assert!(err.to_job_error().is_retryable());
}

#[tokio::test]
async fn a_panic_fails_the_job_with_its_message() {
    let err = run(&engine(), "panic", "{}", limits(5_000), memory::services())
        .await
        .unwrap_err();
    match &err {
        RunError::Panic(m) => {
            assert!(
                m.contains("fixture panic: this handler always panics"),
                "{m}"
            )
        }
        other => panic!("expected a panic, got {other:?}"),
    }
}

#[tokio::test]
async fn a_busy_loop_is_stopped_at_its_deadline() {
    let started = Instant::now();
    let err = run(
        &engine(),
        "busy-loop",
        "{}",
        limits(300),
        memory::services(),
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, RunError::Timeout(300)), "{err:?}");
    assert!(
        took >= Duration::from_millis(300),
        "stopped early: {took:?}"
    );
    // Functional bound, not a speed claim: the loop must actually be interrupted.
    assert!(
        took < Duration::from_secs(10),
        "the loop was not interrupted: {took:?}"
    );
}

#[tokio::test]
async fn a_memory_bomb_hits_the_cap() {
    let limits = JobLimits {
        memory_bytes: 16 << 20,
        timeout: Duration::from_secs(20),
        ..JobLimits::default()
    };
    let err = run(&engine(), "memory-bomb", "{}", limits, memory::services())
        .await
        .unwrap_err();
    match err {
        RunError::MemoryLimit { limit, requested } => {
            assert_eq!(limit, 16 << 20);
            assert!(requested > limit);
        }
        other => panic!("expected the memory limit, got {other:?}"),
    }
}

#[tokio::test]
async fn output_that_is_not_json_is_a_permanent_error() {
    let err = run(
        &engine(),
        "bad-json",
        "{}",
        limits(5_000),
        memory::services(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RunError::BadOutput(_)), "{err:?}");
    assert!(!err.to_job_error().is_retryable());
}

#[tokio::test]
async fn cancelling_stops_a_spinning_handler() {
    let e = engine();
    let plugin = e.load(&plugins::component("busy-loop")).unwrap();
    let ctx = ctx("busy-loop", Duration::from_secs(30));
    let flag = ctx.cancelled.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let err = e
        .run(&plugin, ctx, "{}", limits(30_000), memory::services())
        .await
        .unwrap_err();
    assert_eq!(err, RunError::Cancelled);
}

#[tokio::test]
async fn the_engine_keeps_serving_after_every_kind_of_failure() {
    let e = engine();
    let services = memory::services();
    for name in ["trap", "panic", "bad-json"] {
        assert!(
            run(&e, name, "{}", limits(5_000), services.clone())
                .await
                .is_err()
        );
    }
    assert!(
        run(&e, "busy-loop", "{}", limits(100), services.clone())
            .await
            .is_err()
    );
    let small = JobLimits {
        memory_bytes: 8 << 20,
        timeout: Duration::from_secs(20),
        ..JobLimits::default()
    };
    assert!(
        run(&e, "memory-bomb", "{}", small, services.clone())
            .await
            .is_err()
    );
    // 32 concurrent good jobs afterwards all succeed.
    let noop = e.load(&plugins::component("noop")).unwrap();
    let jobs = (0..32).map(|i| {
        let e = e.clone();
        let noop = noop.clone();
        let services = services.clone();
        tokio::spawn(async move {
            let input = format!(r#"{{"i":{i}}}"#);
            e.run(
                &noop,
                ctx("noop", Duration::from_secs(10)),
                &input,
                limits(10_000),
                services,
            )
            .await
        })
    });
    for (i, j) in jobs.enumerate() {
        let out = j.await.unwrap().unwrap();
        assert_eq!(out, format!(r#"{{"i":{i}}}"#));
    }
}

#[tokio::test]
async fn summarize_fans_out_and_reports_progress() {
    let e = engine();
    let events = Arc::new(memory::RecordedEvents::default());
    let services = memory::services_with(events.clone(), Duration::ZERO);
    let text = (1..=12)
        .map(|i| format!("Paragraph {i} explains how queues smooth bursts of traffic into steady work for model providers. "))
        .collect::<Vec<_>>()
        .join("\n\n");
    let input = serde_json::json!({ "text": text, "chunk_chars": 300 }).to_string();
    let plugin = e.load(&plugins::component("summarize")).unwrap();
    let ctx = ctx("summarize", Duration::from_secs(30));
    let job = ctx.job.id;
    let out = e
        .run(&plugin, ctx, &input, limits(30_000), services)
        .await
        .unwrap();
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(!out["summary"].as_str().unwrap().is_empty());
    let chunks = out["chunks"].as_u64().unwrap();
    assert!(chunks >= 3, "a long text is split: {out}");
    let progress = events
        .of(job)
        .into_iter()
        .filter(|e| matches!(e, JobEvent::Progress { .. }))
        .count();
    assert!(
        progress as u64 >= chunks,
        "one progress event per chunk at least: {progress} < {chunks}"
    );
    assert!(out["usage"]["cost_micros"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn chat_keeps_history_in_state_and_notifies_once() {
    let e = engine();
    let services = memory::services();
    let plugin = e.load(&plugins::component("chat")).unwrap();
    let first =
        serde_json::json!({ "conversation_id": "c1", "message": "Hi, I am Ada." }).to_string();
    let second =
        serde_json::json!({ "conversation_id": "c1", "message": "What is my name?" }).to_string();
    let a: serde_json::Value = serde_json::from_str(
        &e.run(
            &plugin,
            ctx("chat", Duration::from_secs(10)),
            &first,
            limits(10_000),
            services.clone(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let b: serde_json::Value = serde_json::from_str(
        &e.run(
            &plugin,
            ctx("chat", Duration::from_secs(10)),
            &second,
            limits(10_000),
            services.clone(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert!(!a["reply"].as_str().unwrap().is_empty());
    assert!(
        b["turns"].as_u64().unwrap() > a["turns"].as_u64().unwrap(),
        "{a} then {b}"
    );
}

#[tokio::test]
async fn effects_run_once_across_attempts() {
    let e = engine();
    let services = memory::services();
    let plugin = e.load(&plugins::component("state-effects")).unwrap();
    let c1 = ctx("state-effects", Duration::from_secs(10));
    let mut job = (*c1.job).clone();
    let first = e
        .run(&plugin, c1, "{}", limits(10_000), services.clone())
        .await
        .unwrap();
    // The same job id on a second attempt: the effect's recorded result comes back.
    job.attempt = 2;
    let c2 = CallContext::new(job, "test");
    let second = e
        .run(&plugin, c2, "{}", limits(10_000), services)
        .await
        .unwrap();
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let second: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!(first["effect"]["ran_on_attempt"], 1, "{first}");
    assert_eq!(first["effect_runs"], 1, "{first}");
    // Attempt 2 gets attempt 1's recorded result, and the effect's body did not run again.
    assert_eq!(second["attempt"], 2, "{second}");
    assert_eq!(second["effect"], first["effect"], "{second}");
    assert_eq!(second["effect_runs"], 1, "{second}");
    // State written by attempt 1 is visible to attempt 2.
    assert_eq!(second["before"]["attempt"], 1, "{second}");
}

#[tokio::test]
async fn a_handler_error_value_keeps_its_kind_and_delay() {
    let err = run(
        &engine(),
        "state-effects",
        r#"{"fail_attempts":1,"prefix":"handler-error/"}"#,
        limits(10_000),
        memory::services(),
    )
    .await
    .unwrap_err();
    match &err {
        RunError::Handler(sluice_types::JobError::Retryable { retry_after_ms, .. }) => {
            assert_eq!(*retry_after_ms, Some(10), "{err:?}")
        }
        other => panic!("expected a retryable handler error, got {other:?}"),
    }
}

/// An effect journal whose commits are slow, and which cancels the job as a commit starts.
struct SlowCommits {
    inner: memory::MemoryEffects,
    cancel: std::sync::Mutex<Option<Arc<std::sync::atomic::AtomicBool>>>,
}

#[async_trait::async_trait]
impl sluice_types::EffectsBackend for SlowCommits {
    async fn lookup(
        &self,
        job: uuid::Uuid,
        key: &str,
    ) -> Result<Option<String>, sluice_types::EffectError> {
        self.inner.lookup(job, key).await
    }

    async fn commit(
        &self,
        job: uuid::Uuid,
        key: &str,
        result: &str,
    ) -> Result<(), sluice_types::EffectError> {
        if let Some(flag) = self.cancel.lock().unwrap().take() {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.inner.commit(job, key, result).await
    }
}

#[tokio::test]
async fn cancelling_waits_for_an_effect_commit_in_flight() {
    let e = engine();
    let plugin = e.load(&plugins::component("state-effects")).unwrap();
    let c = ctx("state-effects", Duration::from_secs(30));
    let job = c.job.id;
    let effects = Arc::new(SlowCommits {
        inner: memory::MemoryEffects::default(),
        cancel: std::sync::Mutex::new(Some(c.cancelled.clone())),
    });
    let mut services = memory::services();
    services.effects = effects.clone();
    let err = e
        .run(&plugin, c, "{}", limits(30_000), services)
        .await
        .unwrap_err();
    assert_eq!(err, RunError::Cancelled);
    // The commit that was in flight when the job was cancelled was let finish: a redrive
    // will not run the effect again.
    use sluice_types::EffectsBackend;
    assert!(
        effects
            .lookup(job, "state-effects-once")
            .await
            .unwrap()
            .is_some()
    );
}
