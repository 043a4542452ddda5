//! Ownership vouchers as a microcontroller reads them (iotpki-device-core):
//! nothing may panic, and each verdict is the core's (the agent's).
#![no_main]
use iotpki_core::name::DeviceSerial;
use iotpki_device_core::voucher;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_750_000_000;

fuzz_target!(|data: &[u8]| {
    let ours = voucher::decode(data);
    let core = iotpki_core::voucher::Voucher::decode(data);
    assert_eq!(ours.is_ok(), core.is_ok(), "decode verdicts differ: ours {ours:?}, core {core:?}");
    if let (Ok(entries), Ok(v)) = (&ours, &core) {
        let first = v.entries()[0];
        assert_eq!(entries[0].serial(), first.serial.as_str());
        // Walk the chain from the first entry's own claims, as both would.
        let mine = voucher::verify(data, &first.next_owner, first.serial.as_str(), b"", NOW);
        let theirs = iotpki_core::voucher::verify(data, &first.next_owner, &first.serial, b"", NOW as i64);
        assert_eq!(mine.is_ok(), theirs.is_ok(), "verify verdicts differ");
        assert_eq!(voucher::check_extends(data, data, NOW).ok(), Some(voucher::Extension::Unchanged));
    } else {
        let (a, b) = data.split_at(data.len() / 2);
        let ours = voucher::check_extends(a, b, 0).is_ok();
        assert_eq!(ours, iotpki_core::voucher::check_extends(a, b, 0).is_ok(), "extension verdicts differ");
        let _ = voucher::verify(data, b"", "SEED-1", b"", 0);
        let _ = DeviceSerial::parse("SEED-1");
    }
});
