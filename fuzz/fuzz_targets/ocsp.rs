//! OCSP requests as the responder receives them at /ocsp.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = iotpki_core::ocsp::parse_request(data) {
        assert!(!req.cert_ids.is_empty() && req.cert_ids.len() <= iotpki_core::ocsp::MAX_REQUESTS);
    }
});
