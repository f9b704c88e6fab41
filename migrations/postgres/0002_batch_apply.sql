-- The inbox is applied in claimed batches straight from this table (issue 15). A notification
-- the batch could not apply is handed to its own retried job: `deferred_at_ms` marks it, so the
-- batch claimer skips it and the sweeper watches its job instead.
ALTER TABLE notifications ADD COLUMN deferred_at_ms BIGINT;
-- When that job was dead-lettered: the sweeper leaves the entry to an operator (`jobs retry`
-- clears it), instead of enqueueing a job that dies again every sweep age.
ALTER TABLE notifications ADD COLUMN job_dead_at_ms BIGINT;

-- What the batch claimer reads: unprocessed, not deferred, oldest id first.
CREATE INDEX notifications_batch ON notifications (id)
    WHERE processed_at_ms IS NULL AND deferred_at_ms IS NULL;

-- The sweeper now re-enqueues only deferred rows whose job was lost (not dead-lettered).
DROP INDEX notifications_unqueued;
CREATE INDEX notifications_deferred ON notifications (enqueued_at_ms)
    WHERE processed_at_ms IS NULL AND deferred_at_ms IS NOT NULL;
