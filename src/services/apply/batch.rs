//! Applying the inbox in batches, straight from the table.
//!
//! The inbox is already a durable queue, so a batch is claimed from it inside the transaction
//! that applies it: claim the oldest waiting entries (skipping rows another claimer holds),
//! lock every order they name at once, judge every payment in memory and write them with a
//! handful of set-based statements, apply the rarer refunds and others one by one in the same
//! transaction, mark the whole batch processed, commit. A crash anywhere before the commit rolls
//! all of it back, claim included, and the entries are claimed again; after it, they are done.
//! Each payment is applied exactly once because the mark and the move commit together, guarded
//! by `processed_at_ms IS NULL` and the order's status.
//!
//! Within a batch, payments are applied before refunds and other reports, whatever their inbox
//! order: a refund later in the batch then sees the payment it refunds. The only visible
//! difference from strict inbox order is the `from_status` of a late duplicate payment queued
//! after a refund of the same order (SUCCESS instead of REFUND); its outcome is still a
//! duplicate and no money moves.

use std::collections::HashMap;
use std::time::Duration;

use crate::domain::{EventSource, Evidence, Order, OutTradeNo};
use crate::storage::StorageError;
use crate::wechat::convert::{self, Notified};

use super::payment::PaymentPlan;
use super::{Applied, Applier, Counted, stored_label};

impl Applier {
    /// Claims up to `limit` waiting inbox entries and applies them in one transaction; returns
    /// how many it processed (0: nothing was waiting).
    ///
    /// `hold` keeps the transaction open that long before committing: a fault-injection knob
    /// for crash tests (`apply.hold_before_commit_ms`), zero in production.
    pub async fn apply_inbox_batch(&self, limit: usize, hold: Duration) -> Result<usize, StorageError> {
        let mut tx = self.db.begin().await?;
        let entries = self.db.claim_inbox_batch(&mut tx, limit).await?;
        if entries.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let now_ms = self.clock.now_ms();
        let parsed: Vec<_> = entries.iter().map(|e| convert::notification(&e.event_type, &e.resource_json)).collect();

        // Every order the batch names, payments and refunds alike, locked in one statement.
        let mut named: Vec<&OutTradeNo> = parsed
            .iter()
            .filter_map(|p| match p {
                Ok(Notified::Payment(r)) => Some(&r.out_trade_no),
                Ok(Notified::Refund(r)) => Some(&r.out_trade_no),
                _ => None,
            })
            .collect();
        named.sort_unstable();
        named.dedup();
        let mut orders: HashMap<String, Order> = self
            .db
            .lock_orders(&mut tx, &named)
            .await?
            .into_iter()
            .map(|o| (o.out_trade_no.as_str().to_owned(), o))
            .collect();

        // Payments first, in inbox order, judged in memory and written together: a refund later
        // in the batch then reads the orders they moved.
        let mut results: Vec<Option<(Option<Counted>, Applied)>> = (0..entries.len()).map(|_| None).collect();
        let mut plan = PaymentPlan::default();
        for (i, (entry, parsed)) in entries.iter().zip(&parsed).enumerate() {
            if let Ok(Notified::Payment(report)) = parsed {
                let evidence = Evidence::new(EventSource::Notify, entry.notification_id.clone());
                let order = orders.get_mut(report.out_trade_no.as_str());
                results[i] =
                    Some((Some(Counted::Payment), self.judge_payment(order, report, &evidence, now_ms, &mut plan)));
            }
        }
        plan.write(&self.db, &mut tx, now_ms).await?;
        for (i, (entry, parsed)) in entries.iter().zip(parsed).enumerate() {
            if results[i].is_none() {
                results[i] = Some(self.entry_in(&mut tx, entry, parsed).await?);
            }
        }

        let results: Vec<(Option<Counted>, Applied)> = results
            .into_iter()
            .collect::<Option<_>>()
            .ok_or_else(|| StorageError::Corrupt("a claimed notification was left unjudged".into()))?;
        let done: Vec<(i64, String, Option<String>)> = entries
            .iter()
            .zip(&results)
            .map(|(entry, (_, (outcome, detail)))| (entry.id, stored_label(outcome), detail.clone()))
            .collect();
        let marked = self.db.mark_inbox_batch_processed(&mut tx, &done, now_ms).await?;
        if marked != entries.len() as u64 {
            return Err(StorageError::Changed(format!(
                "{marked} of {} claimed notifications marked: another worker processed some",
                entries.len()
            )));
        }
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        tx.commit().await?;

        self.metrics.apply_batch.observe(entries.len() as f64);
        for ((entry, result), (_, label, _)) in entries.iter().zip(results).zip(&done) {
            let (counted, (outcome, _)) = result;
            self.entry_done(entry, counted, &outcome, label);
        }
        Ok(entries.len())
    }
}
