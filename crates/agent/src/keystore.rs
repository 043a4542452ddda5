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

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iotpki_core::keys::{KeyType, Signer, SoftKey};
#[cfg(feature = "pkcs11")]
use iotpki_hsm::{HsmKey, Pin, Pkcs11Uri, Token};
use iotpki_tpm::Tpm;
use serde::{Deserialize, Serialize};

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
}

impl std::fmt::Debug for Keystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File { dir } => write!(f, "Keystore::File({})", dir.display()),
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11 { token, .. } => write!(f, "Keystore::Pkcs11({token:?})"),
            Self::Tpm { tpm, .. } => write!(f, "Keystore::Tpm({})", tpm.tcti()),
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
        }
    }

    /// What the identity records about this keystore (`None` for key files).
    pub fn config(&self) -> Option<KeystoreConfig> {
        match self {
            Self::File { .. } => None,
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11 { config, .. } => Some(config.clone()),
            Self::Tpm { tpm, .. } => Some(KeystoreConfig::Tpm { tcti: tpm.tcti().to_string() }),
        }
    }

    /// Refuse a key type this keystore cannot make (a TPM keystore makes P-256 keys).
    pub fn check_key_type(&self, kt: KeyType) -> Result<(), AgentError> {
        match self {
            Self::Tpm { .. } if kt != KeyType::EcdsaP256 => {
                Err(AgentError::Keystore(format!("a TPM keystore makes p256 keys, not {kt}: use --key-type p256")))
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
        }
    }

    /// The key of a renewal of `current` started but not finished (the
    /// request left, the answer never came), if there is one: a retry with it
    /// gets the certificate the server issued then. File keystores only (the
    /// newest key file, if no identity names it); others make a new key.
    pub fn pending_renewal(&self, current: &state::Identity) -> Result<Option<NamedKey>, AgentError> {
        let Self::File { dir } = self else { return Ok(None) };
        let Some(name) = state::newest_numbered(dir, "key-", ".pem") else { return Ok(None) };
        if name == current.key_file || current.birth.as_ref().is_some_and(|b| b.key_file == name) {
            return Ok(None);
        }
        Ok(Some((name.clone(), Arc::new(state::load_key_file(dir, &name)?))))
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
