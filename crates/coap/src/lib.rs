//! iotpki CoAP: the CoAP layer of EST over secure CoAP (EST-coaps, RFC 9148).
//!
//! Everything here is sans-IO: datagrams (already decrypted by the DTLS
//! layer, which lives elsewhere) go in as bytes, datagrams to send come out as
//! bytes, and the time is passed in where it matters. No sockets, no clock,
//! no randomness, no dependency beyond std.
//!
//! - [`msg`]: the message codec (RFC 7252 §3), strict on input.
//! - [`option`]: option numbers and the helpers for their values.
//! - [`block`]: the Block1/Block2 option value (RFC 7959 §2.2).
//! - [`server`]: [`server::Endpoint`], one per peer (per DTLS session): it
//!   answers duplicates, reassembles Block1 uploads, serves Block2 downloads
//!   of a response it holds, and hands whole requests to the application.
//! - [`client`]: [`client::Exchange`], one request and its response, with
//!   Block1 and Block2 done for the caller, and the RFC 7252 retransmission
//!   timing ([`client::Retransmission`]).
//! - [`est`]: the EST-coaps resources, routes, content formats and the
//!   `/.well-known/core` discovery answer.
//!
//! # Use
//!
//! ```
//! use std::time::Instant;
//! use iotpki_coap::client::{Exchange, Progress};
//! use iotpki_coap::est::{self, Op};
//! use iotpki_coap::msg::Code;
//! use iotpki_coap::server::{Endpoint, Limits, Received, Response};
//!
//! let mut server = Endpoint::new(Limits::default()); // one per DTLS session
//! let csr = vec![0x30; 2500]; // block-wise: 3 blocks of 1024
//! let mut device = Exchange::new(
//!     Code::POST, "/.well-known/est/sren", Some(est::CT_PKCS10), Some(est::CT_PKCS7_CERTS_ONLY),
//!     csr.clone(), 6, 0x4000, vec![1, 2, 3, 4],
//! ).unwrap();
//! let response = loop {
//!     // The device sends `device.datagram()` over DTLS (again on a timeout).
//!     let answer = match server.receive(&device.datagram(), Instant::now()) {
//!         Received::Reply(bytes) => bytes,
//!         Received::Request(req) => {
//!             assert_eq!(est::route(&req.path).unwrap().op, Op::Sren);
//!             assert_eq!(req.payload, csr);
//!             server.respond(&req, Response::with(Code::CHANGED, est::CT_PKCS7_CERTS_ONLY, vec![0x30; 1500]))
//!         }
//!         Received::Nothing => continue,
//!     };
//!     match device.receive(&answer) {
//!         Progress::Send => continue,
//!         Progress::Done(r) => break r,
//!         other => panic!("{other:?}"),
//!     }
//! };
//! assert_eq!((response.code, response.payload.len()), (Code::CHANGED, 1500));
//! ```
//!
//! # Threat model (the network)
//!
//! A peer that completed the DTLS handshake may still send anything. The
//! codec allocates no more than the datagram's length; an [`server::Endpoint`]
//! holds at most [`server::Limits::bound`] bytes whatever the peer sends
//! (one upload of at most `max_body`, a bounded number of held response
//! bodies, a bounded number of remembered answers), and forgets what is
//! stale when [`server::Endpoint::expire`] is called.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod block;
pub mod client;
pub mod est;
#[doc(hidden)]
pub mod internal;
pub mod msg;
pub mod option;
pub mod server;
