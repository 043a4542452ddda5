//! PKCS#10 requests as the authority receives them (after base64).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = iotpki_core::csr::parse_and_verify(data) {
        // Anything accepted must have a key type we name and a re-encodable key.
        let _ = csr.key_type.to_string();
        assert!(!csr.spki_der.is_empty());
    }
});
