//! The order state machine. Every change of `orders.status` is one of the transitions allowed
//! here, applied by one guarded statement in `storage::orders`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Our order status, named as WeChat names `trade_state` where they mean the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Created, waiting for the payer.
    Notpay,
    /// Paid.
    Success,
    /// Closed unpaid (by us or by expiry). Final.
    Closed,
    /// Payment failed at WeChat. Final.
    Payerror,
    /// Paid, then refunded in part or in full. Final for payment purposes.
    Refund,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 5] =
        [OrderStatus::Notpay, OrderStatus::Success, OrderStatus::Closed, OrderStatus::Payerror, OrderStatus::Refund];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Notpay => "NOTPAY",
            OrderStatus::Success => "SUCCESS",
            OrderStatus::Closed => "CLOSED",
            OrderStatus::Payerror => "PAYERROR",
            OrderStatus::Refund => "REFUND",
        }
    }

    /// A final status never changes again except SUCCESS -> REFUND.
    pub fn is_final(self) -> bool {
        !matches!(self, OrderStatus::Notpay)
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

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored status string we do not know: the database and the code disagree.
#[derive(Debug, thiserror::Error)]
#[error("unknown order status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for OrderStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderStatus::ALL.into_iter().find(|status| status.as_str() == s).ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// Where the evidence for a transition came from; recorded on every `order_events` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    Notify,
    Poll,
    Bill,
    Api,
    Ops,
}

impl EventSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Notify => "notify",
            EventSource::Poll => "poll",
            EventSource::Bill => "bill",
            EventSource::Api => "api",
            EventSource::Ops => "ops",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_never_go_back() {
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                if from.is_final() && from.can_move_to(to) {
                    assert_eq!((from, to).1, OrderStatus::Refund, "{from} -> {to}");
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
        assert!("PAID".parse::<OrderStatus>().is_err());
    }
}
