//! What the job has spent, and spend the host cannot see on its own.
//!
//! ```no_run
//! use sluice_sdk::{usage, Error};
//!
//! # fn run() -> sluice_sdk::Result<()> {
//! if usage::budget_remaining().is_some_and(|left| left < 5_000) {
//!     return Err(Error::permanent("less than half a cent of budget left"));
//! }
//! usage::report_cost("geocoding API", 500)?; // a paid call made through an effect
//! let spent = usage::job_spend();
//! println!("{} calls, {} µ$ so far", spent.calls, spent.cost_micros);
//! # Ok(()) }
//! ```

use crate::bindings::usage as wit;
use crate::error::Error;

/// Spend so far on this job, across all its attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Spend {
    /// Total cost in millionths of a US dollar.
    pub cost_micros: u64,
    /// Prompt tokens over all model calls.
    pub input_tokens: u64,
    /// Completion tokens over all model calls.
    pub output_tokens: u64,
    /// Model calls made (journal replays not counted again).
    pub calls: u32,
}

impl From<wit::Spend> for Spend {
    fn from(s: wit::Spend) -> Self {
        Spend {
            cost_micros: s.cost_micros,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            calls: s.calls,
        }
    }
}

/// Record a cost the host cannot see (a paid API called through an effect), in millionths of a
/// US dollar. It counts against budgets; when a hard budget refuses it the error is permanent.
pub fn report_cost(description: &str, cost_micros: u64) -> Result<(), Error> {
    wit::report_cost(description, cost_micros).map_err(|reason| {
        Error::permanent(format!(
            "budget refused {cost_micros} µ$ for {description}: {reason}"
        ))
    })
}

/// What this job has spent so far.
pub fn job_spend() -> Spend {
    wit::job_spend().into()
}

/// The smallest remaining amount of any hard budget that applies to this job, in millionths
/// of a US dollar; `None` when no budget applies.
pub fn budget_remaining() -> Option<u64> {
    wit::budget_remaining()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_converts() {
        let s = Spend::from(wit::Spend {
            cost_micros: 5,
            input_tokens: 6,
            output_tokens: 7,
            calls: 2,
        });
        assert_eq!(
            s,
            Spend {
                cost_micros: 5,
                input_tokens: 6,
                output_tokens: 7,
                calls: 2
            }
        );
    }
}
