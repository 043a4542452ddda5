//! iotpki device agent: the device side of enrollment.
//!
//! The key pair is generated on the device and never leaves it; the agent
//! sends a PKCS#10 request over EST, checks that the answer matches its key
//! and chains to the trust anchor it was given, and replaces its state on
//! disk atomically.
//!
//! State directory layout:
//! - `identity.json` (0600): the current identity; replaced by write, fsync,
//!   rename, fsync of the directory. It names the key file in use.
//! - `key-<n>.pem` (0600): PKCS#8 private keys; a new one is written before
//!   the identity that names it, and the old one removed after.
//! - or, with a PKCS#11 keystore (recorded in `identity.json`), the keys are
//!   generated in the token and named by URI; `pending-key.uri` names the key
//!   of an enrollment in progress.

#![forbid(unsafe_code)]

#[cfg(feature = "cli")]
pub mod argv;
#[cfg(feature = "cli")]
pub mod cli;
pub mod clock;
#[cfg(feature = "coaps")]
pub mod coaps_client;
pub mod daemon;
mod error;
pub mod est_client;
pub mod flow;
pub mod http1;
#[cfg(feature = "ring")]
pub mod hybrid_kx;
pub mod keystore;
pub mod line;
pub mod ocsp;
#[cfg(all(feature = "ring", not(feature = "aws-lc")))]
pub mod p256_tls;
pub mod state;
mod tls_key;

// The crypto library under TLS and randomness: aws-lc, or ring in the device's small build.
#[cfg(feature = "aws-lc")]
pub(crate) use aws_lc_rs as backend;
#[cfg(all(feature = "ring", not(feature = "aws-lc")))]
pub(crate) use ring as backend;
#[cfg(not(any(feature = "aws-lc", feature = "ring")))]
compile_error!("iotpki-agent needs a crypto library: enable its feature `aws-lc` or `ring`");

/// Fill `buf` from the system's generator (through the crypto library).
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), ()> {
    use backend::rand::SecureRandom as _;
    backend::rand::SystemRandom::new().fill(buf).map_err(|_| ())
}
pub mod trust;

pub use error::AgentError;
pub use flow::{enroll, renew, renew_into, status, EnrollOptions, Status};
pub use keystore::ExternalKeys;
pub use state::Identity;
