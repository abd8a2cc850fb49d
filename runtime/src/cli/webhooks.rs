//! `sluice webhooks list|retry`: webhook deliveries and their dead letters.

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;

use super::client::{Client, ClientArgs, Failed, finish};
use super::exit;
use super::jobs::query;

/// Arguments of `sluice webhooks`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    sluice webhooks list --status dead\n  \
    sluice webhooks retry 42")]
pub struct WebhooksArgs {
    #[command(subcommand)]
    command: WebhooksCommand,
    /// Connection.
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusArg {
    Pending,
    Delivered,
    Dead,
}

#[derive(Debug, Subcommand)]
enum WebhooksCommand {
    /// List deliveries, newest first.
    List {
        /// Only deliveries in this state (`dead`: the webhook dead letter).
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Page size.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Send a dead delivery again.
    Retry {
        /// The delivery's id (from `list`).
        id: i64,
    },
}

/// Run `sluice webhooks`.
pub async fn run(args: WebhooksArgs) -> anyhow::Result<i32> {
    let client = Client::new(args.client);
    finish(
        async {
            match args.command {
                WebhooksCommand::List { status, limit } => {
                    let mut pairs = vec![("limit", limit.to_string())];
                    pairs.extend(status.map(|s| ("status", format!("{s:?}").to_lowercase())));
                    let path = format!("/v1/webhooks/deliveries{}", query(&pairs));
                    let (_, v) = client.send(client.request(Method::GET, &path)).await?;
                    if client.args.json {
                        client.print_json(&v);
                        return Ok(exit::OK);
                    }
                    let rows = v["deliveries"].as_array().cloned().unwrap_or_default();
                    if rows.is_empty() {
                        println!("no deliveries");
                    }
                    for d in rows {
                        println!(
                            "{:>6}  {:<9} {:<15} {:>2} attempts  {}  {}",
                            d["id"],
                            d["status"].as_str().unwrap_or(""),
                            d["event"].as_str().unwrap_or(""),
                            d["attempts"],
                            d["url"].as_str().unwrap_or(""),
                            d["last_error"].as_str().unwrap_or(""),
                        );
                    }
                }
                WebhooksCommand::Retry { id } => {
                    let path = format!("/v1/webhooks/deliveries/{id}/retry");
                    let (_, v) = client.send(client.request(Method::POST, &path)).await?;
                    if client.args.json {
                        client.print_json(&v);
                    } else {
                        println!("delivery {id} queued again");
                    }
                }
            }
            Ok::<_, Failed>(exit::OK)
        }
        .await,
    )
}
