-- iotpki store, version 4 (PostgreSQL): revocation lists.
-- Finds a CA's revoked certificates without scanning the good ones.
CREATE INDEX certificates_revoked ON certificates (ca, revoked_at) WHERE status = 'revoked';

-- The last CRL number each CA used: CRL numbers only ever grow (RFC 5280 5.2.3).
CREATE TABLE crl_numbers (
    ca   TEXT   PRIMARY KEY,
    last BIGINT NOT NULL
);
