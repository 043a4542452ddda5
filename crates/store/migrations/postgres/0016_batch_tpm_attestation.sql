-- iotpki store, version 16: whether a batch's births must prove their key is
-- in the TPM registered for their serial. Fixed when the batch is created, in
-- the same transaction (it used to be a separate artifact, published before
-- the batch: a batch created meanwhile could be read without it). Batches
-- that required it through that artifact keep requiring it.
ALTER TABLE batches ADD COLUMN tpm_attestation INTEGER NOT NULL DEFAULT 0 CHECK (tpm_attestation IN (0, 1));
UPDATE batches SET tpm_attestation = 1
 WHERE EXISTS (SELECT 1 FROM artifacts a WHERE a.kind = 'tpm-attestation/' || batches.id);
