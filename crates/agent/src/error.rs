//! The agent's error type.

use std::fmt;
use std::path::PathBuf;

/// What went wrong on the device side.
#[derive(Debug)]
#[non_exhaustive]
pub enum AgentError {
    /// The server refused the request.
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's one-line reason.
        reason: String,
    },
    /// The server could not be reached or the TLS session failed.
    Connect(String),
    /// The server's answer is not what EST promises.
    BadAnswer(String),
    /// The certificate received does not match our key or does not chain to our anchor.
    Untrusted(String),
    /// The state directory is missing, unreadable or damaged.
    State(String),
    /// A file operation failed.
    Io {
        /// The file.
        path: PathBuf,
        /// What happened.
        error: std::io::Error,
    },
    /// The keystore (a PKCS#11 token, a TPM) failed or refused.
    Keystore(String),
    /// The keystore cannot be reached now (no TPM answers at the TCTI): the
    /// daemon tries again later.
    KeystoreUnreachable(String),
    /// Bad usage (a URL, a serial).
    Usage(String),
    /// A core operation failed.
    Core(iotpki_core::Error),
    /// The device's own certificate is revoked (a verified OCSP answer says so)
    /// and there is no birth certificate to come back with.
    Revoked(String),
}

impl AgentError {
    /// A file operation on `path` failed.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io { path: path.into(), error }
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused { status, reason } => write!(f, "the server refused (HTTP {status}): {reason}"),
            Self::Connect(m) => write!(f, "cannot talk to the server: {m}"),
            Self::BadAnswer(m) => write!(f, "unexpected answer from the server: {m}"),
            Self::Untrusted(m) => write!(f, "certificate not accepted: {m}"),
            Self::State(m) => write!(f, "device state: {m}"),
            Self::Io { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Keystore(m) | Self::KeystoreUnreachable(m) => write!(f, "keystore: {m}"),
            Self::Usage(m) => f.write_str(m),
            Self::Core(e) => write!(f, "{e}"),
            Self::Revoked(m) => write!(f, "this device's certificate is revoked: {m}"),
        }
    }
}

impl std::error::Error for AgentError {}

impl From<iotpki_core::Error> for AgentError {
    fn from(e: iotpki_core::Error) -> Self {
        Self::Core(e)
    }
}

impl From<iotpki_fs::Error> for AgentError {
    fn from(e: iotpki_fs::Error) -> Self {
        match e {
            iotpki_fs::Error::Io { path, error } => Self::Io { path, error },
            other => Self::State(other.to_string()),
        }
    }
}
