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
    // The raw input as a DER message too.
    if let Ok(certs) = est::parse_certs_only(data) {
        let core = iotpki_core::pkcs7::parse_certs_only(data).expect("the core reads what we read");
        assert_eq!(certs, core);
    }
    let _ = est::enroll_answer(data);
    let _ = est::ca_chain(data, b"");
});
