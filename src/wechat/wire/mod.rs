//! WeChat's JSON shapes with WeChat's field names. Used only inside `wechat` and `sim`;
//! `wechat::convert` is the one place they become domain types.

pub mod bill;
pub mod certificates;
pub mod error;
pub mod login;
pub mod notify;
pub mod pay;
pub mod refund;
