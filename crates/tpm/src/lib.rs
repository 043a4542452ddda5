//! Device keys in a TPM 2.0 behind the [`Signer`](iotpki_core::keys::Signer) trait, through the
//! `tss-esapi` crate (the TPM Software Stack's ESAPI).
//!
//! - [`Tpm`]: one connection to a TPM, named by a TCTI string
//!   (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, `tabrmd`, ...),
//!   behind a mutex: an ESAPI context must not be used from two threads at once.
//! - [`TpmKey`]: an ECC P-256 signing key made inside the TPM, under a primary
//!   key of the storage (owner) hierarchy derived from a fixed template.
//!
//! The key's attributes: fixedTPM, fixedParent, sensitiveDataOrigin (made in
//! the TPM, never leaves it, cannot be duplicated), userWithAuth with an empty
//! authorisation value, sign; not decrypt, not restricted (it signs digests
//! computed outside, such as a CSR's and TLS 1.3's CertificateVerify).
//!
//! The key is kept as a loadable blob, not a persistent object: its public
//! area and its private area as the TPM wrapped it (encrypted and
//! integrity-protected under the primary's seed-derived storage key, useless
//! to anyone without this TPM), see [`TpmKey::blob`]. The primary is
//! recreated from its template when a key is loaded (the owner seed makes it
//! the same key every time), then flushed. Blobs avoid the TPM's few
//! persistent-handle slots and owner authorisation for EvictControl, and the
//! caller stores them like any other state file (atomically).
//!
//! Every transient object is flushed once it is no longer needed (a loaded key
//! when its [`TpmKey`] is dropped): a raw TPM device or swtpm socket has no
//! resource manager and only a few object slots.

//!
//! The TSS is a system library (libtss2, found with pkg-config at build time).
//! It is linked only with this crate's `tss` feature (the `tpm` feature of
//! `iotpki-agent` and `iotpki-cli`); without it [`Tpm::open`] answers
//! [`TpmError::NotBuilt`], and the rest of the API stays the same. This file
//! is the one place that chooses.

#![forbid(unsafe_code)]

use std::fmt;

#[cfg(feature = "tss")]
mod tss;
#[cfg(feature = "tss")]
pub use tss::{Tpm, TpmKey};

#[cfg(not(feature = "tss"))]
mod off;
#[cfg(not(feature = "tss"))]
pub use off::{Tpm, TpmKey};

/// Whether this build can reach a TPM (built with the TSS).
pub const BUILT_WITH_TPM: bool = cfg!(feature = "tss");

/// What a build without TPM support says when asked for a TPM.
pub const NOT_BUILT: &str = "built without TPM support: rebuild with --features tpm \
     (cargo build --release --features tpm; it needs the TPM Software Stack: apt install libtss2-dev pkg-config)";

/// The TCTI used when none is given: the kernel's resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// What went wrong with the TPM, said so that the operator knows what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum TpmError {
    /// The TCTI string is not one the TSS understands.
    BadTcti {
        /// The string.
        tcti: String,
        /// Why.
        detail: String,
    },
    /// Nothing answered at the TCTI.
    Unreachable {
        /// The TCTI string.
        tcti: String,
        /// Why.
        detail: String,
    },
    /// A TPM command failed.
    Command {
        /// What we were doing.
        what: &'static str,
        /// The TSS's words.
        detail: String,
    },
    /// A key blob is not one this TPM can load (damaged, or made by another TPM or primary).
    BadBlob(String),
    /// The TPM answered something unexpected.
    Unexpected(String),
    /// This build has no TPM support (built without the TSS).
    NotBuilt,
}

impl fmt::Display for TpmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadTcti { tcti, detail } => write!(
                f,
                "TCTI {tcti:?} is not usable ({detail}): give e.g. device:/dev/tpmrm0 or swtpm:host=HOST,port=PORT"
            ),
            Self::Unreachable { tcti, detail } => write!(
                f,
                "the TPM at {tcti:?} is not reachable ({detail}): check that the TPM (or swtpm) is running and \
                 that the TCTI names it"
            ),
            Self::Command { what, detail } => write!(f, "the TPM failed {what}: {detail}"),
            Self::BadBlob(m) => write!(f, "TPM key blob: {m}"),
            Self::Unexpected(m) => write!(f, "unexpected answer from the TPM: {m}"),
            Self::NotBuilt => write!(f, "{NOT_BUILT}"),
        }
    }
}

impl std::error::Error for TpmError {}

/// A key's object attributes as the TPM reports them (TPM2_ReadPublic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAttributes {
    /// fixedTPM: cannot be duplicated to another TPM.
    pub fixed_tpm: bool,
    /// fixedParent: cannot be moved to another parent.
    pub fixed_parent: bool,
    /// sensitiveDataOrigin: the TPM generated the private key.
    pub sensitive_data_origin: bool,
    /// userWithAuth: usable with its (empty) authorisation value.
    pub user_with_auth: bool,
    /// sign.
    pub sign: bool,
    /// decrypt.
    pub decrypt: bool,
    /// restricted.
    pub restricted: bool,
}

pub mod swtpm;
