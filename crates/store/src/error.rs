//! The store's error type.

use std::fmt;

use crate::UnixTime;

/// Everything a store call can refuse or fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// No token has this hash.
    TokenUnknown,
    /// The token is bound to another device serial.
    TokenWrongSerial,
    /// The token was already used.
    TokenUsed {
        /// When it was used.
        used_at: UnixTime,
    },
    /// The token expired.
    TokenExpired {
        /// When it expired.
        expires_at: UnixTime,
    },
    /// A token with this hash exists already.
    TokenExists,
    /// The certificate is not in the store.
    CertUnknown {
        /// Its serial.
        serial: String,
    },
    /// The certificate is revoked.
    CertRevoked {
        /// Its serial.
        serial: String,
    },
    /// A certificate with this serial is recorded already.
    DuplicateSerial {
        /// The serial.
        serial: String,
    },
    /// The audit chain does not verify at `seq`.
    AuditBroken {
        /// First entry that does not verify.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The database refused or failed.
    Database(String),
    /// The store was closed (its writer is gone).
    Closed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TokenUnknown => f.write_str("unknown enrollment token"),
            Self::TokenWrongSerial => f.write_str("enrollment token belongs to another device serial"),
            Self::TokenUsed { used_at } => write!(f, "enrollment token already used (at {used_at})"),
            Self::TokenExpired { expires_at } => write!(f, "enrollment token expired (at {expires_at})"),
            Self::TokenExists => f.write_str("a token with this value exists already"),
            Self::CertUnknown { serial } => write!(f, "certificate {serial} is not in the store"),
            Self::CertRevoked { serial } => write!(f, "certificate {serial} is revoked"),
            Self::DuplicateSerial { serial } => write!(f, "serial number {serial} is already recorded"),
            Self::AuditBroken { seq, reason } => write!(f, "audit chain broken at entry {seq}: {reason}"),
            Self::Database(e) => write!(f, "database error: {e}"),
            Self::Closed => f.write_str("store is closed"),
        }
    }
}

impl std::error::Error for StoreError {}
