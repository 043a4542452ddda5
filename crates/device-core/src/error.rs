//! The one error type of the crate, with a family per area.

use core::fmt;

use crate::bundle::BundleError;
use crate::chain::ChainError;
use crate::crl::CrlError;
use crate::voucher::VoucherError;

/// Why something was refused or could not be made. Each message says what
/// was wrong; the nested families carry the detail of their rules.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Bytes that are not what they should be (DER, base64, PKCS#7).
    Malformed {
        /// What was being read.
        what: &'static str,
        /// Why it is refused.
        detail: &'static str,
    },
    /// A public key of a type or form we do not take (P-256, P-384 uncompressed, or Ed25519).
    UnsupportedKey(&'static str),
    /// The signing callback failed, or returned a signature that does not verify with the public key.
    Signer(&'static str),
    /// The device serial cannot be put into a subject.
    BadSerial(&'static str),
    /// The EST answer holds not exactly one certificate.
    CertificateCount {
        /// How many it holds.
        found: usize,
    },
    /// The server's CA certificates do not include the device's trust anchor.
    AnchorNotOffered,
    /// The issued certificate carries another public key than the device's.
    WrongKey,
    /// The issued certificate names another subject than the device asked for.
    WrongSubject,
    /// The certification path is refused.
    Chain(ChainError),
    /// The trust bundle is refused.
    Bundle(BundleError),
    /// The ownership voucher is refused.
    Voucher(VoucherError),
    /// The CRL is refused.
    Crl(CrlError),
}

impl Error {
    pub(crate) fn der(what: &'static str, _e: der::Error) -> Self {
        // The der crate's messages carry positions that say little to a reader; the
        // part that failed is what helps.
        Self::Malformed { what, detail: "not DER of the expected structure" }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed { what, detail } => write!(f, "malformed {what}: {detail}"),
            Self::UnsupportedKey(d) => write!(f, "unsupported public key: {d} (use P-256, P-384 or Ed25519)"),
            Self::Signer(d) => write!(f, "the signer failed: {d}"),
            Self::BadSerial(d) => write!(f, "device serial refused: {d}"),
            Self::CertificateCount { found } => write!(f, "expected one certificate, got {found}"),
            Self::AnchorNotOffered => f.write_str("the server's CA certificates do not include our trust anchor"),
            Self::WrongKey => f.write_str("the certificate is not for this device's key"),
            Self::WrongSubject => f.write_str("the certificate does not carry this device's serial"),
            Self::Chain(e) => write!(f, "does not chain to the trust anchor: {e}"),
            Self::Bundle(e) => write!(f, "trust bundle refused: {e}"),
            Self::Voucher(e) => write!(f, "ownership voucher refused: {e}"),
            Self::Crl(e) => write!(f, "CRL refused: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

impl From<ChainError> for Error {
    fn from(e: ChainError) -> Self {
        Self::Chain(e)
    }
}
impl From<BundleError> for Error {
    fn from(e: BundleError) -> Self {
        Self::Bundle(e)
    }
}
impl From<VoucherError> for Error {
    fn from(e: VoucherError) -> Self {
        Self::Voucher(e)
    }
}
impl From<CrlError> for Error {
    fn from(e: CrlError) -> Self {
        Self::Crl(e)
    }
}

/// Lowercase hex of a short byte string (key ids, serials) for messages.
pub(crate) struct Hex<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
