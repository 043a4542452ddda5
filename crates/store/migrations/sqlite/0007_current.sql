-- iotpki store, version 7: which certificate is current.
-- A renewed certificate points at its successor (set in the renewal's
-- transaction, which also revokes it as superseded). A device's current
-- certificate for a CA is its good one with no successor.
ALTER TABLE certificates ADD COLUMN replaced_by TEXT;
-- Renewals recorded before this version: the successor is the certificate
-- that names it in `replaces` (the earliest, should there be several).
UPDATE certificates SET replaced_by = (
    SELECT n.serial FROM certificates n WHERE n.replaces = certificates.serial ORDER BY n.issued_at, n.serial LIMIT 1
) WHERE EXISTS (SELECT 1 FROM certificates n WHERE n.replaces = certificates.serial);
