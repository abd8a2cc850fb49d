//! Building a plugin directory into a component: `cargo build --target wasm32-wasip2`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a plugin directory could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The directory has no Cargo.toml.
    #[error("{0} is not a plugin directory (no Cargo.toml)")]
    NotACrate(PathBuf),
    /// cargo could not be started.
    #[error("could not run cargo: {0}")]
    Cargo(#[from] std::io::Error),
    /// cargo failed; its diagnostics went to stderr.
    #[error("building {0} for wasm32-wasip2 failed (see cargo's output above)")]
    Failed(PathBuf),
    /// The wasm32-wasip2 target is missing and could not be added.
    #[error(
        "the Rust target wasm32-wasip2 is not installed and could not be added ({0}); \
         run `rustup target add wasm32-wasip2` in {1} and try again"
    )]
    NoTarget(String, PathBuf),
    /// cargo succeeded but produced no `.wasm`.
    #[error("building {0} produced no .wasm component; is it a `cdylib` crate?")]
    NoArtifact(PathBuf),
}

/// Build the crate in `dir` in release mode for `wasm32-wasip2` and return the path of the
/// component it produced. Cargo's diagnostics go to this process's stderr.
pub fn build_plugin_dir(dir: &Path) -> Result<PathBuf, BuildError> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(BuildError::NotACrate(dir.to_path_buf()));
    }
    // cargo runs from the plugin's directory, so relative paths would resolve twice.
    let dir = &dir.canonicalize()?;
    let manifest = dir.join("Cargo.toml");
    ensure_wasm_target(dir)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        // Run from the plugin's directory so its rust-toolchain.toml and .cargo/config apply.
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(BuildError::Failed(dir.to_path_buf()));
    }
    // The last compiler-artifact message with a .wasm file is the plugin itself.
    let mut found = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            for f in files.iter().filter_map(|f| f.as_str()) {
                if f.ends_with(".wasm") {
                    found = Some(PathBuf::from(f));
                }
            }
        }
    }
    found.ok_or_else(|| BuildError::NoArtifact(dir.to_path_buf()))
}

/// The Rust target plugins build for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Make sure the toolchain that builds `dir` has the wasm32-wasip2 target, adding it through
/// rustup when it is missing (saying so): rustup adds the targets a `rust-toolchain.toml`
/// names only when it installs the toolchain, not to one already installed, and a build
/// without the target fails only after compiling for a while, with `can't find crate for std`.
/// Without rustup (a toolchain from elsewhere) nothing is checked: cargo will say.
pub fn ensure_wasm_target(dir: &Path) -> Result<(), BuildError> {
    let listed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .output();
    let Ok(listed) = listed else {
        return Ok(());
    };
    if !listed.status.success()
        || String::from_utf8_lossy(&listed.stdout)
            .lines()
            .any(|l| l.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    eprintln!(
        "sluice: the Rust target {WASM_TARGET} is missing; adding it with `rustup target add {WASM_TARGET}`"
    );
    let added = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .current_dir(dir)
        .status()
        .map_err(|e| BuildError::NoTarget(e.to_string(), dir.to_path_buf()))?;
    if !added.success() {
        return Err(BuildError::NoTarget(
            format!("rustup exited with {added}"),
            dir.to_path_buf(),
        ));
    }
    Ok(())
}

/// Read a component from a `.wasm` file, or build it first when `path` is a directory.
pub fn component_bytes(path: &Path) -> Result<(PathBuf, Vec<u8>), BuildError> {
    let file = if path.is_dir() {
        build_plugin_dir(path)?
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file)?;
    Ok((file, bytes))
}
