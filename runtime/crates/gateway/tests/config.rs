//! Config parsing and validation.

use sluice_gateway::{ConfigError, Gateway, GatewayConfig};

const EXAMPLE: &str = r#"
max_call_ms = 120000

[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key = "sk-secret-value"
rpm = 500
tpm = 200000
max_retries = 3
headers = { "OpenAI-Organization" = "org-123" }

[providers.openai.breaker]
failure_rate = 0.5
min_calls = 10
window_ms = 30000
cooldown_ms = 15000

[providers.anthropic]
kind = "anthropic"
api_key_env = "SLUICE_TEST_UNSET_KEY_VAR"
timeout_ms = 60000

[providers.local]
kind = "simulated"
[providers.local.simulator]
wire = "anthropic"
[providers.local.simulator.config]
seed = 7
ttft_ms = 5
tpm = 100000

[models."openai/gpt-4o-mini"]
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.6
cached_input_usd_per_mtok = 0.075
context_tokens = 128000

[models."anthropic/claude-haiku"]
name = "claude-3-5-haiku-latest"
input_usd_per_mtok = 0.8
output_usd_per_mtok = 4
max_tokens = 2048

[models."local/sim"]
input_usd_per_mtok = 0
output_usd_per_mtok = 0

[models."openai/text-embedding-3-small"]
input_usd_per_mtok = 0.02
embedding = true

[aliases]
fast = ["openai/gpt-4o-mini", "anthropic/claude-haiku", "local/sim"]
embed = ["openai/text-embedding-3-small"]

[cache]
ttl_secs = 600

[[budgets]]
scope = "tag"
tag = "user"
period = "day"
limit_usd = 5.0
"#;

fn parse(s: &str) -> Result<GatewayConfig, String> {
    toml::from_str(s).map_err(|e| e.to_string())
}

#[test]
fn the_example_parses_and_validates() {
    let cfg = parse(EXAMPLE).unwrap();
    cfg.validate().unwrap();
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("sk-secret-value"), "keys are never printed");
    assert!(debug.contains("<redacted>"));
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(!json.contains("sk-secret-value"));
}

#[test]
fn unknown_keys_are_errors() {
    let err = parse("[providers.x]\nkind = \"openai\"\nrpmm = 5\n").unwrap_err();
    assert!(err.contains("rpmm"), "{err}");
}

#[test]
fn an_alias_naming_an_unknown_model_or_provider_is_a_clear_error() {
    let mut cfg = parse(EXAMPLE).unwrap();
    cfg.aliases
        .insert("smart".into(), vec!["openai/gpt-5".into()]);
    let err = cfg.validate().unwrap_err();
    assert!(matches!(err, ConfigError::Alias { .. }));
    assert!(
        err.to_string().contains("unknown model \"openai/gpt-5\""),
        "{err}"
    );
    cfg.aliases
        .insert("smart".into(), vec!["azure/gpt-4o".into()]);
    assert!(
        cfg.validate()
            .unwrap_err()
            .to_string()
            .contains("unknown provider \"azure\"")
    );
}

#[test]
fn a_chat_model_without_prices_is_rejected() {
    let err = parse("[providers.p]\nkind = \"openai\"\n[models.\"p/m\"]\ninput_usd_per_mtok = 1\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(
        err.to_string().contains("output_usd_per_mtok is required"),
        "{err}"
    );
    let err =
        parse("[providers.p]\nkind = \"openai\"\n[models.\"p/m\"]\noutput_usd_per_mtok = 1\n")
            .unwrap_err();
    assert!(err.contains("input_usd_per_mtok"), "{err}");
}

#[test]
fn the_default_config_is_the_simulated_one_and_valid() {
    GatewayConfig::default().validate().unwrap();
    let tuned = parse("[cache]\nttl_secs = 5\n").unwrap().or_simulated();
    assert_eq!(tuned.cache.ttl_secs, 5);
    assert!(tuned.aliases.contains_key("fast") && tuned.aliases.contains_key("embed"));
}

#[tokio::test]
async fn a_missing_key_variable_fails_at_startup() {
    let cfg = parse(EXAMPLE).unwrap();
    let err = Gateway::new(cfg).await.err().expect("the env var is unset");
    assert!(
        err.to_string().contains("SLUICE_TEST_UNSET_KEY_VAR"),
        "{err}"
    );
}

#[test]
fn cache_settings_parse_and_the_ttl_is_bounded() {
    let cfg: GatewayConfig = toml::from_str("[cache]\nsampled = true\nttl_secs = 60\n").unwrap();
    assert!(cfg.cache.sampled && cfg.cache.enabled);
    let cfg = cfg.or_simulated();
    cfg.validate().unwrap();
    assert!(!GatewayConfig::simulated().cache.sampled, "off by default");
    let mut long = cfg.clone();
    long.cache.ttl_secs = u64::MAX;
    let err = long.validate().unwrap_err();
    assert!(
        matches!(&err, ConfigError::Other(m) if m.contains("cache.ttl_secs")),
        "{err}"
    );
    long.cache.ttl_secs = sluice_gateway::CacheConfig::MAX_TTL_SECS;
    long.validate().unwrap();
}
