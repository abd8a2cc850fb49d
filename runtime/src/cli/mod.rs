//! The `sluice` command line.

mod admin;
mod budgets;
mod check_config;
mod client;
mod completions;
mod deploy;
mod dlq;
mod events;
mod jobs;
mod keys;
#[cfg(feature = "sim")]
mod loadtest;
mod new;
mod plugins;
mod progress;
mod run;
mod submit;
mod up;
mod usage;
mod webhooks;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Sluice: a serverless runtime for AI jobs.
///
/// Write a job handler with the Sluice SDK, compile it to a WebAssembly component, and let
/// Sluice own the queue, retries, rate limits, provider failover, budgets and tracing.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None, propagate_version = true)]
#[command(after_help = "Examples:\n  \
    sluice run plugins/summarize --input '{\"text\": \"A long document...\"}'\n  \
    sluice run target/my_handler.wasm --input-file input.json --json")]
pub struct Cli {
    /// Configuration file (TOML). Values can also come from SLUICE_<SECTION>__<KEY>.
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one job locally on in-memory backends and the simulated provider, and print its
    /// output, token usage and cost. Exits 1 when the job fails, 2 on bad input.
    Run(run::RunArgs),
    /// Write a ready handler project (Rust, Python or JavaScript) that `sluice run` runs at once.
    New(new::NewArgs),
    /// Validate the configuration and print it as TOML or JSON (secrets redacted), then exit.
    /// Exits 2 when it is invalid. Every key: docs/configuration.md.
    CheckConfig(check_config::CheckConfigArgs),
    /// Run a node: the HTTP API, the worker and webhook delivery. `--dev` needs nothing else.
    Up(up::UpArgs),
    /// Upload a component (or build and upload a plugin directory) to a server.
    Deploy(deploy::DeployArgs),
    /// Change a deployed plugin's settings (a new version with the same component).
    Plugins(plugins::PluginsArgs),
    /// Submit a job; `--wait` prints its result, `--follow` streams its events.
    Submit(submit::SubmitArgs),
    /// Inspect, list and cancel jobs.
    Jobs(jobs::JobsArgs),
    /// The dead-letter queue: list and redrive dead jobs.
    Dlq(dlq::DlqArgs),
    /// Tokens, cost and latency, grouped.
    Usage(usage::UsageArgs),
    /// Hard budgets (tenant, plugin, tag or job; per day, month or in total) and their spend.
    Budgets(budgets::BudgetsArgs),
    /// Webhook deliveries: list them (`--status dead` for the dead letter) and retry.
    Webhooks(webhooks::WebhooksArgs),
    /// API keys and webhook secrets (works directly against the configured store).
    Keys(keys::KeysArgs),
    /// Apply the store's migrations to the configured database, then exit (`sluice up` also
    /// applies them on start).
    Migrate,
    /// Serve the simulated model provider (OpenAI and Anthropic wire formats) standalone,
    /// for load tests against a real HTTP provider.
    #[cfg(feature = "sim")]
    SimProvider(admin::SimProviderArgs),
    /// Run a load-test scenario (in-process, or against `--url`) and report against its SLOs;
    /// exits 1 when one is missed.
    #[cfg(feature = "sim")]
    Loadtest(loadtest::LoadtestArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
}

/// Process exit codes, as documented in `--help`.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The job (or the operation) failed.
    pub const FAILED: i32 = 1;
    /// Bad invocation or input: the command could not be carried out as asked.
    pub const USAGE: i32 = 2;
    /// What the command names does not exist (an API 404, an unknown key id).
    pub const NOT_FOUND: i32 = 3;
}

/// Run the parsed command and return the process exit code.
pub async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::New(args) => new::run(args),
        Command::Up(args) => {
            up::run(args, crate::config::Config::load(cli.config.as_deref())?).await
        }
        Command::Deploy(args) => deploy::run(args).await,
        Command::Plugins(args) => plugins::run(args).await,
        Command::Submit(args) => submit::run(args).await,
        Command::Jobs(args) => jobs::run(args).await,
        Command::Dlq(args) => dlq::run(args).await,
        Command::Usage(args) => usage::run(args).await,
        Command::Budgets(args) => budgets::run(args).await,
        Command::Webhooks(args) => webhooks::run(args).await,
        Command::Keys(args) => {
            keys::run(args, crate::config::Config::load(cli.config.as_deref())?).await
        }
        Command::Migrate => {
            admin::migrate(&crate::config::Config::load(cli.config.as_deref())?).await
        }
        #[cfg(feature = "sim")]
        Command::SimProvider(args) => admin::sim_provider(args).await,
        #[cfg(feature = "sim")]
        Command::Loadtest(args) => loadtest::run(args, cli.config.as_deref()).await,
        Command::CheckConfig(args) => check_config::run(args, cli.config.as_deref()),
        Command::Completions(args) => Ok(completions::run(args)),
    }
}
