//! Money is an integer number of fen (1/100 CNY) from the wire to the database.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An amount in fen. Never a float: WeChat's API and our books both count whole fen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fen(pub i64);

impl Fen {
    /// `unit * quantity`, or `None` if it would overflow (a hostile quantity must not wrap).
    pub fn checked_mul(self, quantity: i64) -> Option<Fen> {
        self.0.checked_mul(quantity).map(Fen)
    }

    /// Formats as yuan with two decimals (`12.34`), the way WeChat bills print amounts.
    pub fn to_yuan_string(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        format!("{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

impl fmt::Display for Fen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} fen", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_formatting() {
        assert_eq!(Fen(1).to_yuan_string(), "0.01");
        assert_eq!(Fen(6800).to_yuan_string(), "68.00");
        assert_eq!(Fen(-1234).to_yuan_string(), "-12.34");
    }

    #[test]
    fn multiplication_overflow_is_refused() {
        assert_eq!(Fen(100).checked_mul(3), Some(Fen(300)));
        assert_eq!(Fen(i64::MAX).checked_mul(2), None);
    }
}
