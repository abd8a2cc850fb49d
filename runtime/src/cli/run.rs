//! `sluice run`: one job, locally, no server.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use sluice_engine::{Engine, EngineConfig, JobLimits, memory};
use sluice_types::{CallContext, EventSink, JobEvent, JobInfo, UsageBackend};

use super::exit;

/// Arguments of `sluice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A component (`.wasm`) or a plugin crate directory (built for wasm32-wasip2 first).
    pub plugin: PathBuf,
    /// The job's input as JSON text.
    #[arg(long, short, conflicts_with = "input_file", default_value = "{}")]
    pub input: String,
    /// Read the job's input JSON from a file (`-` for stdin).
    #[arg(long)]
    pub input_file: Option<PathBuf>,
    /// Time limit for the job, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Memory limit for the job, in MiB.
    #[arg(long, default_value_t = 64)]
    pub memory_mb: usize,
    /// Print one JSON object (output, error, usage, events) instead of human-readable text.
    #[arg(long)]
    pub json: bool,
}

/// Prints progress and logs to stderr as they happen, and keeps them for `--json`.
struct ConsoleEvents {
    quiet: bool,
    kept: memory::RecordedEvents,
}

impl EventSink for ConsoleEvents {
    fn emit(&self, job: uuid::Uuid, event: JobEvent) {
        if !self.quiet {
            match &event {
                JobEvent::Progress { message, .. } => eprintln!("  progress: {message}"),
                JobEvent::Log { level, message, .. } => eprintln!("  {level:?}: {message}"),
                _ => {}
            }
        }
        self.kept.emit(job, event);
    }
}

/// The gateway, counting each job's spend.
struct RunModels {
    gateway: sluice_gateway::Gateway,
    usage: Arc<memory::MemoryUsage>,
}

#[async_trait::async_trait]
impl sluice_types::ModelBackend for RunModels {
    async fn chat(
        &self,
        ctx: &CallContext,
        _seq: u32,
        request: sluice_types::model::ChatRequest,
    ) -> Result<sluice_types::model::ChatResponse, sluice_types::model::ModelError> {
        let out = self.gateway.chat(ctx, request, None).await?;
        self.usage
            .record(ctx.job.id, out.response.usage, out.response.cost_micros);
        Ok(out.response)
    }

    async fn embed(
        &self,
        ctx: &CallContext,
        _seq: u32,
        request: sluice_types::model::EmbedRequest,
    ) -> Result<sluice_types::model::EmbedResponse, sluice_types::model::ModelError> {
        let out = self.gateway.embed(ctx, request).await?;
        self.usage
            .record(ctx.job.id, out.response.usage, out.response.cost_micros);
        Ok(out.response)
    }
}

/// Run it and return the exit code.
pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let input = match &args.input_file {
        Some(p) if p.as_os_str() == "-" => std::io::read_to_string(std::io::stdin())?,
        Some(p) => std::fs::read_to_string(p)?,
        None => args.input.clone(),
    };
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&input) {
        eprintln!("error: --input is not valid JSON: {e}");
        return Ok(exit::USAGE);
    }

    let path = args.plugin.clone();
    let (file, bytes) =
        match tokio::task::spawn_blocking(move || crate::plugin_build::component_bytes(&path))
            .await?
        {
            Ok(found) => found,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(exit::USAGE);
            }
        };
    let engine = Engine::new(EngineConfig {
        max_instances: 16,
        ..EngineConfig::default()
    })?;
    let loader = engine.clone();
    let plugin = match tokio::task::spawn_blocking(move || loader.load(&bytes)).await? {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {} was rejected: {e}", file.display());
            return Ok(exit::USAGE);
        }
    };

    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let limits = JobLimits {
        memory_bytes: args.memory_mb << 20,
        timeout: Duration::from_secs(args.timeout),
        ..JobLimits::default()
    };
    let job = JobInfo {
        id: uuid::Uuid::now_v7(),
        plugin: name,
        tenant: "local".into(),
        attempt: 1,
        max_attempts: 1,
        idempotency_key: None,
        tags: Default::default(),
        deadline_unix_ms: sluice_types::job::now_unix_ms() + limits.timeout.as_millis() as u64,
    };
    let job_id = job.id;
    let events = Arc::new(ConsoleEvents {
        quiet: args.json,
        kept: Default::default(),
    });
    // The real gateway over real HTTP to the in-process simulated providers (OpenAI and
    // Anthropic wire formats), with in-memory state, effects and spend.
    let gateway = sluice_gateway::Gateway::new(sluice_gateway::GatewayConfig::simulated()).await?;
    let usage = Arc::new(memory::MemoryUsage::default());
    let mut services = memory::services_with(events.clone(), Duration::ZERO);
    services.models = Arc::new(RunModels {
        gateway,
        usage: usage.clone(),
    });
    services.usage = usage.clone();
    let ctx = CallContext::new(job, plugin.digest());
    let spend_ctx = ctx.clone();

    let started = Instant::now();
    let result = engine.run(&plugin, ctx, &input, limits, services).await;
    let elapsed = started.elapsed();
    let spend = usage.job_spend(&spend_ctx).await;

    if args.json {
        let (output, error) = match &result {
            Ok(out) => (
                serde_json::from_str::<serde_json::Value>(out)?,
                serde_json::Value::Null,
            ),
            Err(e) => (
                serde_json::Value::Null,
                serde_json::json!({ "kind": e.kind(), "message": e.to_string(), "retryable": e.to_job_error().is_retryable() }),
            ),
        };
        let doc = serde_json::json!({
            "job_id": job_id,
            "digest": plugin.digest(),
            "status": if result.is_ok() { "completed" } else { "failed" },
            "output": output,
            "error": error,
            "usage": {
                "calls": spend.calls,
                "input_tokens": spend.input_tokens,
                "output_tokens": spend.output_tokens,
                "cost_micros": spend.cost_micros,
            },
            "duration_ms": elapsed.as_millis() as u64,
            "events": events.kept.of(job_id),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        match &result {
            Ok(out) => {
                let pretty = serde_json::from_str::<serde_json::Value>(out)
                    .and_then(|v| serde_json::to_string_pretty(&v))
                    .unwrap_or_else(|_| out.clone());
                println!("{pretty}");
            }
            Err(e) => eprintln!("job failed ({}): {e}", e.kind()),
        }
        let mut err = std::io::stderr().lock();
        writeln!(
            err,
            "usage: {} model calls, {} input + {} output tokens, cost ${:.6} (simulated providers), {} ms",
            spend.calls,
            spend.input_tokens,
            spend.output_tokens,
            sluice_types::Micros::new(spend.cost_micros).to_usd(),
            elapsed.as_millis()
        )?;
    }
    Ok(if result.is_ok() {
        exit::OK
    } else {
        exit::FAILED
    })
}
