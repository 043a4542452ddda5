//! The walker's cpio reader: a newc header whose fields are always hex digits (from the fuzzer's bytes), then the rest.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "scan_common.rs"]
mod scan_common;

fuzz_target!(|data: &[u8]| {
    let mut v = b"070701".to_vec();
    let hex = b"0123456789abcdef";
    v.extend(data.iter().take(104).map(|b| hex[usize::from(b & 15)]));
    v.extend(data.iter().skip(104));
    scan_common::run(&v);
});
