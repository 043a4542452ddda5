//! The walker's squashfs reader (superblock checks, then backhand): "hsqs", then the fuzzer's superblock and tables.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "scan_common.rs"]
mod scan_common;

fuzz_target!(|data: &[u8]| {
    scan_common::run(&scan_common::with_magic(b"hsqs", data));
});
