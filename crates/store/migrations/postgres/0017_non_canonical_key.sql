-- iotpki store, version 17: a station's offline birth whose key is not in its
-- one canonical form (an EC point compressed, say: another encoding of some
-- key, maybe a blocked one or another device's) is flagged (and revoked) as such.
ALTER TABLE flags DROP CONSTRAINT flags_reason_check;
ALTER TABLE flags ADD CONSTRAINT flags_reason_check
    CHECK (reason IN ('off-allowlist', 'clone', 'overbuild', 'blocked-key', 'shared-key', 'non-canonical-key'));
