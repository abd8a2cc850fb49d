//! `sluice deploy <file.wasm | plugin dir> [--name]`: upload a component to a server.

use std::path::PathBuf;

use clap::Args;
use reqwest::Method;

use super::client::{Client, ClientArgs, Failed, finish};
use super::exit;
use super::progress::spinner;

/// Arguments of `sluice deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// A component (`.wasm`) or a plugin crate directory (built for wasm32-wasip2 first).
    pub path: PathBuf,
    /// Plugin name (default: the directory name or the file stem, `_` as `-`).
    #[arg(long)]
    pub name: Option<String>,
    /// Connection.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Run `sluice deploy`.
pub async fn run(args: DeployArgs) -> anyhow::Result<i32> {
    let name = args.name.clone().unwrap_or_else(|| {
        let stem = if args.path.is_dir() {
            args.path
                .canonicalize()
                .unwrap_or(args.path.clone())
                .file_name()
                .map(|s| s.to_owned())
        } else {
            args.path.file_stem().map(|s| s.to_owned())
        };
        stem.map(|s| s.to_string_lossy().replace('_', "-"))
            .unwrap_or_default()
    });
    if args.path.is_dir() {
        // Cargo shows its own progress while it builds.
        eprintln!("building {} for wasm32-wasip2…", args.path.display());
    }
    let path = args.path.clone();
    let built =
        tokio::task::spawn_blocking(move || crate::plugin_build::component_bytes(&path)).await?;
    let bytes = match built {
        Ok((_, bytes)) => bytes,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::USAGE);
        }
    };
    let client = Client::new(args.client);
    finish(
        async {
            let size = bytes.len();
            let bar = spinner(
                format!(
                    "uploading {name} ({} KiB); the server validates and compiles it",
                    size.div_ceil(1024)
                ),
                client.args.json,
            );
            let req = client
                .request(Method::PUT, &format!("/v1/plugins/{name}"))
                .header("content-type", "application/wasm")
                .body(bytes);
            let sent = client.send(req).await;
            bar.finish_and_clear();
            let (status, v) = sent?;
            if client.args.json {
                client.print_json(&v);
            } else {
                let verb = if status == 201 {
                    "deployed"
                } else {
                    "already deployed"
                };
                println!(
                    "{verb} {name} v{} ({}, {size} bytes)",
                    v["version"],
                    v["digest"].as_str().unwrap_or("?")
                );
            }
            Ok::<_, Failed>(exit::OK)
        }
        .await,
    )
}
