//! `sluice usage --by plugin|model|provider|user|feature [--since 24h]`.

use clap::Args;
use reqwest::Method;

use super::client::{Client, ClientArgs, Failed, finish};
use super::exit;
use super::jobs::query;

/// Arguments of `sluice usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Group by plugin, model, provider, user, feature or tag:<name>.
    #[arg(long, default_value = "plugin")]
    pub by: String,
    /// Start: RFC 3339 or a duration back from now (`24h`, `7d` is not supported: use `168h`).
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// End (RFC 3339); default now.
    #[arg(long)]
    pub until: Option<String>,
    /// Connection.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Run `sluice usage`.
pub async fn run(args: UsageArgs) -> anyhow::Result<i32> {
    let client = Client::new(args.client.clone());
    finish(
        async {
            let mut pairs = vec![("group_by", args.by.clone()), ("since", args.since.clone())];
            pairs.extend(args.until.clone().map(|u| ("until", u)));
            let (_, v) = client
                .send(client.request(Method::GET, &format!("/v1/usage{}", query(&pairs))))
                .await?;
            if client.args.json {
                client.print_json(&v);
                return Ok::<_, Failed>(exit::OK);
            }
            println!(
                "{:<24} {:>7} {:>10} {:>10} {:>12} {:>9} {:>9}",
                args.by.to_uppercase(),
                "CALLS",
                "IN TOK",
                "OUT TOK",
                "COST $",
                "P50 ms",
                "P95 ms"
            );
            for r in v["items"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:>7} {:>10} {:>10} {:>12.6} {:>9.0} {:>9.0}",
                    r["key"].as_str().unwrap_or("(none)"),
                    r["calls"].as_u64().unwrap_or(0),
                    r["input_tokens"].as_u64().unwrap_or(0),
                    r["output_tokens"].as_u64().unwrap_or(0),
                    r["cost_usd"].as_f64().unwrap_or(0.0),
                    r["latency_p50_ms"].as_f64().unwrap_or(0.0),
                    r["latency_p95_ms"].as_f64().unwrap_or(0.0),
                );
            }
            Ok(exit::OK)
        }
        .await,
    )
}
