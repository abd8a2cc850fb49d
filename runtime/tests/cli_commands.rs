//! The operator commands as a user runs them: `sluice keys list|revoke` against the configured
//! store and a running server, `sluice plugins list|versions|rollback|delete` over HTTP, and
//! `sluice completions` read by bash itself. Real binary, real Postgres (a database per test,
//! as in `e2e.rs`), real components from `plugins/`.

#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;

mod e2e_support;

use std::process::Output;

use e2e_support::{Server, Site, stderr_of};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Build the plugins workspace (once per process) and read a component, off the runtime.
async fn component(name: &'static str) -> Vec<u8> {
    tokio::task::spawn_blocking(move || plugins::component(name))
        .await
        .unwrap()
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sluice <args>` against `server` with `key`, as a user with `SLUICE_URL` and
/// `SLUICE_API_KEY` set.
async fn cli_at(site: &Site, server: &Server, key: &str, args: &[&str]) -> Output {
    let mut c = tokio::process::Command::from(site.command());
    c.env("SLUICE_URL", server.url(""))
        .env("SLUICE_API_KEY", key)
        .args(args);
    tokio::time::timeout(e2e_support::DEADLINE, c.output())
        .await
        .unwrap_or_else(|_| panic!("`sluice {}` did not finish", args.join(" ")))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_without_secrets_and_revoked_at_once() {
    let site = Site::new(&[]).await;
    let admin = site.create_key("acme", "admin").await;
    let reader = site.create_key("acme", "read").await;
    let other = site.create_key("globex", "invoke,read").await;

    let out = site.cli(&["keys", "list", "--json"]).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    let listed = stdout_of(&out);
    for secret in [&admin, &reader, &other] {
        let hash = hex::encode(Sha256::digest(secret.as_bytes()));
        assert!(
            !listed.contains(secret.as_str()) && !listed.contains(&hash),
            "a secret or its hash is shown: {listed}"
        );
    }
    let keys: Vec<Value> = serde_json::from_str(&listed).unwrap();
    let summary: Vec<(&str, Vec<&str>, bool)> = keys
        .iter()
        .map(|k| {
            (
                k["tenant"].as_str().unwrap(),
                k["scopes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap())
                    .collect(),
                k["revoked"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("acme", vec!["admin"], false),
            ("acme", vec!["read"], false),
            ("globex", vec!["invoke", "read"], false)
        ]
    );
    assert!(
        keys.iter()
            .all(|k| k["created_at"].is_string() && k["name"] == "cli")
    );
    let reader_id = keys[1]["id"].as_str().unwrap().to_string();

    let out = site.cli(&["keys", "list", "--tenant", "globex"]).await;
    let table = stdout_of(&out);
    assert_eq!(table.lines().count(), 2, "a header and one key: {table}");
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert!(table.contains("globex") && table.contains("invoke,read") && !table.contains("acme"));

    let server = site.up("127.0.0.1:0").await;
    server.get(Some(&reader), "/v1/plugins").await.ok(200);
    let out = site.cli(&["keys", "revoke", &reader_id]).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("now get 401"),
        "{}",
        stderr_of(&out)
    );
    // The running server refuses the key on its very next request; the others still work.
    server
        .get(Some(&reader), "/v1/plugins")
        .await
        .problem(401, "unauthorized");
    server.get(Some(&admin), "/v1/plugins").await.ok(200);
    server.get(Some(&other), "/v1/plugins").await.ok(200);

    let out = site
        .cli(&["keys", "list", "--tenant", "acme", "--json"])
        .await;
    let keys: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<bool> = keys
        .iter()
        .map(|k| k["revoked"].as_bool().unwrap())
        .collect();
    assert_eq!(states, [false, true]);

    // Again: nothing to do, and said so. An unknown id: exit 3. Not an id: exit 2.
    let out = site.cli(&["keys", "revoke", &reader_id]).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("already revoked"));
    let out = site
        .cli(&["keys", "revoke", &uuid::Uuid::now_v7().to_string()])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("no API key with id"));
    let out = site.cli(&["keys", "revoke", "sk_not-an-id"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_listed_rolled_back_and_deleted() {
    let site = Site::new(&[]).await;
    let key = site.create_key("acme", "deploy,invoke,read").await;
    let server = site.up("127.0.0.1:0").await;
    let k = Some(key.as_str());
    let noop = component("noop").await;
    let summarize = component("summarize").await;

    // v1: noop; v2: its settings changed; v3: another component.
    server.upload(k, "tool", noop.clone()).await.ok(201);
    let out = cli_at(
        &site,
        &server,
        &key,
        &["plugins", "settings", "tool", "--timeout-ms", "5000"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    let v3 = server.upload(k, "tool", summarize).await.ok(201).clone();
    assert_eq!(v3["version"], 3);

    let out = cli_at(&site, &server, &key, &["plugins", "list", "--json"]).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["items"][0]["name"], "tool");
    assert_eq!(list["items"][0]["active_version"], 3);
    let out = cli_at(&site, &server, &key, &["plugins", "list"]).await;
    let table = stdout_of(&out);
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with("tool") && row.contains(" v3 ") && row.contains(" 3 "),
        "{table}"
    );

    let out = cli_at(&site, &server, &key, &["plugins", "versions", "tool"]).await;
    let table = stdout_of(&out);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[2].starts_with('*') && rows[2].contains("v3"),
        "{table}"
    );
    assert!(rows[1].contains(r#""timeout_ms":5000"#), "{table}");
    assert!(
        !rows[0].starts_with('*') && !rows[1].starts_with('*'),
        "{table}"
    );

    // Back one version, then to a named one; new jobs run what is active.
    let out = cli_at(&site, &server, &key, &["plugins", "rollback", "tool"]).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("v2 is active (was v3)"),
        "{}",
        stdout_of(&out)
    );
    assert_eq!(
        server.get(k, "/v1/plugins/tool").await.ok(200)["active_version"],
        2
    );
    let out = cli_at(
        &site,
        &server,
        &key,
        &["plugins", "rollback", "tool", "--to", "1", "--json"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    let now: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(now["active_version"], 1);
    let job = server
        .send(
            server
                .request(Method::POST, "/v1/plugins/tool/jobs?wait=60s", k)
                .json(&json!({"input": {}})),
        )
        .await;
    assert_eq!(job.ok(200)["plugin_version"], 1, "{:?}", job.body);
    // Nothing older than v1; no v9.
    let out = cli_at(&site, &server, &key, &["plugins", "rollback", "tool"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("oldest version"));
    let out = cli_at(
        &site,
        &server,
        &key,
        &["plugins", "rollback", "tool", "--to", "9"],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert_eq!(
        server.get(k, "/v1/plugins/tool").await.ok(200)["active_version"],
        1
    );

    let out = cli_at(&site, &server, &key, &["plugins", "delete", "tool"]).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    server
        .get(k, "/v1/plugins/tool")
        .await
        .problem(404, "not-found");
    for args in [
        &["plugins", "versions", "tool"][..],
        &["plugins", "delete", "tool"],
        &["plugins", "rollback", "tool"],
    ] {
        let out = cli_at(&site, &server, &key, args).await;
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr_of(&out));
    }
    let out = cli_at(&site, &server, &key, &["plugins", "list"]).await;
    assert!(
        stdout_of(&out).starts_with("(no plugins"),
        "{}",
        stdout_of(&out)
    );
}
