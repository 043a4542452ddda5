//! Production record uploads (JSON lines) as the authority receives them at /factory/sync.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(entries) = iotpki_core::record::parse(text) {
            // What parses, re-encodes to lines that parse to the same entries.
            let again: String = entries.iter().map(|e| e.to_line() + "\n").collect();
            assert_eq!(iotpki_core::record::parse(&again).unwrap(), entries);
            for e in &entries {
                let _ = e.cert_der();
            }
        }
    }
});
