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
    // (In any order: the cms crate gives a SET OF sorted, we give it as sent.)
    if let Ok(mut core) = iotpki_core::pkcs7::parse_certs_only(data) {
        let mut ours = est::parse_certs_only(data).expect("the core read certificates we did not");
        ours.sort();
        core.sort();
        assert_eq!(ours, core, "the core read other certificates");
    }
    let _ = est::enroll_answer(data);
    let _ = est::ca_chain(data, b"");
});
