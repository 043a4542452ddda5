-- iotpki store, version 9: the key registry. Every certificate is found by
-- the SHA-256 of its subjectPublicKeyInfo (a key certified for one device is
-- refused for another: a clone), and keys known to be compromised (found in a
-- firmware image, leaked) are blocked: no issuance path certifies them again.
CREATE INDEX certificates_spki ON certificates (spki_sha256);
CREATE TABLE blocked_keys (
    spki_sha256 TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    source      TEXT NOT NULL,
    blocked_at  BIGINT NOT NULL,
    blocked_by  TEXT NOT NULL
);

-- A station's offline birth with a blocked key, or with another device's key,
-- is flagged (and revoked) as such.
ALTER TABLE flags DROP CONSTRAINT flags_reason_check;
ALTER TABLE flags ADD CONSTRAINT flags_reason_check
    CHECK (reason IN ('off-allowlist', 'clone', 'overbuild', 'blocked-key', 'shared-key'));

-- An enrollment token found where it should not be (a firmware image) is
-- withdrawn: it enrolls nothing from then on.
CREATE TABLE withdrawn_tokens (
    token_hash   TEXT   PRIMARY KEY REFERENCES tokens (token_hash),
    withdrawn_at BIGINT NOT NULL,
    reason       TEXT   NOT NULL
);
