//! `sluice check-config`: load the configuration as `sluice up` would and print it.

use std::path::Path;

use clap::Args;

use super::exit;
use crate::config::Config;

/// Arguments of `sluice check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Print JSON instead of TOML (unset keys appear as `null`).
    #[arg(long)]
    pub json: bool,
}

/// Print the effective configuration (defaults, then the file, then `SLUICE_*` variables),
/// secrets redacted. Exits 2 when it does not load, with the error (the variable or file and
/// the key) on stderr.
pub fn run(args: CheckConfigArgs, path: Option<&Path>) -> anyhow::Result<i32> {
    let mut config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return Ok(exit::USAGE);
        }
    };
    // The gateway a node starts: the simulated setup when no provider, model or alias is set.
    config.gateway = config.gateway.or_simulated();
    // What `sluice up` checks when it starts the gateway and the alert rules, so that a
    // passing check means the node will start with this configuration.
    let started = config
        .gateway
        .validate()
        .map_err(|e| format!("gateway: {e}"))
        .and_then(|()| config.alerts.validate().map_err(|e| format!("alerts: {e}")));
    if let Err(e) = started {
        eprintln!("error: invalid configuration: {e}");
        return Ok(exit::USAGE);
    }
    let config = config.redacted();
    let text = if args.json {
        serde_json::to_string_pretty(&config)?
    } else {
        config.to_toml()?
    };
    println!("{}", text.trim_end());
    Ok(exit::OK)
}
