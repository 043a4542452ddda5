//! Raw images: carving, and every reader the carver reaches.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "scan_common.rs"]
mod scan_common;

fuzz_target!(|data: &[u8]| {
    scan_common::run(data);
});
