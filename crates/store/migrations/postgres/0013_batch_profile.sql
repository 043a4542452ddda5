-- iotpki store, version 13 (PostgreSQL): a batch's certificate profile.
-- 'device' (the birth certificate under the manufacturing CA, as before) or
-- 'matter-dac' (a Matter Device Attestation Certificate under the PAI of
-- vendor_id), with the Matter Vendor ID and Product ID its births carry.
ALTER TABLE batches ADD COLUMN profile TEXT NOT NULL DEFAULT 'device' CHECK (profile IN ('device', 'matter-dac'));
ALTER TABLE batches ADD COLUMN vendor_id BIGINT CHECK (vendor_id BETWEEN 1 AND 65535);
ALTER TABLE batches ADD COLUMN product_id BIGINT CHECK (product_id BETWEEN 1 AND 65535);
ALTER TABLE batches ADD CONSTRAINT batches_matter_ids CHECK (
    (profile = 'device' AND vendor_id IS NULL AND product_id IS NULL)
    OR (profile = 'matter-dac' AND vendor_id IS NOT NULL AND product_id IS NOT NULL)
);
