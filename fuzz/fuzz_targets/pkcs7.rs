//! PKCS#7 certs-only answers as the agent receives them, and certificates in them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(certs) = iotpki_core::pkcs7::parse_certs_only(data) {
        let refs: Vec<&[u8]> = certs.iter().map(|c| c.as_slice()).collect();
        // What we parsed, we can encode, and it parses back to the same certificates.
        let p7 = iotpki_core::pkcs7::certs_only(&refs).unwrap();
        let mut back = iotpki_core::pkcs7::parse_certs_only(&p7).unwrap();
        let mut want = certs.clone();
        back.sort();
        want.sort();
        want.dedup();
        assert_eq!(back, want);
        for c in &certs {
            let _ = iotpki_core::profile::cert_info(c);
        }
    }
    let _ = iotpki_core::profile::cert_info(data);
});
