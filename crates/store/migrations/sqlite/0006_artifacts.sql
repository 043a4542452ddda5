-- Signed things the authority publishes for devices and relays: trust
-- bundles (kind 'bundle') and ownership vouchers (kind 'voucher/SERIAL').
-- Versions only grow per kind.
CREATE TABLE artifacts (
    kind         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    body         BLOB NOT NULL,
    published_at INTEGER NOT NULL,
    PRIMARY KEY (kind, version)
);
