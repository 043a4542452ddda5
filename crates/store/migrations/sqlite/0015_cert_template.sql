-- iotpki store, version 15: the certificate template each certificate was
-- issued under (docs/templates.md; NULL: none, the built-in profile). A
-- renewal follows its certificate's template, not whichever one its label
-- names today: its key types, its lifetime, its extensions.
ALTER TABLE certificates ADD COLUMN template TEXT CHECK (template IS NULL OR length(template) BETWEEN 1 AND 64);
