//! CA private keys at rest: PKCS#8 in PEM, mode 0600; encrypted with PBES2
//! (PBKDF2-HMAC-SHA256, AES-256-CBC) under a passphrase for the authority's
//! CAs, where `openssl pkey -in KEY -passin env:IOTPKI_PASSPHRASE` reads them.
//! The one reader and writer of CA key files: the authority's and the
//! offline station's delegated CA.

use std::fs;
use std::path::Path;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use iotpki_core::keys::SoftKey;
use pkcs8::der::Decode;
use pkcs8::pkcs5::pbes2;
use pkcs8::{EncryptedPrivateKeyInfo, LineEnding, PrivateKeyInfo};

use crate::Error;

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

fn config(m: String) -> Error {
    Error::Key(m)
}

impl Passphrase {
    /// Wrap a passphrase; refuses an empty or short one.
    pub fn new(s: String) -> Result<Self, Error> {
        let s = zeroize::Zeroizing::new(s);
        let s = Self(s.trim_end_matches(['\r', '\n']).to_string());
        if s.0.chars().count() < 8 {
            return Err(config("the passphrase must be at least 8 characters".into()));
        }
        Ok(s)
    }

    /// From the file `path` (its first line), or else from `$IOTPKI_PASSPHRASE`.
    pub fn from_file_or_env(path: Option<&Path>) -> Result<Self, Error> {
        if let Some(p) = path {
            let text = zeroize::Zeroizing::new(fs::read_to_string(p).map_err(|e| Error::io(p, e))?);
            return Self::new(text.lines().next().unwrap_or_default().to_string());
        }
        match std::env::var("IOTPKI_PASSPHRASE") {
            Ok(v) => Self::new(v),
            Err(_) => Err(config("no passphrase: set IOTPKI_PASSPHRASE or pass --passphrase-file FILE".into())),
        }
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Write `key` encrypted under `pass` to `path` (created, mode 0600, fsync'd; never overwritten).
pub fn write_encrypted(path: &Path, key: &SoftKey, pass: &Passphrase) -> Result<(), Error> {
    let plain = zeroize::Zeroizing::new(key.to_pkcs8().map_err(|e| config(e.to_string()))?);
    let info = PrivateKeyInfo::from_der(&plain).map_err(|e| config(format!("PKCS#8: {e}")))?;
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    rng.fill(&mut salt).and_then(|_| rng.fill(&mut iv)).map_err(|_| config("RNG failed".into()))?;
    let params = pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, &iv)
        .map_err(|e| config(format!("PBES2 parameters: {e}")))?;
    let doc = info.encrypt_with_params(params, pass.bytes()).map_err(|e| config(format!("encrypting key: {e}")))?;
    let pem = doc.to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF).map_err(|e| config(format!("PEM: {e}")))?;
    crate::write_new(path, pem.as_bytes(), crate::SECRET)
}

/// Read a CA key: an encrypted key (written by [`write_encrypted`] or by
/// `openssl pkcs8 -topk8 -v2 aes256`) decrypted with `pass`, or, without a
/// passphrase, a plain PKCS#8 key (`PRIVATE KEY`, the offline station's
/// delegated CA). A key in the other form than expected is refused.
pub fn read_key(path: &Path, pass: Option<&Passphrase>) -> Result<SoftKey, Error> {
    let text = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(|e| Error::io(path, e))?);
    let here = |m: String| config(format!("{}: {m}", path.display()));
    let Some(pass) = pass else {
        let der = zeroize::Zeroizing::new(
            iotpki_core::pem::decode_one("PRIVATE KEY", &text).map_err(|e| here(e.to_string()))?,
        );
        return SoftKey::from_pkcs8(&der).map_err(|e| here(e.to_string()));
    };
    let der = iotpki_core::pem::decode_one("ENCRYPTED PRIVATE KEY", &text).map_err(|e| here(e.to_string()))?;
    let enc = EncryptedPrivateKeyInfo::from_der(&der).map_err(|e| here(format!("not an encrypted PKCS#8 key: {e}")))?;
    let plain = enc.decrypt(pass.bytes()).map_err(|_| here("wrong passphrase (or the key file is damaged)".into()))?;
    SoftKey::from_pkcs8(plain.as_bytes()).map_err(|e| here(e.to_string()))
}

/// [`read_key`] with a passphrase: the authority's CA keys.
pub fn read_encrypted(path: &Path, pass: &Passphrase) -> Result<SoftKey, Error> {
    read_key(path, Some(pass))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotpki_core::keys::{KeyType, Signer};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn encrypt_round_trip_and_wrong_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let pass = Passphrase::new("correct horse".into()).unwrap();
        write_encrypted(&p, &key, &pass).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        let back = read_encrypted(&p, &pass).unwrap();
        assert_eq!(back.public_key_der(), key.public_key_der());
        let err = read_encrypted(&p, &Passphrase::new("wrong horse".into()).unwrap()).unwrap_err();
        assert!(err.to_string().contains("wrong passphrase"), "{err}");
        assert!(write_encrypted(&p, &key, &pass).is_err(), "never overwrites a key");
        assert!(Passphrase::new("short".into()).is_err());
        // Without a passphrase, only a plain key is read: an encrypted one is refused.
        assert!(read_key(&p, None).is_err());
        let plain = dir.path().join("plain.pem");
        let der = key.to_pkcs8().unwrap();
        crate::write_new(&plain, iotpki_core::pem::encode("PRIVATE KEY", &der).as_bytes(), crate::SECRET).unwrap();
        assert_eq!(read_key(&plain, None).unwrap().public_key_der(), key.public_key_der());
        assert!(read_encrypted(&plain, &pass).is_err(), "a plain key where an encrypted one is expected");
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
