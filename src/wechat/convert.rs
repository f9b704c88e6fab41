//! The one place WeChat's wire values become domain values.

use crate::domain::OrderStatus;

/// A `trade_state` we have never seen: refuse to guess what it means for the order.
#[derive(Debug, thiserror::Error)]
#[error("unknown trade_state {0:?}")]
pub struct UnknownTradeState(pub String);

/// What WeChat's `trade_state` means for our order.
pub fn order_status(trade_state: &str) -> Result<OrderStatus, UnknownTradeState> {
    match trade_state {
        "SUCCESS" => Ok(OrderStatus::Success),
        "REFUND" => Ok(OrderStatus::Refund),
        // Not paid yet, or the payer is still entering a password, or accepted but not debited.
        "NOTPAY" | "USERPAYING" | "ACCEPT" => Ok(OrderStatus::Notpay),
        "CLOSED" | "REVOKED" => Ok(OrderStatus::Closed),
        "PAYERROR" => Ok(OrderStatus::Payerror),
        other => Err(UnknownTradeState(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_state_maps() {
        for (state, status) in [
            ("SUCCESS", OrderStatus::Success),
            ("REFUND", OrderStatus::Refund),
            ("NOTPAY", OrderStatus::Notpay),
            ("CLOSED", OrderStatus::Closed),
            ("REVOKED", OrderStatus::Closed),
            ("USERPAYING", OrderStatus::Notpay),
            ("PAYERROR", OrderStatus::Payerror),
            ("ACCEPT", OrderStatus::Notpay),
        ] {
            assert_eq!(order_status(state).expect(state), status);
        }
        assert!(order_status("PAID").is_err());
    }
}
