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
        ensure_wasm_target();
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

/// Add the wasm32-wasip2 target when the toolchain lacks it, as `sluice run` does for users
/// (rustup does not add a `rust-toolchain.toml` target to a toolchain already installed).
fn ensure_wasm_target() {
    let Ok(listed) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(plugins_dir())
        .output()
    else {
        return;
    };
    if String::from_utf8_lossy(&listed.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return;
    }
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .current_dir(plugins_dir())
        .status()
        .expect("running rustup target add wasm32-wasip2");
    assert!(status.success(), "rustup target add wasm32-wasip2 failed");
}
