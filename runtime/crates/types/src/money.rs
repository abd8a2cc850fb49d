//! Money: [`Micros`], millionths of a US dollar, with arithmetic that never wraps or panics.
//!
//! Every amount Sluice adds up (model costs, costs a handler reports, budget levels, a job's
//! spend) can be influenced by a guest or a provider: a handler may report `u64::MAX`, a
//! provider may report absurd token counts. Plain `u64` `+` panics in debug builds and wraps in
//! release builds (a budget that wraps to a small number lets spending continue). `Micros`
//! saturates at [`Micros::MAX`] instead: an absurd amount stays absurd (and is refused by any
//! budget) rather than turning small.
//!
//! ```
//! use sluice_types::money::Micros;
//! let a = Micros::new(u64::MAX);
//! assert_eq!(a + a, Micros::MAX);
//! assert_eq!(Micros::new(1_500_000).to_usd(), 1.5);
//! // 1200 tokens at $0.15 per million tokens, rounded up.
//! assert_eq!(Micros::per_mtok(1_200, Micros::new(150_000)), Micros::new(180));
//! ```

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

/// An amount of money in millionths of a US dollar (µ$). Serialized as a plain integer, so it
/// can replace a `*_micros: u64` field without changing a wire format.
///
/// `+`, `+=` and [`Sum`] saturate at [`Micros::MAX`]; there is no `-` (use
/// [`Micros::saturating_sub`]) and no implicit conversion to floating point: [`Micros::to_usd`]
/// is the one way out, for display.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Micros(u64);

impl Micros {
    /// Nothing.
    pub const ZERO: Micros = Micros(0);
    /// The largest amount; sums saturate here.
    pub const MAX: Micros = Micros(u64::MAX);

    /// `micros` µ$.
    pub const fn new(micros: u64) -> Self {
        Micros(micros)
    }

    /// The amount in µ$.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Whole US dollars, rounded to the nearest µ$; negative, NaN or infinite amounts are
    /// `None`, amounts past [`Micros::MAX`] saturate. For prices and limits read from
    /// configuration.
    pub fn from_usd(usd: f64) -> Option<Self> {
        if !usd.is_finite() || usd < 0.0 {
            return None;
        }
        // `as` saturates for floats out of range.
        Some(Micros((usd * 1_000_000.0).round() as u64))
    }

    /// The amount in US dollars (for display and JSON meant for people; never add these).
    pub fn to_usd(self) -> f64 {
        self.0 as f64 / 1_000_000.0
    }

    /// `self + other`, at most [`Micros::MAX`].
    pub const fn saturating_add(self, other: Micros) -> Micros {
        Micros(self.0.saturating_add(other.0))
    }

    /// `self - other`, at least zero.
    pub const fn saturating_sub(self, other: Micros) -> Micros {
        Micros(self.0.saturating_sub(other.0))
    }

    /// `self × n`, at most [`Micros::MAX`].
    pub const fn saturating_mul(self, n: u64) -> Micros {
        Micros(self.0.saturating_mul(n))
    }

    /// `self + other`, or `None` past [`Micros::MAX`].
    pub const fn checked_add(self, other: Micros) -> Option<Micros> {
        match self.0.checked_add(other.0) {
            Some(v) => Some(Micros(v)),
            None => None,
        }
    }

    /// The cost of `tokens` tokens at `price` per million tokens, rounded up to the next µ$
    /// (budgets err on the safe side), at most [`Micros::MAX`].
    pub fn per_mtok(tokens: u64, price: Micros) -> Micros {
        let exact = u128::from(tokens) * u128::from(price.0);
        Micros(u64::try_from(exact.div_ceil(1_000_000)).unwrap_or(u64::MAX))
    }
}

impl Add for Micros {
    type Output = Micros;
    /// Saturating.
    fn add(self, other: Micros) -> Micros {
        self.saturating_add(other)
    }
}

impl AddAssign for Micros {
    /// Saturating.
    fn add_assign(&mut self, other: Micros) {
        *self = self.saturating_add(other);
    }
}

impl Sum for Micros {
    /// Saturating.
    fn sum<I: Iterator<Item = Micros>>(iter: I) -> Micros {
        iter.fold(Micros::ZERO, Micros::saturating_add)
    }
}

impl From<u64> for Micros {
    fn from(micros: u64) -> Self {
        Micros(micros)
    }
}

impl From<Micros> for u64 {
    fn from(m: Micros) -> u64 {
        m.0
    }
}

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} µ$", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let max = Micros::new(u64::MAX);
        assert_eq!(max + max, Micros::MAX);
        let mut m = Micros::new(u64::MAX - 1);
        m += Micros::new(5);
        assert_eq!(m, Micros::MAX);
        assert_eq!(
            [max, max, Micros::new(1)].into_iter().sum::<Micros>(),
            Micros::MAX
        );
        assert_eq!(Micros::new(3).saturating_sub(Micros::new(5)), Micros::ZERO);
        assert_eq!(max.saturating_mul(u64::MAX), Micros::MAX);
        assert_eq!(max.checked_add(Micros::new(1)), None);
        assert_eq!(
            Micros::new(2).checked_add(Micros::new(3)),
            Some(Micros::new(5))
        );
    }

    #[test]
    fn per_mtok_rounds_up_and_saturates() {
        assert_eq!(Micros::per_mtok(0, Micros::new(150_000)), Micros::ZERO);
        assert_eq!(Micros::per_mtok(1, Micros::new(150_000)), Micros::new(1));
        assert_eq!(
            Micros::per_mtok(1_000_000, Micros::new(150_000)),
            Micros::new(150_000)
        );
        assert_eq!(Micros::per_mtok(u64::MAX, Micros::MAX), Micros::MAX);
    }

    #[test]
    fn conversions() {
        assert_eq!(Micros::from_usd(1.5), Some(Micros::new(1_500_000)));
        assert_eq!(Micros::from_usd(-1.0), None);
        assert_eq!(Micros::from_usd(f64::NAN), None);
        assert_eq!(Micros::from_usd(f64::INFINITY), None);
        assert_eq!(Micros::from_usd(1e300), Some(Micros::MAX));
        assert_eq!(Micros::new(250).to_usd(), 0.000_25);
        assert_eq!(serde_json::to_string(&Micros::new(7)).unwrap(), "7");
        assert_eq!(Micros::new(7).to_string(), "7 µ$");
    }
}
