-- Quotas and sessions (issue #12): the cap on a user's unpaid orders counts them at every order
-- creation, and the purge of expired sessions deletes the oldest first, in bounded batches.
CREATE INDEX orders_user_open ON orders (user_id) WHERE status = 'NOTPAY';
CREATE INDEX sessions_expiry ON sessions (expires_at_ms);
