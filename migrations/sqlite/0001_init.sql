-- wxpay-recon schema, SQLite flavour (embedded profile). Kept column-for-column identical to
-- migrations/postgres so one set of SQL statements serves both backends.
-- Instants are Unix milliseconds UTC (*_at_ms); money is integer fen (*_fen).

CREATE TABLE users (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    openid          TEXT    NOT NULL UNIQUE,
    unionid         TEXT,
    session_key_enc TEXT    NOT NULL,           -- AES-256-GCM under auth.data_key; never returned
    nickname        TEXT,
    avatar_url      TEXT,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL
);

CREATE TABLE sessions (
    token_hash    TEXT    PRIMARY KEY,          -- SHA-256 of the bearer token; the token is never stored
    user_id       INTEGER NOT NULL REFERENCES users (id),
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE products (
    id            TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    price_fen     INTEGER NOT NULL CHECK (price_fen > 0),
    active        INTEGER NOT NULL DEFAULT 1,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE orders (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    out_trade_no     TEXT    NOT NULL UNIQUE,
    user_id          INTEGER NOT NULL REFERENCES users (id),
    payer_openid     TEXT    NOT NULL,
    product_id       TEXT    NOT NULL REFERENCES products (id),
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    amount_fen       INTEGER NOT NULL CHECK (amount_fen > 0),
    description      TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('NOTPAY', 'SUCCESS', 'CLOSED', 'PAYERROR', 'REFUND')),
    prepay_id        TEXT,
    prepay_at_ms     INTEGER,
    transaction_id   TEXT,
    time_expire_ms   INTEGER NOT NULL,
    paid_at_ms       INTEGER,
    closed_at_ms     INTEGER,
    refunded_fen     INTEGER NOT NULL DEFAULT 0,
    next_check_at_ms INTEGER,                   -- when the poller next asks WeChat (NOTPAY only)
    check_attempts   INTEGER NOT NULL DEFAULT 0,
    version          INTEGER NOT NULL DEFAULT 0,
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL
);
CREATE INDEX orders_user ON orders (user_id, created_at_ms);
CREATE INDEX orders_due ON orders (next_check_at_ms) WHERE status = 'NOTPAY' AND next_check_at_ms IS NOT NULL;
CREATE INDEX orders_paid_at ON orders (paid_at_ms);

-- Append-only history of every transition and every recorded no-op, with its evidence.
CREATE TABLE order_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id      INTEGER NOT NULL REFERENCES orders (id),
    from_status   TEXT,                         -- NULL on creation
    to_status     TEXT    NOT NULL,
    applied       INTEGER NOT NULL,             -- 1: status changed; 0: duplicate, late or refused evidence
    source        TEXT    NOT NULL CHECK (source IN ('notify', 'poll', 'bill', 'api', 'ops')),
    evidence      TEXT,                         -- notification id, query, bill date...
    note          TEXT,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX order_events_order ON order_events (order_id, id);

-- The notification inbox. Nothing received is ever deleted by code.
CREATE TABLE notifications (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id     TEXT    NOT NULL UNIQUE,
    event_type          TEXT    NOT NULL,
    resource_type       TEXT    NOT NULL,
    summary             TEXT    NOT NULL,
    create_time         TEXT    NOT NULL,
    serial              TEXT    NOT NULL,
    wechat_timestamp    TEXT    NOT NULL,
    wechat_nonce        TEXT    NOT NULL,
    signature           TEXT    NOT NULL,
    raw_body            TEXT    NOT NULL,       -- exactly as received, re-verifiable
    resource_json       TEXT    NOT NULL,       -- the decrypted resource
    out_trade_no        TEXT,
    deliveries          INTEGER NOT NULL DEFAULT 1,
    received_at_ms      INTEGER NOT NULL,
    last_delivery_at_ms INTEGER NOT NULL,
    enqueued_at_ms      INTEGER NOT NULL,       -- last time an apply job was queued (sweeper claims)
    processed_at_ms     INTEGER,
    outcome             TEXT,
    outcome_detail      TEXT
);
CREATE INDEX notifications_unprocessed ON notifications (received_at_ms) WHERE processed_at_ms IS NULL;
CREATE INDEX notifications_unqueued ON notifications (enqueued_at_ms) WHERE processed_at_ms IS NULL;
CREATE INDEX notifications_out_trade_no ON notifications (out_trade_no);

-- Notifications we answered with a failure, so every rejection is explainable later.
CREATE TABLE notify_rejections (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    reason          TEXT    NOT NULL,
    detail          TEXT    NOT NULL,
    serial          TEXT,
    notification_id TEXT,
    body_sha256     TEXT    NOT NULL,
    body_excerpt    TEXT    NOT NULL,           -- first 4 KiB; resources are encrypted
    received_at_ms  INTEGER NOT NULL
);
CREATE INDEX notify_rejections_time ON notify_rejections (received_at_ms);

-- Evidence that contradicts our order and was therefore not applied.
CREATE TABLE anomalies (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    out_trade_no  TEXT,
    evidence      TEXT,
    ours          TEXT,
    theirs        TEXT,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX anomalies_order ON anomalies (out_trade_no);

-- Jobs that exhausted their attempts, waiting for `wxpay-recon jobs retry`.
CREATE TABLE dead_jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT    NOT NULL,
    payload       TEXT    NOT NULL,
    attempts      INTEGER NOT NULL,
    last_error    TEXT    NOT NULL,
    died_at_ms    INTEGER NOT NULL,
    retried_at_ms INTEGER
);
CREATE INDEX dead_jobs_open ON dead_jobs (kind) WHERE retried_at_ms IS NULL;

-- Leases on singleton work (sweeper, poller, reconcile) so one replica runs each.
CREATE TABLE leases (
    name          TEXT    PRIMARY KEY,
    holder        TEXT    NOT NULL,
    expires_at_ms INTEGER NOT NULL
);

-- One reconciliation of a WeChat day (Asia/Shanghai) against its trade bill. Re-running a date
-- replaces its row and its discrepancies in one transaction.
CREATE TABLE bill_runs (
    bill_date       TEXT    PRIMARY KEY,        -- YYYY-MM-DD, Asia/Shanghai
    status          TEXT    NOT NULL CHECK (status IN ('clean', 'discrepancies', 'no_bill', 'not_ready', 'failed')),
    bill_rows       BIGINT  NOT NULL DEFAULT 0,
    orders_compared BIGINT  NOT NULL DEFAULT 0,
    discrepancies   BIGINT  NOT NULL DEFAULT 0,
    unexplained     BIGINT  NOT NULL DEFAULT 0,
    healed          BIGINT  NOT NULL DEFAULT 0,
    bill_sha1       TEXT,
    error           TEXT,
    attempts        BIGINT  NOT NULL DEFAULT 1,
    started_at_ms   BIGINT  NOT NULL,
    finished_at_ms  BIGINT  NOT NULL,
    next_attempt_at_ms BIGINT                   -- not_ready / failed: when the scheduler tries again
);

-- Every difference between a day's bill and our books, with what was done about it.
CREATE TABLE discrepancies (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    bill_date      TEXT    NOT NULL,
    class          TEXT    NOT NULL,
    out_trade_no   TEXT,
    transaction_id TEXT,
    ours           TEXT,
    theirs         TEXT,
    bill_line      BIGINT,
    resolution     TEXT    NOT NULL CHECK (resolution IN ('healed', 'unexplained')),
    detail         TEXT    NOT NULL,
    created_at_ms  BIGINT  NOT NULL
);
CREATE INDEX discrepancies_date ON discrepancies (bill_date);

-- Refunds we applied for. The order's refunded_fen moves only when a refund is SUCCESS.
CREATE TABLE refunds (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    out_refund_no    TEXT    NOT NULL UNIQUE,
    order_id         BIGINT  NOT NULL REFERENCES orders (id),
    out_trade_no     TEXT    NOT NULL,
    amount_fen       BIGINT  NOT NULL CHECK (amount_fen > 0),
    reason           TEXT,
    status           TEXT    NOT NULL CHECK (status IN ('REQUESTED', 'PROCESSING', 'SUCCESS', 'CLOSED', 'ABNORMAL')),
    refund_id        TEXT,
    requested_at_ms  BIGINT  NOT NULL,          -- its WeChat day is the bill day of the refund row
    success_at_ms    BIGINT,
    next_check_at_ms BIGINT,                    -- when the poller next asks WeChat (unfinished only)
    check_attempts   BIGINT  NOT NULL DEFAULT 0,
    updated_at_ms    BIGINT  NOT NULL
);
CREATE INDEX refunds_order ON refunds (order_id);
CREATE INDEX refunds_requested ON refunds (requested_at_ms);
CREATE INDEX refunds_due ON refunds (next_check_at_ms) WHERE status IN ('REQUESTED', 'PROCESSING') AND next_check_at_ms IS NOT NULL;
