//! Handlers in Python and JavaScript, as a user builds and runs them: the real `sluice` binary
//! builds `plugins-py/classify` (componentize-py) and `plugins-js/classify` (rolldown +
//! componentize-js) and runs them on the simulated providers; `sluice new` projects in all three
//! languages run at once; a component importing what the engine does not link is refused.
//!
//! Needs componentize-py and the npm tools installed as README.md says (`.ci/run` does). Each
//! example is built once per test process (and `sluice` itself reuses an unchanged build).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sluice() -> Command {
    // SLUICE_TEST_BIN runs the tests against a copy of the binary (a target directory shared
    // with other checkouts may replace target/debug/sluice while the tests run).
    let bin =
        std::env::var_os("SLUICE_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_sluice").into());
    let mut c = Command::new(bin);
    c.env_remove("RUST_LOG");
    c
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `sluice run DIR --input INPUT --json`: its exit code, its JSON document and its stderr.
fn run_json(dir: &Path, input: &str) -> (Option<i32>, Value, String) {
    let out = sluice()
        .arg("run")
        .arg(dir)
        .args(["--input", input, "--json"])
        .output()
        .unwrap();
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}); stderr:\n{}", stderr(&out)));
    (out.status.code(), doc, stderr(&out))
}

fn example_input() -> String {
    std::fs::read_to_string(repo().join("plugins-py/classify/input.json")).unwrap()
}

/// The first run of each example builds it; later runs reuse the build. Concurrent tests wait
/// for the one build instead of racing on the project's `.sluice-build/`.
fn example(lang: &str) -> &'static Value {
    static PY: OnceLock<Value> = OnceLock::new();
    static JS: OnceLock<Value> = OnceLock::new();
    static RUST: OnceLock<Value> = OnceLock::new();
    let (cell, dir) = match lang {
        "py" => (&PY, repo().join("plugins-py/classify")),
        "js" => (&JS, repo().join("plugins-js/classify")),
        _ => (&RUST, repo().join("plugins/classify")),
    };
    cell.get_or_init(|| {
        let (code, doc, err) = run_json(&dir, &example_input());
        assert_eq!(code, Some(0), "{lang}: {err}\n{doc}");
        doc
    })
}

#[test]
fn python_and_javascript_classify_match_the_rust_one() {
    let rust = example("rust");
    assert_eq!(rust["status"], "completed");
    for lang in ["py", "js"] {
        let doc = example(lang);
        assert_eq!(doc["status"], "completed", "{lang}: {doc}");
        // Same input, same simulated replies: the ports reach the same verdict by the same
        // path, with the same calls and cost.
        for field in [
            "label",
            "method",
            "model_used",
            "escalated",
            "cost_micros",
            "note",
        ] {
            assert_eq!(
                doc["output"][field], rust["output"][field],
                "{lang}: {field}\n{doc}"
            );
        }
        assert_eq!(doc["usage"], rust["usage"], "{lang}");
        assert!(doc["usage"]["calls"].as_u64().unwrap() >= 1);
        // The handler's events reached the host: the escalation log line and the warning.
        let events = doc["events"].to_string();
        assert!(events.contains("escalating"), "{lang}: {events}");
    }
}

#[test]
fn errors_keep_their_class_in_python_and_javascript() {
    for (lang, dir) in [("py", "plugins-py/classify"), ("js", "plugins-js/classify")] {
        example(lang);
        let dir = repo().join(dir);
        // A permanent error raised by the handler, before any model call. (One run per
        // language: each run compiles the component, seconds for Python and JavaScript.)
        let (code, doc, err) = run_json(
            &dir,
            r#"{"text": "x", "labels": ["a", "b"], "threshold": 1.5}"#,
        );
        assert_eq!(code, Some(1), "{lang}: {err}");
        assert_eq!(doc["error"]["retryable"], false, "{lang}: {doc}");
        assert!(
            doc["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`threshold` must be between 0 and 1"),
            "{lang}: {doc}"
        );
        assert_eq!(doc["usage"]["calls"], 0, "{lang}: {doc}");
    }
}

#[test]
fn new_projects_run_at_once_in_every_language() {
    let tmp = tempfile::tempdir().unwrap();
    for lang in ["python", "js", "rust"] {
        let dir = tmp.path().join(format!("hello-{lang}"));
        let out = sluice()
            .args(["new", &format!("hello-{lang}"), "--lang", lang, "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{lang}: {}", stderr(&out));
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        assert_eq!(readme.lines().count(), 3, "{readme}");

        let out = sluice()
            .arg("run")
            .arg(&dir)
            .arg("--input-file")
            .arg(dir.join("input.json"))
            .arg("--json")
            .output()
            .unwrap();
        assert!(out.status.success(), "{lang}: {}", stderr(&out));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["status"], "completed", "{lang}: {doc}");
        assert!(
            !doc["output"]["summary"].as_str().unwrap().is_empty(),
            "{doc}"
        );
        assert_eq!(doc["usage"]["calls"], 1, "{lang}: {doc}");
        assert!(doc["output"]["cost_micros"].as_u64().unwrap() > 0, "{doc}");

        if lang == "rust" {
            // The template's unit tests run natively against the SDK's host-less test double.
            let out = Command::new(env!("CARGO"))
                .args(["test", "--quiet"])
                .current_dir(&dir)
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("RUSTFLAGS")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "cargo test in a new project: {}",
                stderr(&out)
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("2 passed"),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }

        // `sluice new` never overwrites.
        let out = sluice()
            .args(["new", "again", "--lang", lang, "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    }
}

#[test]
fn a_missing_build_tool_is_named_with_its_install_command() {
    let tmp = tempfile::tempdir().unwrap();
    // A PATH with nothing on it: neither componentize-py nor node can be found.
    let empty = tmp.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    for (lang, needle) in [
        ("python", "pip install componentize-py==0.25.1"),
        ("js", "Node.js"),
    ] {
        let dir = tmp.path().join(lang);
        let out = sluice()
            .args(["new", "x", "--lang", lang, "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let out = sluice()
            .arg("run")
            .arg(&dir)
            .env("PATH", &empty)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{lang}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("is not installed") && err.contains(needle),
            "{lang}: {err}"
        );
    }
}

#[test]
fn a_component_importing_wasi_http_is_refused_with_the_reason() {
    // The JS example's bundle, built the way componentize-js does by default: with `fetch`,
    // so importing wasi:http, which the engine does not link.
    example("js");
    let build = repo().join("plugins-js/classify/.sluice-build");
    let tool = repo().join("sdk-js/node_modules/.bin/componentize-js");
    let tmp = tempfile::tempdir().unwrap();
    let wasm = tmp.path().join("with-http.wasm");
    let status = Command::new(&tool)
        .arg(build.join("bundle.js"))
        .arg("-w")
        .arg(build.join("wit"))
        .args(["-n", "plugin", "-o"])
        .arg(&wasm)
        .status()
        .unwrap();
    assert!(status.success());
    let out = sluice().arg("run").arg(&wasm).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("imports `wasi:http/") && err.contains("does not provide"),
        "{err}"
    );
    assert!(err.contains("only through the host's `models`"), "{err}");
}

/// Resident set size of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The numbers in BENCHMARKS.md ("Handlers per language"): component size, compile (load)
/// time, instantiate + one call that returns at once (median and p90 of 200), and the growth of
/// this process's resident memory. Not a pass/fail test.
#[test]
#[ignore = "a measurement for BENCHMARKS.md: cargo test -p sluice --test languages -- --ignored --nocapture measure"]
fn measure_size_instantiate_and_memory_per_language() {
    use sluice_engine::{Engine, EngineConfig, JobLimits, memory};
    use sluice_types::{CallContext, JobInfo};
    use std::time::{Duration, Instant};

    for lang in ["rust", "js", "py"] {
        example(lang);
    }
    let components = [
        (
            "Rust",
            repo().join("plugins/target/wasm32-wasip2/release/classify.wasm"),
        ),
        (
            "JavaScript",
            repo().join("plugins-js/classify/.sluice-build/classify.wasm"),
        ),
        (
            "Python",
            repo().join("plugins-py/classify/.sluice-build/classify.wasm"),
        ),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| language | component | compile | instantiate + call (median / p90 of 200) | RSS after compile | RSS after 200 jobs |"
    );
    println!("|---|---|---|---|---|---|");
    rt.block_on(async {
        for (lang, path) in components {
            let bytes = std::fs::read(&path).unwrap();
            let engine = Engine::new(EngineConfig::default()).unwrap();
            let rss0 = rss_kib();
            let started = Instant::now();
            let plugin = engine.load(&bytes).unwrap();
            let compile = started.elapsed();
            let rss1 = rss_kib();
            let mut times = Vec::new();
            for _ in 0..200 {
                let job = JobInfo {
                    id: uuid::Uuid::now_v7(),
                    plugin: "classify".into(),
                    tenant: "bench".into(),
                    attempt: 1,
                    max_attempts: 1,
                    idempotency_key: None,
                    tags: Default::default(),
                    deadline_unix_ms: sluice_types::job::now_unix_ms() + 30_000,
                };
                let ctx = CallContext::new(job, plugin.digest());
                let limits = JobLimits {
                    memory_bytes: 64 << 20,
                    timeout: Duration::from_secs(30),
                    ..JobLimits::default()
                };
                let started = Instant::now();
                // Empty labels: the handler fails permanently before any model call, so this
                // times the instance, the call and teardown only.
                let out = engine
                    .run(
                        &plugin,
                        ctx,
                        r#"{"text": "x", "labels": []}"#,
                        limits,
                        memory::services(),
                    )
                    .await;
                times.push(started.elapsed());
                assert!(out.is_err(), "{lang}: {out:?}");
            }
            times.sort();
            let rss2 = rss_kib();
            println!(
                "| {lang} | {:.1} MiB | {:.2} s | {:.0} µs / {:.0} µs | +{} MiB | +{} MiB |",
                bytes.len() as f64 / (1 << 20) as f64,
                compile.as_secs_f64(),
                times[100].as_secs_f64() * 1e6,
                times[180].as_secs_f64() * 1e6,
                rss1.saturating_sub(rss0) >> 10,
                rss2.saturating_sub(rss0) >> 10,
            );
        }
    });
}
