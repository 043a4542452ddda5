//! The line link: INSTALL payloads as a device receives them from a station.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(i) = iotpki_agent::line::Install::decode(data) {
        // Whatever decodes, encodes back to the same bytes.
        assert_eq!(i.encode(), data);
    }
});
