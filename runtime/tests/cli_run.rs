//! `sluice run` as a user runs it: the real binary, real components, the simulated providers.

#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;

use std::process::Command;

fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env_remove("RUST_LOG");
    c
}

#[test]
fn summarize_prints_summary_usage_and_cost() {
    let text = (1..=8)
        .map(|i| format!("Paragraph {i}: workers claim jobs in batches and the gateway holds each provider to its limits."))
        .collect::<Vec<_>>()
        .join("\n\n");
    let input = serde_json::json!({ "text": text, "chunk_chars": 300 }).to_string();
    let out = sluice()
        .args(["run"])
        .arg(plugins::plugins_dir().join("summarize"))
        .args(["--input", &input, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "completed");
    assert!(!doc["output"]["summary"].as_str().unwrap().is_empty());
    assert!(doc["usage"]["calls"].as_u64().unwrap() >= 2, "{doc}");
    assert!(doc["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(doc["usage"]["cost_micros"].as_u64().unwrap() > 0);
}

#[test]
fn a_failing_job_exits_1_and_bad_input_exits_2() {
    plugins::component("trap");
    let release = plugins::plugins_dir().join("target/wasm32-wasip2/release");
    let out = sluice()
        .arg("run")
        .arg(release.join("trap.wasm"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("trap"));

    let out = sluice()
        .arg("run")
        .arg(release.join("noop.wasm"))
        .args(["--input", "{not json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"definitely not wasm").unwrap();
    let out = sluice().arg("run").arg(&garbage).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a WebAssembly binary"));
}
