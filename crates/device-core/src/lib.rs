//! iotpki's device side for microcontrollers: what a firmware needs from the
//! PKI without an operating system.
//!
//! - [`csr::build`]: a PKCS#10 request for the device's key, signed through a
//!   callback (a secure element, a software key; [`csr::Signature`]): the same request the
//!   agent sends, accepted by the authority's checks as the agent's is.
//! - [`est`]: the answer to `/simpleenroll` and `/simplereenroll` (base64 of a
//!   PKCS#7 certs-only message) and of `/cacerts`, and [`est::check_issued`]:
//!   the certificate is for the device's key and serial, and chains to the
//!   trust anchor at a given time ([`chain`]).
//! - [`bundle`], [`voucher`], [`crl`]: trust bundles, ownership vouchers and
//!   CRLs verified at a given time against given anchors and keys, with the
//!   agent's rules and refusals (docs/trust-bundle.md, docs/voucher.md).
//!
//! No I/O, no clock, no storage: the caller passes the time (`now`, Unix
//! seconds), the state the rollback checks compare with (the installed bundle,
//! voucher, CRL number), and keeps its keys where it likes. `#![no_std]` with
//! `alloc`; the `std` feature (default) only adds `std::error::Error`.
//! docs/device-core.md has the API with examples, the limits and the code size.

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod bundle;
mod cbor;
pub mod chain;
mod cose;
pub mod crl;
pub mod csr;
mod derx;
mod error;
pub mod est;
pub mod keys;
pub mod voucher;

pub use error::Error;

/// Allowed clock difference for "not in the future" checks, in seconds (the
/// agent's and the core's: devices' clocks drift).
pub const MAX_CLOCK_SKEW: i64 = 300;

/// Entry points for the fuzz targets (not a stable API).
#[doc(hidden)]
pub mod internal {
    pub use crate::cbor::check_one as cbor_check_one;
}
