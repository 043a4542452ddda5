//! iotpki factory station: the factory line's side of a device's birth.
//!
//! A station holds a credential scoped to its batches. It drives devices
//! under test through their birth ([`factory`]: simulated, or at the other
//! end of the line link, [`line`](mod@line)), enrolling each with the authority over
//! mutual TLS; or, offline, issues births itself with a delegated CA limited
//! to one batch ([`offline`]), recording each in a signed, hash-chained
//! production record that `factory sync` uploads later. [`relay`] serves a
//! site without internet what its devices verify themselves.
//!
//! The device side (keys, enrollment, the line's device end) is
//! `iotpki-agent`, which holds no CA: a device build carries none of this.

#![forbid(unsafe_code)]

pub mod api;
pub mod factory;
pub mod line;
pub mod offline;
pub mod relay;
