//! `sluice budgets list|get|set|delete`: a tenant's hard budgets.

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Client, ClientArgs, Failed, finish};
use super::exit;

/// Arguments of `sluice budgets`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    sluice budgets set daily --scope tenant --period day --limit-usd 25\n  \
    sluice budgets set per-user --scope tag --tag user --period month --limit-usd 5 \
--alert 0.8 --alert 1 --webhook https://ops.example.com/hooks/budget\n  \
    sluice budgets list --json")]
pub struct BudgetsArgs {
    #[command(subcommand)]
    command: BudgetsCommand,
    /// Connection.
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScopeArg {
    Tenant,
    Plugin,
    Tag,
    Job,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PeriodArg {
    Day,
    Month,
    Total,
}

#[derive(Debug, Subcommand)]
enum BudgetsCommand {
    /// List budgets with their current spend.
    List,
    /// One budget and its spend per window.
    Get {
        /// The budget's name.
        name: String,
    },
    /// Create or replace a budget.
    Set {
        /// The budget's name.
        name: String,
        /// What is counted.
        #[arg(long, value_enum)]
        scope: ScopeArg,
        /// The tag key, for `--scope tag` (e.g. `user`).
        #[arg(long)]
        tag: Option<String>,
        /// Only this plugin / tag value (absent: each value gets its own budget).
        #[arg(long)]
        value: Option<String>,
        /// When spend resets.
        #[arg(long, value_enum)]
        period: PeriodArg,
        /// Hard limit in US dollars.
        #[arg(long)]
        limit_usd: f64,
        /// Alert at this fraction of the limit (repeatable; default 0.5, 0.8, 1).
        #[arg(long = "alert")]
        alerts: Vec<f64>,
        /// POST alerts to this URL (signed like job webhooks).
        #[arg(long)]
        webhook: Option<String>,
    },
    /// Stop enforcing a budget.
    Delete {
        /// The budget's name.
        name: String,
    },
}

fn lower<T: std::fmt::Debug>(v: T) -> String {
    format!("{v:?}").to_ascii_lowercase()
}

fn print_budget(b: &Value) {
    let spec = &b["spec"];
    let what = match spec["scope"].as_str() {
        Some("tag") => format!(
            "tag {}={}",
            spec["tag"].as_str().unwrap_or("?"),
            spec["value"].as_str().unwrap_or("*")
        ),
        Some(s) => format!("{s} {}", spec["value"].as_str().unwrap_or("")),
        None => "?".into(),
    };
    println!(
        "{:<20} {:<24} ${:<10} per {}",
        b["name"].as_str().unwrap_or(""),
        what.trim(),
        spec["limit_usd"],
        spec["period"].as_str().unwrap_or("?")
    );
    for w in b["windows"].as_array().into_iter().flatten() {
        println!(
            "    {:<28} {:<10} spent ${:.6}  held ${:.6}  left ${:.6}",
            w["scope"].as_str().unwrap_or(""),
            w["window"].as_str().unwrap_or(""),
            w["spent_usd"].as_f64().unwrap_or(0.0),
            w["reserved_usd"].as_f64().unwrap_or(0.0),
            w["remaining_usd"].as_f64().unwrap_or(0.0),
        );
    }
}

/// Run `sluice budgets`.
pub async fn run(args: BudgetsArgs) -> anyhow::Result<i32> {
    let client = Client::new(args.client);
    finish(
        async {
            let (method, path, body) = match args.command {
                BudgetsCommand::List => (Method::GET, "/v1/budgets".to_string(), None),
                BudgetsCommand::Get { name } => (Method::GET, format!("/v1/budgets/{name}"), None),
                BudgetsCommand::Delete { name } => {
                    (Method::DELETE, format!("/v1/budgets/{name}"), None)
                }
                BudgetsCommand::Set {
                    name,
                    scope,
                    tag,
                    value,
                    period,
                    limit_usd,
                    alerts,
                    webhook,
                } => {
                    let mut body = json!({
                        "scope": lower(scope),
                        "period": lower(period),
                        "limit_usd": limit_usd,
                    });
                    if let Some(t) = tag {
                        body["tag"] = json!(t);
                    }
                    if let Some(v) = value {
                        body["value"] = json!(v);
                    }
                    if !alerts.is_empty() {
                        body["alerts"] = json!(alerts);
                    }
                    if let Some(url) = webhook {
                        body["webhook"] = json!({ "url": url });
                    }
                    (Method::PUT, format!("/v1/budgets/{name}"), Some(body))
                }
            };
            let deleting = method == Method::DELETE;
            let mut req = client.request(method, &path);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let (_, v) = client.send(req).await?;
            if client.args.json {
                client.print_json(&v);
            } else if deleting {
                println!("deleted");
            } else if let Some(list) = v["budgets"].as_array() {
                if list.is_empty() {
                    println!("no budgets");
                }
                list.iter().for_each(print_budget);
            } else {
                print_budget(&v);
            }
            Ok::<_, Failed>(exit::OK)
        }
        .await,
    )
}
