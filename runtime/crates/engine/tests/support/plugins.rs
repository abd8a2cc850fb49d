//! Builds the guest components in `plugins/` once per test process and finds their files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository's `plugins/` workspace, found by walking up from the including crate.
pub fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("plugins"))
        .find(|p| p.join("Cargo.toml").is_file())
        .expect("no plugins/ workspace above this crate")
}

/// The compiled component of plugin crate `name` (e.g. `summarize`, `fixture-trap`).
pub fn component(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        // Cargo's own lock serialises concurrent test binaries building the same workspace.
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--quiet"])
            .current_dir(plugins_dir())
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("running cargo build for plugins/");
        assert!(
            status.success(),
            "building plugins/ for wasm32-wasip2 failed"
        );
    });
    let file = plugins_dir()
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
}
