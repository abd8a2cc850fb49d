//! `sluice submit <plugin> --input JSON [--wait | --follow]`.

use std::time::Duration;

use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Client, ClientArgs, finish};
use super::exit;
use super::progress::spinner;

/// Arguments of `sluice submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The plugin to run.
    pub plugin: String,
    /// The job's input as JSON text.
    #[arg(long, short, default_value = "{}")]
    pub input: String,
    /// Wait for the job to finish and print its result.
    #[arg(long, conflicts_with = "follow")]
    pub wait: bool,
    /// Stream the job's events (progress, logs, tokens) until it finishes.
    #[arg(long)]
    pub follow: bool,
    /// Idempotency key: resubmitting with it returns the same job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Attribution tags, `key=value` (repeatable), e.g. `--tag user=ann --tag feature=search`.
    #[arg(long = "tag", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Priority (lower runs first).
    #[arg(long)]
    pub priority: Option<i32>,
    /// Webhook URL for the outcome.
    #[arg(long)]
    pub webhook: Option<String>,
    /// Connection.
    #[command(flatten)]
    pub client: ClientArgs,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got `{s}`"))
}

/// Run `sluice submit`.
pub async fn run(args: SubmitArgs) -> anyhow::Result<i32> {
    let input: Value = match serde_json::from_str(&args.input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: --input is not valid JSON: {e}");
            return Ok(exit::USAGE);
        }
    };
    let mut body = json!({ "input": input });
    if !args.tags.is_empty() {
        body["tags"] = json!(
            args.tags
                .iter()
                .cloned()
                .collect::<std::collections::BTreeMap<_, _>>()
        );
    }
    if let Some(p) = args.priority {
        body["priority"] = json!(p);
    }
    if let Some(url) = &args.webhook {
        body["webhook"] = json!({ "url": url });
    }
    let client = Client::new(args.client.clone());
    finish(
        async {
            let path = if args.wait {
                format!("/v1/plugins/{}/jobs?wait=60s", args.plugin)
            } else {
                format!("/v1/plugins/{}/jobs", args.plugin)
            };
            let mut req = client.request(Method::POST, &path).json(&body);
            if let Some(k) = &args.idempotency_key {
                req = req.header("idempotency-key", k);
            }
            let (_, v) = client.send(req).await?;
            let id = v["id"].as_str().unwrap_or_default().to_string();
            if args.follow {
                return super::events::follow(&client, &id).await;
            }
            if !args.wait {
                if client.args.json {
                    client.print_json(&v);
                } else {
                    println!("{id}");
                    eprintln!(
                        "job {id} is {}; watch it with `sluice jobs get {id}`",
                        v["status"].as_str().unwrap_or("?")
                    );
                }
                return Ok(exit::OK);
            }
            let mut job = v;
            let bar = spinner(format!("job {id}"), client.args.json);
            while !is_terminal(&job) {
                bar.set_message(format!(
                    "job {id}: {} (attempt {})",
                    job["status"].as_str().unwrap_or("?"),
                    job["attempt"]
                ));
                tokio::time::sleep(Duration::from_millis(500)).await;
                let polled = client
                    .send(client.request(Method::GET, &format!("/v1/jobs/{id}")))
                    .await;
                match polled {
                    Ok((_, j)) => job = j,
                    Err(e) => {
                        bar.finish_and_clear();
                        return Err(e);
                    }
                }
            }
            bar.finish_and_clear();
            Ok(print_outcome(&client, &job))
        }
        .await,
    )
}

fn is_terminal(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("completed" | "dead" | "cancelled")
    )
}

/// Print a finished job; the exit code says whether it completed.
pub(crate) fn print_outcome(client: &Client, job: &Value) -> i32 {
    if client.args.json {
        client.print_json(job);
    } else if job["status"] == "completed" {
        client.print_json(&job["output"]);
        let u = &job["usage"];
        if u.is_object() {
            eprintln!(
                "completed: {} model calls, {} input + {} output tokens, ${:.6}",
                u["model_calls"],
                u["input_tokens"],
                u["output_tokens"],
                u["cost_usd"].as_f64().unwrap_or(0.0)
            );
        }
    } else {
        eprintln!(
            "job {} {}: {}",
            job["id"].as_str().unwrap_or("?"),
            job["status"].as_str().unwrap_or("?"),
            job["error"]
        );
    }
    if job["status"] == "completed" {
        exit::OK
    } else {
        exit::FAILED
    }
}
