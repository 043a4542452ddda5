-- iotpki store, version 10: one-time login links of the web console
-- (`iotpki admin console-link`). Only the SHA-256 of a link's secret is kept;
-- a link opens one session, once, before it expires.
CREATE TABLE console_links (
    link_hash  TEXT   PRIMARY KEY,
    admin      TEXT   NOT NULL,
    role       TEXT   NOT NULL CHECK (role IN ('read', 'admin')),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
