//! `sluice jobs get|list|cancel`.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::client::{Client, ClientArgs, Failed, finish};
use super::exit;

/// Arguments of `sluice jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    command: JobsCommand,
    /// Connection.
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Show one job: status, attempts, output or error, usage. Exits 1 unless completed.
    Get {
        /// Job id.
        id: String,
    },
    /// List jobs, newest first.
    List {
        /// Only this status (queued, running, completed, dead, …).
        #[arg(long)]
        status: Option<String>,
        /// Only this plugin.
        #[arg(long)]
        plugin: Option<String>,
        /// Only jobs with this tag, `key:value` (repeatable).
        #[arg(long)]
        tag: Vec<String>,
        /// Page size.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Cancel a job.
    Cancel {
        /// Job id.
        id: String,
    },
}

/// Query string from pairs (values URL-encoded).
pub(crate) fn query(pairs: &[(&str, String)]) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("static URL");
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    url.query().map(|q| format!("?{q}")).unwrap_or_default()
}

/// Print a job list as a table.
pub(crate) fn print_table(v: &Value) {
    let items = v["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("(no jobs)");
        return;
    }
    println!(
        "{:<38} {:<10} {:<16} {:>7}  CREATED",
        "ID", "STATUS", "PLUGIN", "ATTEMPT"
    );
    for j in &items {
        println!(
            "{:<38} {:<10} {:<16} {:>7}  {}",
            j["id"].as_str().unwrap_or(""),
            j["status"].as_str().unwrap_or(""),
            j["plugin"].as_str().unwrap_or(""),
            format!("{}/{}", j["attempt"], j["max_attempts"]),
            j["created_at"].as_str().unwrap_or(""),
        );
    }
    if let Some(next) = v["next_cursor"].as_str() {
        println!("more: --cursor {next}");
    }
}

/// Run `sluice jobs`.
pub async fn run(args: JobsArgs) -> anyhow::Result<i32> {
    let client = Client::new(args.client);
    finish(
        async {
            match args.command {
                JobsCommand::Get { id } => {
                    let (_, v) = client
                        .send(client.request(Method::GET, &format!("/v1/jobs/{id}")))
                        .await?;
                    if client.args.json {
                        client.print_json(&v);
                    } else {
                        println!(
                            "job {}  {}  plugin {} v{} ({})",
                            id,
                            v["status"].as_str().unwrap_or("?"),
                            v["plugin"].as_str().unwrap_or("?"),
                            v["plugin_version"],
                            v["digest"].as_str().unwrap_or("?")
                        );
                        println!("attempts {}/{}", v["attempt"], v["max_attempts"]);
                        for a in v["attempts"].as_array().into_iter().flatten() {
                            println!(
                                "  #{} {} {}",
                                a["attempt"],
                                a["outcome"].as_str().unwrap_or("?"),
                                if a["error"].is_null() {
                                    String::new()
                                } else {
                                    a["error"].to_string()
                                }
                            );
                        }
                        if !v["output"].is_null() {
                            println!("output:");
                            client.print_json(&v["output"]);
                        }
                        if !v["error"].is_null() {
                            println!("error: {}", v["error"]);
                        }
                        println!("usage: {}", v["usage"]);
                    }
                    Ok::<_, Failed>(match v["status"].as_str() {
                        Some("dead" | "cancelled") => exit::FAILED,
                        _ => exit::OK,
                    })
                }
                JobsCommand::List {
                    status,
                    plugin,
                    tag,
                    limit,
                    cursor,
                } => {
                    let mut pairs = vec![("limit", limit.to_string())];
                    pairs.extend(status.map(|s| ("status", s)));
                    pairs.extend(plugin.map(|s| ("plugin", s)));
                    pairs.extend(cursor.map(|s| ("cursor", s)));
                    pairs.extend(tag.into_iter().map(|t| ("tag", t)));
                    let (_, v) = client
                        .send(client.request(Method::GET, &format!("/v1/jobs{}", query(&pairs))))
                        .await?;
                    if client.args.json {
                        client.print_json(&v);
                    } else {
                        print_table(&v);
                    }
                    Ok(exit::OK)
                }
                JobsCommand::Cancel { id } => {
                    let (_, v) = client
                        .send(client.request(Method::POST, &format!("/v1/jobs/{id}/cancel")))
                        .await?;
                    if client.args.json {
                        client.print_json(&v);
                    } else {
                        println!("{id}: {}", v["status"].as_str().unwrap_or("?"));
                    }
                    Ok(exit::OK)
                }
            }
        }
        .await,
    )
}
