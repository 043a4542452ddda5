//! The line link as a device receives it from a station: INSTALL payloads and
//! the length-prefixed fields of ACTIVATE (TPM attestation).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(i) = iotpki_agent::line::Install::decode(data) {
        // Whatever decodes, encodes back to the same bytes.
        assert_eq!(i.encode(), data);
    }
    if let Ok(fields) = iotpki_agent::line::decode_fields(data, "ACTIVATE") {
        let refs: Vec<&[u8]> = fields.iter().map(|f| &f[..]).collect();
        assert_eq!(iotpki_agent::line::encode_fields(&refs), data);
    }
});
