//! Bill amounts: WeChat prints yuan as decimal text (`0.01`, fees `0.00100`), we count integer
//! fen (fees in units of 0.00001 yuan). Parsing is exact: a decimal string becomes an integer
//! by shifting the point, never through a float, so `0.07` is 7 fen and not 6.999….

use thiserror::Error;

/// Decimal places of the yuan columns (fen).
pub const YUAN_SCALE: u32 = 2;
/// Decimal places of the fee column (`手续费`, units of 0.00001 yuan).
pub const FEE_SCALE: u32 = 5;

/// Why a bill number could not be read; the reader adds the line number.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AmountError {
    /// Not `[-]digits[.digits]`.
    #[error("`{0}` is not a decimal number")]
    NotANumber(String),
    /// Non-zero digits beyond the column's precision: rounding would hide money.
    #[error("`{value}` has more than {scale} decimal places")]
    TooPrecise { value: String, scale: u32 },
    /// Does not fit an `i64` of the column's unit.
    #[error("`{0}` is out of range")]
    OutOfRange(String),
}

/// Reads a yuan amount (`12.34`, `-0.5`, `45`, `0.010`) as integer fen.
///
/// Fewer than two decimals are accepted because summary lines are sometimes printed as `0.0`;
/// more are accepted only when the extra digits are zeros.
pub fn parse_yuan(s: &str) -> Result<i64, AmountError> {
    parse_scaled(s, YUAN_SCALE)
}

/// Reads the fee column (`0.01000`) as integer units of 0.00001 yuan.
pub fn parse_fee_e5(s: &str) -> Result<i64, AmountError> {
    parse_scaled(s, FEE_SCALE)
}

/// Reads a count printed either as `12` or as `45.0` (both styles appear in summary lines).
pub fn parse_count(s: &str) -> Result<u64, AmountError> {
    let n = parse_scaled(s, 0)?;
    u64::try_from(n).map_err(|_| AmountError::OutOfRange(s.to_owned()))
}

/// Renders fen as yuan with exactly two decimals, as WeChat prints bill amounts.
pub fn render_yuan(fen: i64) -> String {
    render_scaled(fen, YUAN_SCALE)
}

/// Renders a fee in 0.00001 yuan with exactly five decimals (`0.01000`).
pub fn render_fee_e5(fee_e5: i64) -> String {
    render_scaled(fee_e5, FEE_SCALE)
}

/// `s` as an integer number of `10^-scale` units.
fn parse_scaled(s: &str, scale: u32) -> Result<i64, AmountError> {
    let not_a_number = || AmountError::NotANumber(s.to_owned());
    let out_of_range = || AmountError::OutOfRange(s.to_owned());
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((w, f)) if !f.is_empty() => (w, f),
        Some(_) => return Err(not_a_number()),
        None => (digits, ""),
    };
    let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return Err(not_a_number());
    }
    let kept_len = fraction.len().min(scale as usize);
    let (kept, dropped) = fraction.split_at(kept_len);
    if dropped.bytes().any(|b| b != b'0') {
        return Err(AmountError::TooPrecise { value: s.to_owned(), scale });
    }
    // i128 so that i64::MIN, whose magnitude exceeds i64::MAX, still parses.
    let unit = 10_i128.checked_pow(scale).ok_or_else(out_of_range)?;
    let mut value = whole.parse::<i128>().map_err(|_| out_of_range())?.checked_mul(unit).ok_or_else(out_of_range)?;
    let mut place = unit;
    for digit in kept.bytes() {
        place /= 10;
        value = value.checked_add(i128::from(digit - b'0') * place).ok_or_else(out_of_range)?;
    }
    i64::try_from(if negative { -value } else { value }).map_err(|_| out_of_range())
}

fn render_scaled(units: i64, scale: u32) -> String {
    let sign = if units < 0 { "-" } else { "" };
    let abs = u128::from(units.unsigned_abs());
    let unit = 10_u128.pow(scale);
    let width = scale as usize;
    format!("{sign}{}.{:0width$}", abs / unit, abs % unit)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn yuan_is_read_exactly() {
        assert_eq!(parse_yuan("0.01"), Ok(1));
        assert_eq!(parse_yuan("0.07"), Ok(7));
        assert_eq!(parse_yuan("12.34"), Ok(1234));
        assert_eq!(parse_yuan("45"), Ok(4500));
        assert_eq!(parse_yuan("0.0"), Ok(0));
        assert_eq!(parse_yuan("0.5"), Ok(50));
        assert_eq!(parse_yuan("0.010"), Ok(1));
        assert_eq!(parse_yuan("-3.20"), Ok(-320));
    }

    #[test]
    fn malformed_yuan_is_refused() {
        for bad in ["", "abc", "1.", ".5", "1.2.3", "+1", "1,00", " 1.00", "1e3", "-", "0x10"] {
            assert!(matches!(parse_yuan(bad), Err(AmountError::NotANumber(_))), "{bad:?}");
        }
        assert!(matches!(parse_yuan("0.011"), Err(AmountError::TooPrecise { .. })));
        assert!(matches!(parse_yuan("99999999999999999999"), Err(AmountError::OutOfRange(_))));
    }

    #[test]
    fn fees_have_five_places() {
        assert_eq!(parse_fee_e5("0.00000"), Ok(0));
        assert_eq!(parse_fee_e5("0.01000"), Ok(1000));
        assert_eq!(parse_fee_e5("0.08"), Ok(8000));
        assert!(parse_fee_e5("0.000001").is_err());
        assert_eq!(render_fee_e5(1000), "0.01000");
        assert_eq!(render_fee_e5(123_456), "1.23456");
    }

    #[test]
    fn counts_in_both_styles() {
        assert_eq!(parse_count("12"), Ok(12));
        assert_eq!(parse_count("45.0"), Ok(45));
        assert!(parse_count("45.5").is_err());
        assert!(parse_count("-1").is_err());
    }

    #[test]
    fn rendering() {
        assert_eq!(render_yuan(0), "0.00");
        assert_eq!(render_yuan(1), "0.01");
        assert_eq!(render_yuan(6800), "68.00");
        assert_eq!(render_yuan(-1234), "-12.34");
        assert_eq!(render_yuan(i64::MIN), "-92233720368547758.08");
    }

    proptest! {
        #[test]
        fn yuan_round_trips(fen in any::<i64>()) {
            prop_assert_eq!(parse_yuan(&render_yuan(fen)), Ok(fen));
        }

        #[test]
        fn fee_round_trips(e5 in -10_000_000_000_i64..10_000_000_000) {
            prop_assert_eq!(parse_fee_e5(&render_fee_e5(e5)), Ok(e5));
        }
    }
}
