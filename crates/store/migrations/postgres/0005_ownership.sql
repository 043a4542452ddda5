-- iotpki store, version 5 (PostgreSQL): commissioning. The manufacturers
-- whose birth certificates this authority trusts, and the devices it owns.
CREATE TABLE manufacturers (
    name        TEXT   PRIMARY KEY,
    cert_der    BYTEA  NOT NULL,
    spki_sha256 TEXT   NOT NULL UNIQUE,
    added_at    BIGINT NOT NULL
);

CREATE TABLE owned_devices (
    device_serial TEXT   PRIMARY KEY,
    via           TEXT   NOT NULL,            -- 'claim' or 'voucher:<sha256>'
    since         BIGINT NOT NULL,
    status        TEXT   NOT NULL DEFAULT 'owned' CHECK (status IN ('owned', 'revoked', 'transferred')),
    changed_at    BIGINT
);
