//! The one place WeChat's wire values become domain values: transactions (query answers and
//! `TRANSACTION.*` resources), refunds (answers and `REFUND.*` resources) and bill rows. Every
//! `trade_state` and refund `status` is matched exhaustively here; a value we have never seen
//! is refused with an error naming it, never guessed at.

use crate::bill::BillRow;
use crate::domain::text::UnknownValue;
use crate::domain::time::parse_rfc3339;
use crate::domain::{
    Fen, OrderStatus, OutRefundNo, OutTradeNo, PaymentReport, RefundReport, RefundStatus, TransactionId,
};

use super::wire::pay::Transaction;
use super::wire::refund::{Refund, RefundNotice};

/// Why a wire value cannot become a domain value; the message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Unknown(#[from] UnknownValue),
    #[error("{0}")]
    Invalid(String),
    #[error("resource is not {what}: {message}")]
    Json { what: &'static str, message: String },
}

fn invalid(err: impl std::fmt::Display) -> ConvertError {
    ConvertError::Invalid(err.to_string())
}

/// What WeChat's `trade_state` means for our order.
pub fn order_status(trade_state: &str) -> Result<OrderStatus, UnknownValue> {
    match trade_state {
        "SUCCESS" => Ok(OrderStatus::Success),
        "REFUND" => Ok(OrderStatus::Refund),
        // Not paid yet, or the payer is still entering a password, or accepted but not debited.
        "NOTPAY" | "USERPAYING" | "ACCEPT" => Ok(OrderStatus::Notpay),
        "CLOSED" | "REVOKED" => Ok(OrderStatus::Closed),
        "PAYERROR" => Ok(OrderStatus::Payerror),
        other => Err(UnknownValue::new("trade_state", other)),
    }
}

/// What WeChat's refund `status` (answers) or `refund_status` (notifications) means.
pub fn refund_status(status: &str) -> Result<RefundStatus, UnknownValue> {
    match status {
        "SUCCESS" => Ok(RefundStatus::Success),
        "PROCESSING" => Ok(RefundStatus::Processing),
        "CLOSED" => Ok(RefundStatus::Closed),
        "ABNORMAL" => Ok(RefundStatus::Abnormal),
        other => Err(UnknownValue::new("refund status", other)),
    }
}

fn transaction_id(text: Option<&str>) -> Result<Option<TransactionId>, ConvertError> {
    text.filter(|t| !t.is_empty()).map(TransactionId::parse).transpose().map_err(invalid)
}

/// A query answer or a decrypted `TRANSACTION.*` resource.
pub fn payment_report(txn: &Transaction) -> Result<PaymentReport, ConvertError> {
    Ok(PaymentReport {
        out_trade_no: OutTradeNo::parse(&txn.out_trade_no).map_err(invalid)?,
        appid: txn.appid.clone(),
        mchid: txn.mchid.clone(),
        status: order_status(&txn.trade_state)?,
        status_detail: txn.trade_state_desc.clone(),
        transaction_id: transaction_id(txn.transaction_id.as_deref())?,
        amount: txn.amount.as_ref().and_then(|a| a.total).map(Fen),
        payer_openid: txn.payer.as_ref().map(|p| p.openid.clone()),
        success_time: txn.success_time.as_deref().and_then(parse_rfc3339),
    })
}

/// The answer to a refund application or query.
pub fn refund_report(refund: &Refund) -> Result<RefundReport, ConvertError> {
    Ok(RefundReport {
        out_refund_no: OutRefundNo::parse(&refund.out_refund_no).map_err(invalid)?,
        out_trade_no: OutTradeNo::parse(&refund.out_trade_no).map_err(invalid)?,
        refund_id: refund.refund_id.clone(),
        mchid: None,
        status: refund_status(&refund.status)?,
        amount: Fen(refund.amount.refund),
        success_time: refund.success_time.as_deref().and_then(parse_rfc3339),
        created_at: parse_rfc3339(&refund.create_time),
        settled: refund.amount.settlement_refund.map(Fen),
    })
}

/// The decrypted resource of a `REFUND.*` notification.
pub fn refund_notice_report(notice: &RefundNotice) -> Result<RefundReport, ConvertError> {
    Ok(RefundReport {
        out_refund_no: OutRefundNo::parse(&notice.out_refund_no).map_err(invalid)?,
        out_trade_no: OutTradeNo::parse(&notice.out_trade_no).map_err(invalid)?,
        refund_id: notice.refund_id.clone(),
        mchid: Some(notice.mchid.clone()),
        status: refund_status(&notice.refund_status)?,
        amount: Fen(notice.amount.refund),
        success_time: notice.success_time.as_deref().and_then(parse_rfc3339),
        // A refund notification carries neither (protocol §3.5).
        created_at: None,
        settled: None,
    })
}

/// What a stored notification reports, read from its event type and decrypted resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notified {
    Payment(PaymentReport),
    Refund(RefundReport),
    /// An event type this version does not act on (kept in the inbox).
    Other(String),
}

/// Reads a stored notification. A resource that does not parse as its event type says is an
/// error (the applier records it as a malformed resource).
pub fn notification(event_type: &str, resource_json: &str) -> Result<Notified, ConvertError> {
    let json = |what: &'static str| move |e: serde_json::Error| ConvertError::Json { what, message: e.to_string() };
    match event_type {
        "TRANSACTION.SUCCESS" => {
            let txn: Transaction = serde_json::from_str(resource_json).map_err(json("a transaction"))?;
            Ok(Notified::Payment(payment_report(&txn)?))
        }
        "REFUND.SUCCESS" | "REFUND.ABNORMAL" | "REFUND.CLOSED" => {
            let notice: RefundNotice = serde_json::from_str(resource_json).map_err(json("a refund"))?;
            Ok(Notified::Refund(refund_notice_report(&notice)?))
        }
        other => Ok(Notified::Other(other.to_owned())),
    }
}

/// One detail row of the trade bill, in domain terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BillEntry {
    /// A payment (`SUCCESS` row).
    Payment(PaymentReport),
    /// A refund (`REFUND` row): `settled` is what WeChat paid back (退款金额, column 17),
    /// `requested` what was applied for (申请退款金额, column 26); coupons make them differ.
    Refund { out_trade_no: OutTradeNo, out_refund_no: String, settled: Fen, requested: Fen },
    /// A payment WeChat reports revoked (`REVOKED` row).
    Revoked { out_trade_no: OutTradeNo },
}

/// A bill row as what it reports. The reader has already checked the row's syntax.
pub fn bill_entry(row: &BillRow) -> Result<BillEntry, ConvertError> {
    let out_trade_no = OutTradeNo::parse(&row.out_trade_no).map_err(invalid)?;
    match row.trade_state.as_str() {
        "SUCCESS" => Ok(BillEntry::Payment(PaymentReport {
            out_trade_no,
            appid: row.appid.clone(),
            mchid: row.mchid.clone(),
            status: OrderStatus::Success,
            status_detail: String::new(),
            transaction_id: transaction_id(Some(&row.transaction_id))?,
            amount: Some(Fen(row.order_total_fen)),
            payer_openid: Some(row.openid.clone()),
            success_time: row.trade_instant(),
        })),
        "REFUND" => Ok(BillEntry::Refund {
            out_trade_no,
            out_refund_no: row.out_refund_no.clone(),
            settled: Fen(row.refund_fen),
            requested: Fen(row.refund_request_fen),
        }),
        "REVOKED" => Ok(BillEntry::Revoked { out_trade_no }),
        other => Err(UnknownValue::new("bill trade_state", other).into()),
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
        let err = order_status("PAID").expect_err("unknown");
        assert_eq!(err.to_string(), r#"unknown trade_state "PAID""#);
        for (state, status) in [
            ("SUCCESS", RefundStatus::Success),
            ("PROCESSING", RefundStatus::Processing),
            ("CLOSED", RefundStatus::Closed),
            ("ABNORMAL", RefundStatus::Abnormal),
        ] {
            assert_eq!(refund_status(state).expect(state), status);
        }
        assert!(refund_status("REQUESTED").is_err(), "REQUESTED is ours, never WeChat's");
    }

    #[test]
    fn the_official_notification_vector_reads_as_a_payment() {
        let notified =
            notification("TRANSACTION.SUCCESS", crate::wechat::testkeys::D6_PLAINTEXT).expect("official resource");
        let Notified::Payment(report) = notified else { panic!("not a payment: {notified:?}") };
        assert_eq!(report.status, OrderStatus::Success);
        assert_eq!(report.amount, Some(Fen(100)));
        assert_eq!(report.transaction_id.as_ref().map(TransactionId::as_str), Some("4200000985202103031441826014"));
        assert_eq!(report.success_time.map(|t| t.to_rfc3339()).as_deref(), Some("2021-03-03T02:34:56+00:00"));
        let refund = notification("REFUND.SUCCESS", crate::wechat::testkeys::D7_PLAINTEXT).expect("official refund");
        let Notified::Refund(refund) = refund else { panic!("not a refund: {refund:?}") };
        assert_eq!((refund.status, refund.amount), (RefundStatus::Success, Fen(100)));
    }

    #[test]
    fn bad_resources_are_refused_with_the_value() {
        let err = notification("TRANSACTION.SUCCESS", "{}").expect_err("empty");
        assert!(matches!(err, ConvertError::Json { .. }), "{err}");
        let txn =
            Transaction { out_trade_no: "ORDER0001".into(), trade_state: "PAID".into(), ..Transaction::default() };
        assert_eq!(payment_report(&txn).expect_err("state").to_string(), r#"unknown trade_state "PAID""#);
        let txn = Transaction { out_trade_no: "no spaces allowed".into(), trade_state: "SUCCESS".into(), ..txn };
        assert!(payment_report(&txn).expect_err("number").to_string().contains("no spaces allowed"));
        assert_eq!(notification("MARKETING.X", "{}"), Ok(Notified::Other("MARKETING.X".into())));
    }
}
