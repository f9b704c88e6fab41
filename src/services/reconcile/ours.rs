//! Our payments of one day, held compactly: a million orders must fit well under the memory
//! budget of a reconcile run. Order numbers live in one string arena (no allocation per order),
//! entries are sorted once and found by binary search, and a transaction id is kept as a
//! 64-bit hash (only equality matters here; `order show` has the value).

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::domain::{Fen, PaidOrder};

/// One of our payments, as the comparison needs it.
#[derive(Debug, Clone)]
pub struct OurPayment {
    key_start: u32,
    key_len: u32,
    pub amount: Fen,
    pub refunded: Fen,
    txid_hash: Option<u64>,
    /// A payment row for it has been seen in the bill.
    pub seen: bool,
}

impl OurPayment {
    /// Whether `transaction_id` is the one we recorded (true when we recorded none).
    pub fn transaction_matches(&self, transaction_id: &str) -> bool {
        self.txid_hash.is_none_or(|h| h == hash(transaction_id))
    }
}

fn hash(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

#[derive(Debug, Default)]
pub struct OursTable {
    arena: String,
    entries: Vec<OurPayment>,
    sorted: bool,
}

impl OursTable {
    pub fn push(&mut self, order: PaidOrder) {
        let key_start = u32::try_from(self.arena.len()).unwrap_or(u32::MAX);
        self.arena.push_str(&order.out_trade_no);
        self.entries.push(OurPayment {
            key_start,
            key_len: u32::try_from(order.out_trade_no.len()).unwrap_or(0),
            amount: order.amount,
            refunded: order.refunded,
            txid_hash: order.transaction_id.as_deref().map(hash),
            seen: false,
        });
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn key_of<'a>(arena: &'a str, entry: &OurPayment) -> &'a str {
        let start = entry.key_start as usize;
        arena.get(start..start + entry.key_len as usize).unwrap_or("")
    }

    fn sort(&mut self) {
        if !self.sorted {
            let arena = &self.arena;
            self.entries.sort_unstable_by(|a, b| Self::key_of(arena, a).cmp(Self::key_of(arena, b)));
            self.sorted = true;
        }
    }

    fn position(&mut self, out_trade_no: &str) -> Option<usize> {
        self.sort();
        let arena = &self.arena;
        self.entries.binary_search_by(|e| Self::key_of(arena, e).cmp(out_trade_no)).ok()
    }

    pub fn get_mut(&mut self, out_trade_no: &str) -> Option<&mut OurPayment> {
        let index = self.position(out_trade_no)?;
        self.entries.get_mut(index)
    }

    pub fn get(&mut self, out_trade_no: &str) -> Option<&OurPayment> {
        let index = self.position(out_trade_no)?;
        self.entries.get(index)
    }

    /// Payments no bill row mentioned, in order-number order.
    pub fn unseen(&mut self) -> Vec<(String, OurPayment)> {
        self.sort();
        let arena = &self.arena;
        self.entries.iter().filter(|e| !e.seen).map(|e| (Self::key_of(arena, e).to_owned(), e.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paid(no: &str, amount: i64, txid: Option<&str>) -> PaidOrder {
        PaidOrder {
            out_trade_no: no.into(),
            amount: Fen(amount),
            transaction_id: txid.map(str::to_owned),
            refunded: Fen(0),
        }
    }

    #[test]
    fn finds_marks_and_lists_the_rest() {
        let mut table = OursTable::default();
        table.push(paid("B2", 200, Some("T2")));
        table.push(paid("A1", 100, None));
        table.push(paid("C3", 300, Some("T3")));
        assert_eq!(table.get("A1").map(|p| p.amount), Some(Fen(100)));
        assert!(table.get("A").is_none() && table.get("A10").is_none());
        let b = table.get_mut("B2").expect("B2");
        assert!(b.transaction_matches("T2") && !b.transaction_matches("T9"));
        b.seen = true;
        assert!(table.get("A1").is_some_and(|p| p.transaction_matches("anything")));
        let rest: Vec<String> = table.unseen().into_iter().map(|(no, _)| no).collect();
        assert_eq!(rest, vec!["A1".to_owned(), "C3".to_owned()]);
        assert_eq!(table.len(), 3);
    }
}
