//! The common language of the service: money, identifiers, orders and refunds with their
//! state machines, what WeChat reports about them, and the classes of what can go wrong. Pure:
//! nothing here does I/O or reads the clock (callers pass time in), and nothing here imports
//! another module of ours. Wire formats become these types at exactly two edges:
//! `wechat::convert` (WeChat's JSON and bill rows) and `storage` (database rows).

pub mod anomaly;
pub mod bill_day;
pub mod bill_run;
pub mod catalog;
pub mod discrepancy;
pub mod ids;
pub mod job;
pub mod money;
pub mod order;
pub mod refund;
pub mod report;
pub mod text;
pub mod time;
pub mod wechat_text;

pub use anomaly::AnomalyKind;
pub use bill_run::{BillRun, BillRunStatus, PaidOrder};
pub use catalog::{Product, User};
pub use discrepancy::{Discrepancy, DiscrepancyClass, Resolution};
pub use ids::{OutRefundNo, OutTradeNo, TransactionId};
pub use job::JobKind;
pub use money::Fen;
pub use order::{EventSource, Order, OrderStatus};
pub use refund::{Refund, RefundStatus};
pub use report::{Evidence, Merchant, PaymentReport, RefundReport};
pub use text::UnknownValue;
