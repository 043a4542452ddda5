//! The authority's error type: a refusal of the caller's request, by family
//! and with its structure ([`Refusal`]), or our own failure.
//!
//! Which HTTP status each refusal answers with is [`Refusal::http_status`]
//! (the audit log's summaries name it too); the server turns an
//! [`AuthorityError`] into a response in one place (`iotpki_server`'s `ApiError`).

use std::fmt;
use std::path::PathBuf;

use iotpki_store::StoreError;

/// Why the authority refused a request or could not do its work.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The caller's request was refused (a 4xx answer): see [`Refusal`].
    Refused(Refusal),
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
    /// The store failed (not a refusal: those are [`Refusal`]s).
    Store(StoreError),
    /// A cryptographic or encoding step failed.
    Core(iotpki_core::Error),
    /// The PKCS#11 token (HSM) holding the CA keys failed or refused.
    Hsm(iotpki_hsm::HsmError),
}

/// Why a caller's request was refused, by family. Refusals that the store
/// decided (in the issuance's transaction) keep the store's own structured
/// error; those the authority decides say what was wrong and what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Refusal {
    /// The request cannot be read: its body, a header, a parameter (400).
    Malformed(String),
    /// The request is well-formed but is no valid PKCS#10, base64, name, ...
    /// (400): the parser's error, whole.
    Request(iotpki_core::Error),
    /// The caller did not authenticate: no credential, or one that cannot be
    /// used here (401).
    Unauthenticated(String),
    /// A one-time token the store refused: unknown, for another device, used
    /// or expired (401).
    Token(StoreError),
    /// A client certificate that authenticates nothing here: not ours,
    /// expired, revoked, not the one recorded, of the wrong kind (403).
    Client(String),
    /// A factory station the store refused: unknown, revoked, not authorised
    /// for the batch, its production record out of order (403).
    Station(StoreError),
    /// A batch's rules: closed, outside its window, its quota spent, a serial
    /// not on its allowlist or born already (403); an unknown batch (404).
    Batch(StoreError),
    /// A renewal that may not be: of a certificate renewed already or
    /// revoked, of a birth certificate, across CAs (403). From the store:
    /// the certificate superseded or revoked in the transaction.
    Renewal(String),
    /// A certificate the store found unknown, revoked or superseded (403),
    /// or nothing left to revoke (404).
    Certificate(StoreError),
    /// The label's key policy: a key type it does not allow (400), or the
    /// birth key offered for an operational certificate (403).
    KeyPolicy(KeyRefusal),
    /// Ownership: a device not owned, handed on, claimed with another birth,
    /// its voucher changed (403).
    Ownership(StoreError),
    /// The key registry refused the request's key: blocked as compromised,
    /// or certified already for another device (a clone).
    Key(StoreError),
    /// Something that exists already, or a claim that conflicts (400).
    Conflict(StoreError),
    /// Any other rule of the authority, stated (403).
    Forbidden(String),
    /// No such label, CA, certificate, batch or file (404).
    NotFound(String),
}

/// A key the label's policy refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyRefusal {
    /// The key type is not one the label allows.
    NotAllowed {
        /// The key type offered.
        offered: String,
        /// The key types allowed, comma-separated.
        allowed: String,
    },
    /// An operational certificate asked for the birth key: it needs a fresh one.
    BirthKey,
}

impl Refusal {
    /// The HTTP status this refusal answers with: the one table.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Malformed(_)
            | Self::Request(_)
            | Self::Conflict(_)
            | Self::KeyPolicy(KeyRefusal::NotAllowed { .. }) => 400,
            Self::Unauthenticated(_) | Self::Token(_) => 401,
            Self::Batch(StoreError::BatchUnknown { .. })
            | Self::Certificate(StoreError::NothingToRevoke { .. })
            | Self::NotFound(_) => 404,
            Self::Client(_)
            | Self::Station(_)
            | Self::Batch(_)
            | Self::Renewal(_)
            | Self::Certificate(_)
            | Self::KeyPolicy(KeyRefusal::BirthKey)
            | Self::Ownership(_)
            | Self::Key(_)
            | Self::Forbidden(_) => 403,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(m)
            | Self::Unauthenticated(m)
            | Self::Client(m)
            | Self::Renewal(m)
            | Self::Forbidden(m)
            | Self::NotFound(m) => f.write_str(m),
            Self::Request(e) => write!(f, "{e}"),
            Self::Token(e)
            | Self::Station(e)
            | Self::Batch(e)
            | Self::Certificate(e)
            | Self::Ownership(e)
            | Self::Conflict(e)
            | Self::Key(e) => write!(f, "{e}"),
            Self::KeyPolicy(KeyRefusal::NotAllowed { offered, allowed }) => {
                write!(f, "key type {offered} is not allowed by this profile (allowed: {allowed})")
            }
            Self::KeyPolicy(KeyRefusal::BirthKey) => {
                f.write_str("the request is for the birth key: an operational certificate needs a fresh key")
            }
        }
    }
}

impl AuthorityError {
    /// A malformed request (400), saying what is wrong.
    pub fn malformed(m: String) -> Self {
        Self::Refused(Refusal::Malformed(m))
    }

    /// A caller that did not authenticate (401), saying what it must send.
    pub fn unauthenticated(m: String) -> Self {
        Self::Refused(Refusal::Unauthenticated(m))
    }

    /// A rule of the authority refuses this (403), saying which.
    pub fn forbidden(m: String) -> Self {
        Self::Refused(Refusal::Forbidden(m))
    }

    /// No such thing (404), saying what.
    pub fn not_found(m: String) -> Self {
        Self::Refused(Refusal::NotFound(m))
    }

    /// The refusal, when this is one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// The HTTP status this error answers with: a refusal's
    /// ([`Refusal::http_status`]), 503 when the store cannot record now,
    /// else 500.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Refused(r) => r.http_status(),
            Self::Unavailable(_) => 503,
            Self::Config(_) | Self::Io { .. } | Self::Store(_) | Self::Core(_) | Self::Hsm(_) => 500,
        }
    }

    /// The one-line reason a client may see. Internal failures say only that
    /// something failed on our side; the details go to the log.
    pub fn public_message(&self) -> String {
        match self {
            Self::Refused(r) => one_line(&r.to_string()),
            Self::Unavailable(m) => {
                format!("the authority cannot record anything right now ({}); retry later", one_line(m))
            }
            _ => "internal error; the authority's log has the details".to_string(),
        }
    }

    /// True when this is a refusal of the caller's request rather than our failure.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused(_))
    }

    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io { path: path.into(), error }
    }
}

impl From<Refusal> for AuthorityError {
    fn from(r: Refusal) -> Self {
        Self::Refused(r)
    }
}

fn one_line(m: &str) -> String {
    m.replace(['\r', '\n'], " ")
}

impl fmt::Display for AuthorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(r) => {
                let kind = match r.http_status() {
                    400 => "bad request",
                    401 => "unauthorized",
                    404 => "not found",
                    _ => "forbidden",
                };
                write!(f, "{kind}: {r}")
            }
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
            // Refusals and Hsm: their message is already in ours (no source, or
            // `{:#}` would say it twice).
            _ => None,
        }
    }
}

impl From<StoreError> for AuthorityError {
    /// A refusal the store decided keeps its structure, in its family; the
    /// store's failures stay failures.
    fn from(e: StoreError) -> Self {
        use StoreError as E;
        let r = match e {
            E::TokenUnknown
            | E::TokenWrongSerial
            | E::TokenUsed { .. }
            | E::TokenExpired { .. }
            | E::TokenWithdrawn { .. } => Refusal::Token(e),
            E::CertUnknown { .. }
            | E::CertRevoked { .. }
            | E::Superseded { .. }
            | E::Commissioned { .. }
            | E::NothingToRevoke { .. } => Refusal::Certificate(e),
            E::StationUnknown { .. }
            | E::StationRevoked { .. }
            | E::StationCertificate { .. }
            | E::StationNotAuthorized { .. }
            | E::SyncOutOfOrder { .. } => Refusal::Station(e),
            E::BatchUnknown { .. }
            | E::BatchClosed { .. }
            | E::BatchOutsideWindow { .. }
            | E::QuotaExhausted { .. }
            | E::SerialNotAllowed { .. }
            | E::AlreadyBorn { .. } => Refusal::Batch(e),
            E::NotOwned { .. } | E::DeviceReleased { .. } | E::VoucherChanged { .. } => Refusal::Ownership(e),
            E::KeyBlocked { .. } | E::KeyInUse { .. } => Refusal::Key(e),
            E::BatchExists { .. }
            | E::StationExists { .. }
            | E::DelegationExists { .. }
            | E::ManufacturerExists { .. }
            | E::ClaimConflict { .. } => Refusal::Conflict(e),
            E::Unavailable(m) => return Self::Unavailable(m),
            other => return Self::Store(other),
        };
        Self::Refused(r)
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
            E::KeyNotAllowed { offered, allowed } => {
                Self::Refused(Refusal::KeyPolicy(KeyRefusal::NotAllowed { offered, allowed }))
            }
            E::Base64(_)
            | E::Der { .. }
            | E::Pem(_)
            | E::BadSignature { .. }
            | E::UnsupportedAlgorithm(_)
            | E::BadName(_) => Self::Refused(Refusal::Request(e)),
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
