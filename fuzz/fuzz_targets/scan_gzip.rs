//! The walker's gzip reader: a gzip header, then the fuzzer's deflate data.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "scan_common.rs"]
mod scan_common;

fuzz_target!(|data: &[u8]| {
    scan_common::run(&scan_common::with_magic(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", data));
});
