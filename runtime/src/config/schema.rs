//! What the configuration's types expect at a key path, read from their `Deserialize` impls.
//!
//! An environment variable is only text; whether `123456` is a string or a number depends on
//! the field it sets, not on how it looks. [`shape_at`] asks the schema: it drives a type's
//! `Deserialize` impl with a deserializer that follows one key path and stops at the first
//! value, reporting what the impl asked for there (a string, a bool, a `u32`, a table with
//! these fields, a list…). Unknown keys fail exactly as they would in the file, because the
//! same derived code (with its `deny_unknown_fields`) rejects them.
//!
//! [`leaf_keys`] walks the whole schema the same way, so documentation can be checked against
//! it.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor,
};

/// Path segment standing for "any key" of a map (a provider's name, an alias) when walking.
pub const ANY_KEY: &str = "<name>";
/// Path segment standing for "each element" of a list when walking.
pub const EACH: &str = "[]";

/// What a type expects at a key path.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// A struct with these fields (a TOML table of known keys).
    Table(&'static [&'static str]),
    /// A map from any key (providers by name, aliases).
    Map,
    /// A list.
    List,
    /// Text.
    Str,
    /// `true` or `false`.
    Bool,
    /// An unsigned integer that fits in this many bits.
    Unsigned(u32),
    /// A signed integer that fits in this many bits.
    Signed(u32),
    /// A floating-point number.
    Float,
    /// One of these names.
    Enum(&'static [&'static str]),
    /// A self-describing value: the type gives no hint.
    Any,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Table(_) => f.write_str("table"),
            Shape::Map => f.write_str("map"),
            Shape::List => f.write_str("list"),
            Shape::Str => f.write_str("string"),
            Shape::Bool => f.write_str("bool"),
            Shape::Unsigned(_) | Shape::Signed(_) => f.write_str("integer"),
            Shape::Float => f.write_str("float"),
            Shape::Enum(names) => write!(f, "one of {}", names.join(", ")),
            Shape::Any => f.write_str("value"),
        }
    }
}

/// Where a walk along a key path stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// What the type expects there.
    pub shape: Shape,
    /// How many segments of the path were followed to get there: less than the path's length
    /// when the path goes on past a value (`server.dev.x`).
    pub depth: usize,
    /// The value may be left unset (an `Option`).
    pub optional: bool,
}

/// Why a key path does not lead to a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PathError {
    /// The schema has no such key.
    #[error("unknown key `{key}`, expected one of {}", expected.join(", "))]
    Unknown {
        /// How many segments were followed before the unknown one.
        depth: usize,
        /// The key.
        key: String,
        /// The keys allowed there.
        expected: &'static [&'static str],
    },
    /// The type's `Deserialize` impl failed in a way the walk does not model.
    #[error("{0}")]
    Other(String),
}

/// What `T` expects at `path` (lower-case key segments).
pub fn shape_at<T: DeserializeOwned>(path: &[String]) -> Result<Found, PathError> {
    match T::deserialize(Probe {
        path,
        depth: 0,
        optional: false,
    }) {
        Err(Stop::Found(found)) => Ok(found),
        Err(Stop::Unknown {
            depth,
            key,
            expected,
        }) => Err(PathError::Unknown {
            depth,
            key,
            expected,
        }),
        Err(Stop::Message(m)) => Err(PathError::Other(m)),
        Ok(_) => Err(PathError::Other(
            "the schema produced a value from nothing".into(),
        )),
    }
}

/// Every key path of `T` that holds a value (not a table), with maps walked through
/// [`ANY_KEY`] and lists of tables through [`EACH`]: `gateway.providers.<name>.kind`,
/// `gateway.budgets[].scope`.
pub fn leaf_keys<T: DeserializeOwned>() -> Vec<(String, Found)> {
    let mut out = Vec::new();
    walk::<T>(&mut Vec::new(), &mut out);
    out
}

fn walk<T: DeserializeOwned>(path: &mut Vec<String>, out: &mut Vec<(String, Found)>) {
    let Ok(found) = shape_at::<T>(path) else {
        return;
    };
    let children: Vec<&str> = match &found.shape {
        Shape::Table(fields) => fields.to_vec(),
        Shape::Map => vec![ANY_KEY],
        Shape::List => {
            // Lists of tables are walked into; lists of values are one key.
            path.push(EACH.into());
            let inner = shape_at::<T>(path);
            path.pop();
            match inner {
                Ok(Found {
                    shape: Shape::Table(_) | Shape::Map,
                    ..
                }) => vec![EACH],
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    };
    if children.is_empty() {
        out.push((display_path(path), found));
        return;
    }
    for child in children {
        path.push(child.to_string());
        walk::<T>(path, out);
        path.pop();
    }
}

/// `a.b[].c`: segments joined by dots, list elements as `[]`.
pub fn display_path(path: &[String]) -> String {
    let mut s = String::new();
    for seg in path {
        if seg == EACH {
            s.push_str(EACH);
        } else {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(seg);
        }
    }
    s
}

/// Ends every walk: the value found, or why there is none.
#[derive(Debug)]
enum Stop {
    Found(Found),
    Unknown {
        depth: usize,
        key: String,
        expected: &'static [&'static str],
    },
    Message(String),
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Stop::Message(msg.to_string())
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        // The depth is filled in by the map access that handed out the key.
        Stop::Unknown {
            depth: usize::MAX,
            key: field.to_string(),
            expected,
        }
    }
}

/// A deserializer that follows `path` from `depth` on and never produces a value.
struct Probe<'p> {
    path: &'p [String],
    depth: usize,
    optional: bool,
}

impl<'p> Probe<'p> {
    fn found(&self, shape: Shape) -> Stop {
        Stop::Found(Found {
            shape,
            depth: self.depth,
            optional: self.optional,
        })
    }

    fn at_end(&self) -> bool {
        self.depth >= self.path.len()
    }

    fn next(&self) -> Probe<'p> {
        Probe {
            path: self.path,
            depth: self.depth + 1,
            optional: false,
        }
    }
}

macro_rules! leaf {
    ($($method:ident => $shape:expr),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
                Err(self.found($shape))
            }
        )*
    };
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    leaf! {
        deserialize_any => Shape::Any,
        deserialize_ignored_any => Shape::Any,
        deserialize_bool => Shape::Bool,
        deserialize_u8 => Shape::Unsigned(8),
        deserialize_u16 => Shape::Unsigned(16),
        deserialize_u32 => Shape::Unsigned(32),
        deserialize_u64 => Shape::Unsigned(64),
        deserialize_i8 => Shape::Signed(8),
        deserialize_i16 => Shape::Signed(16),
        deserialize_i32 => Shape::Signed(32),
        deserialize_i64 => Shape::Signed(64),
        deserialize_f32 => Shape::Float,
        deserialize_f64 => Shape::Float,
        deserialize_char => Shape::Str,
        deserialize_str => Shape::Str,
        deserialize_string => Shape::Str,
        deserialize_identifier => Shape::Str,
        deserialize_bytes => Shape::Any,
        deserialize_byte_buf => Shape::Any,
        deserialize_unit => Shape::Any,
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        Err(self.found(Shape::Any))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(Probe {
            optional: true,
            ..self
        })
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        if self.at_end() || self.path[self.depth] != EACH {
            return Err(self.found(Shape::List));
        }
        visitor.visit_seq(OneElement(Some(self.next())))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Stop> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        if self.at_end() {
            return Err(self.found(Shape::Map));
        }
        visitor.visit_map(OneEntry { probe: Some(self) })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        if self.at_end() {
            return Err(self.found(Shape::Table(fields)));
        }
        visitor.visit_map(OneEntry { probe: Some(self) })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        Err(self.found(Shape::Enum(variants)))
    }
}

/// A map of one entry: the path's next key, whose value is probed further.
struct OneEntry<'p> {
    probe: Option<Probe<'p>>,
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        let Some(probe) = &self.probe else {
            return Ok(None);
        };
        let key = probe.path[probe.depth].as_str();
        seed.deserialize(de::value::StrDeserializer::<Stop>::new(key))
            .map(Some)
            .map_err(|e| match e {
                Stop::Unknown { key, expected, .. } => Stop::Unknown {
                    depth: probe.depth,
                    key,
                    expected,
                },
                other => other,
            })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        let probe = self
            .probe
            .take()
            .ok_or_else(|| Stop::Message("value asked for before its key".into()))?;
        seed.deserialize(probe.next())
    }
}

/// A list of one element, probed further.
struct OneElement<'p>(Option<Probe<'p>>);

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        match self.0.take() {
            Some(probe) => seed.deserialize(probe).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn at(path: &str) -> Result<Found, PathError> {
        let path: Vec<String> = path.split('.').map(String::from).collect();
        shape_at::<Config>(&path)
    }

    #[test]
    fn the_schema_types_each_key() {
        assert_eq!(at("webhooks.secret").unwrap().shape, Shape::Str);
        assert!(at("webhooks.secret").unwrap().optional);
        assert_eq!(at("server.dev").unwrap().shape, Shape::Bool);
        assert_eq!(
            at("server.limits.max_waiting_jobs_per_tenant")
                .unwrap()
                .shape,
            Shape::Unsigned(64)
        );
        assert_eq!(at("worker.tenant_share").unwrap().shape, Shape::Float);
        assert_eq!(at("webhooks.allow_hosts").unwrap().shape, Shape::List);
        assert!(
            matches!(at("server.limits").unwrap().shape, Shape::Table(f) if f.contains(&"max_tags"))
        );
        // Map keys are any name; what is under them is typed again.
        let key_env = at("gateway.providers.openai.api_key_env").unwrap();
        assert_eq!((key_env.shape, key_env.depth), (Shape::Str, 4));
        assert!(
            matches!(at("gateway.providers.openai.kind").unwrap().shape, Shape::Enum(v) if v.contains(&"openai"))
        );
        assert_eq!(at("gateway.aliases.fast").unwrap().shape, Shape::List);
    }

    #[test]
    fn unknown_keys_and_keys_past_a_value_are_told_apart() {
        let err = at("server.limits.max_tag").unwrap_err();
        assert!(
            matches!(&err, PathError::Unknown { depth: 2, key, .. } if key == "max_tag"),
            "{err:?}"
        );
        let err = at("gatway.x").unwrap_err();
        assert!(
            matches!(&err, PathError::Unknown { depth: 0, .. }),
            "{err:?}"
        );
        // `server.dev` is a value: the walk stops there, short of the path.
        let past = at("server.dev.x").unwrap();
        assert_eq!((past.shape, past.depth), (Shape::Bool, 2));
    }

    #[test]
    fn the_walk_reaches_keys_under_maps_and_lists_of_tables() {
        let keys: Vec<String> = leaf_keys::<Config>().into_iter().map(|(k, _)| k).collect();
        for k in [
            "server.listen",
            "server.limits.max_tags",
            "webhooks.secret",
            "gateway.providers.<name>.api_key_env",
            "gateway.providers.<name>.breaker.min_calls",
            "gateway.providers.<name>.headers.<name>",
            "gateway.aliases.<name>",
            "gateway.budgets[].alerts",
            "alerts.rules[].kind",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        assert!(!keys.iter().any(|k| k == "server" || k == "server.limits"));
    }
}
