-- iotpki store, version 6 (PostgreSQL): signed things published for devices
-- and relays: trust bundles (kind 'bundle'), ownership vouchers ('voucher/SERIAL').
CREATE TABLE artifacts (
    kind         TEXT   NOT NULL,
    version      BIGINT NOT NULL,
    body         BYTEA  NOT NULL,
    published_at BIGINT NOT NULL,
    PRIMARY KEY (kind, version)
);
