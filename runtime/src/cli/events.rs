//! Following a job's event stream (`GET /v1/jobs/{id}/events`, Server-Sent Events): decoded by
//! `eventsource-stream` (so a character split across network chunks arrives whole), printed
//! as it comes, and resumed with `Last-Event-ID` when the connection drops.
//!
//! The server gives every persisted event its per-job sequence as `id` and, on a resume,
//! replays exactly the events after the one named: nothing with an id is lost or shown twice.
//! Status changes are live-only (no id); after a resume the server sends the job's current
//! status, which is skipped when it is the one already shown.

use std::io::Write;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Client, Failed, report_problem};
use super::exit;

/// Reconnections in a row, without an event in between, before following gives up.
const MAX_RECONNECTS: u32 = 8;
/// The first wait before reconnecting, doubled on each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait before reconnecting (also caps a server's `retry:`).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Stream job `id`'s events and print them until its `result`; the exit code says whether it
/// completed.
pub(crate) async fn follow(client: &Client, id: &str) -> Result<i32, Failed> {
    let mut printer = Printer::new(client);
    let mut last_id: Option<String> = None;
    let mut server_retry: Option<Duration> = None;
    let mut failures = 0u32;
    loop {
        let mut req = client
            .request(Method::GET, &format!("/v1/jobs/{id}/events"))
            .header("accept", "text/event-stream");
        if let Some(last) = &last_id {
            req = req.header("last-event-id", last);
        }
        let why = match req.send().await {
            Err(e) => format!("could not reach {}: {e}", client.args.url),
            Ok(res) if !res.status().is_success() => {
                let status = res.status().as_u16();
                let body = res.json::<Value>().await.unwrap_or_default();
                report_problem(status, &body, client.args.json);
                return Err(Failed(if status == 404 {
                    exit::NOT_FOUND
                } else {
                    exit::FAILED
                }));
            }
            Ok(res) => {
                let mut events = res.bytes_stream().eventsource();
                let mut why = "the server ended the stream before the job's result".to_string();
                while let Some(next) = events.next().await {
                    match next {
                        Ok(event) => {
                            failures = 0;
                            // The parser carries the last id over to events without one (the
                            // SSE "last event ID"): an event has an id of its own when it
                            // changes, as the server's ids only grow.
                            let own_id = (!event.id.is_empty()
                                && last_id.as_deref() != Some(event.id.as_str()))
                            .then(|| event.id.clone());
                            if let Some(id) = &own_id {
                                last_id = Some(id.clone());
                            }
                            server_retry = event.retry.or(server_retry);
                            if let Some(code) = printer.show(&event, own_id.as_deref()) {
                                return Ok(code);
                            }
                        }
                        Err(e) => {
                            why = format!("the event stream broke: {e}");
                            break;
                        }
                    }
                }
                why
            }
        };
        failures += 1;
        if failures > MAX_RECONNECTS {
            printer.end_tokens();
            eprintln!(
                "error: {why}; gave up after {MAX_RECONNECTS} reconnections in a row (see `sluice jobs get {id}`)"
            );
            return Err(Failed(exit::FAILED));
        }
        let wait = server_retry
            .unwrap_or(FIRST_BACKOFF * 2u32.pow(failures - 1))
            .min(MAX_BACKOFF);
        printer.end_tokens();
        eprintln!(
            "  ({why}; resuming {} in {} ms)",
            last_id
                .as_deref()
                .map_or("from the start".to_string(), |l| format!("after event {l}")),
            wait.as_millis()
        );
        tokio::time::sleep(wait).await;
    }
}

/// Prints events as they come: one JSON object a line with `--json`, else text on stderr
/// (tokens as they stream) and the job's output on stdout.
struct Printer<'a> {
    client: &'a Client,
    /// A token stream is being printed on the current line.
    in_tokens: bool,
    /// The data of the last `status` event shown.
    last_status: Option<String>,
}

impl<'a> Printer<'a> {
    fn new(client: &'a Client) -> Self {
        Printer {
            client,
            in_tokens: false,
            last_status: None,
        }
    }

    fn end_tokens(&mut self) {
        if self.in_tokens {
            eprintln!();
            self.in_tokens = false;
        }
    }

    /// Show one event; the exit code once it is the job's `result`.
    fn show(&mut self, event: &Event, own_id: Option<&str>) -> Option<i32> {
        let name = event.event.as_str();
        if name == "status" {
            // After a resume the server repeats the current status: not news.
            if self.last_status.as_deref() == Some(event.data.as_str()) {
                return None;
            }
            self.last_status = Some(event.data.clone());
        }
        let v: Value =
            serde_json::from_str(&event.data).unwrap_or_else(|_| Value::String(event.data.clone()));
        if self.client.args.json {
            let mut line = json!({ "event": name, "data": v });
            if let Some(id) = own_id {
                line["id"] = json!(id);
            }
            println!("{line}");
        } else {
            self.show_text(name, &v);
        }
        (name == "result").then(|| {
            if v["status"] == "completed" {
                exit::OK
            } else {
                exit::FAILED
            }
        })
    }

    fn show_text(&mut self, name: &str, v: &Value) {
        // `token` is what servers before 0.1 sent for `token_delta`.
        let token = matches!(name, "token_delta" | "token");
        if !token {
            self.end_tokens();
        }
        match name {
            "token_delta" | "token" => {
                eprint!("{}", v["delta"].as_str().unwrap_or(""));
                let _ = std::io::stderr().flush();
                self.in_tokens = true;
            }
            "status" => eprintln!("· {}", v["status"].as_str().unwrap_or("?")),
            "progress" => eprintln!("· {}", v["message"].as_str().unwrap_or("")),
            "log" => eprintln!(
                "  [{}] {}",
                v["level"].as_str().unwrap_or("info"),
                v["message"].as_str().unwrap_or("")
            ),
            "model_call" => eprintln!(
                "  model {} via {}: {} in / {} out tokens",
                v["model"].as_str().unwrap_or("?"),
                v["provider"].as_str().unwrap_or("?"),
                v["input_tokens"],
                v["output_tokens"]
            ),
            "result" => {
                if v["status"] == "completed" {
                    self.client.print_json(&v["output"]);
                } else {
                    eprintln!(
                        "job {}: {}",
                        v["status"].as_str().unwrap_or("?"),
                        v["error"]
                    );
                }
            }
            other => eprintln!("  {other}: {v}"),
        }
    }
}
