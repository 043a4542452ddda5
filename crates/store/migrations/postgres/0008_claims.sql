-- iotpki store, version 7 (PostgreSQL): a claim binds ownership to one
-- birth, the manufacturing CA (SHA-256 of its subjectPublicKeyInfo) and the
-- birth certificate (SHA-256 of its DER). NULL for ownership by voucher and
-- for bare-serial claims made before this version (refused at commissioning
-- until claimed again with the birth).
ALTER TABLE owned_devices ADD COLUMN manufacturer_spki TEXT;
ALTER TABLE owned_devices ADD COLUMN birth_sha256 TEXT;
