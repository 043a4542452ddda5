//! The core's error type.

use std::fmt;

/// Why a core operation refused its input or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The body is not valid base64.
    Base64(String),
    /// The bytes are not the DER structure expected.
    Der {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// PEM text could not be parsed.
    Pem(String),
    /// The request's signature does not verify with its own public key.
    BadSignature {
        /// What carried the signature.
        what: &'static str,
    },
    /// The key or signature algorithm is not one we accept.
    UnsupportedAlgorithm(String),
    /// The key type is valid but the profile does not allow it.
    KeyNotAllowed {
        /// The key type offered.
        offered: String,
        /// The key types the profile allows.
        allowed: String,
    },
    /// A name or attribute value is not acceptable.
    BadName(String),
    /// A signing operation failed.
    Signing(String),
    /// Key material could not be generated or loaded.
    Key(String),
    /// The certificate or request violates the profile.
    Profile(String),
    /// A JSON body is not the one expected (a field missing, unknown or of the wrong type).
    Json {
        /// Which body.
        what: String,
        /// The parser's message (it names the field).
        detail: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Base64(d) => write!(f, "malformed base64: {d}"),
            Self::Der { what, detail } => write!(f, "malformed {what}: {detail}"),
            Self::Pem(d) => write!(f, "malformed PEM: {d}"),
            Self::BadSignature { what } => write!(f, "the {what} signature does not verify"),
            Self::UnsupportedAlgorithm(a) => write!(f, "unsupported algorithm: {a}"),
            Self::KeyNotAllowed { offered, allowed } => {
                write!(f, "key type {offered} is not allowed by this profile (allowed: {allowed})")
            }
            Self::BadName(d) => write!(f, "bad name: {d}"),
            Self::Signing(d) => write!(f, "signing failed: {d}"),
            Self::Key(d) => write!(f, "key error: {d}"),
            Self::Profile(d) => write!(f, "profile violation: {d}"),
            Self::Json { what, detail } => write!(f, "malformed {what}: {detail}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    pub(crate) fn der(what: &'static str, e: impl fmt::Display) -> Self {
        Self::Der { what, detail: e.to_string() }
    }
}
