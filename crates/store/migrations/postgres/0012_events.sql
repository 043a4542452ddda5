-- iotpki store, version 12: events out (webhooks). Every change a webhook
-- reports (a revocation, a flag, a station revoked, a certificate about to
-- expire) writes its event here in the transaction that makes the change: an
-- event exists if and only if its change committed (an outbox).
CREATE TABLE events (
    seq        BIGINT PRIMARY KEY,
    kind       TEXT   NOT NULL,
    subject    TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    body       TEXT   NOT NULL
);

-- Where each webhook's deliveries are: the last event it has been given (or
-- that its filter skipped), and the node delivering to it (a lease, so that
-- two nodes never deliver one webhook's events at once).
CREATE TABLE webhook_cursors (
    name        TEXT   PRIMARY KEY,
    delivered   BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);

-- A certificate is announced as expiring once per threshold (days).
CREATE TABLE expiry_notices (
    cert_serial TEXT   NOT NULL,
    within_days BIGINT NOT NULL,
    noticed_at  BIGINT NOT NULL,
    PRIMARY KEY (cert_serial, within_days)
);
