//! Time, passed in: the clock now lives in core (`iotpki_core::clock`).
pub use iotpki_core::clock::*;
