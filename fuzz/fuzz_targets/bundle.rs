//! Trust bundles as a device receives them: from the server, or as a file through
//! any intermediary (core::bundle).
#![no_main]
use iotpki_core::bundle::{self, Bundle, UnsignedBundle};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_750_000_000;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = Bundle::decode(data) {
        // Only the deterministic encoding decodes: it encodes back to the same octets.
        assert_eq!(b.encode(), data);
        if b.signatures().is_empty() {
            // A draft is exactly what its content encodes to.
            assert_eq!(UnsignedBundle::new(b.content().clone()).unwrap().encode(), data);
        }
        let _ = b.own_signers();
        let _ = b.foreign_signatures();
        let _ = bundle::verify_initial(data, NOW);
        let _ = bundle::verify_update(&b, data, NOW);
    }
});
