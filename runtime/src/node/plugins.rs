//! Compiled plugins by digest: loaded from the store the first time a job needs one, once
//! per digest however many jobs ask at the same time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_engine::{Engine, LoadError, Plugin};
use sluice_store::{JobStore, PluginSettings};
use tokio::sync::OnceCell;

/// Why a job's component could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    /// The digest is not in the store.
    #[error("component {0} is not in the store")]
    Missing(String),
    /// The store failed.
    #[error("store error: {0}")]
    Store(String),
    /// The engine rejected it.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// One digest's load, shared by every job waiting for it.
type LoadCell = Arc<OnceCell<Arc<Plugin>>>;
/// (tenant, plugin, version).
type VersionKey = (String, String, i64);

/// How long a plugin version's settings are trusted before they are read again.
const SETTINGS_TTL: Duration = Duration::from_secs(10);

/// Loads and keeps compiled plugins. Cheap to clone.
#[derive(Clone)]
pub struct PluginCache {
    engine: Engine,
    store: Arc<dyn JobStore>,
    cells: Arc<Mutex<HashMap<String, LoadCell>>>,
    /// Plugin versions never change (`PATCH /v1/plugins/{name}` makes a new version), but a
    /// deleted plugin uploaded again starts again at version 1, possibly with other settings,
    /// and another node may have done it: entries are re-read after [`SETTINGS_TTL`].
    settings: Arc<Mutex<HashMap<VersionKey, (PluginSettings, Instant)>>>,
}

impl PluginCache {
    pub(crate) fn new(engine: Engine, store: Arc<dyn JobStore>) -> Self {
        PluginCache {
            engine,
            store,
            cells: Arc::default(),
            settings: Arc::default(),
        }
    }

    /// The compiled plugin for `digest`.
    pub async fn get(&self, digest: &str) -> Result<Arc<Plugin>, PluginLoadError> {
        if let Some(p) = self.engine.get(digest) {
            return Ok(p);
        }
        let cell = self
            .cells
            .lock()
            .expect("plugin cells poisoned")
            .entry(digest.to_string())
            .or_default()
            .clone();
        let plugin = cell
            .get_or_try_init(|| async {
                let bytes = self
                    .store
                    .get_component(digest)
                    .await
                    .map_err(|e| PluginLoadError::Store(e.to_string()))?
                    .ok_or_else(|| PluginLoadError::Missing(digest.to_string()))?;
                self.load(bytes).await
            })
            .await?;
        Ok(plugin.clone())
    }

    /// The settings of a plugin version (`None` if the plugin is gone).
    pub async fn settings(
        &self,
        tenant: &str,
        plugin: &str,
        version: i64,
    ) -> Result<Option<PluginSettings>, PluginLoadError> {
        let key = (tenant.to_string(), plugin.to_string(), version);
        if let Some((s, at)) = self.settings.lock().expect("settings poisoned").get(&key)
            && at.elapsed() < SETTINGS_TTL
        {
            return Ok(Some(s.clone()));
        }
        let Some(found) = self
            .store
            .get_plugin_version(tenant, plugin, version)
            .await
            .map_err(|e| PluginLoadError::Store(e.to_string()))?
        else {
            return Ok(None);
        };
        self.settings
            .lock()
            .expect("settings poisoned")
            .insert(key, (found.settings.clone(), Instant::now()));
        Ok(Some(found.settings))
    }

    /// Validate and compile component bytes (off the async threads).
    pub async fn load(&self, bytes: Vec<u8>) -> Result<Arc<Plugin>, PluginLoadError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.load(&bytes))
            .await
            .map_err(|e| PluginLoadError::Load(LoadError::Internal(e.to_string())))?
            .map_err(PluginLoadError::from)
    }
}
