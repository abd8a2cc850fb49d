//! `docs/configuration.md` keeps in step with the configuration's types: every key the schema
//! has is documented with its variable, type and default, and every documented key exists.

use std::collections::BTreeSet;

use sluice::config::Config;
use sluice::config::schema::{self, Found, Shape};

const DOC: &str = include_str!("../../docs/configuration.md");

/// The row of `key` in the doc's key tables, as its four cells.
fn row(key: &str) -> Option<Vec<&'static str>> {
    let start = format!("| `{key}`");
    let line = DOC
        .lines()
        .find(|l| l.starts_with(&start) && l[start.len()..].starts_with(['<', ' ']))?;
    Some(
        line.trim()
            .trim_matches('|')
            .split(" | ")
            .map(str::trim)
            .collect(),
    )
}

/// `gateway.providers.<name>.kind` → `SLUICE_GATEWAY__PROVIDERS__<NAME>__KIND`.
fn variable(key: &str) -> String {
    format!("SLUICE_{}", key.replace('.', "__").to_uppercase())
}

/// The default of a key without `<name>` or `[]` in it, as TOML writes it (`None`: unset).
fn default_of(defaults: &toml::Value, key: &str) -> Option<String> {
    let mut v = defaults;
    for part in key.split('.') {
        v = v.get(part)?;
    }
    Some(v.to_string())
}

fn check_type(key: &str, found: &Found, cell: &str, problems: &mut Vec<String>) {
    let words: Vec<String> = match &found.shape {
        Shape::Str => vec!["string".into()],
        Shape::Bool => vec!["bool".into()],
        Shape::Unsigned(_) | Shape::Signed(_) => vec!["integer".into()],
        Shape::Float => vec!["float".into()],
        Shape::List => vec!["list".into()],
        Shape::Enum(names) => names.iter().map(|n| format!("`{n}`")).collect(),
        other => vec![format!("<{other:?} is not a value>")],
    };
    for w in words {
        if !cell.contains(&w) {
            problems.push(format!("{key}: type `{cell}` should say {w}"));
        }
    }
    if found.optional != cell.contains("optional") {
        problems.push(format!(
            "{key}: type `{cell}` should {}say optional",
            if found.optional { "" } else { "not " }
        ));
    }
}

#[test]
fn every_key_is_documented_with_its_variable_type_and_default() {
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    let keys = schema::leaf_keys::<Config>();
    assert!(keys.len() > 100, "the walk found only {} keys", keys.len());
    let mut problems = Vec::new();
    for (key, found) in &keys {
        let Some(cells) = row(key) else {
            problems.push(format!("{key}: no row in docs/configuration.md"));
            continue;
        };
        let [name, ty, default, meaning] = cells[..] else {
            problems.push(format!("{key}: expected 4 cells, found {cells:?}"));
            continue;
        };
        // Keys inside lists of tables have no variable of their own (the list is set whole).
        if !key.contains(schema::EACH) && !name.contains(&format!("`{}`", variable(key))) {
            problems.push(format!("{key}: should name its variable {}", variable(key)));
        }
        check_type(key, found, ty, &mut problems);
        if !key.contains(schema::ANY_KEY) && !key.contains(schema::EACH) {
            match default_of(&defaults, key) {
                None if !default.starts_with("unset") => {
                    problems.push(format!("{key}: default `{default}` should say unset"));
                }
                Some(d) if !default.contains(&format!("`{d}`")) => {
                    problems.push(format!("{key}: default `{default}` should show `{d}`"));
                }
                _ => {}
            }
        }
        if meaning.len() < 10 {
            problems.push(format!("{key}: no meaning given"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_documented_key_exists() {
    let known: BTreeSet<String> = schema::leaf_keys::<Config>()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let documented: Vec<&str> = DOC
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    assert!(documented.len() >= known.len());
    let stale: Vec<&&str> = documented.iter().filter(|k| !known.contains(**k)).collect();
    assert!(
        stale.is_empty(),
        "documented but not in the schema: {stale:?}"
    );
}
