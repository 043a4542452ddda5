-- Commissioning: the manufacturers whose birth certificates this authority
-- trusts, and the devices it owns (by claim list or by ownership voucher).
CREATE TABLE manufacturers (
    name        TEXT PRIMARY KEY,
    cert_der    BLOB NOT NULL,
    spki_sha256 TEXT NOT NULL UNIQUE,
    added_at    INTEGER NOT NULL
);

CREATE TABLE owned_devices (
    device_serial TEXT PRIMARY KEY,
    via           TEXT NOT NULL,            -- 'claim' or 'voucher:<sha256>'
    since         INTEGER NOT NULL,
    status        TEXT NOT NULL DEFAULT 'owned' CHECK (status IN ('owned', 'revoked', 'transferred')),
    changed_at    INTEGER
);
