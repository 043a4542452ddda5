//! The device's identity file (JSON) and the PEM inside it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = serde_json::from_slice::<iotpki_agent::Identity>(data) {
        let _ = iotpki_core::pem::decode_all("CERTIFICATE", &id.cert_pem);
        let _ = iotpki_core::pem::decode_all("CERTIFICATE", &id.chain_pem);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = iotpki_core::pem::decode_all("CERTIFICATE", text);
    }
});
