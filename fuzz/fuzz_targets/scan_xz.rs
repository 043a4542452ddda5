//! The walker's xz reader: an xz stream header (CRC-32 check), then the fuzzer's blocks.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "scan_common.rs"]
mod scan_common;

fuzz_target!(|data: &[u8]| {
    scan_common::run(&scan_common::with_magic(b"\xfd7zXZ\x00\x00\x04\xe6\xd6\xb4\x46", data));
});
