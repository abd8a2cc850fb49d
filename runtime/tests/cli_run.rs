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

/// What bash offers after `sluice <words> <TAB>`, from the script `sluice completions bash`
/// printed, loaded into bash as a user's shell loads it.
fn bash_completes(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let line = format!("sluice {} ", words.join(" "));
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            r#"source "$0"
COMP_WORDS=(sluice {words} "")
COMP_CWORD=${{#COMP_WORDS[@]}}; COMP_CWORD=$((COMP_CWORD - 1))
COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}
_sluice sluice "" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
            words = words.join(" ")
        ))
        .arg(script)
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn completions_offer_every_command_in_bash_zsh_and_fish() {
    let out = sluice().args(["completions", "bash"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sluice.bash");
    std::fs::write(&script, &out.stdout).unwrap();

    let top = bash_completes(&script, &[]);
    for command in [
        "run",
        "new",
        "up",
        "deploy",
        "plugins",
        "submit",
        "jobs",
        "keys",
        "completions",
    ] {
        assert!(
            top.iter().any(|w| w == command),
            "`{command}` not offered: {top:?}"
        );
    }
    let keys = bash_completes(&script, &["keys"]);
    for command in ["create", "list", "revoke", "webhook-secret"] {
        assert!(
            keys.iter().any(|w| w == command),
            "`keys {command}` not offered: {keys:?}"
        );
    }
    let plugins = bash_completes(&script, &["plugins"]);
    for command in ["list", "versions", "rollback", "delete", "settings"] {
        assert!(
            plugins.iter().any(|w| w == command),
            "`plugins {command}` not offered: {plugins:?}"
        );
    }
    assert!(!keys.iter().any(|w| w == "rollback"), "{keys:?}");

    for (shell, marker) in [("zsh", "#compdef sluice"), ("fish", "complete -c sluice")] {
        let out = sluice().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("revoke") && script.contains("rollback"),
            "{shell}"
        );
    }
    let out = sluice().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_new_javascript_project_unit_tests_with_node_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hello");
    let out = sluice()
        .args(["new", "hello", "--lang", "js", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No npm install: the test double comes from the checkout's sdk-js/, Node's runner is
    // built in.
    let out = Command::new("node")
        .arg("--test")
        .current_dir(&dir)
        .output()
        .expect("running node (Node.js 18.19+ is a prerequisite in README.md)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("# pass 2") && report.contains("# fail 0"),
        "{report}"
    );
}
