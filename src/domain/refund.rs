//! Refunds: their state machine and the rule of how much of an order may still be refunded.

use crate::text_enum;

use super::ids::{OutRefundNo, OutTradeNo};
use super::money::Fen;
use super::order::{Order, OrderStatus};

text_enum! {
    /// A refund's status: ours (`REQUESTED`, before WeChat acknowledged the application) then
    /// WeChat's refund `status` values.
    pub enum RefundStatus ("refund status") {
        /// Recorded here; WeChat has not acknowledged the application yet (or we do not know
        /// whether it did: the poller asks).
        Requested => "REQUESTED",
        /// WeChat accepted the application; the money is on its way.
        Processing => "PROCESSING",
        /// The money reached the payer. Final.
        Success => "SUCCESS",
        /// WeChat closed it without paying. Final; its amount is free to refund again.
        Closed => "CLOSED",
        /// WeChat could not pay it out (the payer's account is closed, say): no money moved
        /// yet. An operator resolves it in the merchant console, after which WeChat may still
        /// report it SUCCESS (or CLOSED); it keeps its amount until then.
        Abnormal => "ABNORMAL",
    }
}

impl RefundStatus {
    /// Statuses the poller still asks WeChat about (WeChat has not said how it ends).
    pub const OPEN: [RefundStatus; 2] = [RefundStatus::Requested, RefundStatus::Processing];

    /// Statuses on the poll: the open ones on the backoff schedule, and ABNORMAL on the slow
    /// one (`poll.abnormal_refund_interval_secs`): an operator resolves it in the merchant
    /// console and WeChat then reports SUCCESS to a query, with no notification we can count on.
    pub const POLLED: [RefundStatus; 3] = [RefundStatus::Requested, RefundStatus::Processing, RefundStatus::Abnormal];

    pub fn is_open(self) -> bool {
        Self::OPEN.contains(&self)
    }

    /// Nothing can change it any more.
    pub fn is_final(self) -> bool {
        Self::ALL.iter().all(|to| !self.can_move_to(*to))
    }

    /// Allowed moves: open statuses move forward; ABNORMAL may still become SUCCESS once an
    /// operator resolves it at WeChat, or CLOSED if the operator gives up (the money returns to
    /// the merchant and the amount is free to refund again); SUCCESS and CLOSED never move.
    pub fn can_move_to(self, to: RefundStatus) -> bool {
        match self {
            RefundStatus::Requested => to != RefundStatus::Requested,
            RefundStatus::Processing => !matches!(to, RefundStatus::Requested | RefundStatus::Processing),
            RefundStatus::Abnormal => matches!(to, RefundStatus::Success | RefundStatus::Closed),
            RefundStatus::Success | RefundStatus::Closed => false,
        }
    }

    /// The statuses a refund may be in for a move to `self`.
    pub fn allowed_from(self) -> Vec<RefundStatus> {
        Self::ALL.into_iter().filter(|from| from.can_move_to(self)).collect()
    }

    /// Whether the refund's amount is taken from what is left to refund on its order: every
    /// refund but a CLOSED one may still (or did) move money.
    pub fn holds_amount(self) -> bool {
        self != RefundStatus::Closed
    }
}

/// One refund as our books hold it. Instants are Unix milliseconds (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: i64,
    pub out_refund_no: OutRefundNo,
    pub order_id: i64,
    pub out_trade_no: OutTradeNo,
    pub amount: Fen,
    pub reason: Option<String>,
    pub status: RefundStatus,
    /// WeChat's refund number, once it acknowledged the application.
    pub refund_id: Option<String>,
    pub requested_at_ms: i64,
    /// When WeChat accepted the application (its `create_time`), once an answer said so: the
    /// refund's bill day is this instant's Shanghai day, not `requested_at_ms`'s.
    pub wechat_created_at_ms: Option<i64>,
    /// What WeChat pays back (`amount.settlement_refund`), once an answer said so; reconciliation
    /// compares the bill's settled refund column with it (with `amount` until known).
    pub settled: Option<Fen>,
    pub success_at_ms: Option<i64>,
    pub next_check_at_ms: Option<i64>,
    pub check_attempts: i64,
    pub updated_at_ms: i64,
}

/// Why a refund cannot be applied for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundRefusal {
    #[error("amount must be a positive number of fen")]
    BadAmount,
    #[error("order is {0}: only paid orders can be refunded")]
    NotPaid(OrderStatus),
    #[error("refund of {} fen is more than the {} fen left to refund", asked.0, left.0)]
    TooMuch { asked: Fen, left: Fen },
}

/// May `amount` be refunded on `order`, given `held` (the sum of its refunds that hold an
/// amount, see [`RefundStatus::holds_amount`])? Checked under the order's lock.
pub fn check_refund(order: &Order, held: Fen, amount: Fen) -> Result<(), RefundRefusal> {
    if amount.0 <= 0 {
        return Err(RefundRefusal::BadAmount);
    }
    if !order.status.is_paid() {
        return Err(RefundRefusal::NotPaid(order.status));
    }
    let left = Fen(order.amount.0.saturating_sub(held.0));
    if amount > left {
        return Err(RefundRefusal::TooMuch { asked: amount, left });
    }
    Ok(())
}

/// May a confirmed refund of `amount` move money on `order`? Never past the order's amount.
pub fn check_refund_success(order: &Order, amount: Fen) -> Result<(), String> {
    match order.refunded.0.checked_add(amount.0) {
        Some(total) if total <= order.amount.0 => Ok(()),
        _ => Err(format!("refunds would exceed the order: {} + {} > {}", order.refunded.0, amount.0, order.amount.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn statuses_round_trip_and_final_ones_stay() {
        for status in RefundStatus::ALL {
            assert_eq!(status.as_str().parse::<RefundStatus>(), Ok(status));
            assert_eq!(status.is_open(), RefundStatus::OPEN.contains(&status));
            assert!(!status.is_open() || !status.is_final(), "{status}");
        }
        assert!(RefundStatus::Success.is_final() && RefundStatus::Closed.is_final());
        assert!(!RefundStatus::Abnormal.is_final() && !RefundStatus::Abnormal.is_open());
        assert_eq!(
            RefundStatus::Success.allowed_from(),
            RefundStatus::ALL[..2].iter().copied().chain([RefundStatus::Abnormal]).collect::<Vec<_>>()
        );
        assert!(RefundStatus::Requested.can_move_to(RefundStatus::Processing));
        assert!(!RefundStatus::Processing.can_move_to(RefundStatus::Requested));
        assert!("DONE".parse::<RefundStatus>().is_err());
    }

    proptest! {
        #[test]
        fn no_sequence_of_reports_moves_a_final_refund(
            reports in proptest::collection::vec(proptest::sample::select(RefundStatus::ALL.to_vec()), 0..30)
        ) {
            let mut status = RefundStatus::Requested;
            for to in reports {
                let before = status;
                if before.can_move_to(to) {
                    status = to;
                }
                if before.is_final() {
                    prop_assert_eq!(status, before);
                }
            }
        }
    }

    use crate::domain::order::sample_order as order;

    #[test]
    fn refund_limits() {
        let paid = order(OrderStatus::Success, 1000, 0);
        assert_eq!(check_refund(&paid, Fen(0), Fen(1000)), Ok(()));
        assert_eq!(
            check_refund(&paid, Fen(400), Fen(601)),
            Err(RefundRefusal::TooMuch { asked: Fen(601), left: Fen(600) })
        );
        assert_eq!(check_refund(&paid, Fen(0), Fen(0)), Err(RefundRefusal::BadAmount));
        let unpaid = order(OrderStatus::Notpay, 1000, 0);
        assert_eq!(check_refund(&unpaid, Fen(0), Fen(1)), Err(RefundRefusal::NotPaid(OrderStatus::Notpay)));
        assert!(check_refund_success(&order(OrderStatus::Refund, 1000, 600), Fen(400)).is_ok());
        assert!(check_refund_success(&order(OrderStatus::Refund, 1000, 600), Fen(401)).is_err());
        assert!(check_refund_success(&order(OrderStatus::Refund, 1000, i64::MAX), Fen(1)).is_err());
    }
}
