//! The two layers laid over the types' defaults: the TOML file and the `SLUICE_*` environment,
//! as `figment` providers (figment merges them and remembers where each value came from).
//!
//! Both are ours rather than figment's `Toml` and `Env`: figment's `Toml` links a second copy
//! of the `toml` crate (0.8, the workspace uses 0.9), and its `Env` types a value by its look
//! (`123456` becomes a number even for a string key such as a webhook secret). Here a variable
//! is typed by the key it sets, through [`super::schema`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Tag, Value};
use figment::{Metadata, Profile, Provider};

use super::ConfigError;
use super::schema::{self, Found, PathError, Shape};

/// The prefix of configuration variables.
pub const ENV_PREFIX: &str = "SLUICE_";
/// What separates sections and keys in a variable's name.
pub const ENV_SEPARATOR: &str = "__";

/// A TOML file, parsed whole up front so a syntax error names the file and line.
pub struct TomlFile {
    path: PathBuf,
    table: toml::Table,
}

impl TomlFile {
    /// Read and parse `path` (it must exist).
    pub fn read(path: &Path) -> Result<TomlFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Parse {
                path: path.into(),
                message: e.to_string(),
            })?;
        Ok(TomlFile {
            path: path.into(),
            table,
        })
    }
}

impl Provider for TomlFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("TOML file", self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let value = Value::serialize(&self.table)?;
        let dict = value
            .into_dict()
            .ok_or_else(|| figment::Error::from("a TOML document is a table".to_string()))?;
        Ok(Profile::Default.collect(dict))
    }
}

/// `SLUICE_SECTION__KEY` variables, each typed by the key it sets.
pub struct EnvLayer {
    dict: Dict,
    /// Each variable's key path, to name the variable when its value is refused later.
    vars: BTreeMap<Vec<String>, String>,
}

impl EnvLayer {
    /// The name figment gives the values of this layer (in its errors' metadata).
    pub const NAME: &'static str = "environment variable";

    /// The configuration variables among `vars`: names that start with `SLUICE_` and hold a
    /// `__` (`SLUICE_CONFIG`, `SLUICE_URL` and `SLUICE_API_KEY` are the CLI's own, not keys).
    /// A variable naming an unknown key, or with a value its key cannot take, is an error
    /// naming the variable.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<EnvLayer, ConfigError> {
        let mut layer = EnvLayer {
            dict: Dict::new(),
            vars: BTreeMap::new(),
        };
        let mut sorted: Vec<(String, OsString)> = vars
            .into_iter()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .filter(|(k, _)| is_config_var(k))
            .collect();
        // Name order: a table set whole (`…__PROVIDERS__X='{ kind = "openai" }'`) comes
        // before the variables that set its keys one by one, which then add to it.
        sorted.sort();
        for (name, value) in sorted {
            let err = |message: String| ConfigError::Env {
                name: name.clone(),
                message,
            };
            let value = value
                .into_string()
                .map_err(|_| err("the value is not valid UTF-8".into()))?;
            let path = key_path(&name).map_err(err)?;
            let typed = typed_value(&path, &value).map_err(err)?;
            insert(&mut layer.dict, &path, typed).map_err(err)?;
            layer.vars.insert(path, name);
        }
        Ok(layer)
    }

    /// The variable that set `path` or a key under or above it.
    pub fn var_for(&self, path: &[String]) -> Option<&str> {
        self.vars
            .iter()
            .find(|(p, _)| p.starts_with(path) || path.starts_with(p))
            .map(|(_, name)| name.as_str())
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(Self::NAME)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// Whether `name` is meant as a configuration key.
pub fn is_config_var(name: &str) -> bool {
    name.strip_prefix(ENV_PREFIX)
        .is_some_and(|rest| rest.contains(ENV_SEPARATOR))
}

/// `SLUICE_SERVER__LIMITS__MAX_TAGS` → `["server", "limits", "max_tags"]`.
fn key_path(name: &str) -> Result<Vec<String>, String> {
    let path: Vec<String> = name[ENV_PREFIX.len()..]
        .split(ENV_SEPARATOR)
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(format!(
            "empty key in the name (sections and keys are joined by a single `{ENV_SEPARATOR}`)"
        ));
    }
    Ok(path)
}

/// `raw` as the value the key at `path` takes.
fn typed_value(path: &[String], raw: &str) -> Result<Value, String> {
    let key = schema::display_path(path);
    let found = match schema::shape_at::<super::Config>(path) {
        Ok(found) => found,
        Err(PathError::Unknown {
            depth,
            key: unknown,
            expected,
        }) => {
            let at = match depth {
                0 => "at the top level".to_string(),
                d => format!("in `{}`", schema::display_path(&path[..d])),
            };
            return Err(format!(
                "unknown key `{unknown}` {at} (expected one of: {})",
                expected.join(", ")
            ));
        }
        Err(PathError::Other(m)) => return Err(format!("`{key}`: {m}")),
    };
    let Found { shape, depth, .. } = found;
    if depth < path.len() {
        let value_key = schema::display_path(&path[..depth]);
        return Err(format!(
            "`{value_key}` is a {shape}, not a section: it has no key `{}`",
            path[depth]
        ));
    }
    let bad = |what: &str| format!("`{key}` takes {what}, not `{raw}`");
    Ok(match shape {
        Shape::Str | Shape::Enum(_) => Value::from(raw.to_string()),
        Shape::Bool => match raw.trim() {
            "true" => Value::from(true),
            "false" => Value::from(false),
            _ => return Err(bad("`true` or `false`")),
        },
        Shape::Unsigned(bits) => {
            let n: u64 = raw.trim().parse().map_err(|_| bad("a whole number"))?;
            if bits < 64 && n >> bits != 0 {
                return Err(format!(
                    "`{key}` takes at most {}, not `{raw}`",
                    (1u64 << bits) - 1
                ));
            }
            Value::from(n)
        }
        Shape::Signed(bits) => {
            let n: i64 = raw.trim().parse().map_err(|_| bad("a whole number"))?;
            let (min, max) = if bits < 64 {
                (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
            } else {
                (i64::MIN, i64::MAX)
            };
            if !(min..=max).contains(&n) {
                return Err(format!("`{key}` takes {min} to {max}, not `{raw}`"));
            }
            Value::from(n)
        }
        Shape::Float => Value::from(raw.trim().parse::<f64>().map_err(|_| bad("a number"))?),
        // Lists (and tables, for a whole provider or budget) are written as TOML values:
        // `["openai/gpt-4o", "sim/fast"]`, `{ kind = "openai" }`.
        Shape::List | Shape::Map | Shape::Table(_) | Shape::Any => {
            let what = match shape {
                Shape::List => "a TOML list such as `[\"a\", \"b\"]`",
                Shape::Any => "a TOML value",
                _ => "a TOML inline table such as `{ key = \"value\" }`",
            };
            let parsed = toml_value(raw).ok_or_else(|| bad(what))?;
            let fits = matches!(
                (&shape, &parsed),
                (Shape::List, toml::Value::Array(_))
                    | (Shape::Map | Shape::Table(_), toml::Value::Table(_))
                    | (Shape::Any, _)
            );
            if !fits {
                return Err(bad(what));
            }
            Value::serialize(&parsed).map_err(|e| format!("`{key}`: {e}"))?
        }
    })
}

/// One TOML value written on its own (`[1, 2]`, `{ a = 1 }`, `"x"`).
fn toml_value(raw: &str) -> Option<toml::Value> {
    let mut doc: toml::Table = format!("v = {raw}").parse().ok()?;
    doc.remove("v")
}

/// Put `value` at `path` in `dict`, making the tables on the way.
fn insert(dict: &mut Dict, path: &[String], value: Value) -> Result<(), String> {
    let (last, sections) = path.split_last().expect("a key path is never empty");
    let mut table = dict;
    for (i, section) in sections.iter().enumerate() {
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| Value::Dict(Tag::Default, Dict::new()));
        table = match entry {
            Value::Dict(_, d) => d,
            _ => {
                return Err(format!(
                    "`{}` is set whole by another variable and also key by key",
                    schema::display_path(&path[..=i])
                ));
            }
        };
    }
    if table
        .get(last)
        .is_some_and(|v| matches!(v, Value::Dict(..)))
    {
        return Err(format!(
            "`{}` is set whole by this variable and also key by key",
            schema::display_path(path)
        ));
    }
    table.insert(last.clone(), value);
    Ok(())
}
