//! How one attempt at one chain position ended, for usage records, metrics and the error a
//! caller sees when every position failed. Serialized and printed as its snake_case name
//! (`ok`, `server_error`, `circuit_open`, …), the label these have always had.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::provider::FailureKind;

/// The outcome of one attempt (or of a chain position skipped without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// The provider answered.
    Ok,
    /// The provider failed this way.
    Failed(FailureKind),
    /// Skipped: the provider's circuit breaker is open.
    CircuitOpen,
    /// Skipped: no rate-limit capacity before the deadline.
    Throttled,
    /// Skipped: the prompt and output cap exceed the model's context window.
    ContextExceeded,
}

impl AttemptOutcome {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Failed(kind) => kind.as_str(),
            AttemptOutcome::CircuitOpen => "circuit_open",
            AttemptOutcome::Throttled => "throttled",
            AttemptOutcome::ContextExceeded => "context_exceeded",
        }
    }

    /// The outcome named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "ok" => AttemptOutcome::Ok,
            "circuit_open" => AttemptOutcome::CircuitOpen,
            "throttled" => AttemptOutcome::Throttled,
            "context_exceeded" => AttemptOutcome::ContextExceeded,
            other => {
                AttemptOutcome::Failed(FailureKind::ALL.into_iter().find(|k| k.as_str() == other)?)
            }
        })
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compare with a name as written in a record or a test (`outcome == "ok"`).
impl PartialEq<&str> for AttemptOutcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for AttemptOutcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AttemptOutcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        AttemptOutcome::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown attempt outcome `{name}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_round_trips_through_its_name() {
        let all = [
            AttemptOutcome::Ok,
            AttemptOutcome::CircuitOpen,
            AttemptOutcome::Throttled,
            AttemptOutcome::ContextExceeded,
        ]
        .into_iter()
        .chain(FailureKind::ALL.into_iter().map(AttemptOutcome::Failed));
        for o in all {
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(json, format!("\"{}\"", o.as_str()));
            assert_eq!(serde_json::from_str::<AttemptOutcome>(&json).unwrap(), o);
        }
        assert!(serde_json::from_str::<AttemptOutcome>("\"nope\"").is_err());
    }
}
