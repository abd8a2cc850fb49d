//! Loading components: validation, compilation once per digest, and the on-disk artifact
//! cache.

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex};

use crate::bindings::PluginPre;
use crate::engine::Engine;
use crate::error::LoadError;
use crate::host::HostState;

/// A loaded, validated, compiled plugin component, ready to instantiate.
pub struct Plugin {
    digest: String,
    size: usize,
    pub(crate) pre: PluginPre<HostState>,
    /// The `handle` export, resolved once at load so a job does not look it up by name.
    pub(crate) handle: ComponentExportIndex,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .finish()
    }
}

impl Plugin {
    /// The sha256 of the component's bytes (`sha256:<hex>`): its identity.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The component's size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// The digest of component bytes: `sha256:<hex>`, the same form the store uses.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What the 8-byte header says a binary is.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    NotWasm,
    CoreModule,
    Component,
}

fn classify(bytes: &[u8]) -> Kind {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Kind::NotWasm;
    }
    // Bytes 4..8 are version (u16) + layer (u16): core modules are layer 0, components 1.
    match u16::from_le_bytes([bytes[6], bytes[7]]) {
        0 => Kind::CoreModule,
        _ => Kind::Component,
    }
}

impl Engine {
    /// Validate and compile `bytes` (or reuse the compiled artifact cached for its digest),
    /// check that it targets the `plugin` world, and keep it for [`Engine::get`].
    ///
    /// Compiling takes tens of milliseconds of CPU for a small handler: call this from
    /// `spawn_blocking` in async code.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<Plugin>, LoadError> {
        let digest = digest_of(bytes);
        if let Some(p) = self.get(&digest) {
            return Ok(p);
        }
        match classify(bytes) {
            Kind::NotWasm => return Err(LoadError::NotWasm),
            Kind::CoreModule => return Err(LoadError::CoreModule),
            Kind::Component => {}
        }
        let component = self.compile_cached(&digest, bytes)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let pre = PluginPre::new(pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let handle = component
            .get_export_index(None, "handle")
            .ok_or_else(|| LoadError::WrongWorld("the component exports no `handle`".into()))?;
        let plugin = Arc::new(Plugin {
            digest: digest.clone(),
            size: bytes.len(),
            pre,
            handle,
        });
        self.inner
            .loaded
            .write()
            .expect("plugin map poisoned")
            .insert(digest, plugin.clone());
        Ok(plugin)
    }

    /// A plugin loaded earlier, by digest.
    pub fn get(&self, digest: &str) -> Option<Arc<Plugin>> {
        self.inner
            .loaded
            .read()
            .expect("plugin map poisoned")
            .get(digest)
            .cloned()
    }

    /// Forget a loaded plugin (its compiled artifact stays in the disk cache).
    pub fn unload(&self, digest: &str) {
        self.inner
            .loaded
            .write()
            .expect("plugin map poisoned")
            .remove(digest);
    }

    fn artifact_path(&self, digest: &str) -> Option<PathBuf> {
        let dir = self.inner.config.cache_dir.as_ref()?;
        let name = digest.trim_start_matches("sha256:");
        Some(dir.join(&self.inner.compat).join(format!("{name}.cwasm")))
    }

    fn compile_cached(&self, digest: &str, bytes: &[u8]) -> Result<Component, LoadError> {
        let path = self.artifact_path(digest);
        if let Some(path) = &path
            && path.exists()
        {
            match deserialize_artifact(&self.inner.wasmtime, path) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached artifact")
                }
            }
        }
        let component = Component::new(&self.inner.wasmtime, bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        if let Some(path) = path {
            // The cache is an optimisation: failing to write it must not fail the load.
            if let Err(e) = write_artifact(&component, &path) {
                tracing::warn!(path = %path.display(), error = %e, "could not cache compiled artifact");
            }
        }
        Ok(component)
    }
}

/// Bytes of the SHA-256 of the artifact that ends every cache file.
const CHECKSUM_BYTES: usize = 32;

/// Load a compiled artifact this engine wrote earlier, if its checksum proves it is whole.
///
/// Wasmtime checks an artifact's header and engine compatibility, not its machine code: a file
/// corrupted on disk (a bad sector, a partial copy, a truncation past the headers) could load
/// and run garbage. So every cache file carries the SHA-256 of the artifact, and a file that
/// does not match it is never handed to wasmtime.
#[allow(unsafe_code)]
fn deserialize_artifact(
    engine: &wasmtime::Engine,
    path: &std::path::Path,
) -> Result<Component, String> {
    let file = std::fs::read(path).map_err(|e| e.to_string())?;
    let artifact = verified(&file).ok_or_else(|| {
        format!(
            "its checksum does not match ({} bytes): corrupted or truncated",
            file.len()
        )
    })?;
    // SAFETY: `deserialize` trusts its input to be an artifact produced by a compatible
    // engine. Only this engine writes into the cache directory, under a subdirectory named by
    // the engine's compatibility hash, via write-to-temp-then-rename so no torn file is read,
    // and the bytes are exactly those it wrote (their SHA-256 matches, checked above).
    unsafe { Component::deserialize(engine, artifact) }.map_err(|e| format!("{e:#}"))
}

/// The artifact in a cache file, when the file ends with the artifact's SHA-256.
fn verified(file: &[u8]) -> Option<&[u8]> {
    let split = file.len().checked_sub(CHECKSUM_BYTES)?;
    let (artifact, sum) = file.split_at(split);
    (Sha256::digest(artifact).as_slice() == sum).then_some(artifact)
}

fn write_artifact(component: &Component, path: &std::path::Path) -> std::io::Result<()> {
    let mut bytes = component.serialize().map_err(std::io::Error::other)?;
    let sum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&sum);
    let dir = path.parent().expect("artifact path has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", uuid_like()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_headers() {
        assert_eq!(classify(b"hello world"), Kind::NotWasm);
        assert_eq!(classify(b"\0asm\x01\0\0\0"), Kind::CoreModule);
        assert_eq!(classify(b"\0asm\x0d\0\x01\0"), Kind::Component);
        assert_eq!(classify(b"\0as"), Kind::NotWasm);
    }

    #[test]
    fn a_cache_file_is_used_only_when_its_checksum_matches() {
        let artifact = b"compiled code".to_vec();
        let mut file = artifact.clone();
        file.extend_from_slice(&sha2::Sha256::digest(&artifact));
        assert_eq!(verified(&file), Some(&artifact[..]));
        // A flipped bit anywhere, a truncation, a file shorter than a checksum: refused.
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 1;
            assert_eq!(verified(&bad), None, "bit flipped at {i}");
        }
        assert_eq!(verified(&file[..file.len() - 1]), None);
        assert_eq!(verified(&file[..10]), None);
        assert_eq!(verified(&[]), None);
    }
}
