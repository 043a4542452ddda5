//! The device's identity on disk, replaced atomically.

use std::fs;
use std::path::{Path, PathBuf};

use iotpki_core::keys::SoftKey;
use serde::{Deserialize, Serialize};

use crate::AgentError;

/// File name of the identity inside the state directory.
pub const IDENTITY_FILE: &str = "identity.json";

/// TPM key blobs in the state directory: `tpm-key-<n>.blob`.
pub const TPM_KEY_PREFIX: &str = "tpm-key-";
/// See [`TPM_KEY_PREFIX`].
pub const TPM_KEY_SUFFIX: &str = ".blob";

/// Everything the device knows about its identity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// The device serial number.
    pub device_serial: String,
    /// The EST server's base URL.
    pub server: String,
    /// The EST label, if not the server's default.
    pub label: Option<String>,
    /// The key in use: a file name in the state directory, or (with a PKCS#11
    /// `keystore`) the key's RFC 7512 URI.
    pub key_file: String,
    /// The device certificate, PEM.
    pub cert_pem: String,
    /// The issuing CA certificates between the device certificate and the anchor, PEM.
    pub chain_pem: String,
    /// The trust anchor (root CA), PEM.
    pub anchor_pem: String,
    /// When the current certificate was received, Unix seconds.
    pub updated_at: i64,
    /// How many times the certificate was renewed.
    pub renewals: u32,
    /// Where the keys live when not in key files (absent: key files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystore: Option<crate::keystore::KeystoreConfig>,
    /// The birth credential, kept for commissioning and re-commissioning
    /// after the operational certificate is lost (expired, revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth: Option<BirthCredential>,
    /// The owner this identity was commissioned with, by an ownership voucher:
    /// the SHA-256 fingerprint of the key the installed voucher named then.
    /// Once a voucher names another owner, this identity is the previous
    /// owner's and is not renewed (the device commissions with the new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The birth key and certificate the device got on the factory line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BirthCredential {
    /// The birth key's file in the state directory.
    pub key_file: String,
    /// The birth certificate (PEM).
    pub cert_pem: String,
    /// The CAs between it and the manufacturer's anchor (PEM).
    pub chain_pem: String,
    /// The manufacturer's trust anchor (PEM).
    pub anchor_pem: String,
}

/// Read the identity in `dir`.
pub fn load(dir: &Path) -> Result<Identity, AgentError> {
    let p = dir.join(IDENTITY_FILE);
    let text = fs::read_to_string(&p).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            AgentError::State(format!("no identity in {} (run `iotpki agent enroll` first)", dir.display()))
        } else {
            AgentError::io(&p, e)
        }
    })?;
    serde_json::from_str(&text).map_err(|e| AgentError::State(format!("{} is damaged: {e}", p.display())))
}

/// Load the key file the identity names (a key-file identity).
pub fn load_key(dir: &Path, id: &Identity) -> Result<SoftKey, AgentError> {
    if id.keystore.is_some() {
        return Err(AgentError::State(format!("the key of {} is not in a key file (see its keystore)", dir.display())));
    }
    load_key_file(dir, &id.key_file)
}

/// Load the key file `name` in `dir`.
pub fn load_key_file(dir: &Path, name: &str) -> Result<SoftKey, AgentError> {
    if name.contains('/') || name.starts_with('.') {
        return Err(AgentError::State(format!("key file {name:?} must be a plain file name")));
    }
    let p = dir.join(name);
    // The key file's text and DER are the private key: wiped when dropped.
    let text = zeroize::Zeroizing::new(fs::read_to_string(&p).map_err(|e| AgentError::io(&p, e))?);
    let der = zeroize::Zeroizing::new(
        iotpki_core::pem::decode_one("PRIVATE KEY", &text)
            .map_err(|e| AgentError::State(format!("{}: {e}", p.display())))?,
    );
    Ok(SoftKey::from_pkcs8(&der)?)
}

/// Write a new key file (0600, fsync'd) and return its name. It is not in use
/// until an identity that names it is stored.
pub fn write_new_key(dir: &Path, key: &SoftKey) -> Result<String, AgentError> {
    let der = zeroize::Zeroizing::new(key.to_pkcs8()?);
    let pem = zeroize::Zeroizing::new(iotpki_core::pem::encode("PRIVATE KEY", &der));
    write_new_numbered(dir, "key-", ".pem", pem.as_bytes())
}

/// Write `bytes` to a new file `{prefix}{n}{suffix}` (`n` above every
/// number in use, so that [`newest_numbered`] finds the newest file even when
/// an older one was removed; 0600, fsync'd, the directory too) and return its name.
pub fn write_new_numbered(dir: &Path, prefix: &str, suffix: &str, bytes: &[u8]) -> Result<String, AgentError> {
    fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    // Written whole to a temporary file, then linked to a free name: a key
    // file is complete or absent, whenever the power goes.
    let tmp = dir.join(format!("{prefix}new{suffix}.tmp"));
    let _ = fs::remove_file(&tmp);
    iotpki_fs::write_new(&tmp, bytes, iotpki_fs::SECRET)?;
    let first = newest_numbered(dir, prefix, suffix)
        .and_then(|n| n.strip_prefix(prefix)?.strip_suffix(suffix)?.parse::<u32>().ok())
        .map_or(0, |n| n.saturating_add(1));
    for n in first.. {
        let name = format!("{prefix}{n}{suffix}");
        let p = dir.join(&name);
        match fs::hard_link(&tmp, &p) {
            Ok(()) => {
                let _ = fs::remove_file(&tmp);
                sync_dir(dir)?;
                crash_point("key.written");
                return Ok(name);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(AgentError::io(&p, e)),
        }
    }
    Err(AgentError::State("no free key file name".into()))
}

/// The name of the newest `{prefix}{n}{suffix}` file in `dir`, if any.
pub fn newest_numbered(dir: &Path, prefix: &str, suffix: &str) -> Option<String> {
    let entries = fs::read_dir(dir).ok()?;
    let mut newest: Option<(u32, String)> = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let n = name.strip_prefix(prefix).and_then(|r| r.strip_suffix(suffix)).and_then(|n| n.parse::<u32>().ok());
        if let Some(n) = n {
            if newest.as_ref().is_none_or(|(m, _)| n > *m) {
                newest = Some((n, name));
            }
        }
    }
    newest.map(|(_, name)| name)
}

/// The key of an enrollment that was started but not finished (no identity
/// yet, a key file written): its name and key, if there is one. A retry with
/// the same token and this key gets the certificate the first attempt was
/// issued, if the answer was lost.
pub fn pending_key(dir: &Path) -> Result<Option<(String, SoftKey)>, AgentError> {
    if identity_path(dir).exists() {
        return Ok(None);
    }
    let Some(name) = newest_numbered(dir, "key-", ".pem") else { return Ok(None) };
    let p = dir.join(&name);
    let text = zeroize::Zeroizing::new(fs::read_to_string(&p).map_err(|e| AgentError::io(&p, e))?);
    let der = zeroize::Zeroizing::new(
        iotpki_core::pem::decode_one("PRIVATE KEY", &text)
            .map_err(|e| AgentError::State(format!("{}: {e}", p.display())))?,
    );
    Ok(Some((name, SoftKey::from_pkcs8(&der)?)))
}

/// Crash tests: abort the process at the named point when `IOTPKI_CRASH_AT`
/// names it, as a power cut there would. Points: `key.written`,
/// `state.tmp-written`, `state.renamed`. Unset (always, in normal
/// operation), this is a no-op.
pub fn crash_point(name: &str) {
    if std::env::var_os("IOTPKI_CRASH_AT").is_some_and(|v| v == name) {
        eprintln!("crash point {name}: aborting");
        std::process::abort();
    }
}

/// Replace the identity atomically: write a temporary file, fsync it, rename
/// it over `identity.json`, fsync the directory. A power cut leaves the old
/// identity or the new one. Then remove key files no identity names.
pub fn store(dir: &Path, id: &Identity) -> Result<(), AgentError> {
    let json = serde_json::to_vec_pretty(id).map_err(|e| AgentError::State(e.to_string()))?;
    write_atomic(dir, IDENTITY_FILE, &json)?;
    let mut keep = vec![id.key_file.as_str()];
    if let Some(b) = &id.birth {
        keep.push(b.key_file.as_str());
    }
    remove_unused_keys(dir, &keep);
    Ok(())
}

/// Replace `dir/name` atomically ([`iotpki_fs::write_atomic`], mode 0600):
/// a power cut leaves the old or the new. The crash points `state.tmp-written`
/// and `state.renamed` stop between its steps.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), AgentError> {
    iotpki_fs::write_atomic_observed(&dir.join(name), bytes, iotpki_fs::SECRET, |step| match step {
        iotpki_fs::Step::TmpWritten => crash_point("state.tmp-written"),
        iotpki_fs::Step::Renamed => crash_point("state.renamed"),
        _ => {}
    })
    .map_err(AgentError::from)
}

pub fn remove_unused_keys(dir: &Path, keep: &[&str]) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let ours = (name.starts_with("key-") && name.ends_with(".pem"))
            || (name.starts_with(TPM_KEY_PREFIX) && name.ends_with(TPM_KEY_SUFFIX));
        // An external key's record is named after the key (`ext-key-3` in `ext-key-3.spki`).
        let external = name
            .strip_suffix(crate::keystore::EXT_KEY_SUFFIX)
            .filter(|stem| stem.starts_with(crate::keystore::EXT_KEY_PREFIX));
        if let Some(stem) = external {
            if !keep.contains(&stem) {
                let _ = fs::remove_file(e.path());
            }
        } else if ours && !keep.contains(&name.as_str()) {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), AgentError> {
    Ok(iotpki_fs::sync_dir(dir)?)
}

/// The path of the identity file.
pub fn identity_path(dir: &Path) -> PathBuf {
    dir.join(IDENTITY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotpki_core::keys::{KeyType, Signer};
    use std::os::unix::fs::PermissionsExt;

    fn ident(key_file: &str) -> Identity {
        Identity {
            device_serial: "SN1".into(),
            server: "https://127.0.0.1:1".into(),
            label: None,
            key_file: key_file.into(),
            cert_pem: "c".into(),
            chain_pem: "ch".into(),
            anchor_pem: "a".into(),
            updated_at: 1,
            renewals: 0,
            birth: None,
            keystore: None,
            owner: None,
        }
    }

    #[test]
    fn store_replaces_and_cleans_old_keys() {
        let d = tempfile::tempdir().unwrap();
        let k1 = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let n1 = write_new_key(d.path(), &k1).unwrap();
        assert_eq!(fs::metadata(d.path().join(&n1)).unwrap().permissions().mode() & 0o777, 0o600);
        store(d.path(), &ident(&n1)).unwrap();
        let k2 = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let n2 = write_new_key(d.path(), &k2).unwrap();
        assert_ne!(n1, n2);
        // Before the new identity is stored, the old one still rules (a crash here loses nothing).
        assert_eq!(load(d.path()).unwrap().key_file, n1);
        store(d.path(), &ident(&n2)).unwrap();
        let id = load(d.path()).unwrap();
        assert_eq!(load_key(d.path(), &id).unwrap().public_key_der(), k2.public_key_der());
        assert!(!d.path().join(&n1).exists(), "old key removed");
        assert!(!d.path().join("identity.json.tmp").exists());
    }

    #[test]
    fn missing_and_damaged_state_say_so() {
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path()).unwrap_err().to_string().contains("agent enroll"));
        fs::write(d.path().join(IDENTITY_FILE), "{").unwrap();
        assert!(load(d.path()).unwrap_err().to_string().contains("damaged"));
    }
}
