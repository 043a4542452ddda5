-- iotpki store, version 3 (PostgreSQL): offline stations (delegated sub-CAs), their
-- production record uploads, and the certificates flagged by them.
CREATE TABLE delegations (
    cert_serial TEXT   PRIMARY KEY,
    station     TEXT   NOT NULL REFERENCES stations (name),
    batch_id    TEXT   NOT NULL REFERENCES batches (id),
    created_at  BIGINT NOT NULL,
    UNIQUE (station, batch_id)
);

-- Where each station's production record for a batch was synced up to.
CREATE TABLE syncs (
    station  TEXT   NOT NULL,
    batch_id TEXT   NOT NULL,
    last_seq BIGINT NOT NULL,
    head     TEXT   NOT NULL,
    PRIMARY KEY (station, batch_id)
);

-- Certificates a station issued beyond its rights: off the allowlist, a
-- serial born twice (clone), beyond the quota (overbuild).
CREATE TABLE flags (
    cert_serial TEXT   PRIMARY KEY,
    batch_id    TEXT   NOT NULL REFERENCES batches (id),
    reason      TEXT   NOT NULL CHECK (reason IN ('off-allowlist', 'clone', 'overbuild')),
    flagged_at  BIGINT NOT NULL
);
