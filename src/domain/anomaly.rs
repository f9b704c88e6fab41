//! Evidence we refused to apply, by kind: each is recorded (`anomalies`), counted
//! (`wxpay_anomalies_total{kind}`) and, for bill evidence, turned into a discrepancy.

use crate::text_enum;

text_enum! {
    pub enum AnomalyKind ("anomaly kind") {
        /// WeChat reports a payment for an order we never created.
        UnknownOrder => "unknown_order",
        /// A payment report whose state is not paid.
        UnexpectedState => "unexpected_state",
        AppidMismatch => "appid_mismatch",
        MchidMismatch => "mchid_mismatch",
        AmountMismatch => "amount_mismatch",
        PayerMismatch => "payer_mismatch",
        /// Paid at WeChat after we closed the order: an operator refunds or honours it.
        PaidAfterClose => "paid_after_close",
        /// The order is paid here with another transaction.
        TransactionMismatch => "transaction_mismatch",
        /// A stored notification's resource is not what its event type says.
        MalformedResource => "malformed_resource",
        /// A refund report that contradicts our refund (amount, order).
        RefundMismatch => "refund_mismatch",
        /// A refund report for a refund we never applied for.
        UnknownRefund => "unknown_refund",
    }
}
