//! Where the device's private keys live: key files in the state directory
//! (the default), or a PKCS#11 token (a secure element, an HSM, SoftHSM2).
//! A TPM keystore is meant to be a third [`KeystoreConfig`] variant.
//!
//! A key is named by a string the identity records (`Identity::key_file`):
//! the file name (`key-3.pem`) for key files, the key's RFC 7512 URI for a
//! token. Either way a new key exists before the request that carries it
//! leaves, so that a lost answer can be fetched again with the same key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_hsm::{HsmKey, Pin, Pkcs11Uri, Token};
use serde::{Deserialize, Serialize};

use crate::state;
use crate::AgentError;

/// File that names the token key of an enrollment in progress.
const PENDING_PKCS11: &str = "pending-key.uri";

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
}

/// An opened keystore.
pub enum Keystore {
    /// PKCS#8 key files (`key-N.pem`, 0600) in the state directory.
    File {
        /// The state directory.
        dir: PathBuf,
    },
    /// Keys generated in a PKCS#11 token; they never leave it.
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
}

impl std::fmt::Debug for Keystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File { dir } => write!(f, "Keystore::File({})", dir.display()),
            Self::Pkcs11 { token, .. } => write!(f, "Keystore::Pkcs11({token:?})"),
        }
    }
}

fn hsm(e: iotpki_hsm::HsmError) -> AgentError {
    AgentError::Keystore(e.to_string())
}

impl Keystore {
    /// Open the keystore `config` names (`None`: key files in `dir`). The PIN
    /// comes from `pin_file`, else the file the config records, else `$IOTPKI_PIN`.
    pub fn open(dir: &Path, config: Option<&KeystoreConfig>, pin_file: Option<&Path>) -> Result<Self, AgentError> {
        match config {
            None => Ok(Self::File { dir: dir.to_path_buf() }),
            Some(c @ KeystoreConfig::Pkcs11 { module, token, pin_file: recorded }) => {
                let uri = Pkcs11Uri::parse(token).map_err(hsm)?;
                let token = Token::open(module, &uri).map_err(hsm)?;
                let pin = Pin::from_file_or_env(pin_file.or(recorded.as_deref())).map_err(hsm)?;
                token.check_pin(&pin).map_err(hsm)?;
                Ok(Self::Pkcs11 { dir: dir.to_path_buf(), token, pin, config: c.clone() })
            }
        }
    }

    /// What the identity records about this keystore (`None` for key files).
    pub fn config(&self) -> Option<KeystoreConfig> {
        match self {
            Self::File { .. } => None,
            Self::Pkcs11 { config, .. } => Some(config.clone()),
        }
    }

    /// Make a new key and name it. `serial` goes into a token key's label.
    pub fn new_key(&self, kt: KeyType, serial: &str) -> Result<NamedKey, AgentError> {
        match self {
            Self::File { dir } => {
                let key = SoftKey::generate(kt)?;
                let name = state::write_new_key(dir, &key)?;
                Ok((name, Arc::new(key)))
            }
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
        }
    }

    /// The key named `name`.
    pub fn load(&self, name: &str) -> Result<Arc<dyn Signer>, AgentError> {
        match self {
            Self::File { dir } => Ok(Arc::new(state::load_key_file(dir, name)?)),
            Self::Pkcs11 { token, pin, .. } => {
                let uri = Pkcs11Uri::parse(name).map_err(hsm)?;
                Ok(Arc::new(HsmKey::open(token, pin, &uri).map_err(hsm)?))
            }
        }
    }

    /// The key of an enrollment started but not finished, if there is one.
    pub fn pending(&self) -> Result<Option<NamedKey>, AgentError> {
        match self {
            Self::File { dir } => Ok(state::pending_key(dir)?.map(|(n, k)| (n, Arc::new(k) as Arc<dyn Signer>))),
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
        }
    }

    /// After a new identity naming `keep` was stored: forget what no identity
    /// names (`old`, the key it replaced, if any). Best effort.
    pub fn retire(&self, keep: &str, old: Option<&str>) {
        match self {
            // state::store removed the key files no identity names (keeping the birth key).
            Self::File { .. } => {}
            Self::Pkcs11 { dir, .. } => {
                let _ = fs::remove_file(dir.join(PENDING_PKCS11));
                if let Some(old) = old.filter(|o| *o != keep) {
                    self.discard(old);
                }
            }
        }
    }

    /// Delete a key no identity names (a renewal that failed). Best effort.
    pub fn discard(&self, name: &str) {
        match self {
            Self::File { dir } => {
                if !name.contains('/') && name.starts_with("key-") {
                    let _ = fs::remove_file(dir.join(name));
                }
            }
            Self::Pkcs11 { token, pin, .. } => {
                let gone = Pkcs11Uri::parse(name).and_then(|u| HsmKey::open(token, pin, &u)).and_then(|k| k.destroy());
                if let Err(e) = gone {
                    eprintln!("warning: could not delete the unused token key {name}: {e}");
                }
            }
        }
    }
}

fn write_note(dir: &Path, name: &str) -> Result<(), AgentError> {
    fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    let p = dir.join(PENDING_PKCS11);
    let tmp = dir.join(format!("{PENDING_PKCS11}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| AgentError::io(&tmp, e))?;
    f.write_all(name.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| AgentError::io(&tmp, e))?;
    fs::rename(&tmp, &p).map_err(|e| AgentError::io(&p, e))
}
