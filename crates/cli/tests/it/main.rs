//! Integration tests: the real server on loopback, the agent, the CLI binary,
//! and peers we did not write (openssl, curl, pkilint).

#![allow(clippy::unwrap_used)]

mod agent_crash;
mod agent_ocsp;
mod authz;
mod bundle;
mod cli;
mod clients;
mod coaps;
mod commission;
mod console;
mod crash;
mod device;
mod device_c;
mod disk;
mod est;
mod events;
mod factory;
mod firmware;
mod hsm;
mod interop;
mod limits;
mod loadgen;
mod matter;
mod metrics;
mod mldsa;
mod nginx;
mod openapi;
mod owner;
mod package;
mod pkilint;
mod postgres;
mod refusals;
mod relay;
mod release;
mod revocation;
mod rotation;
mod servers;
mod service;
mod templates;
mod threat_model;
#[cfg(feature = "tpm")]
mod tpm;
mod util;
