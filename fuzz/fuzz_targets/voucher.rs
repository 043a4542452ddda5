//! Ownership vouchers as a device receives them (core::voucher).
#![no_main]
use iotpki_core::name::DeviceSerial;
use iotpki_core::voucher::{self, Voucher};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = Voucher::decode(data) {
        // Only the deterministic encoding decodes: it encodes back to the same octets.
        assert_eq!(v.encode(), data);
        let entries = v.entries();
        // Every key a decoded voucher names is in its one canonical form.
        for e in &entries {
            assert!(iotpki_core::keys::canonical_spki(&e.next_owner).is_ok());
        }
        // A voucher extends itself by nothing.
        assert_eq!(voucher::check_extends(data, data, 1_750_000_000), Ok(voucher::Extension::Unchanged));
        let first = entries[0];
        // Walk the chain as far as it goes, with the first entry's own claims as the device's.
        let _ = voucher::verify(data, &first.next_owner, &first.serial, b"", 1_750_000_000);
    } else {
        // Any two octet strings: an answer, never a panic.
        let (a, b) = data.split_at(data.len() / 2);
        let _ = voucher::check_extends(a, b, 0);
        let _ = voucher::verify(data, b"", &DeviceSerial::parse("SEED-1").unwrap(), b"", 0);
    }
});
