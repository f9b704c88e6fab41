//! What WeChat told us, whichever way it arrived: a notification, the answer to a query, or a
//! row of the daily bill. `wechat::convert` builds these from the wire; the applier takes them
//! from every source alike, so a payment is checked and applied the same way wherever it was
//! seen.

use chrono::{DateTime, Utc};

use super::anomaly::AnomalyKind;
use super::ids::{OutRefundNo, OutTradeNo, TransactionId};
use super::money::Fen;
use super::order::{EventSource, Order, OrderStatus};
use super::refund::RefundStatus;

/// WeChat's view of one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentReport {
    pub out_trade_no: OutTradeNo,
    pub appid: String,
    pub mchid: String,
    /// WeChat's `trade_state` in our terms.
    pub status: OrderStatus,
    /// WeChat's words for the state (`trade_state_desc`), for humans.
    pub status_detail: String,
    pub transaction_id: Option<TransactionId>,
    /// The order total WeChat charged (`amount.total`), absent before payment.
    pub amount: Option<Fen>,
    pub payer_openid: Option<String>,
    pub success_time: Option<DateTime<Utc>>,
}

/// WeChat's view of one refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundReport {
    pub out_refund_no: OutRefundNo,
    pub out_trade_no: OutTradeNo,
    /// WeChat's refund number.
    pub refund_id: String,
    /// The merchant it belongs to, where the source says (notifications do; answers do not).
    pub mchid: Option<String>,
    pub status: RefundStatus,
    /// The refunded amount (`amount.refund`).
    pub amount: Fen,
    pub success_time: Option<DateTime<Utc>>,
    /// When WeChat accepted the application (`create_time`): the refund row is in the bill of
    /// this instant's Shanghai day. Answers and queries carry it; notifications do not.
    pub created_at: Option<DateTime<Utc>>,
    /// What WeChat pays back (`amount.settlement_refund`, the bill's 退款金额): less than
    /// `amount` when coupons paid part of the order. Absent from notifications.
    pub settled: Option<Fen>,
}

/// Where a piece of evidence came from: recorded on events and anomalies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub source: EventSource,
    /// Notification id, `poll:<transaction_id>`, `bill:<date>`...
    pub reference: String,
}

impl Evidence {
    pub fn new(source: EventSource, reference: impl Into<String>) -> Self {
        Self { source, reference: reference.into() }
    }
}

/// Who we are at WeChat: a report for anyone else is not about our money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merchant {
    pub appid: String,
    pub mchid: String,
}

/// The first field of a payment report that contradicts our order: (kind, ours, theirs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contradiction {
    pub kind: AnomalyKind,
    pub ours: String,
    pub theirs: String,
}

impl PaymentReport {
    /// Checks a report of a payment against the order it names. Never trust a report's amount
    /// or payer alone: each must be ours.
    pub fn contradiction(&self, merchant: &Merchant, order: &Order) -> Option<Contradiction> {
        let found = |kind, ours: String, theirs: String| Some(Contradiction { kind, ours, theirs });
        if !self.status.is_paid() {
            return found(AnomalyKind::UnexpectedState, OrderStatus::Success.to_string(), self.status.to_string());
        }
        if self.appid != merchant.appid {
            return found(AnomalyKind::AppidMismatch, merchant.appid.clone(), self.appid.clone());
        }
        if self.mchid != merchant.mchid {
            return found(AnomalyKind::MchidMismatch, merchant.mchid.clone(), self.mchid.clone());
        }
        if self.amount != Some(order.amount) {
            let theirs = self.amount.map_or_else(|| "none".to_owned(), |a| a.0.to_string());
            return found(AnomalyKind::AmountMismatch, order.amount.0.to_string(), theirs);
        }
        if self.payer_openid.as_deref() != Some(order.payer_openid.as_str()) {
            // Openids are personal data: the anomaly says that they differ, not what they are.
            return found(AnomalyKind::PayerMismatch, "order payer".into(), "another openid".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merchant() -> Merchant {
        Merchant { appid: "wxapp".into(), mchid: "1900000001".into() }
    }

    fn order() -> Order {
        crate::domain::order::sample_order(OrderStatus::Notpay, 6800, 0)
    }

    fn report() -> PaymentReport {
        PaymentReport {
            out_trade_no: OutTradeNo::parse("ORDER0001").expect("no"),
            appid: "wxapp".into(),
            mchid: "1900000001".into(),
            status: OrderStatus::Success,
            status_detail: String::new(),
            transaction_id: Some(TransactionId::parse("4200000001").expect("txid")),
            amount: Some(Fen(6800)),
            payer_openid: Some("openid-a".into()),
            success_time: None,
        }
    }

    fn kind_of(change: impl FnOnce(&mut PaymentReport)) -> Option<AnomalyKind> {
        let mut r = report();
        change(&mut r);
        r.contradiction(&merchant(), &order()).map(|c| c.kind)
    }

    #[test]
    fn a_matching_payment_contradicts_nothing() {
        assert_eq!(kind_of(|_| {}), None);
        assert_eq!(kind_of(|r| r.status = OrderStatus::Refund), None);
    }

    #[test]
    fn each_field_that_differs_is_named() {
        assert_eq!(kind_of(|r| r.status = OrderStatus::Notpay), Some(AnomalyKind::UnexpectedState));
        assert_eq!(kind_of(|r| r.appid = "wxother".into()), Some(AnomalyKind::AppidMismatch));
        assert_eq!(kind_of(|r| r.mchid = "1900000002".into()), Some(AnomalyKind::MchidMismatch));
        assert_eq!(kind_of(|r| r.amount = Some(Fen(6799))), Some(AnomalyKind::AmountMismatch));
        assert_eq!(kind_of(|r| r.amount = None), Some(AnomalyKind::AmountMismatch));
        assert_eq!(kind_of(|r| r.payer_openid = Some("openid-b".into())), Some(AnomalyKind::PayerMismatch));
        assert_eq!(kind_of(|r| r.payer_openid = None), Some(AnomalyKind::PayerMismatch));
    }

    #[test]
    fn the_amount_contradiction_carries_both_values() {
        let mut r = report();
        r.amount = Some(Fen(1));
        let c = r.contradiction(&merchant(), &order()).expect("contradiction");
        assert_eq!((c.ours.as_str(), c.theirs.as_str()), ("6800", "1"));
    }
}
