//! libiotpki_device: the device side of iotpki for firmware in C (issue #16).
//!
//! The C API is [`ffi`]; its header is `include/iotpki_device.h` (generated
//! by cbindgen from this crate, checked for freshness by `tests/header.rs`),
//! and docs/device-c-api.md says how to use it. The flows are the agent's
//! own ([`iotpki_agent::flow`]): the library refuses what the agent refuses,
//! with the same messages.

#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

// The only module with `unsafe`: every block says why it holds.
#[allow(unsafe_code)]
pub mod ffi;
