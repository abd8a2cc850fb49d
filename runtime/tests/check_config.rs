//! `sluice check-config` as a user runs it: the real binary, a real file and real variables.

use std::process::{Command, Output};

/// The binary with no configuration variables inherited from the test's own environment.
fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env_remove("RUST_LOG").env_remove("SLUICE_CONFIG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SLUICE_") {
            c.env_remove(name);
        }
    }
    c
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn prints_toml_with_file_and_environment_layered_and_typed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(
        &file,
        "[worker]\nslots = 7\nlease_secs = 9\n\n\
         [gateway.providers.openai]\nkind = \"openai\"\n\
         [gateway.models.\"openai/gpt-4o-mini\"]\ninput_usd_per_mtok = 0.15\noutput_usd_per_mtok = 0.6\n\
         [gateway.aliases]\nfast = [\"openai/gpt-4o-mini\"]\n",
    )
    .unwrap();
    let out = sluice()
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .env("SLUICE_WORKER__SLOTS", "12")
        .env("SLUICE_SERVER__DEV", "true")
        .env("SLUICE_SERVER__LIMITS__MAX_TAGS", "5")
        .env("SLUICE_WEBHOOKS__SECRET", "123456")
        .env(
            "SLUICE_GATEWAY__PROVIDERS__OPENAI__API_KEY_ENV",
            "MY_OPENAI_KEY",
        )
        .output()
        .unwrap();
    let text = stdout(&out);
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(doc["worker"]["slots"].as_integer(), Some(12), "{text}");
    assert_eq!(doc["worker"]["lease_secs"].as_integer(), Some(9));
    assert_eq!(doc["server"]["dev"].as_bool(), Some(true));
    assert_eq!(doc["server"]["limits"]["max_tags"].as_integer(), Some(5));
    // Defaults fill in what neither layer sets.
    assert_eq!(doc["server"]["listen"].as_str(), Some("127.0.0.1:8080"));
    let openai = &doc["gateway"]["providers"]["openai"];
    assert_eq!(openai["kind"].as_str(), Some("openai"));
    assert_eq!(openai["api_key_env"].as_str(), Some("MY_OPENAI_KEY"));
    // The secret, all digits, was taken as the string it is, and is not printed.
    assert_eq!(doc["webhooks"]["secret"].as_str(), Some("<redacted>"));
    assert!(!text.contains("123456"), "{text}");
}

#[test]
fn json_on_request_with_secrets_redacted() {
    let out = sluice()
        .args(["check-config", "--json"])
        .env(
            "SLUICE_DATABASE__URL",
            "postgres://sluice:hunter2@db:5432/sluice",
        )
        .env("SLUICE_WEBHOOKS__SECRET", "s3cret-value")
        .output()
        .unwrap();
    let text = stdout(&out);
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        doc["database"]["url"],
        "postgres://sluice:***@db:5432/sluice"
    );
    assert_eq!(doc["webhooks"]["secret"], "<redacted>");
    assert_eq!(doc["worker"]["slots"], 256);
    assert!(doc["telemetry"]["endpoint"].is_null(), "{doc}");
    assert!(
        !text.contains("hunter2") && !text.contains("s3cret-value"),
        "{text}"
    );
}

#[test]
fn invalid_configuration_exits_2_naming_the_variable_or_the_key() {
    let out = sluice()
        .arg("check-config")
        .env("SLUICE_SERVER__LIMITS__MAX_TAGS", "lots")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("SLUICE_SERVER__LIMITS__MAX_TAGS"), "{err}");
    assert!(out.stdout.is_empty());

    let out = sluice()
        .arg("check-config")
        .env("SLUICE_WORKER__SLOTZ", "3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("SLUICE_WORKER__SLOTZ") && err.contains("slotz"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, "[server.limits]\nmax_tagz = 1\n").unwrap();
    let out = sluice()
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sluice.toml") && err.contains("max_tagz"),
        "{err}"
    );

    // Parses, but the node would refuse to start it: check-config says so too.
    let out = sluice()
        .arg("check-config")
        .env("SLUICE_GATEWAY__PROVIDERS__OPENAI__KIND", "openai")
        .env("SLUICE_GATEWAY__PROVIDERS__OPENAI__API_KEY", "sk-1")
        .env(
            "SLUICE_GATEWAY__PROVIDERS__OPENAI__API_KEY_ENV",
            "OPENAI_API_KEY",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("openai") && err.contains("not both"), "{err}");
    assert!(!err.contains("sk-1"), "{err}");
}
