//! Integration tests: the real server on loopback, the agent, the CLI binary,
//! and peers we did not write (openssl, curl, pkilint).

#![allow(clippy::unwrap_used)]

mod cli;
mod est;
mod factory;
mod hsm;
mod interop;
mod pkilint;
mod refusals;
mod revocation;
mod util;
