//! EST answers as a microcontroller reads them (iotpki-device-core): the
//! base64 body and its PKCS#7 certs-only message. Nothing may panic, and the
//! certificates found are the core's (the agent's) for the same octets.
#![no_main]
use iotpki_device_core::est;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ours = est::decode_body(data);
    assert_eq!(ours.is_ok(), iotpki_core::est::decode_body(data).is_ok(), "base64 verdicts differ");
    if let Ok(der) = &ours {
        assert_eq!(Ok(der), iotpki_core::est::decode_body(data).as_ref().map_err(|_| ()));
        let _ = est::parse_certs_only(der);
    }
    // The raw input as a DER message too. What the core (the cms crate, the
    // whole SignedData) reads, we read, with the same certificates; we may
    // read more, since the parts we skip (digest algorithms, signer infos)
    // carry nothing a certs-only answer is trusted for.
    if let Ok(core) = iotpki_core::pkcs7::parse_certs_only(data) {
        assert_eq!(est::parse_certs_only(data).ok(), Some(core), "the core read certificates we did not");
    }
    let _ = est::enroll_answer(data);
    let _ = est::ca_chain(data, b"");
});
