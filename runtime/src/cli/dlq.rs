//! `sluice dlq list|redrive`: the dead-letter queue.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::json;

use super::client::{Client, ClientArgs, Failed, finish};
use super::exit;
use super::jobs::{print_table, query};

/// Arguments of `sluice dlq`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
    /// Connection.
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead jobs.
    List {
        /// Only this plugin.
        #[arg(long)]
        plugin: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Put dead jobs back in the queue.
    Redrive {
        /// Only this plugin.
        #[arg(long)]
        plugin: Option<String>,
        /// Only these jobs (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Run the plugin's active version instead of the one they ran.
        #[arg(long)]
        active: bool,
        /// Run from scratch: forget journaled model calls, so they are made (and paid) again.
        /// By default redriven jobs replay their journal.
        #[arg(long, alias = "clear-journal")]
        fresh: bool,
    },
}

/// Run `sluice dlq`.
pub async fn run(args: DlqArgs) -> anyhow::Result<i32> {
    let client = Client::new(args.client);
    finish(
        async {
            match args.command {
                DlqCommand::List { plugin, limit } => {
                    let mut pairs = vec![("limit", limit.to_string())];
                    pairs.extend(plugin.map(|p| ("plugin", p)));
                    let (_, v) = client
                        .send(client.request(Method::GET, &format!("/v1/dlq{}", query(&pairs))))
                        .await?;
                    if client.args.json {
                        client.print_json(&v);
                    } else {
                        println!("{} dead jobs", v["total"]);
                        print_table(&v);
                    }
                }
                DlqCommand::Redrive {
                    plugin,
                    ids,
                    active,
                    fresh,
                } => {
                    let mut body = json!({ "fresh": fresh });
                    if let Some(p) = plugin {
                        body["plugin"] = json!(p);
                    }
                    if !ids.is_empty() {
                        body["ids"] = json!(ids);
                    }
                    if active {
                        body["target"] = json!("active");
                    }
                    let req = client.request(Method::POST, "/v1/dlq/redrive").json(&body);
                    let (_, v) = client.send(req).await?;
                    if client.args.json {
                        client.print_json(&v);
                    } else {
                        println!("redrove {} jobs", v["count"]);
                    }
                }
            }
            Ok::<_, Failed>(exit::OK)
        }
        .await,
    )
}
