//! `sluice keys`: create, list and revoke API keys (directly against the store named by the
//! configuration) and print a tenant's webhook signing secret.
//!
//! Revocation takes effect at once: the API looks every presented key up in the store on every
//! request (no cache), and the lookup finds only unrevoked keys.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;
use sluice_store::{ApiKey, JobStore, NewApiKey, StoreConfig};
use uuid::Uuid;

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
    /// List keys (every tenant's, or one's): id, tenant, name, scopes, when created and
    /// whether revoked. Never a secret or its hash.
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: requests with it are refused (401) from the next one on. Exits 3 when
    /// there is no such key.
    Revoke {
        /// The key's id (from `sluice keys list`).
        id: String,
        /// Print the revoked key as JSON.
        #[arg(long)]
        json: bool,
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
            let store = open_store(&config).await?;
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
        KeysCommand::List { tenant, json } => {
            let store = open_store(&config).await?;
            let keys = match &tenant {
                Some(t) => store.list_api_keys(t).await,
                None => store.list_all_api_keys().await,
            };
            store.close().await;
            let keys: Vec<KeyView> = keys?.iter().map(KeyView::from).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                print!("{}", table(&keys));
            }
            Ok(exit::OK)
        }
        KeysCommand::Revoke { id, json } => {
            let Ok(id) = Uuid::parse_str(id.trim()) else {
                eprintln!("error: `{id}` is not a key id (a UUID, as `sluice keys list` shows)");
                return Ok(exit::USAGE);
            };
            let store = open_store(&config).await?;
            let revoked = revoke(store.as_ref(), id).await;
            store.close().await;
            let (key, was_live) = match revoked? {
                Some(found) => found,
                None => {
                    eprintln!("error: no API key with id {id}");
                    return Ok(exit::NOT_FOUND);
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&KeyView::from(&key))?);
            } else if was_live {
                eprintln!(
                    "revoked key {id} (`{}` of tenant `{}`): requests with it now get 401",
                    key.name, key.tenant
                );
            } else {
                eprintln!("key {id} was already revoked");
            }
            Ok(exit::OK)
        }
        KeysCommand::WebhookSecret { tenant } => {
            let node = crate::webhooks::node_secret(&config.webhooks, &config.database.data_dir)?;
            println!("{}", crate::webhooks::tenant_secret(&node, &tenant));
            Ok(exit::OK)
        }
    }
}

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn JobStore>> {
    let url = config.database.effective_url();
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.database.data_dir)?;
    }
    Ok(sluice_store::open(&url, StoreConfig::default()).await?)
}

/// Revoke key `id`: the key as it is now and whether this revoked it (false: it already was),
/// or `None` when there is no such key.
async fn revoke(store: &dyn JobStore, id: Uuid) -> anyhow::Result<Option<(ApiKey, bool)>> {
    let Some(mut key) = store.api_key(id).await? else {
        return Ok(None);
    };
    let was_live = store.revoke_api_key(id).await?;
    key.revoked = true;
    Ok(Some((key, was_live)))
}

/// What `keys list` shows of a key: everything but its secret's hash.
#[derive(Debug, Serialize)]
struct KeyView {
    id: Uuid,
    tenant: String,
    name: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    revoked: bool,
}

impl From<&ApiKey> for KeyView {
    fn from(k: &ApiKey) -> Self {
        // No `..`: a new field of `ApiKey` must be decided on here (shown or not) to compile.
        let ApiKey {
            id,
            tenant,
            name,
            scopes,
            secret_hash: _,
            created_at,
            revoked,
        } = k.clone();
        KeyView {
            id,
            tenant,
            name,
            scopes,
            created_at,
            revoked,
        }
    }
}

/// The keys as a table (a note when there are none).
fn table(keys: &[KeyView]) -> String {
    use std::fmt::Write;
    if keys.is_empty() {
        return "(no keys)\n".into();
    }
    let width = |f: fn(&KeyView) -> usize, title: &str| {
        keys.iter().map(f).max().unwrap_or(0).max(title.len())
    };
    let tw = width(|k| k.tenant.chars().count(), "TENANT");
    let nw = width(|k| k.name.chars().count(), "NAME");
    let sw = width(|k| k.scopes.join(",").chars().count(), "SCOPES");
    let mut out = format!(
        "{:<36}  {:<tw$}  {:<nw$}  {:<sw$}  {:<20}  STATE\n",
        "ID", "TENANT", "NAME", "SCOPES", "CREATED"
    );
    for k in keys {
        let _ = writeln!(
            out,
            "{:<36}  {:<tw$}  {:<nw$}  {:<sw$}  {:<20}  {}",
            k.id,
            k.tenant,
            k.name,
            k.scopes.join(","),
            k.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
            if k.revoked { "revoked" } else { "active" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_and_never_shows_a_hash() {
        let key = ApiKey {
            id: Uuid::nil(),
            tenant: "a-long-tenant-name".into(),
            name: "ci".into(),
            scopes: vec!["invoke".into(), "read".into()],
            secret_hash: "ab".repeat(32),
            created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            revoked: true,
        };
        let view = KeyView::from(&key);
        let json = serde_json::to_string(&view).unwrap();
        assert!(!json.contains(&key.secret_hash), "{json}");
        let shown = table(&[view]);
        assert!(!shown.contains(&key.secret_hash), "{shown}");
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 2, "{shown}");
        // Columns line up: each title starts where its value does.
        for (title, value) in [
            ("NAME", "ci"),
            ("SCOPES", "invoke,read"),
            ("STATE", "revoked"),
        ] {
            assert_eq!(lines[0].find(title), lines[1].find(value), "{shown}");
        }
        assert!(lines[1].contains("2023-11-14T22:13:20Z"), "{shown}");
        assert_eq!(table(&[]), "(no keys)\n");
    }
}
