//! The container walker against images made by Debian's own tools (gzip, xz,
//! tar, cpio, zip, mksquashfs): every stream arrives with its location and
//! exact bytes, and every hostile image ends in the expected skip reason.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use iotpki_scan::walk::{walk_paths, walk_reader, Limits, Sink};
use iotpki_scan::Report;

/// Installs the archivers this test drives when one is missing (CI: a fresh Debian 12, as root).
fn tools() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let need = [
            ("gzip", "gzip"),
            ("xz", "xz-utils"),
            ("tar", "tar"),
            ("cpio", "cpio"),
            ("zip", "zip"),
            ("mksquashfs", "squashfs-tools"),
        ];
        let missing: Vec<&str> = need
            .iter()
            .filter(|(bin, _)| !Command::new("which").arg(bin).output().is_ok_and(|o| o.status.success()))
            .map(|(_, pkg)| *pkg)
            .collect();
        if !missing.is_empty() {
            let ok = Command::new("apt-get")
                .args(["install", "-y", "-q"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "these tests need {missing:?}: install them (apt-get install -y {})", missing.join(" "));
        }
    });
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("bash").arg("-ec").arg(script).current_dir(dir).output().expect("bash");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Every stream, whole.
#[derive(Default)]
struct Rec {
    streams: Vec<(String, Vec<u8>)>,
    open: bool,
}

impl Sink for Rec {
    fn begin(&mut self, location: &str) {
        assert!(!self.open, "streams must not nest");
        self.open = true;
        self.streams.push((location.to_string(), Vec::new()));
    }
    fn data(&mut self, chunk: &[u8]) {
        assert!(self.open);
        self.streams.last_mut().expect("begun").1.extend_from_slice(chunk);
    }
    fn end(&mut self) {
        assert!(self.open);
        self.open = false;
    }
}

impl Rec {
    fn get(&self, loc: &str) -> &[u8] {
        match self.streams.iter().find(|(l, _)| l == loc) {
            Some((_, b)) => b,
            None => panic!("{loc} not delivered; delivered: {:#?}", self.names()),
        }
    }
    fn names(&self) -> Vec<&str> {
        self.streams.iter().map(|(l, _)| l.as_str()).collect()
    }
}

fn walk(path: &Path, limits: &Limits) -> (Rec, Report) {
    let mut rec = Rec::default();
    let report = walk_paths(&[path.to_path_buf()], limits, &mut rec);
    assert!(!rec.open);
    (rec, report)
}

fn skipped_with(report: &Report, loc: &str, words: &str) {
    assert!(
        report.skipped.iter().any(|s| s.location == loc && s.reason.contains(words)),
        "no skip at {loc} saying {words:?}: {:#?}",
        report.skipped
    );
}

/// Bytes that look like a key file, and differ per name.
fn payload(name: &str, n: usize) -> Vec<u8> {
    let mut v = format!("-----BEGIN TEST MARKER {name}-----\n").into_bytes();
    let mut x: u32 = name.bytes().fold(7, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(b'a' + (x % 26) as u8);
        if x % 61 == 0 {
            v.push(b'\n');
        }
    }
    v
}

fn tmp() -> (tempfile::TempDir, PathBuf) {
    tools();
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path().to_path_buf();
    (d, p)
}

#[test]
fn a_file_five_containers_deep_arrives_whole_with_its_path() {
    let (_d, p) = tmp();
    let secret = payload("deep", 20_000);
    fs::write(p.join("secret.pem"), &secret).unwrap();
    sh(
        &p,
        "zip -q inner.zip secret.pem
         echo inner.zip | cpio -o -H newc --quiet > inner.cpio
         tar czf inner.tgz inner.cpio
         mkdir -p root/data && cp inner.tgz root/data/
         mksquashfs root rootfs.sqsh -comp gzip -noappend -all-root -quiet >/dev/null",
    );
    let img = p.join("rootfs.sqsh");
    let (rec, report) = walk(&img, &Limits::default());
    let base = img.display().to_string();
    let loc = format!("{base}!/data/inner.tgz|gzip!inner.cpio!inner.zip!secret.pem");
    assert_eq!(rec.get(&loc), secret.as_slice());
    // Every level is itself a leaf, in full.
    assert_eq!(rec.get(&base), fs::read(&img).unwrap().as_slice());
    assert_eq!(rec.get(&format!("{base}!/data/inner.tgz")), fs::read(p.join("inner.tgz")).unwrap().as_slice());
    assert_eq!(
        rec.get(&format!("{base}!/data/inner.tgz|gzip!inner.cpio")),
        fs::read(p.join("inner.cpio")).unwrap().as_slice()
    );
    assert!(report.skipped.is_empty(), "{:#?}", report.skipped);
    assert_eq!(report.containers, 5);
}

#[test]
fn xz_tar_is_opened() {
    let (_d, p) = tmp();
    let a = payload("a", 3000);
    let b = payload("b", 70_000);
    fs::create_dir(p.join("etc")).unwrap();
    fs::write(p.join("etc/a.key"), &a).unwrap();
    fs::write(p.join("b.bin"), &b).unwrap();
    sh(&p, "tar cf fs.tar etc b.bin && xz -k fs.tar");
    let (rec, report) = walk(&p.join("fs.tar.xz"), &Limits::default());
    let base = p.join("fs.tar.xz").display().to_string();
    assert_eq!(rec.get(&format!("{base}|xz!etc/a.key")), a.as_slice());
    assert_eq!(rec.get(&format!("{base}|xz!b.bin")), b.as_slice());
    assert_eq!(rec.get(&format!("{base}|xz")), fs::read(p.join("fs.tar")).unwrap().as_slice());
    assert!(report.skipped.is_empty(), "{:#?}", report.skipped);
}

/// A firmware blob: a 4 KiB header, a gzip "kernel" at 0x1000, a squashfs at 0x40000.
fn firmware(p: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let kernel = payload("kernel", 100_000);
    let key = payload("etc-key", 1500);
    fs::write(p.join("kernel"), &kernel).unwrap();
    fs::create_dir_all(p.join("root/etc")).unwrap();
    fs::write(p.join("root/etc/key.pem"), &key).unwrap();
    sh(
        p,
        "gzip -9 -k -n kernel
         mksquashfs root root.sqsh -comp gzip -noappend -all-root -quiet >/dev/null
         { head -c 4096 /dev/zero | tr '\\0' 'H'; cat kernel.gz; } > fw.bin
         truncate -s $((0x40000)) fw.bin
         cat root.sqsh >> fw.bin
         head -c 5000 /dev/zero | tr '\\0' 'T' >> fw.bin",
    );
    (p.join("fw.bin"), kernel, key)
}

#[test]
fn a_raw_firmware_is_carved() {
    let (_d, p) = tmp();
    let (fw, kernel, key) = firmware(&p);
    let (rec, report) = walk(&fw, &Limits::default());
    let base = fw.display().to_string();
    assert_eq!(rec.get(&base), fs::read(&fw).unwrap().as_slice());
    assert_eq!(rec.get(&format!("{base}@0x1000(gzip)|gzip")), kernel.as_slice());
    assert_eq!(rec.get(&format!("{base}@0x40000(squashfs)!/etc/key.pem")), key.as_slice());
    assert!(report.skipped.is_empty(), "{:#?}", report.skipped);
    assert_eq!(rec.streams.len(), 3, "{:#?}", rec.names());
}

#[test]
fn a_raw_firmware_read_as_a_stream_is_carved_too() {
    let (_d, p) = tmp();
    let (fw, kernel, key) = firmware(&p);
    let mut rec = Rec::default();
    let report = walk_reader("stdin", fs::File::open(&fw).unwrap(), &Limits::default(), &mut rec);
    assert_eq!(rec.get("stdin@0x1000(gzip)|gzip"), kernel.as_slice());
    assert_eq!(rec.get("stdin@0x40000(squashfs)!/etc/key.pem"), key.as_slice());
    assert!(report.skipped.is_empty(), "{:#?}", report.skipped);
    // And inside a decompressed stream (a firmware shipped gzipped, beyond the 1 MiB held in memory).
    sh(&p, "head -c 3000000 /dev/zero | tr '\\0' 'P' >> fw.bin && gzip -k fw.bin");
    let (rec, report) = walk(&p.join("fw.bin.gz"), &Limits::default());
    let base = p.join("fw.bin.gz").display().to_string();
    assert_eq!(rec.get(&format!("{base}|gzip@0x40000(squashfs)!/etc/key.pem")), key.as_slice());
    assert!(report.skipped.is_empty(), "{:#?}", report.skipped);
}

#[test]
fn a_gzip_bomb_stops_at_the_limit_and_the_rest_is_still_read() {
    let (_d, p) = tmp();
    let good = payload("good", 5000);
    fs::write(p.join("good.pem"), &good).unwrap();
    sh(
        &p,
        "head -c 300M /dev/zero | gzip -1 > bomb.gz && tar cf both.tar good.pem bomb.gz && tar cf good.tar good.pem",
    );
    let limits = Limits { expanded_floor: 4 << 20, expansion_ratio: 0, ..Limits::default() };
    let img = p.join("both.tar");
    let (rec, report) = walk(&img, &limits);
    let base = img.display().to_string();
    assert_eq!(rec.get(&format!("{base}!good.pem")), good.as_slice());
    let bomb = format!("{base}!bomb.gz|gzip");
    skipped_with(&report, &bomb, "decompressed bytes limit (4 MiB) reached");
    let expanded: usize = rec.streams.iter().filter(|(l, _)| l != &base).map(|(_, b)| b.len()).sum();
    assert!(expanded <= 4 << 20, "{expanded} bytes expanded");
    // The bomb's own bytes (a tar member) count too; the rest went to its output.
    assert!(rec.get(&bomb).len() > 1 << 20);
    // A later input is still read (a key in its raw bytes is found), its containers not opened.
    let mut rec = Rec::default();
    let report = walk_paths(&[img.clone(), p.join("good.tar")], &limits, &mut rec);
    let later = p.join("good.tar").display().to_string();
    assert_eq!(rec.get(&later), fs::read(p.join("good.tar")).unwrap().as_slice());
    skipped_with(&report, &later, "reached earlier in the scan: containers in");
}

#[test]
fn a_file_larger_than_the_per_file_limit_is_cut() {
    let (_d, p) = tmp();
    sh(&p, "head -c 3M /dev/zero | tr '\\0' 'z' > big && gzip -k big");
    let limits = Limits { max_file_bytes: 1 << 20, ..Limits::default() };
    let (rec, report) = walk(&p.join("big.gz"), &limits);
    let loc = format!("{}|gzip", p.join("big.gz").display());
    assert_eq!(rec.get(&loc).len(), 1 << 20);
    skipped_with(&report, &loc, "larger than the per-file limit (1 MiB)");
}

#[test]
fn a_container_seen_before_is_not_opened_again() {
    let (_d, p) = tmp();
    fs::write(p.join("k.pem"), payload("k", 900)).unwrap();
    // b.tar holds a.tar.gz and a.tar itself: a.tar.gz's content is a container already opened.
    sh(&p, "tar cf a.tar k.pem && gzip -k a.tar && tar cf b.tar a.tar.gz a.tar");
    let img = p.join("b.tar");
    let (rec, report) = walk(&img, &Limits::default());
    let base = img.display().to_string();
    rec.get(&format!("{base}!a.tar.gz|gzip!k.pem"));
    // The repeat is delivered (a key there is reported there), not opened again.
    rec.get(&format!("{base}!a.tar"));
    assert!(!rec.names().contains(&format!("{base}!a.tar!k.pem").as_str()));
    skipped_with(&report, &format!("{base}!a.tar"), &format!("same content as {base}!a.tar.gz|gzip"));
}

#[test]
fn a_zip_holding_a_copy_of_itself_ends() {
    let (_d, p) = tmp();
    fs::write(p.join("k.pem"), payload("z", 900)).unwrap();
    // self.zip holds k.pem and inner.zip, a byte copy of the zip it sits in (stored).
    sh(&p, "zip -q self.zip k.pem && cp self.zip inner.zip && zip -q -0 outer.zip k.pem inner.zip");
    let (rec, report) = walk(&p.join("outer.zip"), &Limits::default());
    let base = p.join("outer.zip").display().to_string();
    rec.get(&format!("{base}!inner.zip!k.pem"));
    assert!(report.skipped.is_empty(), "{:#?}", report.skipped);
    let (rec2, report2) = walk(&p.join("self.zip"), &Limits::default());
    assert!(report2.skipped.is_empty());
    assert_eq!(rec2.streams.len(), 2);
    // Two copies of one zip inside an archive: the second is not opened.
    sh(&p, "cp inner.zip again.zip && zip -q -0 twice.zip inner.zip again.zip");
    let (rec, report) = walk(&p.join("twice.zip"), &Limits::default());
    let base = p.join("twice.zip").display().to_string();
    rec.get(&format!("{base}!inner.zip!k.pem"));
    skipped_with(&report, &format!("{base}!again.zip"), &format!("same content as {base}!inner.zip"));
    let _ = (rec, report);
}

#[test]
fn nesting_deeper_than_the_limit_is_not_opened() {
    let (_d, p) = tmp();
    fs::write(p.join("k.pem"), payload("n", 700)).unwrap();
    sh(&p, "tar cf t0.tar k.pem && for i in 1 2 3 4 5; do tar cf t$i.tar t$((i-1)).tar; done");
    let limits = Limits { max_depth: 3, ..Limits::default() };
    let img = p.join("t5.tar");
    let (rec, report) = walk(&img, &limits);
    let base = img.display().to_string();
    let deepest = format!("{base}!t4.tar!t3.tar!t2.tar");
    rec.get(&deepest);
    skipped_with(&report, &deepest, "nesting deeper than 3");
    assert!(rec.names().iter().all(|n| n.matches('!').count() <= 3));
}

#[test]
fn truncated_containers_say_so_and_keep_what_was_read() {
    let (_d, p) = tmp();
    let a = payload("first", 4000);
    fs::write(p.join("a.pem"), &a).unwrap();
    fs::write(p.join("b.bin"), payload("second", 200_000)).unwrap();
    sh(
        &p,
        "tar cf t.tar a.pem b.bin && head -c 60000 t.tar > cut.tar
         gzip -k t.tar && head -c $(( $(stat -c %s t.tar.gz) / 2 )) t.tar.gz > cut.tar.gz
         xz -k t.tar && head -c $(( $(stat -c %s t.tar.xz) / 2 )) t.tar.xz > cut.tar.xz
         mkdir r && cp a.pem b.bin r/ && mksquashfs r s.sqsh -comp gzip -noappend -all-root -quiet >/dev/null
         head -c $(( $(stat -c %s s.sqsh) / 2 )) s.sqsh > cut.sqsh",
    );
    let l = Limits::default();
    let img = p.join("cut.tar");
    let (rec, report) = walk(&img, &l);
    let base = img.display().to_string();
    assert_eq!(rec.get(&format!("{base}!a.pem")), a.as_slice());
    skipped_with(&report, &base, "claims 200000 bytes but only");

    for (file, what) in [("cut.tar.gz", "gzip"), ("cut.tar.xz", "xz")] {
        let img = p.join(file);
        let (rec, report) = walk(&img, &l);
        let base = img.display().to_string();
        let out = format!("{base}|{what}");
        skipped_with(&report, &out, &format!("{what} stream truncated after"));
        assert_eq!(rec.get(&format!("{out}!a.pem")), a.as_slice(), "{file}");
        skipped_with(&report, &out, "tar");
    }

    let img = p.join("cut.sqsh");
    let (rec, report) = walk(&img, &l);
    let base = img.display().to_string();
    rec.get(&base);
    skipped_with(&report, &base, "squashfs truncated: its superblock says");
}

/// Sets a tar header's size to GNU base-256 `size` and fixes its checksum.
fn set_tar_size(h: &mut [u8], size: u64) {
    h[124] = 0x80;
    h[125..128].fill(0);
    h[128..136].copy_from_slice(&size.to_be_bytes());
    h[148..156].fill(b' ');
    let sum: u64 = h[..512].iter().map(|&c| u64::from(c)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

#[test]
fn a_tar_entry_claiming_2_pow_60_bytes_ends_the_archive() {
    let (_d, p) = tmp();
    let a = payload("before", 1000);
    fs::write(p.join("a.pem"), &a).unwrap();
    fs::write(p.join("huge"), payload("huge", 3000)).unwrap();
    sh(&p, "tar cf t.tar a.pem huge");
    let mut t = fs::read(p.join("t.tar")).unwrap();
    // a.pem: header at 0, 1000 bytes of data (1024 padded); huge's header at 1536.
    assert_eq!(&t[1536..1540], b"huge");
    set_tar_size(&mut t[1536..2048], 1 << 60);
    fs::write(p.join("t.tar"), &t).unwrap();
    let img = p.join("t.tar");
    let (rec, report) = walk(&img, &Limits::default());
    let base = img.display().to_string();
    assert_eq!(rec.get(&format!("{base}!a.pem")), a.as_slice());
    skipped_with(&report, &base, "claims 1152921504606846976 bytes");
}

#[test]
fn a_corrupt_or_unsupported_squashfs_is_reported() {
    let (_d, p) = tmp();
    fs::create_dir(p.join("r")).unwrap();
    fs::write(p.join("r/k.pem"), payload("sq", 2000)).unwrap();
    sh(
        &p,
        "mksquashfs r gz.sqsh -comp gzip -noappend -all-root -quiet >/dev/null
         mksquashfs r lzo.sqsh -comp lzo -noappend -all-root -quiet >/dev/null",
    );
    let img = p.join("lzo.sqsh");
    let (rec, report) = walk(&img, &Limits::default());
    rec.get(&img.display().to_string());
    skipped_with(&report, &img.display().to_string(), "squashfs compressed with lzo: not supported");

    let good = fs::read(p.join("gz.sqsh")).unwrap();
    // Absurd counts and tables outside the filesystem.
    for (at, value, words) in [
        (4usize, u64::from(u32::MAX), "inodes"),
        (64, 1 << 40, "inode or directory table outside"),
        (48, 1 << 50, "id table outside"),
    ] {
        let mut s = good.clone();
        let n = if at == 4 { 4 } else { 8 };
        s[at..at + n].copy_from_slice(&value.to_le_bytes()[..n]);
        let img = p.join("bad.sqsh");
        fs::write(&img, &s).unwrap();
        let (_rec, report) = walk(&img, &Limits::default());
        skipped_with(&report, &img.display().to_string(), words);
    }
}

#[test]
fn zip_entries_encrypted_or_overlapping_are_skipped() {
    let (_d, p) = tmp();
    let a = payload("plain", 3000);
    fs::write(p.join("a.pem"), &a).unwrap();
    fs::write(p.join("s.pem"), payload("secret", 3000)).unwrap();
    sh(&p, "zip -q -P pw enc.zip s.pem && zip -q plain.zip a.pem");
    let img = p.join("enc.zip");
    let (_rec, report) = walk(&img, &Limits::default());
    skipped_with(&report, &format!("{}!s.pem", img.display()), "encrypted zip entry");

    // Two central-directory entries naming one local header: the second overlaps the first.
    let z = fs::read(p.join("plain.zip")).unwrap();
    let eocd = z.len() - 22;
    let cd_off = u32::from_le_bytes(z[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
    let cd = z[cd_off..eocd].to_vec();
    let mut out = z[..eocd].to_vec();
    let mut dup = cd.clone();
    let name_at = 46;
    dup[name_at] = b'b'; // "b.pem"
    out.extend_from_slice(&dup);
    let mut end = z[eocd..].to_vec();
    end[8..10].copy_from_slice(&2u16.to_le_bytes());
    end[10..12].copy_from_slice(&2u16.to_le_bytes());
    end[12..16].copy_from_slice(&((cd.len() * 2) as u32).to_le_bytes());
    out.extend_from_slice(&end);
    let img = p.join("overlap.zip");
    fs::write(&img, &out).unwrap();
    let (rec, report) = walk(&img, &Limits::default());
    let base = img.display().to_string();
    assert_eq!(rec.get(&format!("{base}!a.pem")), a.as_slice());
    skipped_with(&report, &format!("{base}!b.pem"), "overlaps another entry");
}

#[test]
fn an_unreadable_input_is_skipped_and_the_others_are_scanned() {
    let (_d, p) = tmp();
    fs::write(p.join("ok.bin"), b"plain bytes").unwrap();
    let mut rec = Rec::default();
    let report = walk_paths(&[p.join("missing.bin"), p.join("ok.bin")], &Limits::default(), &mut rec);
    skipped_with(&report, &p.join("missing.bin").display().to_string(), "No such file or directory");
    assert_eq!(rec.get(&p.join("ok.bin").display().to_string()), b"plain bytes");
}

/// Counts bytes, holds nothing.
#[derive(Default)]
struct Count(u64);
impl Sink for Count {
    fn begin(&mut self, _: &str) {}
    fn data(&mut self, chunk: &[u8]) {
        self.0 += chunk.len() as u64;
    }
    fn end(&mut self) {}
}

fn vm_hwm_kib() -> u64 {
    let s = fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A long stream of pseudo-random bytes.
struct Stream {
    left: u64,
    x: u64,
}
impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize) & !7;
        for c in buf[..n].chunks_exact_mut(8) {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            c.copy_from_slice(&self.x.to_le_bytes());
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[test]
fn memory_stays_bounded_on_a_long_stream() {
    let before = vm_hwm_kib();
    let mut sink = Count::default();
    // 384 MiB keeps a debug run short; scan_throughput walks 1 GiB (release) and prints VmHWM.
    let n = 384u64 << 20;
    let report = walk_reader("stream", Stream { left: n, x: 0x9e37_79b9_7f4a_7c15 }, &Limits::default(), &mut sink);
    assert_eq!(sink.0, n);
    assert_eq!(report.bytes_scanned, n);
    let grew = vm_hwm_kib().saturating_sub(before);
    assert!(grew < 64 * 1024, "peak memory grew by {grew} KiB");
}

#[test]
fn other_dialects_odc_cpio_v7_tar_zip64_xz_and_lz4_squashfs_and_an_initramfs() {
    let (_d, p) = tmp();
    let k = payload("dialect", 5000);
    fs::write(p.join("k.pem"), &k).unwrap();
    fs::create_dir(p.join("r")).unwrap();
    fs::write(p.join("r/k.pem"), &k).unwrap();
    sh(
        &p,
        "echo k.pem | cpio -o -H odc --quiet > odc.cpio
         tar --format=v7 -cf v7.tar k.pem
         zip -q -fz z64.zip k.pem
         mksquashfs r lz4.sqsh -comp lz4 -noappend -all-root -quiet >/dev/null
         mksquashfs r xz.sqsh -comp xz -noappend -all-root -quiet >/dev/null
         mksquashfs r bcj.sqsh -comp xz -Xbcj x86,arm -noappend -all-root -quiet >/dev/null
         mksquashfs r zstd.sqsh -comp zstd -noappend -all-root -quiet >/dev/null
         echo k.pem | cpio -o -H newc --quiet > early.cpio
         cp early.cpio main.cpio && gzip -n main.cpio
         cat early.cpio main.cpio.gz > initrd",
    );
    for (file, inner) in [
        ("odc.cpio", "!k.pem"),
        ("v7.tar", "!k.pem"),
        ("z64.zip", "!k.pem"),
        ("lz4.sqsh", "!/k.pem"),
        ("xz.sqsh", "!/k.pem"),
        ("bcj.sqsh", "!/k.pem"),
    ] {
        let img = p.join(file);
        let (rec, report) = walk(&img, &Limits::default());
        assert_eq!(rec.get(&format!("{}{inner}", img.display())), k.as_slice(), "{file}");
        assert!(report.skipped.is_empty(), "{file}: {:#?}", report.skipped);
    }
    let img = p.join("zstd.sqsh");
    let (_rec, report) = walk(&img, &Limits::default());
    skipped_with(&report, &img.display().to_string(), "squashfs compressed with zstd: not supported");
    // An initramfs: an early cpio, then a gzipped cpio right after it.
    let img = p.join("initrd");
    let (rec, report) = walk(&img, &Limits::default());
    let base = img.display().to_string();
    let at = fs::metadata(p.join("early.cpio")).unwrap().len();
    assert_eq!(rec.get(&format!("{base}!k.pem")), k.as_slice());
    assert_eq!(rec.get(&format!("{base}@{at:#x}(gzip)|gzip!k.pem")), k.as_slice());
    assert!(report.skipped.is_empty(), "{:#?}", report.skipped);
}

#[test]
fn the_entry_container_and_time_limits_hold() {
    let (_d, p) = tmp();
    for i in 0..5 {
        fs::write(p.join(format!("f{i}")), payload(&format!("f{i}"), 100)).unwrap();
    }
    sh(&p, "tar cf five.tar f0 f1 f2 f3 f4 && gzip -k five.tar && tar cf two.tar five.tar five.tar.gz && zip -q five.zip f0 f1 f2 f3 f4");
    let img = p.join("five.tar");
    let (rec, report) = walk(&img, &Limits { max_entries: 2, ..Limits::default() });
    let base = img.display().to_string();
    assert_eq!(rec.streams.len(), 3, "{:#?}", rec.names());
    skipped_with(&report, &base, "more than 2 entries");
    // A zip's central directory is read whole: one that claims too many entries is not opened.
    let img = p.join("five.zip");
    let (rec, report) = walk(&img, &Limits { max_entries: 2, ..Limits::default() });
    assert_eq!(rec.streams.len(), 1, "{:#?}", rec.names());
    skipped_with(&report, &img.display().to_string(), "zip archive claims 5 entries, more than the limit (2)");

    let img = p.join("two.tar");
    let (rec, report) = walk(&img, &Limits { max_containers: 2, ..Limits::default() });
    let base = img.display().to_string();
    rec.get(&format!("{base}!five.tar!f4"));
    assert_eq!(report.containers, 2);
    skipped_with(&report, &format!("{base}!five.tar.gz"), "containers limit (2) reached");

    let (rec, report) = walk(&img, &Limits { timeout: Some(std::time::Duration::ZERO), ..Limits::default() });
    assert!(rec.streams.is_empty());
    skipped_with(&report, &base, "time limit (0s) reached");
}

/// Checks what the limits promise, stream by stream (as the fuzz targets do).
struct Bounded {
    limits: Limits,
    open: Option<(String, u64)>,
    expanded: u64,
}

impl Sink for Bounded {
    fn begin(&mut self, location: &str) {
        assert!(self.open.is_none());
        let depth = location.matches(['!', '|']).count() as u32;
        assert!(depth <= self.limits.max_depth, "{location}");
        self.open = Some((location.to_string(), 0));
    }
    fn data(&mut self, chunk: &[u8]) {
        let (loc, n) = self.open.as_mut().unwrap();
        *n += chunk.len() as u64;
        if loc != "img" {
            self.expanded += chunk.len() as u64;
            assert!(*n <= self.limits.max_file_bytes);
        }
    }
    fn end(&mut self) {
        self.open = None;
    }
}

#[test]
fn mangled_images_never_panic_and_stay_within_the_limits() {
    let (_d, p) = tmp();
    fs::create_dir_all(p.join("r/etc")).unwrap();
    fs::write(p.join("r/etc/k.pem"), payload("m", 3000)).unwrap();
    sh(
        &p,
        "tar cf a.tar -C r etc && gzip -k a.tar && xz -k a.tar
         (cd r && find etc | cpio -o -H newc --quiet) > a.cpio
         (cd r && zip -q -r ../a.zip etc)
         mksquashfs r a.sqsh -comp gzip -noappend -all-root -quiet >/dev/null
         mksquashfs r x.sqsh -comp xz -noappend -all-root -quiet >/dev/null
         mksquashfs r l.sqsh -comp lz4 -noappend -all-root -quiet >/dev/null",
    );
    let limits = Limits {
        max_depth: 3,
        expanded_floor: 1 << 20,
        expansion_ratio: 0,
        max_file_bytes: 256 << 10,
        max_entries: 32,
        max_containers: 32,
        max_xz_memory: 16 << 20,
        max_squashfs_metadata: 1 << 20,
        ..Limits::default()
    };
    let before = vm_hwm_kib();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for file in ["a.tar", "a.tar.gz", "a.tar.xz", "a.cpio", "a.zip", "a.sqsh", "x.sqsh", "l.sqsh"] {
        let good = fs::read(p.join(file)).unwrap();
        for _ in 0..250 {
            let mut v = good.clone();
            for _ in 0..1 + next() % 8 {
                let at = (next() % v.len() as u64) as usize;
                v[at] = next() as u8;
            }
            if next() % 4 == 0 {
                v.truncate((next() % v.len() as u64) as usize);
            }
            let mut sink = Bounded { limits: limits.clone(), open: None, expanded: 0 };
            let _ = walk_reader("img", v.as_slice(), &limits, &mut sink);
            assert!(sink.expanded <= 1 << 20);
        }
    }
    // A squashfs block claiming 4 GiB once made backhand zero 4 GiB (the process's peak, shared
    // with the tests running beside this one).
    let grew = vm_hwm_kib().saturating_sub(before);
    assert!(grew < 256 * 1024, "peak memory grew by {grew} KiB");
}

/// Inputs the scan_squashfs fuzz target found (tests/data/): backhand panicked on them.
#[test]
fn squashfs_that_made_backhand_panic_end_in_a_skip() {
    for (file, words) in [
        ("squashfs-fragment-out-of-range.bin", "squashfs file corrupt"),
        ("squashfs-lz4-corrupt-block.bin", "squashfs corrupt"),
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(file);
        let data = fs::read(&path).unwrap();
        let mut rec = Rec::default();
        let report = walk_reader("img", data.as_slice(), &Limits::default(), &mut rec);
        assert_eq!(rec.get("img"), data.as_slice());
        assert!(report.skipped.iter().any(|s| s.reason.contains(words)), "{file}: {:#?}", report.skipped);
    }
}
