//! The HTTP client the API commands share: base URL, API key, `--json`, problem rendering.

use clap::Args;
use serde_json::Value;

use super::exit;

/// Connection options of commands that talk to a running server.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "SLUICE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API key (not needed against `sluice up --dev` on loopback).
    #[arg(long, env = "SLUICE_API_KEY", hide_env_values = true, global = true)]
    pub key: Option<String>,
    /// Print the server's JSON instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A failed API call, already explained to the user; carries the exit code.
#[derive(Debug)]
pub struct Failed(pub i32);

/// A client for one command.
pub struct Client {
    http: reqwest::Client,
    /// Options.
    pub args: ClientArgs,
}

impl Client {
    /// A client for `args`.
    pub fn new(args: ClientArgs) -> Self {
        Client {
            http: reqwest::Client::new(),
            args,
        }
    }

    /// A request to `path` (starting with `/`).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{}", self.args.url.trim_end_matches('/'), path);
        let mut req = self.http.request(method, url);
        if let Some(key) = &self.args.key {
            req = req.bearer_auth(key);
        }
        req
    }

    /// Send and decode a JSON answer; problems are printed and become [`Failed`].
    ///
    /// A state-changing request without a `Content-Type` is sent as JSON: a dev-mode server
    /// refuses POST, PUT, PATCH and DELETE without one, even when they have no body.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value), Failed> {
        let (http, req) = req.build_split();
        let sent = match req {
            Ok(mut req) => {
                with_json_type(&mut req);
                http.execute(req).await
            }
            Err(e) => Err(e),
        };
        let res = match sent {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "error: could not reach {}: {e}\n  is the server running? start one with `sluice up --dev`",
                    self.args.url
                );
                return Err(Failed(exit::FAILED));
            }
        };
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            report_problem(status, &body, self.args.json);
            let code = match status {
                400 | 413 | 415 | 422 => exit::USAGE,
                404 => exit::NOT_FOUND,
                _ => exit::FAILED,
            };
            return Err(Failed(code));
        }
        Ok((status, body))
    }

    /// Print `v` as pretty JSON.
    pub fn print_json(&self, v: &Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }
}

/// Mark a state-changing request that names no content type as JSON.
fn with_json_type(req: &mut reqwest::Request) {
    let changes_state = matches!(
        *req.method(),
        reqwest::Method::POST
            | reqwest::Method::PUT
            | reqwest::Method::PATCH
            | reqwest::Method::DELETE
    );
    if changes_state && !req.headers().contains_key(reqwest::header::CONTENT_TYPE) {
        req.headers_mut().insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/json"),
        );
    }
}

/// Print an API problem to stderr (or as JSON on stdout with `--json`).
pub fn report_problem(status: u16, body: &Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(body).unwrap_or_default());
        return;
    }
    let title = body["title"].as_str().unwrap_or("request failed");
    let detail = body["detail"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    eprintln!("error: {title} ({status}): {detail}");
    if status == 401 {
        eprintln!("  pass --key or set SLUICE_API_KEY (create a key with `sluice keys create`)");
    }
}

/// Turn a command body's result into an exit code.
pub fn finish(r: Result<i32, Failed>) -> anyhow::Result<i32> {
    Ok(r.unwrap_or_else(|Failed(code)| code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_changing_requests_say_json() {
        let client = Client::new(ClientArgs {
            url: "http://127.0.0.1:1".into(),
            key: None,
            json: false,
        });
        let built = |m: reqwest::Method, wasm: bool| {
            let mut b = client.request(m, "/x");
            if wasm {
                b = b.header("content-type", "application/wasm");
            }
            let mut req = b.build().unwrap();
            with_json_type(&mut req);
            req.headers()
                .get(reqwest::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            built(reqwest::Method::POST, false).as_deref(),
            Some("application/json")
        );
        assert_eq!(
            built(reqwest::Method::DELETE, false).as_deref(),
            Some("application/json")
        );
        assert_eq!(built(reqwest::Method::GET, false), None);
        // An upload keeps its own type, once.
        assert_eq!(
            built(reqwest::Method::PUT, true).as_deref(),
            Some("application/wasm")
        );
    }
}
