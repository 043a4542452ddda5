-- iotpki store, version 1 (PostgreSQL): certificates, one-time tokens, the audit chain.
-- Mirrors migrations/sqlite/0001_init.sql column for column; types differ only
-- where PostgreSQL needs its own (BYTEA for BLOB, BIGINT for the audit seq).
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
    der               BYTEA   NOT NULL
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

CREATE TABLE audit (
    seq       BIGINT PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT   NOT NULL,
    action    TEXT   NOT NULL,
    target    TEXT   NOT NULL,
    detail    TEXT   NOT NULL,
    prev_hash TEXT   NOT NULL,
    hash      TEXT   NOT NULL
);

-- PostgreSQL only: the chain's head, one row. Every writing transaction locks
-- it first (SELECT ... FOR UPDATE), so appends from any number of processes
-- form one linear chain, and every check runs after every earlier write committed.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT  NOT NULL,
    hash TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
