//! An HTTP/1.1 answer as the agent reads it from a server, a relay or an OCSP
//! responder (`iotpki_agent::http1`): bounded, and a body is never longer than allowed.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for max in [0usize, 64, 1 << 20] {
        if let Ok(r) = iotpki_agent::http1::response_from_bytes(data, false, max) {
            assert!(r.body.len() <= max);
            assert!((200..600).contains(&r.status));
        }
    }
    let _ = iotpki_agent::http1::response_from_bytes(data, true, 64);
});
