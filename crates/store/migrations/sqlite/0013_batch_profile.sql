-- iotpki store, version 13: a batch's certificate profile. 'device' (the
-- birth certificate under the manufacturing CA, as before) or 'matter-dac'
-- (a Matter Device Attestation Certificate under the PAI of vendor_id), with
-- the Matter Vendor ID and Product ID (0x0001..0xFFFF) its births carry.
ALTER TABLE batches ADD COLUMN profile TEXT NOT NULL DEFAULT 'device' CHECK (profile IN ('device', 'matter-dac'));
ALTER TABLE batches ADD COLUMN vendor_id INTEGER CHECK (vendor_id BETWEEN 1 AND 65535);
ALTER TABLE batches ADD COLUMN product_id INTEGER CHECK (product_id BETWEEN 1 AND 65535);
