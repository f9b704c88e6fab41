-- Issue 11 (real WeChat): what WeChat says about a refund that our request alone cannot tell.
--
-- `wechat_created_at_ms`: WeChat's acceptance time (`create_time` of the refund answer/query).
-- WeChat prints a refund row in the bill of the Shanghai day it *accepted* the refund, which is
-- not always the day we sent the request (a request at 23:59:59 accepted at 00:00:01).
-- `settled_fen`: `amount.settlement_refund`, what WeChat actually paid back (the bill's 退款金额,
-- column 17); coupons make it smaller than the requested `amount_fen` (column 26).
ALTER TABLE refunds ADD COLUMN wechat_created_at_ms BIGINT;
ALTER TABLE refunds ADD COLUMN settled_fen BIGINT;

-- The refunds of one bill day: WeChat's day when known, else the day we asked.
CREATE INDEX refunds_bill_day ON refunds ((COALESCE(wechat_created_at_ms, requested_at_ms)));

-- ABNORMAL refunds stay on a slow poll: an operator resolves them in the merchant console and
-- WeChat may then report them SUCCESS without any notification.
DROP INDEX refunds_due;
CREATE INDEX refunds_due ON refunds (next_check_at_ms)
    WHERE status IN ('REQUESTED', 'PROCESSING', 'ABNORMAL') AND next_check_at_ms IS NOT NULL;
-- ABNORMAL refunds recorded before this version were taken off the poll (no next check):
-- put them back on it, due now.
UPDATE refunds SET next_check_at_ms = updated_at_ms WHERE status = 'ABNORMAL' AND next_check_at_ms IS NULL;

-- A trade-less day whose bill WeChat never stops "creating" is closed as assumed empty.
ALTER TABLE bill_runs DROP CONSTRAINT bill_runs_status_check;
ALTER TABLE bill_runs ADD CONSTRAINT bill_runs_status_check
    CHECK (status IN ('clean', 'discrepancies', 'no_bill', 'assumed_empty', 'not_ready', 'failed'));
