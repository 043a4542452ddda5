//! TPM public areas as a station relays them for attestation at birth
//! (core::tpm): parse, the key's SPKI, the attribute check, and a credential
//! made for the parsed point as if it were an EK (off-curve points must be
//! refused, never panic).
#![no_main]
use iotpki_core::tpm;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = tpm::parse_ecc_public(data) {
        assert_eq!(p.point.len(), 65);
        assert_eq!(&p.name[..2], &[0x00, 0x0b]);
        let _ = p.check_device_key();
        if let Ok(spki) = p.spki_der() {
            let _ = tpm::make_credential(&spki, &p.name, b"fuzz-secret");
        }
    }
});
