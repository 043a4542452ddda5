//! The walker's throughput on a raw firmware-like image, and its peak memory.
//!
//!     cargo run --release -p iotpki-scan --example scan_throughput [-- SIZE_MIB]
//!
//! Builds a raw image (default 1 GiB) of pseudo-random bytes with a gzip, a
//! tar and (when mksquashfs is installed) a squashfs embedded in it, written
//! to a temporary file (so it is read from the page cache: this measures the
//! walker, not the disk), then scans it with a no-op sink (the walker alone)
//! and with the key finder (the whole scanner), and once more as a stream
//! (`walk_reader`, held on disk). Prints MB/s and VmHWM.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use iotpki_scan::walk::{scan_paths, walk_paths, walk_reader, Limits, Sink};

struct Nothing;
impl Sink for Nothing {
    fn begin(&mut self, _: &str) {}
    fn data(&mut self, _: &[u8]) {}
    fn end(&mut self) {}
}

fn vm_hwm_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 =
        s.lines().find(|l| l.starts_with("VmHWM:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0
}

/// A ustar archive of one file.
fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&c| u32::from(c)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut v = h.to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512 + 1024, 0);
    v
}

fn squashfs(dir: &Path) -> Option<Vec<u8>> {
    std::fs::create_dir_all(dir.join("root/etc")).ok()?;
    std::fs::write(dir.join("root/etc/key.pem"), vec![b'k'; 3000]).ok()?;
    let out = dir.join("fs.sqsh");
    let ok = std::process::Command::new("mksquashfs")
        .arg(dir.join("root"))
        .arg(&out)
        .args(["-comp", "gzip", "-noappend", "-all-root", "-quiet"])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        std::fs::read(out).ok()
    } else {
        None
    }
}

fn main() {
    let mib: u64 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1024);
    let dir = tempfile::tempdir().unwrap();
    let text: Vec<u8> = (0..1 << 20).map(|i: u32| b"kernel text "[(i % 12) as usize]).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&text).unwrap();
    let mut blobs: Vec<(u64, Vec<u8>)> = vec![
        (mib / 10 * (1 << 20), gz.finish().unwrap()),
        (mib * 4 / 10 * (1 << 20), tar_of("etc/key.pem", &text[..5000])),
    ];
    match squashfs(dir.path()) {
        Some(s) => blobs.push((mib * 7 / 10 * (1 << 20), s)),
        None => eprintln!("(mksquashfs not installed: no squashfs in the image)"),
    }

    let path: PathBuf = dir.path().join("fw.bin");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut chunk = vec![0u8; 1 << 20];
    for i in 0..mib {
        for c in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        for (at, blob) in &blobs {
            if *at == i << 20 {
                chunk[..blob.len().min(1 << 20)].copy_from_slice(&blob[..blob.len().min(1 << 20)]);
            }
        }
        f.write_all(&chunk).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let size = mib << 20;
    // Read it once so both runs read from the page cache.
    std::io::copy(&mut std::fs::File::open(&path).unwrap(), &mut std::io::sink()).unwrap();

    let hwm0 = vm_hwm_mib();
    let t = Instant::now();
    let report = walk_paths(std::slice::from_ref(&path), &Limits::default(), &mut Nothing);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "walker alone (no-op sink): {mib} MiB in {secs:.2} s = {:.0} MB/s; containers {}, streams bytes {}, skipped {}",
        size as f64 / secs / 1e6,
        report.containers,
        report.bytes_scanned,
        report.skipped.len()
    );
    for s in &report.skipped {
        println!("  skipped {} @{}: {}", s.location, s.offset, s.reason);
    }
    println!("peak RSS (VmHWM): {:.1} MiB (before the scan: {hwm0:.1} MiB)", vm_hwm_mib());

    // The same image as a stream (a pipe): held in a temporary file from its
    // first container signature on, so its containers can be opened.
    let t = Instant::now();
    let report = walk_reader("stdin", std::fs::File::open(&path).unwrap(), &Limits::default(), &mut Nothing);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "walker on the image as a stream: {:.0} MB/s; containers {}; peak RSS {:.1} MiB",
        size as f64 / secs / 1e6,
        report.containers,
        vm_hwm_mib()
    );

    let t = Instant::now();
    let report = scan_paths(std::slice::from_ref(&path), &Limits::default());
    let secs = t.elapsed().as_secs_f64();
    println!(
        "walker + key finder: {:.0} MB/s; {} findings; peak RSS {:.1} MiB",
        size as f64 / secs / 1e6,
        report.findings.len(),
        vm_hwm_mib()
    );
}
