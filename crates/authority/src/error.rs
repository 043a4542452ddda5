//! The authority's error type: every refusal says what was wrong and maps to one HTTP status.

use std::fmt;
use std::path::PathBuf;

use iotpki_store::StoreError;

/// Why the authority refused a request or could not do its work.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The request is malformed or asks for something no profile allows (HTTP 400).
    BadRequest(String),
    /// The caller did not authenticate, or its credential is bad (HTTP 401).
    Unauthorized(String),
    /// The caller authenticated but may not do this (HTTP 403).
    Forbidden(String),
    /// No such label, certificate or device (HTTP 404).
    NotFound(String),
    /// The authority's directory or config is wrong.
    Config(String),
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// What happened.
        error: std::io::Error,
    },
    /// The authority cannot record anything now (its store's disk is full or
    /// read-only, its database away): retry later (HTTP 503). The message says whether
    /// anything was recorded.
    Unavailable(String),
    /// The store failed (not a refusal: those become the variants above).
    Store(StoreError),
    /// A cryptographic or encoding step failed.
    Core(iotpki_core::Error),
    /// The PKCS#11 token (HSM) holding the CA keys failed or refused.
    Hsm(iotpki_hsm::HsmError),
}

impl AuthorityError {
    /// The HTTP status this error answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::Unavailable(_) => 503,
            Self::Config(_) | Self::Io { .. } | Self::Store(_) | Self::Core(_) | Self::Hsm(_) => 500,
        }
    }

    /// The one-line reason a client may see. Internal failures say only that
    /// something failed on our side; the details go to the log.
    pub fn public_message(&self) -> String {
        match self {
            Self::BadRequest(m) | Self::Unauthorized(m) | Self::Forbidden(m) | Self::NotFound(m) => one_line(m),
            Self::Unavailable(m) => {
                format!("the authority cannot record anything right now ({}); retry later", one_line(m))
            }
            _ => "internal error; the authority's log has the details".to_string(),
        }
    }

    /// True when this is a refusal of the caller's request rather than our failure.
    pub fn is_refusal(&self) -> bool {
        self.http_status() < 500
    }

    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io { path: path.into(), error }
    }
}

fn one_line(m: &str) -> String {
    m.replace(['\r', '\n'], " ")
}

impl fmt::Display for AuthorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRequest(m) => write!(f, "bad request: {m}"),
            Self::Unauthorized(m) => write!(f, "unauthorized: {m}"),
            Self::Forbidden(m) => write!(f, "forbidden: {m}"),
            Self::NotFound(m) => write!(f, "not found: {m}"),
            Self::Unavailable(m) => write!(f, "unavailable: {m}"),
            Self::Config(m) => write!(f, "configuration: {m}"),
            Self::Io { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Store(e) => write!(f, "store: {e}"),
            Self::Core(e) => write!(f, "{e}"),
            Self::Hsm(e) => write!(f, "HSM: {e}"),
        }
    }
}

impl std::error::Error for AuthorityError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { error, .. } => Some(error),
            Self::Store(e) => Some(e),
            Self::Core(e) => Some(e),
            // Hsm: its message is already in ours (no source, or `{:#}` would say it twice).
            _ => None,
        }
    }
}

impl From<StoreError> for AuthorityError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TokenUnknown
            | StoreError::TokenWrongSerial
            | StoreError::TokenUsed { .. }
            | StoreError::TokenExpired { .. } => Self::Unauthorized(e.to_string()),
            StoreError::CertUnknown { .. } | StoreError::CertRevoked { .. } | StoreError::Superseded { .. } => {
                Self::Forbidden(e.to_string())
            }
            StoreError::NothingToRevoke { .. } => Self::NotFound(e.to_string()),
            StoreError::StationUnknown { .. }
            | StoreError::StationRevoked { .. }
            | StoreError::StationNotAuthorized { .. }
            | StoreError::BatchClosed { .. }
            | StoreError::BatchOutsideWindow { .. }
            | StoreError::QuotaExhausted { .. }
            | StoreError::SerialNotAllowed { .. }
            | StoreError::AlreadyBorn { .. }
            | StoreError::NotOwned { .. }
            | StoreError::DeviceReleased { .. }
            | StoreError::VoucherChanged { .. } => Self::Forbidden(e.to_string()),
            StoreError::BatchUnknown { .. } => Self::NotFound(e.to_string()),
            StoreError::BatchExists { .. }
            | StoreError::StationExists { .. }
            | StoreError::DelegationExists { .. }
            | StoreError::ManufacturerExists { .. }
            | StoreError::ClaimConflict { .. } => Self::BadRequest(e.to_string()),
            StoreError::SyncOutOfOrder { .. } => Self::Forbidden(e.to_string()),
            StoreError::Unavailable(m) => Self::Unavailable(m),
            other => Self::Store(other),
        }
    }
}

impl From<iotpki_hsm::HsmError> for AuthorityError {
    fn from(e: iotpki_hsm::HsmError) -> Self {
        Self::Hsm(e)
    }
}

impl From<iotpki_core::Error> for AuthorityError {
    fn from(e: iotpki_core::Error) -> Self {
        use iotpki_core::Error as E;
        match e {
            E::Base64(_)
            | E::Der { .. }
            | E::Pem(_)
            | E::BadSignature { .. }
            | E::UnsupportedAlgorithm(_)
            | E::KeyNotAllowed { .. }
            | E::BadName(_) => Self::BadRequest(e.to_string()),
            other => Self::Core(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A voucher claim refused because the held voucher changed under it is a
    /// 403 that says what to do, not an internal error.
    #[test]
    fn a_changed_held_voucher_is_a_403_that_says_to_fetch_and_extend_it() {
        let e = AuthorityError::from(StoreError::VoucherChanged {
            device: "VR-1".into(),
            expected: None,
            held: Some("ab".repeat(32)),
        });
        assert_eq!(e.http_status(), 403);
        let m = e.public_message();
        assert!(m.contains("device VR-1") && m.contains(&"ab".repeat(32)), "{m}");
        assert!(m.contains("changed while this one was checked: fetch the current voucher and extend it"), "{m}");
    }
}
