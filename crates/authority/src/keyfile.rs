//! The authority's private keys at rest, read and written by [`iotpki_fs::keyfile`]
//! (PKCS#8, encrypted with PBES2 under a passphrase, in PEM, mode 0600; `openssl
//! pkey -in KEY -passin env:IOTPKI_PASSPHRASE` reads them), and its other files,
//! made and replaced by [`iotpki_fs`].

use std::path::{Path, PathBuf};

use iotpki_core::keys::SoftKey;
pub use iotpki_fs::keyfile::Passphrase;

use crate::AuthorityError;

impl From<iotpki_fs::Error> for AuthorityError {
    fn from(e: iotpki_fs::Error) -> Self {
        match e {
            iotpki_fs::Error::Io { path, error } => AuthorityError::io(path, error),
            other => AuthorityError::Config(other.to_string()),
        }
    }
}

/// Write `key` encrypted under `pass` to `path` (created, mode 0600, fsync'd; never overwritten).
pub fn write_encrypted(path: &Path, key: &SoftKey, pass: &Passphrase) -> Result<(), AuthorityError> {
    Ok(iotpki_fs::keyfile::write_encrypted(path, key, pass)?)
}

/// Read and decrypt a key written by [`write_encrypted`] (or by `openssl pkcs8 -topk8 -v2 aes256`).
pub fn read_encrypted(path: &Path, pass: &Passphrase) -> Result<SoftKey, AuthorityError> {
    Ok(iotpki_fs::keyfile::read_encrypted(path, pass)?)
}

/// Write a secret file: mode 0600 from creation, fsync'd, refusing to overwrite.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthorityError> {
    Ok(iotpki_fs::write_new(path, bytes, iotpki_fs::SECRET)?)
}

/// Write a public file (certificate, config), fsync'd, refusing to overwrite.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), AuthorityError> {
    Ok(iotpki_fs::write_new(path, bytes, iotpki_fs::PUBLIC)?)
}

/// Replace a file atomically, keeping its mode (0644 if it is new).
pub fn replace_public(path: &Path, bytes: &[u8]) -> Result<(), AuthorityError> {
    Ok(iotpki_fs::write_atomic(path, bytes, iotpki_fs::mode_or(path, iotpki_fs::PUBLIC))?)
}

/// `dir.join(rel)` unless `rel` is absolute.
pub fn resolve(dir: &Path, rel: &Path) -> PathBuf {
    if rel.is_absolute() {
        rel.to_path_buf()
    } else {
        dir.join(rel)
    }
}
