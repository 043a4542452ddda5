//! iotpki core: the pure part of the PKI.
//!
//! Bytes and values in, bytes and values out: CSR parsing and proof-of-possession
//! checks, certificate profiles and TBS building, PKCS#7 certs-only encoding,
//! the EST wire rules (RFC 7030 as clarified by RFC 8951), trust bundles and
//! ownership vouchers (COSE over CBOR). No sockets, files or databases; the
//! time and the randomness for our own decisions are passed in (`now`, a
//! [`clock::Clock`], a [`random::RandomSource`]), with a [`keys::Signer`].

#![forbid(unsafe_code)]

pub mod bundle;
pub mod chain;
pub mod clock;
pub mod cose;
pub mod crl;
pub mod csr;
// The ring build's P-256 (keys.rs uses it only without aws-lc; with both it is
// still built, for the fuzz target that holds it to ring's).
#[cfg(feature = "ring")]
pub mod ec_p256;
mod error;
pub mod est;
pub mod keys;
pub mod matter;
pub mod name;
pub mod ocsp;
pub mod pem;
pub mod pkcs7;
pub mod profile;
pub mod random;
pub mod record;
pub mod serial;
pub mod template;
pub mod time;
#[cfg(feature = "aws-lc")]
pub mod tpm;
pub mod voucher;
pub mod wire;

pub use error::Error;

// The crypto library (digests, randomness, signatures): aws-lc, or ring in the
// device's small build. Their APIs are the same where core uses them, except key
// generation, PKCS#8 export and public key checks (`keys`).
#[cfg(feature = "aws-lc")]
pub(crate) use aws_lc_rs as backend;
#[cfg(all(feature = "ring", not(feature = "aws-lc")))]
pub(crate) use ring as backend;
#[cfg(not(any(feature = "aws-lc", feature = "ring")))]
compile_error!("iotpki-core needs a crypto library: enable its feature `aws-lc` or `ring`");

/// Re-exports of the ASN.1 crates our public types come from.
pub mod asn1 {
    pub use der;
    pub use spki;
    pub use x509_cert;
}
