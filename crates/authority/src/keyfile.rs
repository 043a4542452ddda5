//! The authority's private keys at rest: PKCS#8, encrypted with PBES2
//! (PBKDF2-HMAC-SHA256, AES-256-CBC) under a passphrase, in PEM, mode 0600.
//! `openssl pkey -in KEY -passin env:IOTPKI_PASSPHRASE` reads them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use iotpki_core::keys::SoftKey;
use pkcs8::der::Decode;
use pkcs8::pkcs5::pbes2;
use pkcs8::{EncryptedPrivateKeyInfo, LineEnding, PrivateKeyInfo};

use crate::AuthorityError;

/// PBKDF2 iterations: OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
const PBKDF2_ITERATIONS: u32 = 600_000;

/// The passphrase that unlocks the authority's keys. Never printed; wiped
/// from memory when dropped (every clone too).
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct Passphrase(String);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

impl Passphrase {
    /// Wrap a passphrase; refuses an empty or short one.
    pub fn new(s: String) -> Result<Self, AuthorityError> {
        let s = zeroize::Zeroizing::new(s);
        let s = Self(s.trim_end_matches(['\r', '\n']).to_string());
        if s.0.chars().count() < 8 {
            return Err(AuthorityError::Config("the passphrase must be at least 8 characters".into()));
        }
        Ok(s)
    }

    /// From the file `path` (its first line), or else from `$IOTPKI_PASSPHRASE`.
    pub fn from_file_or_env(path: Option<&Path>) -> Result<Self, AuthorityError> {
        if let Some(p) = path {
            let text = zeroize::Zeroizing::new(fs::read_to_string(p).map_err(|e| AuthorityError::io(p, e))?);
            return Self::new(text.lines().next().unwrap_or_default().to_string());
        }
        match std::env::var("IOTPKI_PASSPHRASE") {
            Ok(v) => Self::new(v),
            Err(_) => Err(AuthorityError::Config(
                "no passphrase: set IOTPKI_PASSPHRASE or pass --passphrase-file FILE".into(),
            )),
        }
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Write `key` encrypted under `pass` to `path` (created, mode 0600, fsync'd; never overwritten).
pub fn write_encrypted(path: &Path, key: &SoftKey, pass: &Passphrase) -> Result<(), AuthorityError> {
    let plain = zeroize::Zeroizing::new(key.to_pkcs8()?);
    let info = PrivateKeyInfo::from_der(&plain).map_err(|e| AuthorityError::Config(format!("PKCS#8: {e}")))?;
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    rng.fill(&mut salt).and_then(|_| rng.fill(&mut iv)).map_err(|_| AuthorityError::Config("RNG failed".into()))?;
    let params = pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, &iv)
        .map_err(|e| AuthorityError::Config(format!("PBES2 parameters: {e}")))?;
    let doc = info
        .encrypt_with_params(params, pass.bytes())
        .map_err(|e| AuthorityError::Config(format!("encrypting key: {e}")))?;
    let pem =
        doc.to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF).map_err(|e| AuthorityError::Config(format!("PEM: {e}")))?;
    write_private(path, pem.as_bytes())
}

/// Read and decrypt a key written by [`write_encrypted`] (or by `openssl pkcs8 -topk8 -v2 aes256`).
pub fn read_encrypted(path: &Path, pass: &Passphrase) -> Result<SoftKey, AuthorityError> {
    let text = fs::read_to_string(path).map_err(|e| AuthorityError::io(path, e))?;
    let der = iotpki_core::pem::decode_one("ENCRYPTED PRIVATE KEY", &text)
        .map_err(|e| AuthorityError::Config(format!("{}: {e}", path.display())))?;
    let enc = EncryptedPrivateKeyInfo::from_der(&der)
        .map_err(|e| AuthorityError::Config(format!("{}: not an encrypted PKCS#8 key: {e}", path.display())))?;
    let plain = enc.decrypt(pass.bytes()).map_err(|_| {
        AuthorityError::Config(format!("{}: wrong passphrase (or the key file is damaged)", path.display()))
    })?;
    SoftKey::from_pkcs8(plain.as_bytes()).map_err(|e| AuthorityError::Config(format!("{}: {e}", path.display())))
}

/// Write a secret file: mode 0600 from creation, fsync'd, refusing to overwrite.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthorityError> {
    write_new(path, bytes, 0o600)
}

/// Write a public file (certificate, config), fsync'd, refusing to overwrite.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), AuthorityError> {
    write_new(path, bytes, 0o644)
}

/// Replace a file atomically, keeping its mode (0644 if it is new): a
/// temporary file written and fsynced, renamed over `path`, the directory fsynced.
pub fn replace_public(path: &Path, bytes: &[u8]) -> Result<(), AuthorityError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o644);
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, bytes, mode)?;
    fs::rename(&tmp, path).map_err(|e| AuthorityError::io(path, e))?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent).and_then(|d| d.sync_all()).map_err(|e| AuthorityError::io(parent, e))?;
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AuthorityError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| AuthorityError::io(path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| AuthorityError::io(path, e))
}

/// `dir.join(rel)` unless `rel` is absolute.
pub fn resolve(dir: &Path, rel: &Path) -> PathBuf {
    if rel.is_absolute() {
        rel.to_path_buf()
    } else {
        dir.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotpki_core::keys::{KeyType, Signer};

    #[test]
    fn encrypt_round_trip_and_wrong_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let pass = Passphrase::new("correct horse".into()).unwrap();
        write_encrypted(&p, &key, &pass).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        let back = read_encrypted(&p, &pass).unwrap();
        assert_eq!(back.public_key_der(), key.public_key_der());
        let err = read_encrypted(&p, &Passphrase::new("wrong horse".into()).unwrap()).unwrap_err();
        assert!(err.to_string().contains("wrong passphrase"), "{err}");
        assert!(write_encrypted(&p, &key, &pass).is_err(), "never overwrites a key");
        assert!(Passphrase::new("short".into()).is_err());
    }

    #[test]
    fn a_passphrase_is_wiped_when_dropped() {
        // The type promises it (a bound the compiler checks) ...
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<Passphrase>();
        // ... and zeroizing one in place leaves nothing of it.
        let mut p = Passphrase::new("correct horse battery".into()).unwrap();
        zeroize::Zeroize::zeroize(&mut p);
        assert!(p.bytes().is_empty());
    }
}
