//! Pure types and rules of the business: money, identifiers, order states and their allowed
//! transitions. Nothing here does I/O or reads the clock; callers pass time in.

pub mod ids;
pub mod money;
pub mod order;
pub mod time;

pub use ids::OutTradeNo;
pub use money::Fen;
pub use order::{EventSource, OrderStatus};
