-- A claim binds ownership to one birth: the manufacturing CA the birth
-- certificate chains to (SHA-256 of its subjectPublicKeyInfo) and the birth
-- certificate itself (SHA-256 of its DER), as an ownership voucher does.
-- NULL for ownership by voucher (the voucher binds it) and for claims made
-- before this version by bare serial: those commission no more until claimed
-- again with the birth (`iotpki device claim --births`).
ALTER TABLE owned_devices ADD COLUMN manufacturer_spki TEXT;
ALTER TABLE owned_devices ADD COLUMN birth_sha256 TEXT;
