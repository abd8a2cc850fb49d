//! `sluice plugins settings <name> [--timeout-ms …]`: change a deployed plugin's settings.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value};

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
    let PluginsCommand::Settings(settings) = args.command;
    let patch = match settings.patch() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::USAGE);
        }
    };
    let client = Client::new(args.client);
    let name = &settings.name;
    finish(
        async {
            let req = client
                .request(Method::PATCH, &format!("/v1/plugins/{name}"))
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
            Ok::<_, Failed>(exit::OK)
        }
        .await,
    )
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
}
