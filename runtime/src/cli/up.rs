//! `sluice up`: run a node — the HTTP API, the worker and webhook delivery — until Ctrl-C.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use sluice_store::PluginSettings;

use super::exit;
use crate::config::Config;
use crate::node::Node;

/// Which parts of a node to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// API and worker.
    All,
    /// Only the HTTP API.
    Api,
    /// Only the worker (and webhook delivery).
    Worker,
}

/// Arguments of `sluice up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Development mode: no API keys needed on loopback, SQLite in `.sluice/` and the
    /// simulated provider unless configured, and every plugin in `plugins/` built and
    /// deployed for tenant `default`.
    #[arg(long)]
    pub dev: bool,
    /// Address to listen on (overrides `server.listen`).
    #[arg(long)]
    pub listen: Option<String>,
    /// Which parts to run.
    #[arg(long, value_enum, default_value_t = Role::All)]
    pub role: Role,
    /// With --dev: where to find plugin crates to build and deploy.
    #[arg(long, default_value = "plugins")]
    pub plugins: PathBuf,
}

/// Run `sluice up`.
pub async fn run(args: UpArgs, mut config: Config) -> anyhow::Result<i32> {
    if args.dev {
        config.server.dev = true;
    }
    if let Some(listen) = &args.listen {
        config.server.listen = listen.clone();
    }
    if config.server.dev && !crate::api::is_loopback(&config.server.listen) {
        eprintln!(
            "note: dev mode on non-loopback address {}: API keys are still required \
             (create one with `sluice keys create --tenant default --scopes admin`)",
            config.server.listen
        );
    }
    let listen = config.server.listen.clone();
    let dev_open = crate::api::dev_open(&config);
    eprintln!(
        "starting sluice (store {}, role {:?})…",
        crate::config::redact_url(&config.database.effective_url()),
        args.role
    );
    let node = Node::start(config).await?;

    // Beyond loopback every request needs a key; with none, the server would answer nothing
    // but 401. Refuse early and say how to make one.
    if args.role != Role::Worker && !crate::api::is_loopback(&listen) {
        let keys = node.store.count_api_keys().await?;
        if keys == 0 {
            eprintln!(
                "error: refusing to listen on {listen}: there are no API keys, so every request \
                 would be refused.\n  Create one against this database first:\n    \
                 sluice keys create --tenant default --scopes admin\n  \
                 (with the same --config / SLUICE_DATABASE__URL), or listen on 127.0.0.1."
            );
            node.store.close().await;
            return Ok(exit::USAGE);
        }
    }

    if args.dev && args.role != Role::Worker {
        deploy_dev_plugins(&node, &args.plugins).await?;
    }

    let worker =
        matches!(args.role, Role::All | Role::Worker).then(|| crate::worker::spawn(node.clone()));
    let webhooks = matches!(args.role, Role::All | Role::Worker)
        .then(|| crate::webhooks::spawn_webhooks(node.clone()));
    // Operational alert rules (`[alerts]`); their handle lives as long as the process.
    let _alerts = matches!(args.role, Role::All | Role::Worker)
        .then(|| crate::alerts::spawn(node.clone()))
        .transpose()?;
    let roles = match args.role {
        Role::All => "api,worker",
        Role::Api => "api",
        Role::Worker => "worker",
    };
    let membership = crate::node::cluster::join(node.clone(), roles);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = if args.role != Role::Worker {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {listen}: {e}");
                return Ok(exit::FAILED);
            }
        };
        let addr = listener.local_addr()?;
        print_welcome(&addr.to_string(), dev_open, &node);
        let mut rx = stop_rx.clone();
        let shutdown = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        Some(tokio::spawn(crate::api::serve(
            node.clone(),
            listener,
            shutdown,
        )))
    } else {
        eprintln!("worker running; Ctrl-C to stop");
        None
    };

    shutdown_signal().await;
    eprintln!("\nshutting down: finishing requests and running jobs (Ctrl-C again to force)…");
    let _ = stop_tx.send(true);
    let drain = async {
        if let Some(server) = server {
            let _ = server.await;
        }
        if let Some(worker) = worker {
            worker.shutdown(Duration::from_secs(30)).await;
        }
    };
    tokio::select! {
        _ = drain => {}
        _ = shutdown_signal() => eprintln!("forced stop"),
    }
    if let Some(w) = webhooks {
        w.abort();
    }
    // Unspent budget slices go back to the shared ledger for the nodes that stay.
    node.gateway.release_budget().await;
    membership.leave().await;
    node.store.close().await;
    Ok(exit::OK)
}

/// Ctrl-C, or SIGTERM (what container runtimes and process managers send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn print_welcome(addr: &str, dev_open: bool, node: &Node) {
    let url = format!("http://{addr}");
    let auth = if dev_open {
        ""
    } else {
        " -H \"Authorization: Bearer $SLUICE_API_KEY\""
    };
    eprintln!();
    eprintln!("  Sluice is up at {url}");
    eprintln!();
    eprintln!("  Try it:");
    eprintln!(
        "    curl -s{auth} -X POST '{url}/v1/plugins/summarize/jobs?wait=30s' \\\n      -H 'content-type: application/json' \\\n      -d '{{\"input\": {{\"text\": \"Sluice is a serverless runtime for AI jobs. It owns the queue, retries and budgets.\"}}}}'"
    );
    eprintln!("    sluice submit summarize --input '{{\"text\": \"…\"}}' --follow");
    eprintln!();
    eprintln!("  Where to look:");
    eprintln!("    dashboard {url}/");
    eprintln!("    jobs      {url}/v1/jobs        events: {url}/v1/jobs/<id>/events");
    eprintln!("    usage     {url}/v1/usage?group_by=plugin");
    eprintln!("    metrics   {url}/metrics        API: {url}/openapi.json");
    eprintln!(
        "    data      {}        logs: RUST_LOG=sluice=debug",
        node.config.database.data_dir.display()
    );
    if !dev_open {
        eprintln!("    keys      sluice keys create --tenant default --scopes admin");
    }
    eprintln!();
    eprintln!("  Ctrl-C to stop.");
}

/// Build every plugin crate under `dir` (except `fixtures`) and deploy it for the dev tenant.
async fn deploy_dev_plugins(node: &Node, dir: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        eprintln!("no {} directory here: nothing to deploy", dir.display());
        return Ok(());
    };
    let mut crates: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.join("Cargo.toml").is_file() && p.file_name().is_some_and(|n| n != "fixtures")
        })
        .collect();
    crates.sort();
    for (i, path) in crates.iter().enumerate() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        eprint!(
            "[{}/{}] building {name} for wasm32-wasip2… ",
            i + 1,
            crates.len()
        );
        let _ = std::io::stderr().flush();
        let started = Instant::now();
        let p = path.clone();
        let built =
            tokio::task::spawn_blocking(move || crate::plugin_build::component_bytes(&p)).await?;
        let bytes = match built {
            Ok((_, bytes)) => bytes,
            Err(e) => {
                eprintln!("failed: {e}");
                continue;
            }
        };
        match deploy(node, &name, bytes).await {
            Ok((version, digest)) => eprintln!(
                "deployed v{version} ({}) in {:.1}s",
                &digest[..digest.len().min(19)],
                started.elapsed().as_secs_f64()
            ),
            Err(e) => eprintln!("rejected: {e}"),
        }
    }
    Ok(())
}

async fn deploy(node: &Node, name: &str, bytes: Vec<u8>) -> anyhow::Result<(i64, String)> {
    let tenant = crate::api::auth::DEV_TENANT;
    node.plugins.load(bytes.clone()).await?;
    let digest = node.store.put_component(&bytes).await?;
    let settings = PluginSettings::default();
    if let Some(info) = node.store.get_plugin(tenant, name).await?
        && let Some(v) = info.active()
        && v.digest == digest
    {
        return Ok((v.version, digest));
    }
    let v = node
        .store
        .create_plugin_version(tenant, name, &digest, &settings, true)
        .await?;
    Ok((v.version, digest))
}
