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
        let first = entries[0];
        // Walk the chain as far as it goes, with the first entry's own claims as the device's.
        let _ = voucher::verify(data, &first.next_owner, &first.serial, b"", 1_750_000_000);
    } else {
        let _ = voucher::verify(data, b"", &DeviceSerial::parse("SEED-1").unwrap(), b"", 0);
    }
});
