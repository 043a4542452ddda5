-- iotpki store, version 17: a station's offline birth whose key is not in its
-- one canonical form (an EC point compressed, say: another encoding of some
-- key, maybe a blocked one or another device's) is flagged (and revoked) as
-- such. SQLite cannot alter a CHECK: the table is made again with the new reason.
CREATE TABLE flags_v17 (
    cert_serial TEXT   PRIMARY KEY,
    batch_id    TEXT   NOT NULL REFERENCES batches (id),
    reason      TEXT   NOT NULL
                CHECK (reason IN ('off-allowlist', 'clone', 'overbuild', 'blocked-key', 'shared-key',
                                  'non-canonical-key')),
    flagged_at  BIGINT NOT NULL
);
INSERT INTO flags_v17 (cert_serial, batch_id, reason, flagged_at)
    SELECT cert_serial, batch_id, reason, flagged_at FROM flags;
DROP TABLE flags;
ALTER TABLE flags_v17 RENAME TO flags;
