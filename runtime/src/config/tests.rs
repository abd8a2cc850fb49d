//! Unit tests of the configuration: layering, strictness, typing of variables, redaction.

use super::*;

#[test]
fn unknown_keys_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sluice.toml");
    std::fs::write(&p, "[server]\nlisten = \"0.0.0.0:1\"\nlisten_typo = 1\n").unwrap();
    let err = Config::load(Some(&p)).unwrap_err().to_string();
    assert!(err.contains("listen_typo"), "{err}");
}

#[test]
fn file_values_override_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sluice.toml");
    std::fs::write(&p, "[worker]\nslots = 7\n").unwrap();
    let c = Config::load(Some(&p)).unwrap();
    assert_eq!(c.worker.slots, 7);
    assert_eq!(c.worker.lease_secs, WorkerConfig::default().lease_secs);
}

#[test]
fn the_example_configuration_loads() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sluice.toml");
    let c = Config::load(Some(&p)).unwrap();
    assert_eq!(c.worker.slots, 256);
    assert!(c.gateway.aliases.contains_key("fast"));
    c.gateway.validate().unwrap();
}

/// `(name, value)` pairs as the environment hands them over.
fn env(vars: &[(&str, &str)]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    vars.iter().map(|(k, v)| (k.into(), v.into())).collect()
}

fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sluice.toml");
    std::fs::write(&p, text).unwrap();
    (dir, p)
}

#[test]
fn nested_sections_come_from_the_environment_too() {
    let (_dir, p) = file("[server]\nlisten = \"127.0.0.1:1\"\n");
    let vars = env(&[
        ("SLUICE_SERVER__LIMITS__MAX_TAGS", "3"),
        ("SLUICE_SERVER__DEV", "true"),
        ("OTHER__THING", "1"),
    ]);
    let c = Config::load_with(Some(&p), vars).unwrap();
    assert_eq!(c.server.limits.max_tags, 3);
    assert!(c.server.dev);
    assert_eq!(c.server.listen, "127.0.0.1:1");
    assert_eq!(
        c.server.limits.max_tag_key_bytes,
        ApiLimits::default().max_tag_key_bytes
    );
    // A key is not a section.
    let vars = env(&[
        ("SLUICE_SERVER__DEV", "true"),
        ("SLUICE_SERVER__DEV__X", "1"),
    ]);
    let err = Config::load_with(None, vars).unwrap_err();
    assert!(err.to_string().contains("SLUICE_SERVER__DEV__X"), "{err}");
}

#[test]
fn environment_values_are_typed_by_their_key_not_their_look() {
    let vars = env(&[
        ("SLUICE_WEBHOOKS__SECRET", "123456"),
        ("SLUICE_SERVER__LISTEN", "0.0.0.0:9000"),
        ("SLUICE_SERVER__DEV", "true"),
        (
            "SLUICE_SERVER__LIMITS__MAX_WAITING_JOBS_PER_TENANT",
            "18446744073709551615",
        ),
        ("SLUICE_WORKER__TENANT_SHARE", "1"),
        ("SLUICE_TELEMETRY__SERVICE_NAME", "false"),
        (
            "SLUICE_WEBHOOKS__ALLOW_HOSTS",
            "[\"a.example\", \"b.example\"]",
        ),
        // The CLI's own variables are not configuration keys.
        ("SLUICE_CONFIG", "elsewhere.toml"),
        ("SLUICE_URL", "http://x"),
        ("SLUICE_API_KEY", "k"),
    ]);
    let c = Config::load_with(None, vars).unwrap();
    assert_eq!(c.webhooks.secret.as_deref(), Some("123456"));
    assert_eq!(c.server.listen, "0.0.0.0:9000");
    assert!(c.server.dev);
    assert_eq!(c.server.limits.max_waiting_jobs_per_tenant, u64::MAX);
    assert_eq!(c.worker.tenant_share, 1.0);
    assert_eq!(c.telemetry.service_name, "false");
    assert_eq!(c.webhooks.allow_hosts, ["a.example", "b.example"]);
}

#[test]
fn a_value_its_key_cannot_take_is_an_error_naming_the_variable() {
    for (name, value, says) in [
        ("SLUICE_SERVER__LIMITS__MAX_TAGS", "many", "whole number"),
        ("SLUICE_SERVER__LIMITS__MAX_TAGS", "-1", "whole number"),
        ("SLUICE_WORKER__SLOTS", "4294967296", "4294967295"),
        ("SLUICE_SERVER__DEV", "yes", "`true` or `false`"),
        ("SLUICE_WORKER__TENANT_SHARE", "most", "a number"),
        ("SLUICE_WEBHOOKS__ALLOW_HOSTS", "a.example", "TOML list"),
        (
            "SLUICE_GATEWAY__PROVIDERS__OPENAI__KIND",
            "openia",
            "openai",
        ),
    ] {
        let mut vars = env(&[(name, value)]);
        if name.contains("PROVIDERS") {
            vars.extend(env(&[(
                "SLUICE_GATEWAY__PROVIDERS__OPENAI__API_KEY_ENV",
                "OPENAI_API_KEY",
            )]));
        }
        let err = Config::load_with(None, vars).unwrap_err();
        assert!(
            matches!(err, ConfigError::Env { .. }),
            "{name}={value}: {err:?}"
        );
        let err = err.to_string();
        assert!(err.contains(name), "{name}={value}: {err}");
        assert!(err.contains(says), "{name}={value}: {err}");
    }
}

#[test]
fn an_environment_variable_naming_an_unknown_key_is_an_error() {
    for (name, unknown) in [
        ("SLUICE_SERVER__LIMITS__MAX_TAG", "max_tag"),
        ("SLUICE_SERVR__LISTEN", "servr"),
        (
            "SLUICE_GATEWAY__PROVIDERS__OPENAI__API_KEY_ENVV",
            "api_key_envv",
        ),
    ] {
        let err = Config::load_with(None, env(&[(name, "1")])).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigError::Env { .. }), "{text}");
        assert!(text.contains(name) && text.contains(unknown), "{text}");
    }
    let err = Config::load_with(None, env(&[("SLUICE_SERVER____DEV", "true")])).unwrap_err();
    assert!(err.to_string().contains("SLUICE_SERVER____DEV"), "{err}");
}

#[test]
fn map_keys_come_from_the_environment() {
    let (_dir, p) = file(
        "[gateway.providers.openai]\nkind = \"openai\"\n\
         [gateway.models.\"openai/gpt-4o-mini\"]\ninput_usd_per_mtok = 0.15\n\
         [gateway.aliases]\nfast = [\"openai/gpt-4o-mini\"]\n",
    );
    let vars = env(&[
        (
            "SLUICE_GATEWAY__PROVIDERS__OPENAI__API_KEY_ENV",
            "MY_OPENAI_KEY",
        ),
        ("SLUICE_GATEWAY__PROVIDERS__OPENAI__BREAKER__MIN_CALLS", "7"),
        ("SLUICE_GATEWAY__PROVIDERS__LOCAL__KIND", "openai"),
        (
            "SLUICE_GATEWAY__PROVIDERS__LOCAL__BASE_URL",
            "http://127.0.0.1:11434/v1",
        ),
        (
            "SLUICE_GATEWAY__ALIASES__SMART",
            "[\"openai/gpt-4o-mini\", \"local/llama\"]",
        ),
    ]);
    let c = Config::load_with(Some(&p), vars).unwrap();
    let openai = &c.gateway.providers["openai"];
    // The file's keys stay; the environment adds to the same provider.
    assert_eq!(openai.kind, sluice_gateway::ProviderKind::OpenAi);
    assert_eq!(openai.api_key_env.as_deref(), Some("MY_OPENAI_KEY"));
    assert_eq!(openai.breaker.min_calls, 7);
    let local = &c.gateway.providers["local"];
    assert_eq!(local.base_url.as_deref(), Some("http://127.0.0.1:11434/v1"));
    assert_eq!(c.gateway.aliases["fast"], ["openai/gpt-4o-mini"]);
    assert_eq!(
        c.gateway.aliases["smart"],
        ["openai/gpt-4o-mini", "local/llama"]
    );
    // A provider made only from the environment still needs its required keys, and the
    // error names the provider.
    let err = Config::load_with(
        None,
        env(&[("SLUICE_GATEWAY__PROVIDERS__X__API_KEY_ENV", "K")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("gateway.providers.x") && err.contains("kind"),
        "{err}"
    );
}

#[test]
fn tables_and_lists_of_tables_can_be_set_whole_from_one_variable() {
    let vars = env(&[
        (
            "SLUICE_GATEWAY__PROVIDERS__LOCAL",
            "{ kind = \"openai\", rpm = 60 }",
        ),
        ("SLUICE_GATEWAY__PROVIDERS__LOCAL__TPM", "1000"),
        (
            "SLUICE_GATEWAY__BUDGETS",
            "[{ scope = \"tenant\", period = \"day\", limit_usd = 5.0 }]",
        ),
    ]);
    let c = Config::load_with(None, vars).unwrap();
    let local = &c.gateway.providers["local"];
    assert_eq!((local.rpm, local.tpm), (Some(60), Some(1000)));
    assert_eq!(c.gateway.budgets.len(), 1);
    assert_eq!(c.gateway.budgets[0].limit_usd, 5.0);
    // Inside a whole table, the strict rule holds too, and names the variable.
    let vars = env(&[(
        "SLUICE_GATEWAY__PROVIDERS__LOCAL",
        "{ kind = \"openai\", rmp = 60 }",
    )]);
    let err = Config::load_with(None, vars).unwrap_err().to_string();
    assert!(
        err.contains("SLUICE_GATEWAY__PROVIDERS__LOCAL") && err.contains("rmp"),
        "{err}"
    );
}

#[test]
fn the_environment_wins_over_the_file_and_the_file_over_defaults() {
    let (_dir, p) =
        file("[worker]\nslots = 7\nlease_secs = 9\n[webhooks]\nallow_hosts = [\"f.example\"]\n");
    let vars = env(&[
        ("SLUICE_WORKER__SLOTS", "8"),
        ("SLUICE_WEBHOOKS__ALLOW_HOSTS", "[\"e.example\"]"),
    ]);
    let c = Config::load_with(Some(&p), vars).unwrap();
    assert_eq!(c.worker.slots, 8);
    assert_eq!(c.worker.lease_secs, 9);
    assert_eq!(c.worker.poll_ms, WorkerConfig::default().poll_ms);
    // A list from the environment replaces the file's, it does not append to it.
    assert_eq!(c.webhooks.allow_hosts, ["e.example"]);
}

#[test]
fn file_values_are_not_typed_by_their_look_either() {
    // In the file, TOML's own types are kept strictly: a quoted number is a string.
    let (_dir, p) = file("[worker]\nslots = \"8\"\n");
    let err = Config::load_with(Some(&p), env(&[])).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Parse { .. }), "{text}");
    assert!(
        text.contains("worker.slots") && text.contains("sluice.toml"),
        "{text}"
    );
    // The environment's value replaces the file's before types are checked.
    let err = Config::load_with(Some(&p), env(&[("SLUICE_WORKER__SLOTS", "8")]));
    assert_eq!(err.unwrap().worker.slots, 8);
}

#[test]
fn printed_configuration_has_no_secrets_and_loads_back() {
    let (_dir, p) = file(
        "[database]\nurl = \"postgres://u:dbpw@h/db\"\n\
         [webhooks]\nsecret = \"whsecret\"\n\
         [gateway.providers.openai]\nkind = \"openai\"\napi_key = \"sk-inline\"\n\
         headers = { Authorization = \"Bearer hdrsecret\" }\n\
         [gateway.models.\"openai/m\"]\ninput_usd_per_mtok = 1.0\n[gateway.aliases]\nfast = [\"openai/m\"]\n\
         [telemetry]\nendpoint = \"http://user:otelpw@collector:4318\"\n",
    );
    let c = Config::load_with(Some(&p), env(&[])).unwrap();
    let shown = c.redacted();
    let toml = shown.to_toml().unwrap();
    let json = serde_json::to_string(&shown).unwrap();
    for secret in ["dbpw", "whsecret", "sk-inline", "hdrsecret", "otelpw"] {
        assert!(!toml.contains(secret), "{secret} in {toml}");
        assert!(!json.contains(secret), "{secret} in {json}");
    }
    assert!(toml.contains("<redacted>"), "{toml}");
    assert!(toml.contains("postgres://u:***@h/db"), "{toml}");
    // Without secrets, what is printed is the configuration itself: it loads back the same.
    let plain = Config::load_with(None, env(&[("SLUICE_WORKER__SLOTS", "3")])).unwrap();
    let printed = plain.redacted().to_toml().unwrap();
    let (_dir2, p2) = file(&printed);
    let again = Config::load_with(Some(&p2), env(&[])).unwrap();
    assert_eq!(again.to_toml().unwrap(), printed);
    assert_eq!(again.worker.slots, 3);
}

#[test]
fn contradicting_limits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sluice.toml");
    std::fs::write(&p, "[server.limits]\nmax_timeout_ms = 1000\n").unwrap();
    let err = Config::load(Some(&p)).unwrap_err().to_string();
    assert!(err.contains("max_timeout_ms"), "{err}");
    std::fs::write(&p, "[server.limits]\nmax_idempotency_key_bytes = 4096\n").unwrap();
    let err = Config::load(Some(&p)).unwrap_err().to_string();
    assert!(err.contains("max_idempotency_key_bytes"), "{err}");
    std::fs::write(&p, "[server.limits]\nmax_tags = 1\nmax_tag = 2\n").unwrap();
    let err = Config::load(Some(&p)).unwrap_err().to_string();
    assert!(err.contains("max_tag"), "{err}");
    Config::default().check().unwrap();
}

#[test]
fn passwords_are_redacted() {
    assert_eq!(
        redact_url("postgres://u:secret@h:5432/db"),
        "postgres://u:***@h:5432/db"
    );
    assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    let c = DatabaseConfig {
        url: Some("postgres://u:pw@h/db".into()),
        ..Default::default()
    };
    assert!(!format!("{c:?}").contains("pw"));
}
