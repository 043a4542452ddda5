//! Where the device's private keys live: key files in the state directory
//! (the default), a PKCS#11 token (a secure element, an HSM, SoftHSM2), or a
//! TPM 2.0.
//!
//! A key is named by a string the identity records (`Identity::key_file`):
//! the file name (`key-3.pem`) for key files, the key's RFC 7512 URI for a
//! token, the file name of its TPM-wrapped blob (`tpm-key-3.blob`) for a TPM.
//! Either way a new key exists before the request that carries it leaves, so
//! that a lost answer can be fetched again with the same key.
//!
//! A TPM key is made inside the TPM (fixedTPM, fixedParent,
//! sensitiveDataOrigin, see [`iotpki_tpm`]) and kept as a loadable blob in
//! the state directory, written like a key file (complete or absent); the
//! blob is useless without this TPM. Deleting the blob forgets the key.
//!
//! An external keystore ([`ExternalKeys`]) leaves the keys to the program
//! that embeds the agent (the C API's key callbacks: a secure element, a TPM
//! or an HSM the firmware drives itself). The agent names each key
//! (`ext-key-<n>`) and records its public key in `ext-key-<n>.spki`, so that
//! a key replaced behind its back is noticed before it is used.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iotpki_core::keys::{KeyType, Signer, SoftKey};
#[cfg(feature = "pkcs11")]
use iotpki_hsm::{HsmKey, Pin, Pkcs11Uri, Token};
use iotpki_tpm::Tpm;
use serde::{Deserialize, Serialize};
use spki::der::Decode;

use crate::state;
use crate::AgentError;

/// File that names the token key of an enrollment in progress.
#[cfg(feature = "pkcs11")]
const PENDING_PKCS11: &str = "pending-key.uri";

/// What a build without the `pkcs11` feature says of a PKCS#11 keystore.
#[cfg(not(feature = "pkcs11"))]
pub const NO_PKCS11: &str =
    "this build has no PKCS#11 keystore (built without the `pkcs11` feature): use a build with it, or key files";

/// A key and its name (the file name, or the token key's URI).
pub type NamedKey = (String, Arc<dyn Signer>);

/// External keys in the state directory: `ext-key-<n>`, recorded as `ext-key-<n>.spki`.
pub const EXT_KEY_PREFIX: &str = "ext-key-";
/// See [`EXT_KEY_PREFIX`].
pub const EXT_KEY_SUFFIX: &str = ".spki";

/// What the agent says when a state directory made with external keys is
/// opened without them (by `iotpki agent`, `iotpki-device`, or a C program
/// that gave no key callbacks).
pub const NO_EXTERNAL_KEYS: &str = "this device's keys are held outside the agent (an external keystore: the key \
     callbacks of the program that enrolled it, through libiotpki_device); open it through that program's C API \
     with the same key callbacks";

/// Keys held by the program that embeds the agent (a secure element, a TPM
/// or an HSM behind the C API's callbacks): the agent asks for a key by
/// name, reads its public key, and has digests signed; the private key
/// never reaches the agent. Errors are the holder's words, shown as
/// `keystore: ...`.
pub trait ExternalKeys: Send + Sync {
    /// Make a new key of type `kt` (P-256 or P-384) under `name`, replacing
    /// any key of that name.
    fn generate(&self, kt: KeyType, name: &str) -> Result<(), String>;
    /// The public key of `name`, as a DER subjectPublicKeyInfo.
    fn public_key(&self, name: &str) -> Result<Vec<u8>, String>;
    /// Sign `digest` (SHA-256 for P-256, SHA-384 for P-384) with `name`: an
    /// ECDSA signature, DER (ECDSA-Sig-Value).
    fn sign(&self, name: &str, kt: KeyType, digest: &[u8]) -> Result<Vec<u8>, String>;
    /// `name` is no longer used by any identity: the holder may delete it.
    fn forget(&self, name: &str);
}

/// A key an [`ExternalKeys`] holds.
struct ExternalKey {
    keys: Arc<dyn ExternalKeys>,
    name: String,
    kt: KeyType,
    spki: Vec<u8>,
}

impl Signer for ExternalKey {
    fn key_type(&self) -> KeyType {
        self.kt
    }

    fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, iotpki_core::Error> {
        use crate::backend::digest;
        let digest = match self.kt {
            KeyType::EcdsaP256 => digest::digest(&digest::SHA256, message).as_ref().to_vec(),
            KeyType::EcdsaP384 => digest::digest(&digest::SHA384, message).as_ref().to_vec(),
            other => return Err(iotpki_core::Error::UnsupportedAlgorithm(format!("an external {other} key"))),
        };
        let external = |m: String| iotpki_core::Error::Signing(format!("external key {}: {m}", self.name));
        let sig = self.keys.sign(&self.name, self.kt, &digest).map_err(external)?;
        // A wrong signature (another key, a raw r||s) is caught here, with the
        // reason, rather than as a refusal from the server.
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(&self.spki).map_err(|e| external(e.to_string()))?;
        iotpki_core::keys::verify(&spki, &self.kt.signature_algorithm()?, message, &sig).map_err(|_| {
            external(
                "the sign callback returned a signature that does not verify with its public key (it must \
                 sign the digest with that key and return a DER ECDSA-Sig-Value)"
                    .into(),
            )
        })?;
        Ok(sig)
    }
}

fn external_err(e: String) -> AgentError {
    AgentError::Keystore(e)
}

/// A keystore other than key files, as `identity.json` records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeystoreConfig {
    /// A PKCS#11 token.
    Pkcs11 {
        /// The token vendor's PKCS#11 module.
        module: PathBuf,
        /// The token: `pkcs11:token=LABEL`.
        token: String,
        /// The file the PIN is read from when renewing (else `$IOTPKI_PIN`). Never the PIN itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin_file: Option<PathBuf>,
    },
    /// A TPM 2.0.
    Tpm {
        /// The TCTI string that reaches it (`device:/dev/tpmrm0`, `swtpm:host=H,port=P`, ...).
        tcti: String,
    },
    /// Keys held by the embedding program ([`ExternalKeys`]): reopened only
    /// with them ([`Keystore::external`]).
    External {},
}

/// An opened keystore.
pub enum Keystore {
    /// PKCS#8 key files (`key-N.pem`, 0600) in the state directory.
    File {
        /// The state directory.
        dir: PathBuf,
    },
    /// Keys generated in a PKCS#11 token; they never leave it.
    #[cfg(feature = "pkcs11")]
    Pkcs11 {
        /// The state directory (for the pending-key note).
        dir: PathBuf,
        /// The token.
        token: Token,
        /// Its user PIN.
        pin: Pin,
        /// What the identity records.
        config: KeystoreConfig,
    },
    /// Keys made in a TPM, kept as TPM-wrapped blobs (`tpm-key-N.blob`) in the state directory.
    Tpm {
        /// The state directory.
        dir: PathBuf,
        /// The TPM.
        tpm: Arc<Tpm>,
    },
    /// Keys held by the embedding program; their public keys recorded in the state directory.
    External {
        /// The state directory.
        dir: PathBuf,
        /// The holder.
        keys: Arc<dyn ExternalKeys>,
    },
}

impl std::fmt::Debug for Keystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File { dir } => write!(f, "Keystore::File({})", dir.display()),
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11 { token, .. } => write!(f, "Keystore::Pkcs11({token:?})"),
            Self::Tpm { tpm, .. } => write!(f, "Keystore::Tpm({})", tpm.tcti()),
            Self::External { dir, .. } => write!(f, "Keystore::External({})", dir.display()),
        }
    }
}

#[cfg(feature = "pkcs11")]
fn hsm(e: iotpki_hsm::HsmError) -> AgentError {
    AgentError::Keystore(e.to_string())
}

impl Keystore {
    /// Open the keystore `config` names (`None`: key files in `dir`). The PIN
    /// comes from `pin_file`, else the file the config records, else `$IOTPKI_PIN`.
    pub fn open(dir: &Path, config: Option<&KeystoreConfig>, pin_file: Option<&Path>) -> Result<Self, AgentError> {
        match config {
            None => Ok(Self::File { dir: dir.to_path_buf() }),
            #[cfg(not(feature = "pkcs11"))]
            Some(KeystoreConfig::Pkcs11 { .. }) => {
                let _ = pin_file;
                Err(AgentError::Keystore(NO_PKCS11.into()))
            }
            #[cfg(feature = "pkcs11")]
            Some(c @ KeystoreConfig::Pkcs11 { module, token, pin_file: recorded }) => {
                let uri = Pkcs11Uri::parse(token).map_err(hsm)?;
                let token = Token::open(module, &uri).map_err(hsm)?;
                let pin = Pin::from_file_or_env(pin_file.or(recorded.as_deref())).map_err(hsm)?;
                token.check_pin(&pin).map_err(hsm)?;
                Ok(Self::Pkcs11 { dir: dir.to_path_buf(), token, pin, config: c.clone() })
            }
            Some(KeystoreConfig::Tpm { tcti }) => {
                let tpm = Tpm::open(tcti).map_err(|e| match e {
                    iotpki_tpm::TpmError::Unreachable { .. } => AgentError::KeystoreUnreachable(e.to_string()),
                    e => AgentError::Keystore(e.to_string()),
                })?;
                Ok(Self::Tpm { dir: dir.to_path_buf(), tpm })
            }
            Some(KeystoreConfig::External {}) => Err(AgentError::Keystore(NO_EXTERNAL_KEYS.into())),
        }
    }

    /// Keys `keys` holds, for the state directory `dir`.
    pub fn external(dir: &Path, keys: Arc<dyn ExternalKeys>) -> Self {
        Self::External { dir: dir.to_path_buf(), keys }
    }

    /// Refuse an identity this keystore did not make: one whose recorded keystore is another.
    pub fn check_holds(&self, id: &state::Identity) -> Result<(), AgentError> {
        match (&id.keystore, self.config()) {
            (Some(KeystoreConfig::External {}), Some(KeystoreConfig::External {})) | (None, None) => Ok(()),
            (Some(KeystoreConfig::External {}), _) => Err(AgentError::Keystore(NO_EXTERNAL_KEYS.into())),
            (recorded, _) if matches!(self, Self::External { .. }) => Err(AgentError::Keystore(format!(
                "this device's keys are in {}, not held by the program's key callbacks: give no key callbacks, \
                 or use another state directory",
                match recorded {
                    None => "key files".to_string(),
                    Some(KeystoreConfig::Pkcs11 { token, .. }) => format!("the PKCS#11 token {token}"),
                    Some(KeystoreConfig::Tpm { tcti }) => format!("the TPM at {tcti}"),
                    Some(KeystoreConfig::External {}) => "external keys".to_string(),
                }
            ))),
            _ => Ok(()),
        }
    }

    /// What the identity records about this keystore (`None` for key files).
    pub fn config(&self) -> Option<KeystoreConfig> {
        match self {
            Self::File { .. } => None,
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11 { config, .. } => Some(config.clone()),
            Self::Tpm { tpm, .. } => Some(KeystoreConfig::Tpm { tcti: tpm.tcti().to_string() }),
            Self::External { .. } => Some(KeystoreConfig::External {}),
        }
    }

    /// Refuse a key type this keystore cannot make (a TPM keystore makes P-256 keys).
    pub fn check_key_type(&self, kt: KeyType) -> Result<(), AgentError> {
        match self {
            Self::Tpm { .. } if kt != KeyType::EcdsaP256 => {
                Err(AgentError::Keystore(format!("a TPM keystore makes p256 keys, not {kt}: use --key-type p256")))
            }
            Self::External { .. } if !matches!(kt, KeyType::EcdsaP256 | KeyType::EcdsaP384) => {
                Err(AgentError::Keystore(format!("external keys sign digests: p256 or p384 keys, not {kt}")))
            }
            _ => Ok(()),
        }
    }

    /// Make a new key and name it. `serial` goes into a token key's label.
    pub fn new_key(&self, kt: KeyType, serial: &str) -> Result<NamedKey, AgentError> {
        #[cfg(not(feature = "pkcs11"))]
        let _ = serial;
        match self {
            Self::File { dir } => {
                let key = SoftKey::generate(kt)?;
                let name = state::write_new_key(dir, &key)?;
                Ok((name, Arc::new(key)))
            }
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11 { dir, token, pin, .. } => {
                let mut tag = [0u8; 4];
                aws_lc_rs::rand::fill(&mut tag).map_err(|_| AgentError::Keystore("the system RNG failed".into()))?;
                let label =
                    format!("iotpki-device-{serial}-{}", tag.iter().map(|b| format!("{b:02x}")).collect::<String>());
                let key = HsmKey::generate(token, pin, kt, &label).map_err(hsm)?;
                let name = key.uri().to_string();
                if !state::identity_path(dir).exists() {
                    write_note(dir, &name)?;
                }
                Ok((name, Arc::new(key)))
            }
            Self::Tpm { dir, tpm } => {
                self.check_key_type(kt)?;
                let key = tpm.create_key().map_err(|e| AgentError::Keystore(e.to_string()))?;
                let name = state::write_new_numbered(dir, state::TPM_KEY_PREFIX, state::TPM_KEY_SUFFIX, key.blob())?;
                Ok((name, Arc::new(key)))
            }
            Self::External { dir, keys } => {
                self.check_key_type(kt)?;
                fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
                let n = state::newest_numbered(dir, EXT_KEY_PREFIX, EXT_KEY_SUFFIX)
                    .and_then(|n| n.strip_prefix(EXT_KEY_PREFIX)?.strip_suffix(EXT_KEY_SUFFIX)?.parse::<u32>().ok())
                    .map_or(0, |n| n.saturating_add(1));
                let name = format!("{EXT_KEY_PREFIX}{n}");
                keys.generate(kt, &name).map_err(|e| external_err(format!("generating key {name} failed: {e}")))?;
                let spki = keys.public_key(&name).map_err(|e| external_err(format!("public key of {name}: {e}")))?;
                let made = spki::SubjectPublicKeyInfoOwned::from_der(&spki)
                    .map_err(|e| external_err(format!("public key of {name} is not a DER subjectPublicKeyInfo: {e}")))
                    .and_then(|s| KeyType::of_spki(&s).map_err(AgentError::from))?;
                if made != kt {
                    return Err(external_err(format!("the generate callback made a {made} key for {name}, not {kt}")));
                }
                // Recorded before any request carries it (complete or absent).
                iotpki_fs::write_atomic(&dir.join(format!("{name}{EXT_KEY_SUFFIX}")), &spki, iotpki_fs::SECRET)?;
                Ok((name.clone(), Arc::new(ExternalKey { keys: keys.clone(), name, kt, spki })))
            }
        }
    }

    /// The key named `name`.
    pub fn load(&self, name: &str) -> Result<Arc<dyn Signer>, AgentError> {
        match self {
            Self::File { dir } => Ok(Arc::new(state::load_key_file(dir, name)?)),
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11 { token, pin, .. } => {
                let uri = Pkcs11Uri::parse(name).map_err(hsm)?;
                Ok(Arc::new(HsmKey::open(token, pin, &uri).map_err(hsm)?))
            }
            Self::Tpm { dir, tpm } => Ok(Arc::new(load_tpm_key(dir, tpm, name)?)),
            Self::External { dir, keys } => Ok(Arc::new(load_external(dir, keys, name)?)),
        }
    }

    /// The key of a renewal of `current` started but not finished (the
    /// request left, the answer never came), if there is one: a retry with it
    /// gets the certificate the server issued then. File keystores only (the
    /// newest key file, if no identity names it); others make a new key.
    pub fn pending_renewal(&self, current: &state::Identity) -> Result<Option<NamedKey>, AgentError> {
        let unnamed =
            |name: &String| *name != current.key_file && current.birth.as_ref().is_none_or(|b| b.key_file != *name);
        match self {
            Self::File { dir } => {
                let Some(name) = state::newest_numbered(dir, "key-", ".pem").filter(unnamed) else { return Ok(None) };
                Ok(Some((name.clone(), Arc::new(state::load_key_file(dir, &name)?))))
            }
            Self::External { dir, keys } => {
                let Some(name) = newest_external(dir).filter(unnamed) else { return Ok(None) };
                // The holder lost it or replaced it: a new key then.
                Ok(load_external(dir, keys, &name).ok().map(|k| (name, Arc::new(k) as Arc<dyn Signer>)))
            }
            _ => Ok(None),
        }
    }

    /// The key of an enrollment started but not finished, if there is one.
    pub fn pending(&self) -> Result<Option<NamedKey>, AgentError> {
        match self {
            Self::File { dir } => Ok(state::pending_key(dir)?.map(|(n, k)| (n, Arc::new(k) as Arc<dyn Signer>))),
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11 { dir, .. } => {
                if state::identity_path(dir).exists() {
                    return Ok(None);
                }
                let p = dir.join(PENDING_PKCS11);
                let Ok(name) = fs::read_to_string(&p) else { return Ok(None) };
                let name = name.trim().to_string();
                match self.load(&name) {
                    Ok(k) => Ok(Some((name, k))),
                    // The token lost it: start again with a new key.
                    Err(_) => Ok(None),
                }
            }
            Self::Tpm { dir, .. } => {
                if state::identity_path(dir).exists() {
                    return Ok(None);
                }
                let Some(name) = state::newest_numbered(dir, state::TPM_KEY_PREFIX, state::TPM_KEY_SUFFIX) else {
                    return Ok(None);
                };
                match self.load(&name) {
                    Ok(k) => Ok(Some((name, k))),
                    // Not loadable (another TPM, a cleared owner hierarchy): start again with a new key.
                    Err(_) => Ok(None),
                }
            }
            Self::External { dir, keys } => {
                if state::identity_path(dir).exists() {
                    return Ok(None);
                }
                let Some(name) = newest_external(dir) else { return Ok(None) };
                // The holder lost or replaced it: start again with a new key.
                Ok(load_external(dir, keys, &name).ok().map(|k| (name, Arc::new(k) as Arc<dyn Signer>)))
            }
        }
    }

    /// After a new identity naming `keep` was stored: forget what no identity
    /// names (`old`, the key it replaced, if any). Best effort.
    pub fn retire(&self, keep: &str, old: Option<&str>) {
        #[cfg(not(feature = "pkcs11"))]
        let _ = (keep, old);
        match self {
            // state::store removed the key files and blobs no identity names (keeping the birth key).
            Self::File { .. } | Self::Tpm { .. } => {}
            // state::store removed the records; the holder may free the key.
            Self::External { keys, .. } => {
                if let Some(old) = old.filter(|o| *o != keep) {
                    keys.forget(old);
                }
            }
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11 { dir, .. } => {
                let _ = fs::remove_file(dir.join(PENDING_PKCS11));
                if let Some(old) = old.filter(|o| *o != keep) {
                    self.discard(old);
                }
            }
        }
    }

    /// For TPM attestation: the public area (TPMT_PUBLIC) of the TPM key
    /// `name`. Refused, saying so, for keys that are not in a TPM.
    pub fn tpm_public_area(&self, name: &str) -> Result<Vec<u8>, AgentError> {
        let Self::Tpm { dir, tpm } = self else { return Err(not_tpm()) };
        load_tpm_key(dir, tpm, name)?.public_area().map_err(|e| AgentError::Keystore(e.to_string()))
    }

    /// For TPM attestation: TPM2_ActivateCredential with the TPM key `name`
    /// and the TPM's endorsement key; the recovered secret.
    pub fn tpm_activate(
        &self,
        name: &str,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, AgentError> {
        let Self::Tpm { dir, tpm } = self else { return Err(not_tpm()) };
        load_tpm_key(dir, tpm, name)?
            .activate_credential(credential_blob, encrypted_secret)
            .map_err(|e| AgentError::Keystore(e.to_string()))
    }

    /// Delete a key no identity names (a renewal that failed). Best effort.
    pub fn discard(&self, name: &str) {
        match self {
            Self::File { dir } => {
                if !name.contains('/') && name.starts_with("key-") {
                    let _ = fs::remove_file(dir.join(name));
                }
            }
            Self::External { dir, keys } => {
                if !name.contains('/') && name.starts_with(EXT_KEY_PREFIX) {
                    let _ = fs::remove_file(dir.join(format!("{name}{EXT_KEY_SUFFIX}")));
                    keys.forget(name);
                }
            }
            // Without its blob, the TPM key cannot be loaded again.
            Self::Tpm { dir, .. } => {
                if !name.contains('/') && name.starts_with(state::TPM_KEY_PREFIX) {
                    let _ = fs::remove_file(dir.join(name));
                }
            }
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11 { token, pin, .. } => {
                let gone = Pkcs11Uri::parse(name).and_then(|u| HsmKey::open(token, pin, &u)).and_then(|k| k.destroy());
                if let Err(e) = gone {
                    eprintln!("warning: could not delete the unused token key {name}: {e}");
                }
            }
        }
    }
}

/// The newest external key recorded in `dir`.
fn newest_external(dir: &Path) -> Option<String> {
    state::newest_numbered(dir, EXT_KEY_PREFIX, EXT_KEY_SUFFIX)
        .and_then(|f| f.strip_suffix(EXT_KEY_SUFFIX).map(str::to_string))
}

/// The external key `name`, if the holder still has the key recorded for it.
fn load_external(dir: &Path, keys: &Arc<dyn ExternalKeys>, name: &str) -> Result<ExternalKey, AgentError> {
    if name.contains('/') || !name.starts_with(EXT_KEY_PREFIX) {
        return Err(AgentError::State(format!("external key {name:?} must be named {EXT_KEY_PREFIX}N")));
    }
    let p = dir.join(format!("{name}{EXT_KEY_SUFFIX}"));
    let recorded = fs::read(&p).map_err(|e| AgentError::io(&p, e))?;
    let spki = keys.public_key(name).map_err(|e| external_err(format!("public key of {name}: {e}")))?;
    if spki != recorded {
        return Err(external_err(format!(
            "the key callbacks hold another key under {name} than the one this device enrolled with ({}): the key \
             was replaced; enroll again with a new token, or commission again",
            p.display()
        )));
    }
    let parsed = spki::SubjectPublicKeyInfoOwned::from_der(&spki).map_err(|e| AgentError::State(e.to_string()))?;
    let kt = KeyType::of_spki(&parsed)?;
    Ok(ExternalKey { keys: keys.clone(), name: name.to_string(), kt, spki })
}

fn not_tpm() -> AgentError {
    AgentError::Keystore(
        "this device's keys are not in a TPM (a key file or a PKCS#11 token): it cannot attest them".into(),
    )
}

#[cfg(feature = "pkcs11")]
fn write_note(dir: &Path, name: &str) -> Result<(), AgentError> {
    fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    Ok(iotpki_fs::write_atomic(&dir.join(PENDING_PKCS11), name.as_bytes(), iotpki_fs::SECRET)?)
}

/// Load the TPM key whose blob is `dir/name`, saying what to do when it cannot be.
fn load_tpm_key(dir: &Path, tpm: &Arc<Tpm>, name: &str) -> Result<iotpki_tpm::TpmKey, AgentError> {
    if name.contains('/') || name.starts_with('.') {
        return Err(AgentError::State(format!("TPM key blob {name:?} must be a plain file name")));
    }
    let p = dir.join(name);
    let blob = match fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AgentError::Keystore(format!(
                "the TPM key blob {} is missing: the TPM cannot use that key without it. Restore the file from a \
                 backup of this device; else the key is lost: commission again with the birth certificate \
                 (agent commission) or enroll again with a new token",
                p.display()
            )))
        }
        Err(e) => return Err(AgentError::io(&p, e)),
    };
    tpm.load_key(&blob).map_err(|e| {
        AgentError::Keystore(format!(
            "{}: {e}. Check that the TCTI ({}) reaches the TPM this device's keys were made in; if that TPM was \
             cleared or replaced, the key is lost: commission again with the birth certificate or enroll again \
             with a new token",
            p.display(),
            tpm.tcti()
        ))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A "secure element" in memory: software keys by name, signing digests.
    #[derive(Default)]
    struct Element {
        keys: Mutex<HashMap<String, SoftKey>>,
        forgotten: Mutex<Vec<String>>,
    }

    impl ExternalKeys for Element {
        fn generate(&self, kt: KeyType, name: &str) -> Result<(), String> {
            self.keys.lock().unwrap().insert(name.into(), SoftKey::generate(kt).map_err(|e| e.to_string())?);
            Ok(())
        }
        fn public_key(&self, name: &str) -> Result<Vec<u8>, String> {
            self.keys.lock().unwrap().get(name).map(|k| k.public_key_der().to_vec()).ok_or("no such key".into())
        }
        fn sign(&self, name: &str, kt: KeyType, digest: &[u8]) -> Result<Vec<u8>, String> {
            assert_eq!(digest.len(), if kt == KeyType::EcdsaP256 { 32 } else { 48 });
            // A wrong element: it signs the digest as a message (hashing it again), so its
            // signatures do not verify. The C example signs digests rightly (OpenSSL).
            let keys = self.keys.lock().unwrap();
            let k = keys.get(name).ok_or("no such key")?;
            k.sign(digest).map_err(|e| e.to_string())
        }
        fn forget(&self, name: &str) {
            self.forgotten.lock().unwrap().push(name.into());
        }
    }

    #[test]
    fn external_keys_are_named_recorded_checked_and_refused_without_their_holder() {
        let d = tempfile::tempdir().unwrap();
        let element = Arc::new(Element::default());
        let ks = Keystore::external(d.path(), element.clone());
        assert_eq!(ks.config(), Some(KeystoreConfig::External {}));
        assert!(ks.check_key_type(KeyType::Ed25519).unwrap_err().to_string().contains("p256 or p384"));
        let (n0, k0) = ks.new_key(KeyType::EcdsaP256, "SN1").unwrap();
        let (n1, _) = ks.new_key(KeyType::EcdsaP384, "SN1").unwrap();
        assert_eq!((n0.as_str(), n1.as_str()), ("ext-key-0", "ext-key-1"));
        assert_eq!(fs::read(d.path().join("ext-key-0.spki")).unwrap(), k0.public_key_der());
        // The element signs the digest as if it were a message: not a signature of the
        // message, and the agent says so rather than sending it.
        let err = k0.sign(b"to be signed").unwrap_err().to_string();
        assert!(err.contains("does not verify with its public key"), "{err}");
        // Loaded again: the same public key.
        assert_eq!(ks.load("ext-key-0").unwrap().public_key_der(), k0.public_key_der());
        // The slot overwritten behind the agent's back: refused before use.
        element.generate(KeyType::EcdsaP256, "ext-key-0").unwrap();
        let err = ks.load("ext-key-0").err().unwrap().to_string();
        assert!(err.contains("another key under ext-key-0"), "{err}");
        ks.discard("ext-key-1");
        assert!(!d.path().join("ext-key-1.spki").exists());
        assert_eq!(*element.forgotten.lock().unwrap(), ["ext-key-1"]);

        // The identity records `external`; reopened without the holder, refused with the reason.
        let json = serde_json::to_string(&KeystoreConfig::External {}).unwrap();
        assert_eq!(json, r#"{"kind":"external"}"#);
        let cfg: KeystoreConfig = serde_json::from_str(&json).unwrap();
        let err = Keystore::open(d.path(), Some(&cfg), None).unwrap_err().to_string();
        assert_eq!(err, format!("keystore: {NO_EXTERNAL_KEYS}"));
    }
}
