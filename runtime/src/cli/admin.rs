//! Operator commands that need no running server: `migrate` and `sim-provider`.

use super::exit;
use crate::config::Config;

/// Arguments of `sluice sim-provider`.
#[cfg(feature = "sim")]
#[derive(Debug, clap::Args)]
pub struct SimProviderArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: std::net::SocketAddr,
    /// Seed for the deterministic replies.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Time to first token, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub ttft_ms: u64,
    /// Output speed, tokens per second.
    #[arg(long, default_value_t = 80)]
    pub tokens_per_sec: u32,
    /// Requests per minute it allows (429 + retry-after past that).
    #[arg(long)]
    pub rpm: Option<u32>,
    /// Tokens per minute it allows.
    #[arg(long)]
    pub tpm: Option<u32>,
}

/// Apply the store's migrations to the configured database and exit.
pub async fn migrate(config: &Config) -> anyhow::Result<i32> {
    let url = config.database.effective_url();
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.database.data_dir)?;
    }
    let store = sluice_store::open(&url, sluice_store::StoreConfig::default()).await?;
    store.close().await;
    println!("migrations applied to {}", crate::config::redact_url(&url));
    Ok(exit::OK)
}

#[cfg(feature = "sim")]
/// Serve the simulated provider (OpenAI `/v1/chat/completions`, `/v1/embeddings` and
/// Anthropic `/v1/messages`) until interrupted.
pub async fn sim_provider(args: SimProviderArgs) -> anyhow::Result<i32> {
    let cfg = sluice_gateway::SimConfig {
        seed: args.seed,
        ttft_ms: args.ttft_ms,
        tokens_per_sec: args.tokens_per_sec,
        rpm: args.rpm,
        tpm: args.tpm,
        ..sluice_gateway::SimConfig::default()
    };
    eprintln!(
        "simulated provider on http://{}/v1 (OpenAI and Anthropic wire formats)",
        args.listen
    );
    tokio::select! {
        r = sluice_gateway::sim::run(args.listen, cfg) => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(exit::OK)
}
