//! The walker's zip reader (found by its end record): a local header signature, then the fuzzer's archive.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "scan_common.rs"]
mod scan_common;

fuzz_target!(|data: &[u8]| {
    scan_common::run(&scan_common::with_magic(b"PK\x03\x04", data));
});
