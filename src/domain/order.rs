//! The order and its state machine. Every change of an order's status is one of the
//! transitions allowed here, applied by one guarded statement in `storage::orders`.

use crate::text_enum;

use super::ids::{OutTradeNo, TransactionId};
use super::money::Fen;

text_enum! {
    /// Our order status, named as WeChat names `trade_state` where they mean the same thing.
    pub enum OrderStatus ("order status") {
        /// Created, waiting for the payer.
        Notpay => "NOTPAY",
        /// Paid.
        Success => "SUCCESS",
        /// Closed unpaid (by us or by expiry). Final.
        Closed => "CLOSED",
        /// Payment failed at WeChat. Final.
        Payerror => "PAYERROR",
        /// Paid, then refunded in part or in full. Final for payment purposes.
        Refund => "REFUND",
    }
}

impl OrderStatus {
    /// A final status never changes again except SUCCESS -> REFUND (and REFUND -> REFUND for
    /// each further partial refund).
    pub fn is_final(self) -> bool {
        !matches!(self, OrderStatus::Notpay)
    }

    /// Money reached us for this order (it may since have been refunded in part).
    pub fn is_paid(self) -> bool {
        matches!(self, OrderStatus::Success | OrderStatus::Refund)
    }

    /// The statuses an order may be in for a move to `self` to be applied.
    pub fn allowed_from(self) -> &'static [OrderStatus] {
        match self {
            OrderStatus::Success | OrderStatus::Closed | OrderStatus::Payerror => &[OrderStatus::Notpay],
            OrderStatus::Refund => &[OrderStatus::Success, OrderStatus::Refund],
            OrderStatus::Notpay => &[],
        }
    }

    pub fn can_move_to(self, to: OrderStatus) -> bool {
        to.allowed_from().contains(&self)
    }
}

text_enum! {
    /// Where the evidence for a transition came from; recorded on every `order_events` row.
    pub enum EventSource ("event source") {
        Notify => "notify",
        Poll => "poll",
        Bill => "bill",
        Api => "api",
        Ops => "ops",
    }
}

/// One order as our books hold it. Instants are Unix milliseconds (UTC), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: i64,
    pub out_trade_no: OutTradeNo,
    pub user_id: i64,
    /// The payer's openid, fixed at creation: a payment by anyone else is refused.
    pub payer_openid: String,
    pub product_id: String,
    pub quantity: i64,
    pub amount: Fen,
    pub description: String,
    pub status: OrderStatus,
    pub prepay_id: Option<String>,
    pub prepay_at_ms: Option<i64>,
    pub transaction_id: Option<TransactionId>,
    pub time_expire_ms: i64,
    pub paid_at_ms: Option<i64>,
    pub closed_at_ms: Option<i64>,
    /// Sum of the refunds WeChat confirmed.
    pub refunded: Fen,
    /// When the poller asks WeChat next; `None` once final or when polling was stopped.
    pub next_check_at_ms: Option<i64>,
    pub check_attempts: i64,
    pub version: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Order {
    /// Payment parameters may be (re)issued only while unpaid and unexpired.
    pub fn is_payable(&self, now_ms: i64) -> bool {
        self.status == OrderStatus::Notpay && now_ms < self.time_expire_ms
    }

    /// Still unpaid and still followed by the poller: asking WeChat about it can change
    /// something. An order whose polling stopped (WeChat's answer contradicted it) is an
    /// operator's case; asking again would only record the same anomaly again.
    pub fn is_awaiting_payment(&self) -> bool {
        self.status == OrderStatus::Notpay && self.next_check_at_ms.is_some()
    }
}

/// An unpaid order of 68.00 for tests of the rules that take an order.
#[cfg(test)]
pub(crate) fn sample_order(status: OrderStatus, amount: i64, refunded: i64) -> Order {
    Order {
        id: 1,
        out_trade_no: OutTradeNo::parse("ORDER0001").unwrap_or_else(|e| unreachable!("{e}")),
        user_id: 1,
        payer_openid: "openid-a".into(),
        product_id: "p".into(),
        quantity: 1,
        amount: Fen(amount),
        description: String::new(),
        status,
        prepay_id: None,
        prepay_at_ms: None,
        transaction_id: None,
        time_expire_ms: 0,
        paid_at_ms: None,
        closed_at_ms: None,
        refunded: Fen(refunded),
        next_check_at_ms: None,
        check_attempts: 0,
        version: 0,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn final_states_never_go_back() {
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                if from.is_final() && from.can_move_to(to) {
                    assert_eq!(to, OrderStatus::Refund, "{from} -> {to}");
                }
            }
            assert!(!from.can_move_to(OrderStatus::Notpay));
        }
        assert!(OrderStatus::Notpay.can_move_to(OrderStatus::Success));
        assert!(!OrderStatus::Closed.can_move_to(OrderStatus::Success));
    }

    #[test]
    fn status_round_trips_through_text() {
        for status in OrderStatus::ALL {
            assert_eq!(status.as_str().parse::<OrderStatus>().expect("parse"), status);
        }
        let err = "PAID".parse::<OrderStatus>().expect_err("unknown");
        assert_eq!(err.to_string(), r#"unknown order status "PAID""#);
        for source in EventSource::ALL {
            assert_eq!(source.as_str().parse::<EventSource>().expect("parse"), source);
        }
    }

    fn any_status() -> impl Strategy<Value = OrderStatus> {
        proptest::sample::select(OrderStatus::ALL.to_vec())
    }

    proptest! {
        /// Whatever sequence of reports arrives, applying only allowed moves never leaves a
        /// final status for a non-final one, and never leaves CLOSED or PAYERROR at all.
        #[test]
        fn no_sequence_of_reports_moves_a_final_state(reports in proptest::collection::vec(any_status(), 0..40)) {
            let mut status = OrderStatus::Notpay;
            for to in reports {
                let before = status;
                if before.can_move_to(to) {
                    status = to;
                }
                if before.is_final() {
                    prop_assert!(status.is_final(), "{before} -> {status}");
                }
                if matches!(before, OrderStatus::Closed | OrderStatus::Payerror) {
                    prop_assert_eq!(status, before);
                }
                if before.is_paid() {
                    prop_assert!(status.is_paid());
                }
            }
        }
    }
}
