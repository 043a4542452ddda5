//! EST request bodies: base64 with any line breaks, then PKCS#10.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(der) = iotpki_core::est::decode_body(data) {
        // Encoding what we decoded and decoding it again is the identity.
        let again = iotpki_core::est::decode_body(iotpki_core::est::encode_body(&der).as_bytes()).unwrap();
        assert_eq!(again, der);
        let _ = iotpki_core::csr::parse_and_verify(&der);
    }
});
