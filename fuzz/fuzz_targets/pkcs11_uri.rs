//! PKCS#11 URIs (RFC 7512) as the config and identity files carry them: parse,
//! and what parses prints back to a URI that parses to the same thing.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(uri) = iotpki_hsm::Pkcs11Uri::parse(text) {
        let again = iotpki_hsm::Pkcs11Uri::parse(&uri.to_string()).expect("a printed URI parses");
        assert_eq!(again, uri, "round trip");
    }
});
