//! The firmware scanner: finds private keys, certificates and enrollment-token
//! candidates in firmware images and in every archive or filesystem inside
//! them, recursively, streaming, within bounded memory and time.
//!
//! It knows nothing of the registry: a finding carries the SHA-256 of the
//! subjectPublicKeyInfo (the registry's key), never the private key itself.
//! The caller (`iotpki firmware scan`) looks the hashes up.
//!
//! Two halves: [`keys`] finds keys in a stream of bytes; [`walk`] opens
//! images, archives and filesystems and feeds every leaf stream to [`keys`].

pub mod keys;
pub mod walk;

use serde::Serialize;

/// How a private key was encoded where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyFormat {
    /// PKCS#1 RSAPrivateKey (DER, or PEM "RSA PRIVATE KEY").
    Pkcs1,
    /// PKCS#8 PrivateKeyInfo / OneAsymmetricKey (DER, or PEM "PRIVATE KEY").
    Pkcs8,
    /// PKCS#8 EncryptedPrivateKeyInfo: reported, not opened.
    EncryptedPkcs8,
    /// SEC1 ECPrivateKey (DER, or PEM "EC PRIVATE KEY").
    Sec1,
    /// OpenSSH's "openssh-key-v1" (PEM "OPENSSH PRIVATE KEY").
    OpenSsh,
    /// PKCS#12 / PFX.
    Pkcs12,
}

/// What was found at one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FindingKind {
    /// A private key. `spki_sha256` is the lowercase hex SHA-256 of the DER
    /// subjectPublicKeyInfo derived from it (the same hash the store keeps for
    /// every certificate); `None` when it cannot be derived (encrypted, or an
    /// algorithm we do not know), with `note` saying why.
    PrivateKey {
        format: KeyFormat,
        /// "ec-p256", "ec-p384", "ec-p521", "ed25519", "rsa-2048", ..., or "unknown".
        algorithm: String,
        encrypted: bool,
        spki_sha256: Option<String>,
        /// PEM or DER.
        encoding: String,
        note: Option<String>,
    },
    /// An X.509 certificate.
    Certificate {
        spki_sha256: String,
        /// Lowercase hex of the serial's INTEGER content octets (a leading 00
        /// kept when the high bit is set), as the store keeps it.
        serial: String,
        subject: String,
        issuer: String,
    },
    /// A string shaped like an iotpki enrollment token (43 characters of
    /// base64url, exactly 32 bytes): its SHA-256 (hex of the SHA-256 of the
    /// token's text, as the store keeps it). Most are not tokens; the
    /// caller reports only those the registry knows.
    TokenCandidate { token_sha256: String },
}

/// One finding: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The path through the containers: `image.bin!rootfs.squashfs!/etc/ssl/key.pem`.
    pub location: String,
    /// Byte offset within the innermost stream (the file at `location`).
    pub offset: u64,
    #[serde(flatten)]
    pub kind: FindingKind,
}

/// Something that was not read, and why (a bomb, a cycle, a limit, a
/// truncated or malformed container, a format we do not open).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub location: String,
    pub offset: u64,
    pub reason: String,
}

/// The whole answer for one or more images.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub skipped: Vec<Skipped>,
    /// Bytes fed to the key finder, all streams together (decompressed).
    pub bytes_scanned: u64,
    /// Containers opened (archives, filesystems, compressed streams).
    pub containers: u64,
}

impl Report {
    /// Private keys found, all formats.
    pub fn private_keys(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| matches!(f.kind, FindingKind::PrivateKey { .. }))
    }
}
