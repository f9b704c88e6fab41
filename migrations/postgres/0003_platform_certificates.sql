-- WeChat Pay platform certificates downloaded from GET /v3/certificates (issue 11): the last
-- good set, so a restart verifies WeChat's signatures without asking WeChat first, and every
-- replica learns what one replica downloaded. The PEM is public material (a certificate); the
-- validity columns repeat what the PEM says, for the expiry metric and for operators.
CREATE TABLE platform_certificates (
    serial         TEXT    PRIMARY KEY,
    pem            TEXT    NOT NULL,
    not_before_ms  BIGINT  NOT NULL,
    not_after_ms   BIGINT  NOT NULL,
    -- When a download last listed it (a successful refresh touches every listed row).
    fetched_at_ms  BIGINT  NOT NULL
);
