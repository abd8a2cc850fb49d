//! `sluice loadtest SCENARIO.toml`: run a load-test scenario and gate on its SLOs.

use std::path::{Path, PathBuf};

use clap::Args;

use super::exit;
use crate::loadtest::{self, LocalOptions, Where, scenario::Scenario};

/// Arguments of `sluice loadtest`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 every SLO met; 1 an SLO missed (or the run failed); \
    2 a bad scenario or arguments.\n\nExamples:\n  \
    sluice loadtest examples/loadtest/3x-expected.toml --html report.html\n  \
    sluice loadtest monday-9am.toml --url http://127.0.0.1:8080 --key $SLUICE_API_KEY --json -"
)]
pub struct LoadtestArgs {
    /// The scenario file (see `examples/loadtest/` and docs/loadtest.md).
    pub scenario: PathBuf,
    /// Drive this running server instead of starting one in-process.
    #[arg(long)]
    pub url: Option<String>,
    /// API key for `--url`.
    #[arg(long, env = "SLUICE_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// In-process: the store (`postgres://…` or `sqlite://…`); default SQLite in a
    /// temporary directory.
    #[arg(long, conflicts_with = "url")]
    pub database_url: Option<String>,
    /// In-process: keep SQLite and compiled artifacts in this directory.
    #[arg(long, conflicts_with = "url")]
    pub data_dir: Option<PathBuf>,
    /// Write the report as JSON to this file (`-`: stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as one self-contained HTML page to this file.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// No live view and no text report (the files are still written).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Run it and return the exit code.
pub async fn run(args: LoadtestArgs, config: Option<&Path>) -> anyhow::Result<i32> {
    let scenario = match Scenario::load(&args.scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::USAGE);
        }
    };
    if let Err(e) = loadtest::inputs::Inputs::new(&scenario, "check") {
        eprintln!("error: {}: {e}", args.scenario.display());
        return Ok(exit::USAGE);
    }
    let place = match &args.url {
        Some(url) => Where::Remote {
            url: url.clone(),
            key: args.key.clone(),
        },
        None => {
            let config = match crate::config::Config::load(config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(exit::USAGE);
                }
            };
            if std::env::var_os("RUST_LOG").is_none() && !args.quiet {
                eprintln!(
                    "note: the node's warnings (handlers' own included) are logged as they \
                     happen; RUST_LOG=error keeps the live view clean"
                );
            }
            if let Err(e) = loadtest::target_gateway_check(&scenario, &config) {
                eprintln!("error: {}: {e}", args.scenario.display());
                return Ok(exit::USAGE);
            }
            Where::InProcess(
                Box::new(config),
                LocalOptions {
                    database_url: args.database_url.clone(),
                    data_dir: args.data_dir.clone(),
                },
            )
        }
    };
    // The text report goes to stderr when the JSON goes to stdout.
    let json_to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    let report = loadtest::run(scenario.clone(), place, args.quiet).await?;
    if !args.quiet {
        let text = loadtest::report::render_text(&report);
        if json_to_stdout {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    }
    if let Some(path) = &args.json {
        loadtest::write_out(path, &serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &args.html {
        loadtest::write_out(path, &loadtest::html::render(&report, &scenario.timeline))?;
        if !args.quiet {
            eprintln!("HTML report: {}", path.display());
        }
    }
    Ok(if report.passed {
        exit::OK
    } else {
        exit::FAILED
    })
}
