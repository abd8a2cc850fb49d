//! `sluice keys`: create API keys (directly against the store named by the configuration)
//! and print a tenant's webhook signing secret.

use clap::{Args, Subcommand};
use sluice_store::{NewApiKey, StoreConfig};

use super::exit;
use crate::api::auth::{Scope, generate_secret, hash_secret};
use crate::config::Config;

/// Arguments of `sluice keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create an API key and print its secret (shown once; only its hash is stored).
    Create {
        /// The tenant the key acts for.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Comma-separated scopes: admin, deploy, invoke, read.
        #[arg(long, default_value = "invoke,read", value_delimiter = ',')]
        scopes: Vec<String>,
        /// A label for the key.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// Print the secret a tenant's webhook receivers verify `Sluice-Signature` with.
    WebhookSecret {
        /// The tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

/// Run `sluice keys`.
pub async fn run(args: KeysArgs, config: Config) -> anyhow::Result<i32> {
    match args.command {
        KeysCommand::Create {
            tenant,
            scopes,
            name,
        } => {
            let scopes: Vec<String> = scopes.iter().map(|s| s.trim().to_lowercase()).collect();
            if let Some(bad) = scopes.iter().find(|s| !Scope::NAMES.contains(&s.as_str())) {
                eprintln!(
                    "error: unknown scope `{bad}`: use {}",
                    Scope::NAMES.join(", ")
                );
                return Ok(exit::USAGE);
            }
            let url = config.database.effective_url();
            if url.starts_with("sqlite:") {
                std::fs::create_dir_all(&config.database.data_dir)?;
            }
            let store = sluice_store::open(&url, StoreConfig::default()).await?;
            let secret = generate_secret();
            let key = store
                .create_api_key(&NewApiKey {
                    tenant: tenant.clone(),
                    name,
                    scopes: scopes.clone(),
                    secret_hash: hash_secret(&secret),
                })
                .await?;
            store.close().await;
            eprintln!(
                "created key {} for tenant `{tenant}` with scopes {} (the secret is shown only now):",
                key.id,
                scopes.join(",")
            );
            println!("{secret}");
            Ok(exit::OK)
        }
        KeysCommand::WebhookSecret { tenant } => {
            let node = crate::webhooks::node_secret(&config.webhooks, &config.database.data_dir)?;
            println!("{}", crate::webhooks::tenant_secret(&node, &tenant));
            Ok(exit::OK)
        }
    }
}
