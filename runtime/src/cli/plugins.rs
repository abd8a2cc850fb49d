//! `sluice plugins list|versions|rollback|delete|settings`: deployed plugins over the HTTP API.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::client::{Client, ClientArgs, Failed, finish};
use super::exit;

/// Arguments of `sluice plugins`.
#[derive(Debug, Args)]
pub struct PluginsArgs {
    #[command(subcommand)]
    command: PluginsCommand,
    /// Connection.
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// List the tenant's plugins: active version, how many versions, active digest.
    List,
    /// A plugin's versions, oldest first; `*` marks the active one.
    Versions {
        /// Plugin name.
        name: String,
    },
    /// Make an earlier version active again: by default the newest version older than the
    /// active one; `--to` names any version (number or `sha256:` digest). Jobs submitted from
    /// now on run it; jobs already accepted keep theirs.
    Rollback {
        /// Plugin name.
        name: String,
        /// The version to activate: a number, or a component digest (`sha256:<hex>`).
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
    },
    /// Delete a plugin and every version (jobs already accepted keep their component).
    Delete {
        /// Plugin name.
        name: String,
    },
    /// Change the active version's settings. The server makes a new version with the same
    /// component and the merged settings; `POST /v1/plugins/{name}/activate` rolls back.
    Settings(SettingsArgs),
}

#[derive(Debug, Args)]
struct SettingsArgs {
    /// Plugin name.
    name: String,
    /// Attempt timeout of new jobs, in ms.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Memory cap of an instance, in MiB.
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Attempts allowed for new jobs.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Most of its jobs running at once.
    #[arg(long)]
    concurrency: Option<u32>,
    /// Model aliases it may call, comma-separated.
    #[arg(long, value_delimiter = ',')]
    allowed_models: Option<Vec<String>>,
    /// Reset a setting to the server default (repeatable): timeout-ms, memory-mb,
    /// max-attempts, concurrency or allowed-models.
    #[arg(long, value_name = "SETTING")]
    reset: Vec<String>,
}

const SETTINGS: [&str; 5] = [
    "timeout_ms",
    "memory_mb",
    "max_attempts",
    "concurrency",
    "allowed_models",
];

impl SettingsArgs {
    /// The merge patch these flags ask for, or why they make none.
    fn patch(&self) -> Result<Map<String, Value>, String> {
        let mut patch = Map::new();
        for setting in &self.reset {
            let key = setting.replace('-', "_");
            if !SETTINGS.contains(&key.as_str()) {
                return Err(format!("cannot reset `{setting}`: not a setting"));
            }
            patch.insert(key, Value::Null);
        }
        let set = [
            ("timeout_ms", self.timeout_ms.map(Value::from)),
            ("memory_mb", self.memory_mb.map(Value::from)),
            ("max_attempts", self.max_attempts.map(Value::from)),
            ("concurrency", self.concurrency.map(Value::from)),
            (
                "allowed_models",
                self.allowed_models.clone().map(Value::from),
            ),
        ];
        for (key, value) in set {
            if let Some(v) = value {
                if patch.contains_key(key) {
                    return Err(format!("`{key}` is both set and reset"));
                }
                patch.insert(key.to_string(), v);
            }
        }
        if patch.is_empty() {
            return Err("nothing to change: give a setting such as --timeout-ms".into());
        }
        Ok(patch)
    }
}

/// Run `sluice plugins`.
pub async fn run(args: PluginsArgs) -> anyhow::Result<i32> {
    let client = Client::new(args.client);
    let result = match args.command {
        PluginsCommand::List => list(&client).await,
        PluginsCommand::Versions { name } => versions(&client, &name).await,
        PluginsCommand::Rollback { name, to } => rollback(&client, &name, to.as_deref()).await,
        PluginsCommand::Delete { name } => delete(&client, &name).await,
        PluginsCommand::Settings(settings) => change_settings(&client, &settings).await,
    };
    finish(result)
}

/// The path of plugin `name` (its name URL-encoded: an odd one gets the server's 400, not a
/// request to another path).
fn plugin_path(name: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/v1/plugins/").expect("static URL");
    url.path_segments_mut()
        .expect("an http URL has a path")
        .pop_if_empty()
        .push(name);
    url.path().to_string()
}

async fn list(client: &Client) -> Result<i32, Failed> {
    let (_, v) = client
        .send(client.request(Method::GET, "/v1/plugins"))
        .await?;
    if client.args.json {
        client.print_json(&v);
    } else {
        print!("{}", plugins_table(&v));
    }
    Ok(exit::OK)
}

async fn versions(client: &Client, name: &str) -> Result<i32, Failed> {
    let (_, v) = client
        .send(client.request(Method::GET, &plugin_path(name)))
        .await?;
    if client.args.json {
        client.print_json(&v);
    } else {
        print!("{}", versions_table(&v));
    }
    Ok(exit::OK)
}

async fn rollback(client: &Client, name: &str, to: Option<&str>) -> Result<i32, Failed> {
    let (_, plugin) = client
        .send(client.request(Method::GET, &plugin_path(name)))
        .await?;
    let was = plugin["active_version"].as_i64();
    let body = match rollback_target(&plugin, to) {
        Ok(body) => body,
        Err(why) => {
            eprintln!("error: {why}");
            return Err(Failed(exit::USAGE));
        }
    };
    let (_, v) = client
        .send(
            client
                .request(Method::POST, &format!("{}/activate", plugin_path(name)))
                .json(&body),
        )
        .await?;
    if client.args.json {
        client.print_json(&v);
    } else {
        let was = was.map_or("none".to_string(), |n| format!("v{n}"));
        println!(
            "{name}: v{} is active (was {was}); new jobs run {}",
            v["active_version"],
            v["active_digest"].as_str().unwrap_or("?")
        );
    }
    Ok(exit::OK)
}

/// The body of the `activate` call a rollback makes, or why there is none.
fn rollback_target(plugin: &Value, to: Option<&str>) -> Result<Value, String> {
    let name = plugin["name"].as_str().unwrap_or("the plugin");
    if let Some(to) = to.map(str::trim) {
        if to.starts_with("sha256:") {
            return Ok(json!({ "digest": to }));
        }
        return match to.trim_start_matches('v').parse::<i64>() {
            Ok(n) => Ok(json!({ "version": n })),
            Err(_) => Err(format!(
                "--to `{to}` is neither a version number nor a `sha256:` digest"
            )),
        };
    }
    let Some(active) = plugin["active_version"].as_i64() else {
        return Err(format!(
            "{name} has no active version: name one with --to (see `sluice plugins versions {name}`)"
        ));
    };
    plugin["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["version"].as_i64())
        .filter(|&n| n < active)
        .max()
        .map(|n| json!({ "version": n }))
        .ok_or_else(|| format!("{name} v{active} is its oldest version: nothing to roll back to"))
}

async fn delete(client: &Client, name: &str) -> Result<i32, Failed> {
    client
        .send(client.request(Method::DELETE, &plugin_path(name)))
        .await?;
    if client.args.json {
        client.print_json(&json!({ "name": name, "deleted": true }));
    } else {
        println!("deleted plugin {name} and its versions");
    }
    Ok(exit::OK)
}

async fn change_settings(client: &Client, settings: &SettingsArgs) -> Result<i32, Failed> {
    let patch = match settings.patch() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(Failed(exit::USAGE));
        }
    };
    let name = &settings.name;
    let req = client
        .request(Method::PATCH, &plugin_path(name))
        .json(&patch);
    let (_, v) = client.send(req).await?;
    if client.args.json {
        client.print_json(&v);
    } else if v["existing"] == true {
        println!("{name} v{}: settings unchanged", v["version"]);
    } else {
        println!(
            "{name} v{} is active with settings {}",
            v["version"], v["settings"]
        );
    }
    Ok(exit::OK)
}

/// The short form of a digest: its first 12 hex digits.
fn short_digest(d: &Value) -> String {
    let d = d.as_str().unwrap_or("-");
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    hex.chars().take(12).collect()
}

/// `GET /v1/plugins` as a table.
fn plugins_table(v: &Value) -> String {
    let items = v["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return "(no plugins: deploy one with `sluice deploy`)\n".into();
    }
    let nw = items
        .iter()
        .map(|p| p["name"].as_str().unwrap_or("").len())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = format!(
        "{:<nw$}  {:>6}  {:>8}  {:<12}  UPDATED\n",
        "NAME", "ACTIVE", "VERSIONS", "DIGEST"
    );
    for p in &items {
        let versions = p["versions"].as_array().cloned().unwrap_or_default();
        let active = p["active_version"]
            .as_i64()
            .map_or("-".to_string(), |n| format!("v{n}"));
        let updated = versions
            .last()
            .and_then(|v| v["created_at"].as_str())
            .unwrap_or("-");
        out.push_str(&format!(
            "{:<nw$}  {:>6}  {:>8}  {:<12}  {}\n",
            p["name"].as_str().unwrap_or(""),
            active,
            versions.len(),
            short_digest(&p["active_digest"]),
            updated
        ));
    }
    out
}

/// A plugin's versions (`GET /v1/plugins/{name}`) as a table; `*` marks the active one.
fn versions_table(p: &Value) -> String {
    let active = p["active_version"].as_i64();
    let mut out = format!(
        "  {:>7}  {:<12}  {:<30}  SETTINGS\n",
        "VERSION", "DIGEST", "CREATED"
    );
    for v in p["versions"].as_array().into_iter().flatten() {
        let n = v["version"].as_i64();
        let settings = match &v["settings"] {
            Value::Object(m) if !m.is_empty() => Value::Object(m.clone()).to_string(),
            _ => "(server defaults)".to_string(),
        };
        out.push_str(&format!(
            "{} {:>7}  {:<12}  {:<30}  {}\n",
            if n.is_some() && n == active { "*" } else { " " },
            n.map_or("?".to_string(), |n| format!("v{n}")),
            short_digest(&v["digest"]),
            v["created_at"].as_str().unwrap_or("-"),
            settings
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> SettingsArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: SettingsArgs,
        }
        let argv = std::iter::once("x").chain(argv.iter().copied());
        <Cli as clap::Parser>::parse_from(argv).settings
    }

    #[test]
    fn flags_become_a_merge_patch() {
        let p = args(&[
            "noop",
            "--timeout-ms",
            "500",
            "--allowed-models",
            "fast,smart",
        ])
        .patch()
        .unwrap();
        assert_eq!(
            Value::Object(p),
            serde_json::json!({"timeout_ms": 500, "allowed_models": ["fast", "smart"]})
        );
        let p = args(&["noop", "--reset", "memory-mb"]).patch().unwrap();
        assert_eq!(Value::Object(p), serde_json::json!({"memory_mb": null}));
        assert!(args(&["noop"]).patch().is_err());
        assert!(args(&["noop", "--reset", "colour"]).patch().is_err());
        assert!(
            args(&["noop", "--reset", "timeout-ms", "--timeout-ms", "5"])
                .patch()
                .is_err()
        );
    }

    fn plugin() -> Value {
        json!({
            "name": "summarize",
            "active_version": 3,
            "active_digest": "sha256:0123456789abcdef0123",
            "versions": [
                {"version": 1, "digest": "sha256:aaaaaaaaaaaaaaaa", "settings": {}, "created_at": "2026-01-01T00:00:00Z"},
                {"version": 2, "digest": "sha256:bbbbbbbbbbbbbbbb", "settings": {"timeout_ms": 500}, "created_at": "2026-01-02T00:00:00Z"},
                {"version": 3, "digest": "sha256:0123456789abcdef0123", "settings": {}, "created_at": "2026-01-03T00:00:00Z"},
                {"version": 4, "digest": "sha256:cccccccccccccccc", "settings": {}, "created_at": "2026-01-04T00:00:00Z"},
            ],
        })
    }

    #[test]
    fn rollback_goes_to_the_newest_older_version_or_the_one_named() {
        let p = plugin();
        assert_eq!(rollback_target(&p, None), Ok(json!({"version": 2})));
        assert_eq!(rollback_target(&p, Some("4")), Ok(json!({"version": 4})));
        assert_eq!(rollback_target(&p, Some("v1")), Ok(json!({"version": 1})));
        assert_eq!(
            rollback_target(&p, Some("sha256:bbbb")),
            Ok(json!({"digest": "sha256:bbbb"}))
        );
        assert!(rollback_target(&p, Some("latest")).is_err());
        let mut oldest = p.clone();
        oldest["active_version"] = json!(1);
        assert!(
            rollback_target(&oldest, None)
                .unwrap_err()
                .contains("oldest version")
        );
        let mut none = p;
        none["active_version"] = Value::Null;
        assert!(rollback_target(&none, None).unwrap_err().contains("--to"));
    }

    #[test]
    fn tables_show_the_active_version() {
        let p = plugin();
        let versions = versions_table(&p);
        let active: Vec<&str> = versions.lines().filter(|l| l.starts_with('*')).collect();
        assert_eq!(active.len(), 1, "{versions}");
        assert!(
            active[0].contains("v3") && active[0].contains("0123456789ab"),
            "{versions}"
        );
        assert!(versions.contains(r#"{"timeout_ms":500}"#), "{versions}");
        let list = plugins_table(&json!({"items": [p]}));
        let row = list.lines().nth(1).unwrap();
        assert!(row.starts_with("summarize"), "{list}");
        assert!(row.contains(" v3 ") && row.contains(" 4 "), "{list}");
        assert!(row.ends_with("2026-01-04T00:00:00Z"), "{list}");
        assert!(plugins_table(&json!({"items": []})).starts_with("(no plugins"));
    }

    #[test]
    fn odd_names_stay_in_their_path_segment() {
        assert_eq!(plugin_path("summarize"), "/v1/plugins/summarize");
        assert_eq!(plugin_path("../jobs"), "/v1/plugins/..%2Fjobs");
    }
}
