//! `sluice loadtest` as a user runs it: the real binary, the shipped tiny scenario
//! (`examples/loadtest/tiny.toml`: real `plugins/classify`, the in-process simulated
//! providers with the primary down for a second), on Postgres and on SQLite. The JSON report
//! is checked against the store itself, a missed SLO must give exit code 1, and the HTML
//! report is opened in headless Chromium (`tests/browser/loadtest-report.mjs`) and checked
//! against the JSON.
//!
//! The browser test needs `node`, Debian's `chromium` and `npm ci` in `tests/browser`, as
//! the dashboard's does; a missing one fails it with what to install.

mod e2e_support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use e2e_support::Db;
use serde_json::Value;
use sqlx::{Connection, Row};

/// A hang guard, not a speed limit: the first run builds `plugins/classify` for wasm32.
const HANG: Duration = Duration::from_secs(900);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

async fn loadtest(args: &[&str]) -> Output {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") {
            c.env_remove(k);
        }
    }
    c.arg("loadtest")
        .args(args)
        .current_dir(repo_root())
        .kill_on_drop(true);
    tokio::time::timeout(HANG, c.output())
        .await
        .expect("sluice loadtest hung")
        .expect("running sluice loadtest")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_accounts_for_every_job_the_store_holds() {
    let db = Db::create().await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = loadtest(&[
        "examples/loadtest/tiny.toml",
        "--database-url",
        &db.url,
        "--json",
        json.to_str().unwrap(),
        "--quiet",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = read_json(&json);
    let jobs = &r["jobs"];
    assert_eq!(u(&jobs["submitted"]), 20, "{jobs}");
    assert_eq!(u(&jobs["accepted"]), 20, "{jobs}");
    assert_eq!(u(&jobs["lost"]), 0, "{jobs}");
    assert_eq!(
        u(&jobs["accepted"]),
        u(&jobs["completed"]) + u(&jobs["dead"]) + u(&jobs["cancelled"]),
        "{jobs}"
    );
    assert_eq!(r["passed"], true, "{}", r["slo"]);

    // The store, read directly: every job of the run, by state.
    let run_id = r["run"]["run_id"].as_str().unwrap().to_string();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let rows = sqlx::query(
        "SELECT state, count(*) AS n, coalesce(sum(attempt), 0)::bigint AS attempts FROM (
             SELECT state, attempt FROM jobs WHERE tags->>'loadtest' = $1
             UNION ALL
             SELECT state, attempt FROM job_history WHERE tags->>'loadtest' = $1) j
         GROUP BY state",
    )
    .bind(&run_id)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut by_state = std::collections::BTreeMap::new();
    let mut attempts = 0i64;
    for row in &rows {
        by_state.insert(row.get::<String, _>("state"), row.get::<i64, _>("n") as u64);
        attempts += row.get::<i64, _>("attempts");
    }
    let count = |s: &str| by_state.get(s).copied().unwrap_or(0);
    assert_eq!(
        count("available") + count("running"),
        0,
        "unfinished in the store: {by_state:?}"
    );
    assert_eq!(count("completed"), u(&jobs["completed"]), "{by_state:?}");
    assert_eq!(count("dead"), u(&jobs["dead"]), "{by_state:?}");
    assert_eq!(count("cancelled"), u(&jobs["cancelled"]), "{by_state:?}");
    assert_eq!(
        by_state.values().sum::<u64>(),
        u(&jobs["accepted"]),
        "the store holds exactly the accepted jobs: {by_state:?}"
    );
    assert_eq!(attempts as u64, u(&r["retries"]["job_attempts"]));

    // Its model calls and their cost, from the usage rows.
    let usage = sqlx::query(
        "SELECT count(*) AS n, coalesce(sum(cost_micros), 0)::bigint AS cost
         FROM usage_records WHERE tags->>'loadtest' = $1",
    )
    .bind(&run_id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        usage.get::<i64, _>("n") as u64,
        u(&r["retries"]["model_calls"])
    );
    assert_eq!(
        usage.get::<i64, _>("cost") as u64,
        u(&r["cost"]["total_micros"])
    );
    assert!(u(&r["cost"]["total_micros"]) > 0, "classify calls models");
    let _ = conn.close().await;

    // What the simulated primary answered matches what Sluice says it got: every 5xx it
    // sent (its outage) is a failed attempt on `sim` in the report.
    let sim = &r["providers"]["simulators"]["sim"];
    let sim_failed: u64 = r["providers"]["attempts"]["sim"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| *k != "ok")
                .map(|(_, v)| u(v))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(u(&sim["server_errors"]), sim_failed, "{sim}");
    if sim_failed > 0 {
        assert!(u(&r["providers"]["failovers"]) > 0, "{}", r["providers"]);
    }
    assert_eq!(
        u(&r["retries"]["provider_attempts"]),
        r["providers"]["simulators"]
            .as_object()
            .unwrap()
            .values()
            .map(|s| u(&s["requests"]))
            .sum::<u64>(),
        "each provider attempt reached a simulator once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_slo_exits_1_and_a_bad_scenario_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = std::fs::read_to_string(repo_root().join("examples/loadtest/tiny.toml")).unwrap();
    let classify = repo_root().join("plugins/classify");
    let strict = tiny
        .replace(
            "path = \"../../plugins/classify\"",
            &format!("path = {:?}", classify.display().to_string()),
        )
        .replace("p95_latency_ms = 30000", "p95_latency_ms = 0.001");
    assert_ne!(strict, tiny);
    let scenario = dir.path().join("strict.toml");
    std::fs::write(&scenario, strict).unwrap();
    let json = dir.path().join("report.json");
    // In-process on SQLite this time (the default).
    let out = loadtest(&[scenario.to_str().unwrap(), "--json", json.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("MISS p95_latency_ms"), "{stdout}");
    let r = read_json(&json);
    assert_eq!(r["passed"], false);
    let p95 = r["slo"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "p95_latency_ms")
        .unwrap();
    assert_eq!(p95["met"], false, "{p95}");
    assert!(p95["actual"].as_f64().unwrap() > 0.001);
    // Only that SLO missed: everything was still accounted for.
    assert_eq!(u(&r["jobs"]["lost"]), 0);
    assert!(
        r["slo"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["met"] == true || c["name"] == "p95_latency_ms"),
        "{}",
        r["slo"]
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, tiny.replace("[arrival]", "[arrival]\nspeed = 3")).unwrap();
    let out = loadtest(&[bad.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("speed"), "{}", stderr(&out));
}

/// Chromium, node and playwright-core, or a panic saying how to install what is missing.
fn browser_tools() -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "the report's browser test needs Debian's chromium: `apt-get update && \
                 apt-get install -y chromium` (or set CHROMIUM to a Chromium binary)"
            )
        });
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        matches!(&node, Ok(o) if o.status.success()),
        "the report's browser test needs node (Node.js 18 or later): `apt-get install -y nodejs npm`"
    );
    let pw = repo_root().join("tests/browser/node_modules/playwright-core/package.json");
    assert!(
        pw.is_file(),
        "the report's browser test needs playwright-core: run `npm ci` in {}",
        repo_root().join("tests/browser").display()
    );
    chromium
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_renders_offline_and_shows_the_json_numbers() {
    let chromium = browser_tools();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let html = dir.path().join("report.html");
    let out = loadtest(&[
        "examples/loadtest/tiny.toml",
        "--json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
        "--quiet",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!doctype html>"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page refers to nothing outside itself"
    );

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("loadtest-report");
    let mut node = tokio::process::Command::new("node");
    node.arg(repo_root().join("tests/browser/loadtest-report.mjs"))
        .current_dir(repo_root())
        .env("REPORT_HTML", &html)
        .env("REPORT_JSON", &json)
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), node.output())
        .await
        .expect("the browser script hung")
        .expect("running node");
    assert!(
        out.status.success(),
        "the browser checks failed:\n{}\n{}\nscreenshot in {}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out),
        artifacts.display()
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_unfinished_at_the_drain_deadline_are_cancelled_and_counted_not_lost() {
    let db = Db::create().await;
    let dir = tempfile::tempdir().unwrap();
    let classify = repo_root().join("plugins/classify");
    // Providers that take 60 s to answer and a 1 s drain: every job is still in its first
    // model call when the deadline passes.
    let scenario = format!(
        r#"name = "stuck"
duration = "1s"
[plugin]
path = {classify:?}
[input]
template = '{{"text": "{{{{text}}}}", "labels": ["billing", "other"]}}'
[arrival]
pattern = "constant"
rate = 5
[providers.sim]
ttft_ms = 60000
[providers.sim-b]
ttft_ms = 60000
[drain]
timeout = "1s"
[slo]
max_unfinished = 0
"#,
        classify = classify.display().to_string()
    );
    let path = dir.path().join("stuck.toml");
    std::fs::write(&path, scenario).unwrap();
    let json = dir.path().join("report.json");
    let out = loadtest(&[
        path.to_str().unwrap(),
        "--database-url",
        &db.url,
        "--json",
        json.to_str().unwrap(),
        "--quiet",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r = read_json(&json);
    let jobs = &r["jobs"];
    assert_eq!(u(&jobs["accepted"]), 5, "{jobs}");
    assert_eq!(u(&jobs["unfinished"]), 5, "{jobs}");
    assert_eq!(u(&jobs["cancelled"]), 5, "{jobs}");
    assert_eq!(u(&jobs["lost"]), 0, "{jobs}");
    let missed: Vec<&str> = r["slo"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["met"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(missed, ["max_unfinished"]);

    let run_id = r["run"]["run_id"].as_str().unwrap().to_string();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let cancelled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_history WHERE state = 'cancelled' AND tags->>'loadtest' = $1",
    )
    .bind(&run_id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE tags->>'loadtest' = $1")
        .bind(&run_id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!((cancelled, live), (5, 0));
    let _ = conn.close().await;
}
