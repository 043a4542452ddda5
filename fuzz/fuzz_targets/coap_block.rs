//! A sequence of datagrams from one DTLS peer to one CoAP server endpoint
//! (iotpki_coap::server), with the time moving and responses of any size:
//! the endpoint never holds more than its documented bound. The script
//! format is in iotpki_coap::internal.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    iotpki_coap::internal::block_script(data);
});
