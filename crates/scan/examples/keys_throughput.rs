//! Throughput of the key finder alone, one core, 1 MiB chunks.
//!
//! `cargo run --release -p iotpki-scan --example keys_throughput [MiB [CHUNK]]`
//! (default 512 MiB per kind of data, 1 MiB chunks). The data is made before the clock
//! starts: pseudo-random bytes (xorshift, deterministic), zero bytes, ASCII
//! text (this crate's own source, repeated) and a mix of the three with a few
//! keys in it.

use std::time::Instant;

use iotpki_scan::keys::Finder;

const CHUNK: usize = 1 << 20;
/// Distinct data per kind; cycled to the total.
const POOL: usize = 64 << 20;

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(n);
    v
}

fn text(n: usize) -> Vec<u8> {
    let src = [
        include_str!("../src/keys.rs"),
        include_str!("../src/keys/decode.rs"),
        include_str!("../src/keys/pem.rs"),
        include_str!("../src/keys/pfx.rs"),
        include_str!("../src/keys/ssh.rs"),
        include_str!("../src/lib.rs"),
    ]
    .concat();
    src.as_bytes().iter().copied().cycle().take(n).collect()
}

/// Random, zero and text megabytes in turn, with a certificate-shaped and a
/// PEM-shaped decoy now and then.
fn mix(n: usize) -> Vec<u8> {
    let r = noise(7, n);
    let t = text(n);
    let mut v = Vec::with_capacity(n);
    for i in 0..n / CHUNK {
        let range = i * CHUNK..(i + 1) * CHUNK;
        match i % 3 {
            0 => v.extend_from_slice(&r[range]),
            1 => v.extend(std::iter::repeat_n(0u8, CHUNK)),
            _ => v.extend_from_slice(&t[range]),
        }
        let at = v.len() - 4096;
        v[at..at + 9].copy_from_slice(&[0x30, 0x82, 0x01, 0x00, 0x30, 0x81, 0xf0, 0xa0, 0x03]);
        v[at + 100..at + 100 + 28].copy_from_slice(b"-----BEGIN PRIVATE KEY-----\n");
    }
    v
}

fn run(name: &str, pool: &[u8], total: usize, chunk: usize) {
    let mut out = Vec::new();
    let mut f = Finder::new();
    let started = Instant::now();
    let mut fed = 0;
    while fed < total {
        for c in pool.chunks(chunk) {
            if fed >= total {
                break;
            }
            f.feed(c, &mut out);
            fed += c.len();
        }
    }
    f.finish(&mut out);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name:>7}: {:>5} MiB in {secs:.3} s = {:>6.0} MB/s ({} findings)",
        fed >> 20,
        fed as f64 / secs / 1e6,
        out.len()
    );
}

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(512);
    let total = mib << 20;
    let chunk: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(CHUNK);
    let pool = POOL.min(total);
    println!("{mib} MiB of each, in chunks of {chunk} octets");
    run("random", &noise(1, pool), total, chunk);
    run("zeros", &vec![0u8; pool], total, chunk);
    run("text", &text(pool), total, chunk);
    run("mix", &mix(pool), total, chunk);
}
