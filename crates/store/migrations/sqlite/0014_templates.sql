-- iotpki store, version 14: certificate templates (docs/templates.md). A
-- batch's births and a token's enrollment may name the template they get
-- (NULL: the label's, else the built-in device profile). Templates live in
-- the authority's config; the name is checked against it when the batch or
-- token is created, and again at issuance.
ALTER TABLE batches ADD COLUMN template TEXT CHECK (template IS NULL OR length(template) BETWEEN 1 AND 64);
ALTER TABLE tokens ADD COLUMN template TEXT CHECK (template IS NULL OR length(template) BETWEEN 1 AND 64);
