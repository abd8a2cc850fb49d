//! The dashboard in a real browser: a real `sluice up` in dev mode on loopback (no keys, as a
//! developer runs it), real jobs from components built from `plugins/` (completed ones with
//! model calls from the simulated providers, one whose output is markup, one dead), then
//! `tests/browser/dashboard.mjs` drives Debian's `chromium` with playwright-core and checks
//! the page against the API's JSON, redrives from the button, and saves screenshots.
//!
//! Needs, besides Postgres: `node`, Debian's `chromium` (`apt-get install -y chromium`) and
//! `npm ci` run in `tests/browser`. A missing one fails the test with what to install; it
//! does not skip it.

#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;

mod e2e_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e_support::{DEADLINE, Server, Site};
use reqwest::Method;
use serde_json::{Value, json};

async fn component(name: &'static str) -> Vec<u8> {
    tokio::task::spawn_blocking(move || plugins::component(name))
        .await
        .unwrap()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
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
                "the dashboard test needs Debian's chromium: `apt-get update && apt-get install -y \
                 chromium` (or set CHROMIUM to a Chromium binary)"
            )
        });
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        matches!(&node, Ok(o) if o.status.success()),
        "the dashboard test needs node (Node.js 18 or later): `apt-get install -y nodejs npm`"
    );
    let pw = repo_root().join("tests/browser/node_modules/playwright-core/package.json");
    assert!(
        pw.is_file(),
        "the dashboard test needs playwright-core: run `npm ci` in {}",
        repo_root().join("tests/browser").display()
    );
    chromium
}

async fn submit(server: &Server, plugin: &str, body: Value) -> String {
    let r = server.submit(None, plugin, &body).await;
    assert!(r.status.is_success(), "submit to {plugin}: {:?}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

async fn wait_finished(server: &Server, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let job = server.get(None, &format!("/v1/jobs/{id}")).await;
        let body = job.ok(200).clone();
        if matches!(
            body["status"].as_str(),
            Some("completed" | "dead" | "cancelled")
        ) {
            return body;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "job {id} never finished: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_api_and_redrives_from_the_button() {
    let chromium = browser_tools();
    let site = Site::new(&[("SLUICE_SERVER__DEV", "true")]).await;
    let server = site.up("127.0.0.1:0").await;

    // The page and its assets: embedded, with a CSP that allows no inline code.
    let page = server.http.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    let js = server
        .http
        .get(server.url("/dashboard/app.js"))
        .send()
        .await
        .unwrap();
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let js = js.text().await.unwrap();
    // The page renders data as text only (see the note at the top of app.js).
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!js.contains(sink), "app.js uses {sink}");
    }

    for name in ["noop", "state-effects", "sleep-forever"] {
        let up = server.upload(None, name, component(name).await).await;
        assert_eq!(up.status.as_u16(), 201, "{name}: {:?}", up.body);
    }
    let budget = server
        .send(
            server
                .request(Method::PUT, "/v1/budgets/daily", None)
                .json(&json!({"scope": "tenant", "period": "day", "limit_usd": 5})),
        )
        .await;
    assert!(budget.status.is_success(), "{:?}", budget.body);

    // Dies by its 3 s timeout on its only attempt; once redriven it sleeps again, so it is
    // out of the DLQ for 3 s after the click.
    let dead = submit(
        &server,
        "sleep-forever",
        json!({"input": {}, "timeout_ms": 3000, "max_attempts": 1, "tags": {"feature": "batch"}}),
    )
    .await;
    let xss = submit(
        &server,
        "noop",
        json!({
            "input": {"text": "<img src=x onerror=window.__pwned=1>", "note": "</pre><script>window.__pwned=2</script>"},
            "tags": {"user": "<script>window.__pwned=3</script>", "feature": "search"},
            // Nobody listens there: the delivery fails and shows on the webhooks page.
            "webhook": {"url": "http://127.0.0.1:9/hook"},
        }),
    )
    .await;
    let mut with_calls = Vec::new();
    for (i, (user, feature)) in [("ann", "support"), ("bob", "search"), ("ann", "search")]
        .into_iter()
        .enumerate()
    {
        let id = submit(
            &server,
            "state-effects",
            json!({
                "input": {"prefix": format!("se{i}/"), "chat_model": "fast"},
                "tags": {"user": user, "feature": feature},
            }),
        )
        .await;
        with_calls.push(id);
    }
    for id in with_calls.iter().chain([&xss]) {
        assert_eq!(
            wait_finished(&server, id).await["status"],
            "completed",
            "{id}"
        );
    }
    assert_eq!(wait_finished(&server, &dead).await["status"], "dead");

    run_browser(
        &chromium,
        &server,
        &[
            ("XSS_JOB", xss.as_str()),
            ("DEAD_JOB", dead.as_str()),
            ("CALLS_JOB", with_calls[0].as_str()),
        ],
    )
    .await;

    // What the button did, seen through the API.
    let job = server.get(None, &format!("/v1/jobs/{dead}")).await;
    assert_eq!(job.ok(200)["run"], 1, "{:?}", job.body);
}

/// Outside dev mode the page asks for a key, keeps it in the tab's sessionStorage, and shows
/// that key's tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_dev_mode_the_dashboard_asks_for_a_key() {
    let chromium = browser_tools();
    let site = Site::new(&[]).await;
    let key = site.create_key("acme", "deploy,invoke,read").await;
    let server = site.up("127.0.0.1:0").await;
    let page = server.http.get(server.url("/")).send().await.unwrap();
    assert_eq!(
        page.status(),
        200,
        "the page itself holds no data and needs no key"
    );
    let refused = server.get(None, "/v1/jobs").await;
    refused.problem(401, "unauthorized");
    let up = server
        .upload(Some(&key), "noop", component("noop").await)
        .await;
    assert_eq!(up.status.as_u16(), 201, "{:?}", up.body);
    let r = server
        .submit(Some(&key), "noop", &json!({"input": {"hello": "acme"}}))
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    while server.get(Some(&key), &format!("/v1/jobs/{id}")).await.body["status"] != "completed" {
        assert!(started.elapsed() < DEADLINE, "job {id} never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run_browser(
        &chromium,
        &server,
        &[
            ("MODE", "keyed"),
            ("KEY", key.as_str()),
            ("KEYED_JOB", id.as_str()),
        ],
    )
    .await;
}

/// Run `tests/browser/dashboard.mjs` against `server` with `vars`; panics with its output
/// when a check fails.
async fn run_browser(chromium: &Path, server: &Server, vars: &[(&str, &str)]) {
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let mut node = tokio::process::Command::new("node");
    node.arg(repo_root().join("tests/browser/dashboard.mjs"))
        .current_dir(repo_root())
        .env("SLUICE_URL", server.url(""))
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium)
        .envs(vars.iter().copied())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(120), node.output())
        .await
        .expect("the browser script hung")
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser checks failed:\n{stdout}\n{stderr}\nscreenshots so far in {}",
        artifacts.display()
    );
    eprintln!(
        "{stdout}browser checks took {:.1}s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        artifacts.display()
    );
}
