-- iotpki store, version 1: certificates, one-time tokens, the audit chain.
-- Every index costs a page write per insert when its key is random (serial,
-- token hash): only indexes a query needs are here.
CREATE TABLE certificates (
    serial            TEXT    PRIMARY KEY,
    ca                TEXT    NOT NULL,
    profile           TEXT    NOT NULL,
    subject           TEXT    NOT NULL,
    device_serial     TEXT,
    not_before        BIGINT  NOT NULL,
    not_after         BIGINT  NOT NULL,
    issued_at         BIGINT  NOT NULL,
    spki_sha256       TEXT    NOT NULL,
    replaces          TEXT,
    status            TEXT    NOT NULL CHECK (status IN ('good', 'revoked')),
    revoked_at        BIGINT,
    revocation_reason INTEGER,
    der               BLOB    NOT NULL
);
CREATE INDEX certificates_device ON certificates (device_serial);
CREATE INDEX certificates_not_after ON certificates (not_after);
CREATE INDEX certificates_issued ON certificates (issued_at);

CREATE TABLE tokens (
    token_hash    TEXT   PRIMARY KEY,
    device_serial TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    used_at       BIGINT,
    -- the certificate the token was spent on (a retry with the same key gets it again)
    cert_serial   TEXT
);

-- INTEGER PRIMARY KEY (exactly) makes seq SQLite's rowid: no separate index.
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT   NOT NULL,
    action    TEXT   NOT NULL,
    target    TEXT   NOT NULL,
    detail    TEXT   NOT NULL,
    prev_hash TEXT   NOT NULL,
    hash      TEXT   NOT NULL
);
