//! The walker's tar reader: the fuzzer's first 512 bytes as a header with the
//! ustar magic and a checksum that holds, then the rest.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "scan_common.rs"]
mod scan_common;

fuzz_target!(|data: &[u8]| {
    let mut v = data.to_vec();
    if v.len() < 512 {
        v.resize(512, 0);
    }
    v[257..263].copy_from_slice(b"ustar\0");
    v[148..156].fill(b' ');
    let sum: u32 = v[..512].iter().map(|&c| u32::from(c)).sum();
    v[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    scan_common::run(&v);
});
