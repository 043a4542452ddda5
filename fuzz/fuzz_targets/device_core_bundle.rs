//! Trust bundles as a microcontroller reads them (iotpki-device-core):
//! nothing may panic, and each verdict is the core's (the agent's) on the
//! same octets: decoding, the initial check, and the update check against itself.
#![no_main]
use iotpki_device_core::bundle::{self, Bundle};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_750_000_000;

fuzz_target!(|data: &[u8]| {
    let ours = Bundle::decode(data);
    let core = iotpki_core::bundle::Bundle::decode(data);
    assert_eq!(ours.is_ok(), core.is_ok(), "decode verdicts differ: ours {ours:?}, core {core:?}");
    let init = bundle::verify_initial(data, NOW).is_ok();
    assert_eq!(init, iotpki_core::bundle::verify_initial(data, NOW as i64).is_ok(), "initial verdicts differ");
    if let (Ok(b), Ok(c)) = (ours, core) {
        assert_eq!(b.content().version, c.content().version);
        assert_eq!(b.content().anchors, c.content().anchors);
        assert_eq!(b.content().signers, c.content().signers);
        // The same octets again: unchanged for the device (the agent does not re-verify them).
        assert!(matches!(bundle::verify_update(&b, data, NOW), Ok(bundle::Update::Unchanged)));
    }
});
