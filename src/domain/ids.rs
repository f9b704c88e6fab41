//! Identifiers with WeChat's rules attached.

use std::fmt;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Our order number, sent to WeChat as `out_trade_no`: 6-32 characters of `[0-9A-Za-z_-|*]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OutTradeNo(String);

/// Why a string is not an order number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("out_trade_no must be 6-32 characters of 0-9 A-Z a-z _ - | *")]
pub struct InvalidOutTradeNo;

impl OutTradeNo {
    /// A fresh number: UTC creation second then 12 random characters (26 in all), so numbers
    /// sort by time for humans and never collide in practice.
    pub fn generate(now: DateTime<Utc>, rng: &mut impl Rng) -> Self {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let mut no = now.format("%Y%m%d%H%M%S").to_string();
        for _ in 0..12 {
            let i = rng.random_range(0..ALPHABET.len());
            no.push(char::from(ALPHABET[i]));
        }
        Self(no)
    }

    pub fn parse(value: &str) -> Result<Self, InvalidOutTradeNo> {
        let ok_len = (6..=32).contains(&value.len());
        let ok_chars = value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|' | b'*'));
        if ok_len && ok_chars { Ok(Self(value.to_owned())) } else { Err(InvalidOutTradeNo) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OutTradeNo {
    type Error = InvalidOutTradeNo;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<OutTradeNo> for String {
    fn from(value: OutTradeNo) -> Self {
        value.0
    }
}

impl fmt::Display for OutTradeNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
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
