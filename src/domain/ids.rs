//! Identifiers with WeChat's rules attached.

use std::fmt;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Declares a WeChat identifier: a string newtype parsed once at the edge that reads it, with
/// `TryFrom<String>`, `Display`, `as_str` and serde as the plain string.
macro_rules! identifier {
    ($(#[$meta:meta])* $name:ident, $error:ident, $rule:literal, $valid:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        /// Why a string is not this identifier; names the value.
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        #[error("{value:?} is not a valid {rule}", value = self.0, rule = $rule)]
        pub struct $error(pub String);

        impl $name {
            pub fn parse(value: &str) -> Result<Self, $error> {
                let valid: fn(&str) -> bool = $valid;
                if valid(value) { Ok(Self(value.to_owned())) } else { Err($error(value.to_owned())) }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $error;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// `len` bytes in `range`, each ASCII alphanumeric or one of `extra`.
fn charset(value: &str, range: std::ops::RangeInclusive<usize>, extra: &[u8]) -> bool {
    range.contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

identifier!(
    /// Our order number, sent to WeChat as `out_trade_no`: 6-32 characters of `[0-9A-Za-z_-|*]`.
    OutTradeNo,
    InvalidOutTradeNo,
    "out_trade_no (6-32 characters of 0-9 A-Z a-z _ - | *)",
    |v| charset(v, 6..=32, b"_-|*")
);

identifier!(
    /// Our refund number, sent to WeChat as `out_refund_no`: 1-64 characters of
    /// `[0-9A-Za-z_-|*@]`. The idempotency key of a refund: the same number is the same refund.
    OutRefundNo,
    InvalidOutRefundNo,
    "out_refund_no (1-64 characters of 0-9 A-Z a-z _ - | * @)",
    |v| charset(v, 1..=64, b"_-|*@")
);

identifier!(
    /// WeChat's payment number (`transaction_id`: 28 digits in practice; up to 32 characters).
    TransactionId,
    InvalidTransactionId,
    "transaction_id (1-32 letters or digits)",
    |v| charset(v, 1..=32, b"")
);

impl OutTradeNo {
    /// A fresh number: UTC creation second then 12 random characters (26 in all), so numbers
    /// sort by time for humans and never collide in practice.
    pub fn generate(now: DateTime<Utc>, rng: &mut impl Rng) -> Self {
        Self(format!("{}{}", now.format("%Y%m%d%H%M%S"), random_chars(rng, 12)))
    }
}

impl OutRefundNo {
    /// A fresh number when the operator gave none: `R`, the UTC second, 8 random characters.
    pub fn generate(now: DateTime<Utc>, rng: &mut impl Rng) -> Self {
        Self(format!("R{}{}", now.format("%Y%m%d%H%M%S"), random_chars(rng, 8)))
    }
}

/// Crockford-style characters (no I, L, O, U): readable aloud by an operator.
fn random_chars(rng: &mut impl Rng, n: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    (0..n).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_numbers_are_valid_and_distinct() {
        let mut rng = rand::rng();
        let now = Utc::now();
        let a = OutTradeNo::generate(now, &mut rng);
        let b = OutTradeNo::generate(now, &mut rng);
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 26);
        assert!(OutTradeNo::parse(a.as_str()).is_ok());
    }

    #[test]
    fn refund_and_transaction_numbers_follow_wechat_rules() {
        let mut rng = rand::rng();
        let no = OutRefundNo::generate(Utc::now(), &mut rng);
        assert_eq!(OutRefundNo::parse(no.as_str()), Ok(no));
        assert!(OutRefundNo::parse("R1@x|*_-").is_ok());
        assert!(OutRefundNo::parse("").is_err() && OutRefundNo::parse(&"r".repeat(65)).is_err());
        assert!(TransactionId::parse("4200000985202103031441826014").is_ok());
        let err = TransactionId::parse("42 00").expect_err("space");
        assert!(err.to_string().contains("\"42 00\""), "{err}");
    }

    #[test]
    fn rejects_bad_numbers() {
        assert!(OutTradeNo::parse("short").is_err());
        assert!(OutTradeNo::parse(&"x".repeat(33)).is_err());
        assert!(OutTradeNo::parse("has space 123").is_err());
        assert!(OutTradeNo::parse("订单号123456").is_err());
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_the_wechat_charset(s in "[0-9A-Za-z_|*-]{6,32}") {
            prop_assert!(OutTradeNo::parse(&s).is_ok());
        }

        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = OutTradeNo::parse(&s);
        }
    }
}
