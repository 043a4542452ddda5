//! Opening images, archives and filesystems, recursively, within limits.
//!
//! Every *stream* (an input image, the output of a decompressor, a file inside
//! an archive or filesystem) is delivered in full to a [`Sink`] as one leaf,
//! chunk by chunk, and is then examined for containers: at offset 0 and, like
//! binwalk, at any offset (carving): firmware blobs are a header followed by a
//! kernel and a filesystem, and update packages hold such blobs.
//!
//! # Locations
//!
//! A location names a stream by the path through its containers:
//!
//! | syntax | meaning |
//! | --- | --- |
//! | `fw.bin` | an input, as given (path or name) |
//! | `A!NAME` | the file `NAME` inside the archive or filesystem `A` (squashfs names are absolute: `A!/etc/key.pem`) |
//! | `A\|gzip`, `A\|xz` | the decompressed content of the compressed stream `A` |
//! | `A@0x40000(squashfs)` | a container carved out of stream `A` at that byte offset (a container at offset 0 *is* the stream: no suffix) |
//!
//! So `fw.bin@0x40000(squashfs)!/etc/ssl/key.pem`, or
//! `update.zip!fw.bin@0x1000(gzip)|gzip`. In member names the characters
//! `%`, `!`, `|`, `@` and control characters are written `%XX`, so a location
//! splits unambiguously; the input's own name is kept as given.
//!
//! # Formats
//!
//! Detected by magic bytes, never by file names: gzip, xz, tar (ustar and GNU;
//! old v7 tar only at offset 0, where its header checksum is checked), cpio
//! (newc `070701`, crc `070702`, odc `070707`), zip (zip64 too; found by its
//! end-of-central-directory record), squashfs 4.0 with gzip, xz or lz4
//! (lzma, lzo and zstd filesystems are reported as skipped: no pure-Rust
//! decoder here). backhand lists the filesystem; its blocks are decoded by
//! our own `Decoders`: bounded to what a squashfs block holds (backhand's
//! own gzip path reads a block to its end, however far it expands), xz by
//! lzma-rust2 (backhand's needs liblzma) and lz4 by lz4_flex (backhand's
//! panics on a corrupt block).
//! tar and cpio are read by our own small readers: the tar crate reads GNU
//! long names and pax headers whole into memory, whatever size they claim,
//! and no maintained cpio crate reads all three cpio formats.
//!
//! # Memory, disk and time
//!
//! Streams are read in 1 MiB chunks. Containers need the bytes again (zip and
//! squashfs need random access), so a stream that is not a region of a file
//! (the output of a decompressor, a compressed zip or squashfs member) is
//! *held* from the first container signature seen in it onward: in memory up
//! to 1 MiB, beyond that in an anonymous temporary file (`TMPDIR`). A plain
//! input file, and the members of tar, cpio and stored zip entries, are
//! regions of what holds them: read in place, never copied. Memory is thus
//! bounded by the nesting depth (about 2 MiB per level, plus an xz
//! dictionary of at most [`Limits::max_xz_memory`] and a squashfs's tables
//! of at most [`Limits::max_squashfs_metadata`]), whatever the size of
//! the image; temporary disk use by the bytes decompressed. An input read
//! through [`scan_reader`] that holds a container signature is held too (on
//! disk), since its containers can only be opened once it has been read.
//!
//! Every stream's SHA-256 is kept: a stream that holds containers and has the
//! same content as one seen before is delivered but not opened again ("same
//! content as LOCATION"), which ends archive quines and cycles. Inputs are
//! not hashed (hashing is most of the walker's cost on a raw image): a quine
//! given as input is cut one level down, at its first copy of itself.
//!
//! Everything not read says so in [`Report::skipped`]: bombs and limits,
//! cycles, truncated or corrupt containers, encrypted entries, formats not
//! supported. What was read before the problem is still delivered.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use memchr::memmem;
use sha2::{Digest, Sha256};

use crate::keys::Finder;
use crate::{Finding, FindingKind, Report, Skipped};

const MIB: u64 = 1 << 20;
/// Bytes read from a stream at a time.
const CHUNK: usize = 1 << 20;
/// Bytes kept from the previous chunk so a signature (and the header before
/// it: tar's magic is 257 bytes in) split between two chunks is still seen.
const OVERLAP: usize = 1024;
/// Bytes after a signature needed to validate its header (a tar header).
const AHEAD: usize = 512;
/// A held stream stays in memory up to this size, then goes to a temporary file.
const HOLD_MEM: usize = 1 << 20;
/// Container signatures remembered per stream, 16 bytes each (a tar holds
/// one per member; those inside an opened container are then passed over).
const MAX_CANDIDATES: usize = 1 << 18;

/// What a scan may cost. The defaults suit a workstation scanning untrusted
/// firmware; every bound holds whatever the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Containers inside containers: a stream at a deeper level is not opened.
    pub max_depth: u32,
    /// Decompressed or extracted bytes, all streams of the scan together (the
    /// inputs themselves not counted), are at most
    /// `max(expanded_floor, expansion_ratio × input bytes)`: a bomb stops there.
    pub expanded_floor: u64,
    /// See [`Limits::expanded_floor`]; 0 makes the floor a fixed cap.
    pub expansion_ratio: u64,
    /// Bytes read of one decompressed or extracted stream (inputs are read whole).
    pub max_file_bytes: u64,
    /// Entries read from one archive or filesystem.
    pub max_entries: u64,
    /// Containers opened in the whole scan.
    pub max_containers: u64,
    /// Wall-clock time for the whole scan; what is not read by then is reported skipped.
    pub timeout: Option<Duration>,
    /// Memory one xz decoder may use (its dictionary): `xz -9` needs 64 MiB.
    pub max_xz_memory: u64,
    /// Decompressed size of a squashfs's inode and directory tables, which
    /// are read whole into memory to list its files.
    pub max_squashfs_metadata: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 8,
            expanded_floor: 1 << 30,
            expansion_ratio: 64,
            max_file_bytes: 512 * MIB,
            max_entries: 100_000,
            max_containers: 10_000,
            timeout: None,
            max_xz_memory: 66 * MIB,
            max_squashfs_metadata: 64 * MIB,
        }
    }
}

impl Limits {
    /// The decompressed-bytes budget for inputs of `input_bytes` in total.
    pub fn expanded_budget(&self, input_bytes: u64) -> u64 {
        self.expanded_floor.max(self.expansion_ratio.saturating_mul(input_bytes))
    }
}

/// Receives every stream, one after the other: `begin`, its bytes in order
/// through `data`, `end`. Streams do not nest (a container's content follows
/// the container's own stream).
pub trait Sink {
    fn begin(&mut self, location: &str);
    fn data(&mut self, chunk: &[u8]);
    fn end(&mut self);
}

/// The default sink: the key finder, one per stream.
#[derive(Default)]
struct FinderSink {
    location: String,
    finder: Option<Finder>,
    out: Vec<(u64, FindingKind)>,
    findings: Vec<Finding>,
}

impl FinderSink {
    fn drain(&mut self) {
        for (offset, kind) in self.out.drain(..) {
            self.findings.push(Finding { location: self.location.clone(), offset, kind });
        }
    }
}

impl Sink for FinderSink {
    fn begin(&mut self, location: &str) {
        self.location = location.to_string();
        self.finder = Some(Finder::new());
    }
    fn data(&mut self, chunk: &[u8]) {
        if let Some(f) = self.finder.as_mut() {
            f.feed(chunk, &mut self.out);
        }
        self.drain();
    }
    fn end(&mut self) {
        if let Some(mut f) = self.finder.take() {
            f.finish(&mut self.out);
        }
        self.drain();
    }
}

/// Scans image files for keys; each location starts with the path as given.
/// A file that cannot be read is a [`Skipped`] entry; the others are still scanned.
pub fn scan_paths(paths: &[PathBuf], limits: &Limits) -> Report {
    let mut sink = FinderSink::default();
    let mut report = walk_paths(paths, limits, &mut sink);
    report.findings = sink.findings;
    report
}

/// Scans one stream (standard input, a download) named `name` for keys.
pub fn scan_reader(name: &str, r: impl Read, limits: &Limits) -> Report {
    let mut sink = FinderSink::default();
    let mut report = walk_reader(name, r, limits, &mut sink);
    report.findings = sink.findings;
    report
}

/// [`scan_paths`] with any sink: every stream goes to `sink`; the report has
/// no findings (the sink has them), only what was skipped and the counts.
pub fn walk_paths(paths: &[PathBuf], limits: &Limits, sink: &mut dyn Sink) -> Report {
    let input: u64 = paths.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let mut w = Walker::new(limits, sink, input);
    for path in paths {
        let name = path.display().to_string();
        if let Some(reason) = w.halted.clone() {
            w.skip(&name, 0, format!("{reason}: not read"));
            continue;
        }
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                w.skip(&name, 0, format!("cannot open: {e}"));
                continue;
            }
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                w.skip(&name, 0, format!("cannot read: {e}"));
                continue;
            }
        };
        if meta.is_dir() {
            w.skip(&name, 0, "is a directory: give the image files inside it".to_string());
        } else if meta.is_file() {
            let region = Region { src: Src::File(&file), start: 0, len: meta.len() };
            w.input(&name, Input::Region(region));
        } else {
            // A pipe or a device: read as a stream.
            let mut r = &file;
            w.input(&name, Input::Reader(&mut r));
        }
    }
    w.report
}

/// [`scan_reader`] with any sink (see [`walk_paths`]).
pub fn walk_reader(name: &str, mut r: impl Read, limits: &Limits, sink: &mut dyn Sink) -> Report {
    let mut w = Walker::new(limits, sink, 0);
    w.input(name, Input::Reader(&mut r));
    w.report
}

// ---------------------------------------------------------------------------
// Byte sources

/// What a region reads from: a file (read by position, so regions of one
/// file never disturb each other) or memory.
#[derive(Clone, Copy)]
enum Src<'a> {
    File(&'a File),
    Mem(&'a [u8]),
}

/// A window `[start, start + len)` of a source.
#[derive(Clone, Copy)]
struct Region<'a> {
    src: Src<'a>,
    start: u64,
    len: u64,
}

impl<'a> Region<'a> {
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        if off >= self.len {
            return Ok(0);
        }
        let n = buf.len().min(usize::try_from(self.len - off).unwrap_or(usize::MAX));
        let at = self.start + off;
        match self.src {
            Src::File(f) => loop {
                match f.read_at(&mut buf[..n], at) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => return r,
                }
            },
            Src::Mem(m) => {
                let at = usize::try_from(at).unwrap_or(usize::MAX).min(m.len());
                let n = n.min(m.len() - at);
                buf[..n].copy_from_slice(&m[at..at + n]);
                Ok(n)
            }
        }
    }

    /// Reads as much of `buf` as the region holds from `off`; the count read.
    fn read_full_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            let k = self.read_at(off + n as u64, &mut buf[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        Ok(n)
    }

    fn sub(&self, off: u64, len: u64) -> Region<'a> {
        let off = off.min(self.len);
        Region { src: self.src, start: self.start + off, len: len.min(self.len - off) }
    }

    fn from(&self, off: u64) -> Region<'a> {
        self.sub(off, u64::MAX)
    }

    fn reader(&self) -> Window<'a> {
        Window { region: *self, pos: 0 }
    }
}

/// A region as `Read + Seek`, for the crates that want one.
struct Window<'a> {
    region: Region<'a>,
    pos: u64,
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.region.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.region.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(io::Error::new(io::ErrorKind::InvalidInput, "seek before the start")),
        }
    }
}

/// A stream's bytes from `start` on, kept so its containers can be opened.
struct Hold {
    start: u64,
    mem: Vec<u8>,
    file: Option<File>,
    len: u64,
    failed: Option<String>,
}

impl Hold {
    fn new(start: u64) -> Self {
        Hold { start, mem: Vec::new(), file: None, len: 0, failed: None }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = self.try_push(bytes) {
            self.failed = Some(e.to_string());
        }
    }

    fn try_push(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() && self.mem.len() + bytes.len() > HOLD_MEM {
            let mut f = tempfile::tempfile()?;
            f.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        match self.file.as_mut() {
            Some(f) => f.write_all(bytes)?,
            None => self.mem.extend_from_slice(bytes),
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn region(&self) -> Region<'_> {
        match &self.file {
            Some(f) => Region { src: Src::File(f), start: 0, len: self.len },
            None => Region { src: Src::Mem(&self.mem), start: 0, len: self.len },
        }
    }
}

// ---------------------------------------------------------------------------
// Signatures

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fmt {
    Gzip,
    Xz,
    Tar,
    Cpio,
    /// A zip's end-of-central-directory record (the archive starts before it).
    ZipEnd,
    /// A zip local header: only starts holding; the archive is opened from its end record.
    ZipLocal,
    Squashfs,
}

impl Fmt {
    fn name(self) -> &'static str {
        match self {
            Fmt::Gzip => "gzip",
            Fmt::Xz => "xz",
            Fmt::Tar => "tar",
            Fmt::Cpio => "cpio",
            Fmt::ZipEnd | Fmt::ZipLocal => "zip",
            Fmt::Squashfs => "squashfs",
        }
    }
}

/// A container signature at stream offset `off` (the container's first byte;
/// for [`Fmt::ZipEnd`], the end record's).
#[derive(Debug, Clone, Copy)]
struct Cand {
    off: u64,
    fmt: Fmt,
}

struct Magics {
    finders: Vec<(memmem::Finder<'static>, Fmt, usize)>,
}

impl Magics {
    fn new() -> Self {
        let m = |s: &'static [u8], f: Fmt, back: usize| (memmem::Finder::new(s), f, back);
        Magics {
            finders: vec![
                m(b"\x1f\x8b\x08", Fmt::Gzip, 0),
                m(b"\xfd7zXZ\x00", Fmt::Xz, 0),
                m(b"ustar", Fmt::Tar, 257),
                m(b"07070", Fmt::Cpio, 0),
                m(b"PK\x05\x06", Fmt::ZipEnd, 0),
                m(b"PK\x03\x04", Fmt::ZipLocal, 0),
                m(b"hsqs", Fmt::Squashfs, 0),
            ],
        }
    }
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}
fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}
fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Whether the header at the start of `b` (up to [`AHEAD`] bytes, fewer at
/// the end of a stream) is plausible for `fmt`: cheap checks that reject
/// nearly every chance match in random data.
fn plausible(fmt: Fmt, b: &[u8]) -> bool {
    match fmt {
        Fmt::Gzip => b.len() >= 18 && b[3] & 0xe0 == 0 && matches!(b[8], 0 | 2 | 4) && (b[9] <= 13 || b[9] == 255),
        Fmt::Xz => b.len() >= 24 && b[6] == 0 && matches!(b[7], 0 | 1 | 4 | 10),
        Fmt::Tar => b.len() >= 512 && tar_checksum_ok(&b[..512]),
        Fmt::Cpio => match b.get(5) {
            Some(b'1') | Some(b'2') => b.len() >= 110 && b[6..110].iter().all(u8::is_ascii_hexdigit),
            Some(b'7') => b.len() >= 76 && b[6..76].iter().all(|c| (b'0'..=b'7').contains(c)),
            _ => false,
        },
        Fmt::ZipEnd => b.len() >= 22 && le16(b, 8) <= le16(b, 10),
        Fmt::ZipLocal => b.len() >= 30 && le16(b, 4) <= 100 && le16(b, 26) > 0,
        Fmt::Squashfs => {
            if b.len() < 96 {
                return false;
            }
            let block = le32(b, 12);
            le16(b, 28) == 4
                && le16(b, 30) == 0
                && block.is_power_of_two()
                && (4096..=MIB).contains(&block)
                && 1u64 << le16(b, 22).min(63) == block
                && (1..=6).contains(&le16(b, 20))
        }
    }
}

/// A tar header's checksum (octal, bytes 148..156, summed as spaces) matches.
fn tar_checksum_ok(h: &[u8]) -> bool {
    let Some(stored) = octal(&h[148..156]) else { return false };
    let mut unsigned = 0u64;
    let mut signed = 0i64;
    for (i, &c) in h[..512].iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        unsigned += u64::from(c);
        signed += i64::from(c as i8);
    }
    // An all-zero block sums to 256 (the spaces); it is an end marker, not a header.
    unsigned != 256 && (stored == unsigned || Some(stored) == u64::try_from(signed).ok())
}

/// An octal field: leading spaces, digits, then NUL or space. `None` if malformed.
fn octal(f: &[u8]) -> Option<u64> {
    let f = f.iter().skip_while(|&&c| c == b' ').copied();
    let mut v: u64 = 0;
    let mut digits = 0;
    for c in f {
        match c {
            b'0'..=b'7' => {
                v = v.checked_mul(8)?.checked_add(u64::from(c - b'0'))?;
                digits += 1;
            }
            0 | b' ' => break,
            _ => return None,
        }
    }
    let _ = digits;
    Some(v)
}

/// A v7 tar (no ustar magic) at the start of a stream: the checksum holds,
/// the name is printable and the mode and size fields are octal.
fn old_tar(b: &[u8]) -> bool {
    b.len() >= 512
        && b[0] != 0
        && b[..100].iter().take_while(|&&c| c != 0).all(|c| c.is_ascii_graphic())
        && octal(&b[100..108]).is_some()
        && octal(&b[124..136]).is_some()
        && matches!(b[156], 0 | b'0'..=b'7')
        && tar_checksum_ok(&b[..512])
}

// ---------------------------------------------------------------------------
// The walker

enum Input<'a, 'r> {
    Region(Region<'a>),
    Reader(&'r mut dyn Read),
}

/// How a stream ended.
struct StreamEnd {
    /// Bytes delivered.
    bytes: u64,
    /// The read error that ended it early, if any.
    err: Option<io::Error>,
}

/// The outcome of opening a candidate container.
enum Open {
    /// Opened; its extent from its start (what later signatures inside it are skipped by).
    Done(u64),
    /// Not a container after all (a chance match), nothing delivered: not reported.
    Rejected,
}

struct Walker<'l, 's> {
    limits: &'l Limits,
    sink: &'s mut dyn Sink,
    report: Report,
    magics: Magics,
    win: Vec<u8>,
    seen: HashMap<[u8; 32], String>,
    input_bytes: u64,
    expanded: u64,
    budget: u64,
    deadline: Option<Instant>,
    /// Set when the scan must stop (its time is up): the reason.
    halted: Option<String>,
    /// The decompressed-bytes budget is spent: inputs are still read, no container is opened.
    spent: bool,
    containers_full: bool,
}

impl<'l, 's> Walker<'l, 's> {
    fn new(limits: &'l Limits, sink: &'s mut dyn Sink, input_bytes: u64) -> Self {
        Walker {
            limits,
            sink,
            report: Report::default(),
            magics: Magics::new(),
            win: Vec::new(),
            seen: HashMap::new(),
            input_bytes,
            expanded: 0,
            budget: limits.expanded_budget(input_bytes),
            deadline: limits.timeout.map(|t| Instant::now() + t),
            halted: None,
            spent: false,
            containers_full: false,
        }
    }

    /// No more containers are opened (time is up, or the budget is spent).
    fn stopped(&self) -> bool {
        self.halted.is_some() || self.spent
    }

    fn skip(&mut self, location: &str, offset: u64, reason: String) {
        self.report.skipped.push(Skipped { location: location.to_string(), offset, reason });
    }

    /// Stops the scan if its time is up; true if it is stopped.
    fn check_time(&mut self, location: &str, offset: u64) -> bool {
        if self.halted.is_some() {
            return true;
        }
        if let (Some(d), Some(t)) = (self.deadline, self.limits.timeout) {
            if Instant::now() >= d {
                let reason = format!("time limit ({}s) reached", t.as_secs_f64());
                self.skip(location, offset, format!("{reason}: rest of {location} not read"));
                self.halted = Some(reason);
                return true;
            }
        }
        false
    }

    fn input(&mut self, name: &str, input: Input<'_, '_>) {
        let end = self.stream(name, input, 0, true);
        if let Some(e) = end.err {
            self.skip(name, end.bytes, format!("read error after {} bytes: {e}", end.bytes));
        }
    }

    /// Delivers one stream to the sink, then opens the containers in it.
    fn stream(&mut self, loc: &str, input: Input<'_, '_>, depth: u32, top: bool) -> StreamEnd {
        let mut win = std::mem::take(&mut self.win);
        if win.len() != OVERLAP + CHUNK {
            win = vec![0u8; OVERLAP + CHUNK];
        }
        let region = match &input {
            Input::Region(r) => Some(*r),
            Input::Reader(_) => None,
        };
        let mut reader = match input {
            Input::Reader(r) => Some(r),
            Input::Region(_) => None,
        };
        // What this stream may still read (inputs are read whole).
        let file_cap = if top { u64::MAX } else { self.limits.max_file_bytes };
        let budget_left = if top { u64::MAX } else { self.budget.saturating_sub(self.expanded) };
        let allowed = file_cap.min(budget_left);

        let mut hasher = Sha256::new();
        let mut cands: Vec<Cand> = Vec::new();
        let mut cands_full = false;
        let mut hold: Option<Hold> = None;
        let (mut have, mut win_start, mut pos, mut scanned_to) = (0usize, 0u64, 0u64, 0u64);
        let mut begun = false;
        let mut err = None;
        let mut cut = false;
        let mut ended = false;
        loop {
            if self.check_time(loc, pos) {
                break;
            }
            if have > OVERLAP {
                win.copy_within(have - OVERLAP..have, 0);
                win_start += (have - OVERLAP) as u64;
                have = OVERLAP;
            }
            let want = usize::try_from((allowed - pos).min(CHUNK as u64)).unwrap_or(CHUNK);
            if want == 0 {
                // The limit is reached: is there more?
                let more = match (&region, reader.as_mut()) {
                    (Some(r), _) => pos < r.len,
                    (None, Some(r)) => matches!(r.read(&mut [0u8; 1]), Ok(1)),
                    _ => false,
                };
                cut = more;
                break;
            }
            let mut n = 0;
            let mut eof = false;
            match (&region, reader.as_mut()) {
                (Some(r), _) => match r.read_full_at(pos, &mut win[have..have + want]) {
                    Ok(k) => {
                        n = k;
                        // A short read is the end too (a file that shrank while read).
                        eof = k < want || pos + k as u64 >= r.len;
                    }
                    Err(e) => {
                        err = Some(e);
                        eof = true;
                    }
                },
                (None, Some(r)) => {
                    while n < want {
                        match r.read(&mut win[have + n..have + want]) {
                            Ok(0) => {
                                eof = true;
                                break;
                            }
                            Ok(k) => n += k,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                err = Some(e);
                                eof = true;
                                break;
                            }
                        }
                    }
                }
                _ => eof = true,
            }
            let new = &win[have..have + n];
            if n > 0 {
                if !begun {
                    self.sink.begin(loc);
                    begun = true;
                }
                self.sink.data(new);
                if !top {
                    hasher.update(new);
                }
                if let Some(h) = hold.as_mut() {
                    h.push(new);
                }
            }
            pos += n as u64;
            self.report.bytes_scanned += n as u64;
            if !top {
                self.expanded += n as u64;
            }
            have += n;

            // Signatures whose header is wholly in the window (or the stream ended).
            let limit = if eof { have } else { have.saturating_sub(AHEAD) };
            let lo = usize::try_from(scanned_to.saturating_sub(win_start)).unwrap_or(usize::MAX).min(have);
            let mut first_new: Option<u64> = None;
            let mut overflow = None;
            if !cands_full && lo < limit {
                for (finder, fmt, back) in &self.magics.finders {
                    if cands_full {
                        break;
                    }
                    for p in finder.find_iter(&win[lo..have]) {
                        let p = lo + p;
                        if p >= limit {
                            break;
                        }
                        let Some(s) = p.checked_sub(*back) else { continue };
                        if !plausible(*fmt, &win[s..have]) {
                            continue;
                        }
                        let off = win_start + s as u64;
                        if *fmt != Fmt::ZipLocal || off == 0 {
                            cands.push(Cand { off, fmt: *fmt });
                        }
                        first_new = Some(first_new.map_or(off, |f: u64| f.min(off)));
                        if cands.len() >= MAX_CANDIDATES {
                            cands_full = true;
                            overflow = Some(off);
                            break;
                        }
                    }
                }
                if let Some(off) = overflow {
                    self.skip(
                        loc,
                        off,
                        format!(
                            "more than {MAX_CANDIDATES} container signatures in {loc}: those after offset {off:#x} not examined"
                        ),
                    );
                }
                if win_start == 0 && lo == 0 && !cands.iter().any(|c| c.off == 0) && old_tar(&win[..have]) {
                    cands.push(Cand { off: 0, fmt: Fmt::Tar });
                    first_new = Some(0);
                }
            }
            scanned_to = win_start + limit as u64;
            // Only a reader's bytes need holding, and only from the first signature.
            if let (None, None, Some(first)) = (&region, &hold, first_new) {
                let mut h = Hold::new(first);
                let from = usize::try_from(first - win_start).unwrap_or(0);
                h.push(&win[from..have]);
                hold = Some(h);
            }
            if eof {
                ended = true;
                break;
            }
        }
        // An empty stream is a stream too (not one stopped before its first byte).
        if !begun && err.is_none() && ended {
            self.sink.begin(loc);
            begun = true;
        }
        if begun {
            self.sink.end();
        }
        self.win = win;
        if top && region.is_none() {
            // The input's size is known now, before its containers are opened.
            self.input_bytes += pos;
            self.budget = self.limits.expanded_budget(self.input_bytes);
        }

        if cut {
            if allowed == budget_left && budget_left < file_cap {
                let reason = format!("decompressed bytes limit ({}) reached", human(self.budget));
                self.skip(loc, pos, format!("{reason}: rest of {loc} not read, no further container opened"));
                self.spent = true;
            } else {
                self.skip(
                    loc,
                    pos,
                    format!("larger than the per-file limit ({}): the rest was not read", human(file_cap)),
                );
            }
        }

        if !cands.is_empty() {
            let digest: [u8; 32] = hasher.finalize().into();
            let seen = if top { None } else { self.seen.get(&digest) };
            if let Some(first) = seen {
                let reason = format!("same content as {first}: its containers not opened again");
                self.skip(loc, 0, reason);
            } else {
                if !top {
                    self.seen.insert(digest, loc.to_string());
                }
                match (region, hold) {
                    (Some(r), _) => self.examine(loc, r, 0, cands, depth),
                    (None, Some(h)) => match &h.failed {
                        Some(e) => self.skip(
                            loc,
                            h.start,
                            format!(
                                "cannot keep {loc} to open its containers: {e} (set TMPDIR to a filesystem with space)"
                            ),
                        ),
                        None => self.examine(loc, h.region(), h.start, cands, depth),
                    },
                    (None, None) => {}
                }
            }
        }
        StreamEnd { bytes: pos, err }
    }

    /// Opens the containers of a stream whose bytes from stream offset `base` are `view`.
    fn examine(&mut self, loc: &str, view: Region<'_>, base: u64, cands: Vec<Cand>, depth: u32) {
        if self.spent {
            if depth == 0 {
                let budget = human(self.budget);
                self.skip(loc, 0, format!("decompressed bytes limit ({budget}) reached earlier in the scan: containers in {loc} not opened"));
            }
            return;
        }
        // Resolve zip end records to the archive's start.
        let mut list: Vec<(u64, Fmt, u64)> = Vec::new(); // (start, fmt, zip end)
        let mut zip_at_0 = false;
        let mut zip_local_at_0 = false;
        for c in &cands {
            if c.off < base {
                continue;
            }
            match c.fmt {
                Fmt::ZipLocal => zip_local_at_0 = true,
                Fmt::ZipEnd => {
                    if let Some((start, end, total)) = zip_extent(&view, c.off - base) {
                        let start = start + base;
                        zip_at_0 |= start == 0;
                        if total > self.limits.max_entries {
                            // Its central directory is read whole to list it: not opened.
                            let cloc = if start == 0 { loc.to_string() } else { format!("{loc}@{start:#x}(zip)") };
                            let max = self.limits.max_entries;
                            self.skip(
                                &cloc,
                                0,
                                format!("zip archive claims {total} entries, more than the limit ({max}): not opened"),
                            );
                            continue;
                        }
                        list.push((start, Fmt::ZipEnd, end + base));
                    }
                }
                f => list.push((c.off, f, 0)),
            }
        }
        if zip_local_at_0 && !zip_at_0 {
            self.skip(loc, 0, "zip archive truncated or corrupt: no end-of-central-directory record found".into());
        }
        list.sort_by_key(|c| c.0);
        let mut covered = 0u64;
        for (start, fmt, zip_end) in list {
            if start < covered {
                continue;
            }
            if self.check_time(loc, start) {
                return;
            }
            let cloc = if start == 0 { loc.to_string() } else { format!("{loc}@{start:#x}({})", fmt.name()) };
            if depth >= self.limits.max_depth {
                self.skip(
                    &cloc,
                    0,
                    format!("nesting deeper than {}: {} not opened", self.limits.max_depth, fmt.name()),
                );
                continue;
            }
            if self.report.containers >= self.limits.max_containers {
                if !self.containers_full {
                    self.containers_full = true;
                    self.skip(
                        &cloc,
                        0,
                        format!(
                            "containers limit ({}) reached: this and later containers not opened",
                            self.limits.max_containers
                        ),
                    );
                }
                return;
            }
            let r = view.from(start - base);
            let carved = start != 0;
            let opened = match fmt {
                Fmt::Gzip => self.open_gzip(&cloc, r, depth, carved),
                Fmt::Xz => self.open_xz(&cloc, r, depth, carved),
                Fmt::Tar => self.open_tar(&cloc, r, depth),
                Fmt::Cpio => self.open_cpio(&cloc, r, depth),
                Fmt::ZipEnd => self.open_zip(&cloc, r.sub(0, zip_end - start), depth),
                Fmt::Squashfs => self.open_squashfs(&cloc, r, depth),
                Fmt::ZipLocal => Open::Rejected,
            };
            if let Open::Done(extent) = opened {
                covered = covered.max(start.saturating_add(extent));
            }
            if self.stopped() {
                return;
            }
        }
    }

    fn decoded(&mut self, what: &str, loc: &str, end: StreamEnd, carved: bool) -> bool {
        match end.err {
            None => true,
            Some(_) if carved && end.bytes == 0 => false,
            Some(e) => {
                let reason = if e.kind() == io::ErrorKind::UnexpectedEof {
                    format!("{what} stream truncated after {} decompressed bytes", end.bytes)
                } else {
                    format!("{what} stream corrupt after {} decompressed bytes: {e}", end.bytes)
                };
                self.skip(loc, end.bytes, reason);
                true
            }
        }
    }

    fn open_gzip(&mut self, cloc: &str, r: Region<'_>, depth: u32, carved: bool) -> Open {
        let out = format!("{cloc}|gzip");
        let mut br = BufReader::with_capacity(64 * 1024, r.reader());
        let mut dec = flate2::bufread::GzDecoder::new(&mut br);
        let end = self.stream(&out, Input::Reader(&mut dec), depth + 1, false);
        drop(dec);
        self.decoded_stream("gzip", &out, end, carved, &br)
    }

    /// A decompressed stream ended: whether it counts as the container
    /// opened (and how many compressed bytes it took), or was no such stream.
    fn decoded_stream(
        &mut self,
        kind: &str,
        out: &str,
        end: StreamEnd,
        carved: bool,
        br: &BufReader<Window<'_>>,
    ) -> Open {
        let consumed = br.get_ref().pos - br.buffer().len() as u64;
        if !self.decoded(kind, out, end, carved) {
            return Open::Rejected;
        }
        self.report.containers += 1;
        Open::Done(consumed.max(1))
    }

    fn open_xz(&mut self, cloc: &str, r: Region<'_>, depth: u32, carved: bool) -> Open {
        let out = format!("{cloc}|xz");
        let mut br = BufReader::with_capacity(64 * 1024, r.reader());
        let kb = u32::try_from(self.limits.max_xz_memory / 1024).unwrap_or(u32::MAX);
        // Small reads: the decoder drops what it decoded in a call that ends in an error.
        let mut dec = Small(lzma_rust2::XzReader::new_mem_limit(&mut br, false, kb));
        let end = self.stream(&out, Input::Reader(&mut dec), depth + 1, false);
        drop(dec);
        self.decoded_stream("xz", &out, end, carved, &br)
    }

    /// Counts an entry of an archive; false (and reported) past the limit.
    fn entry_allowed(&mut self, cloc: &str, n: u64, offset: u64) -> bool {
        if n > self.limits.max_entries {
            self.skip(
                cloc,
                offset,
                format!("more than {} entries: the rest of the archive not read", self.limits.max_entries),
            );
            return false;
        }
        !self.check_time(cloc, offset)
    }

    fn open_tar(&mut self, cloc: &str, r: Region<'_>, depth: u32) -> Open {
        self.report.containers += 1;
        let mut off = 0u64;
        let mut h = [0u8; 512];
        let mut long_name: Option<Vec<u8>> = None;
        let mut pax_path: Option<Vec<u8>> = None;
        let mut entries = 0u64;
        loop {
            if self.stopped() {
                break;
            }
            match r.read_full_at(off, &mut h) {
                Ok(512) => {}
                Ok(_) => {
                    self.skip(cloc, off, format!("tar archive truncated at offset {off} (no end-of-archive marker)"));
                    off = r.len;
                    break;
                }
                Err(e) => {
                    self.skip(cloc, off, format!("tar archive unreadable at offset {off}: {e}"));
                    break;
                }
            }
            if h.iter().all(|&c| c == 0) {
                off += 512;
                if matches!(r.read_full_at(off, &mut h), Ok(512)) && h.iter().all(|&c| c == 0) {
                    off += 512;
                }
                break;
            }
            if !tar_checksum_ok(&h) {
                self.skip(
                    cloc,
                    off,
                    format!("tar header at offset {off} is corrupt (bad checksum): the rest of the archive not read"),
                );
                break;
            }
            let Some(size) = tar_size(&h[124..136]) else {
                self.skip(
                    cloc,
                    off,
                    format!("tar header at offset {off} has an unreadable size: the rest of the archive not read"),
                );
                break;
            };
            let data = off + 512;
            let remaining = r.len.saturating_sub(data);
            let kind = h[156];
            match kind {
                b'L' | b'x' => {
                    let cap = if kind == b'L' { 64 * 1024 } else { MIB };
                    if size > cap || size > remaining {
                        self.skip(cloc, off, format!("tar extension header at offset {off} claims {size} bytes (at most {cap}, {remaining} left): the rest of the archive not read"));
                        break;
                    }
                    let mut v = vec![0u8; usize::try_from(size).unwrap_or(0)];
                    if r.read_full_at(data, &mut v).ok().map(|n| n as u64) != Some(size) {
                        self.skip(cloc, off, "tar archive truncated in an extension header".into());
                        break;
                    }
                    if kind == b'L' {
                        let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
                        v.truncate(end);
                        long_name = Some(v);
                    } else {
                        pax_path = pax_value(&v, b"path").or(pax_path);
                    }
                }
                b'0' | 0 | b'7' | b'S' => {
                    entries += 1;
                    if !self.entry_allowed(cloc, entries, off) {
                        // The rest is not read, nor carved.
                        off = r.len;
                        break;
                    }
                    let name = long_name.take().or(pax_path.take()).unwrap_or_else(|| ustar_name(&h));
                    let mloc = member(cloc, &String::from_utf8_lossy(&name));
                    let end = self.stream(&mloc, Input::Region(r.sub(data, size)), depth + 1, false);
                    if let Some(e) = end.err {
                        self.skip(&mloc, end.bytes, format!("read error after {} bytes: {e}", end.bytes));
                    }
                }
                _ => {
                    long_name = None;
                    pax_path = None;
                }
            }
            if size > remaining {
                self.skip(cloc, off, format!("tar entry at offset {off} claims {size} bytes but only {remaining} remain: archive truncated or corrupt"));
                off = r.len;
                break;
            }
            off = data + size.div_ceil(512) * 512;
        }
        Open::Done(off.max(512))
    }

    fn open_cpio(&mut self, cloc: &str, r: Region<'_>, depth: u32) -> Open {
        self.report.containers += 1;
        let mut off = 0u64;
        let mut entries = 0u64;
        let mut h = [0u8; 110];
        loop {
            if self.stopped() {
                break;
            }
            let got = match r.read_full_at(off, &mut h) {
                Ok(n) => n,
                Err(e) => {
                    self.skip(cloc, off, format!("cpio archive unreadable at offset {off}: {e}"));
                    break;
                }
            };
            let newc = got >= 110 && (&h[..6] == b"070701" || &h[..6] == b"070702");
            let odc = got >= 76 && &h[..6] == b"070707";
            let (mode, size, namesize, hlen) = if newc {
                let f = |i: usize| {
                    std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).ok().and_then(|s| u64::from_str_radix(s, 16).ok())
                };
                match (f(1), f(6), f(11)) {
                    (Some(m), Some(s), Some(n)) => (m, s, n, 110u64),
                    _ => {
                        self.skip(
                            cloc,
                            off,
                            format!("cpio header at offset {off} is corrupt: the rest of the archive not read"),
                        );
                        break;
                    }
                }
            } else if odc {
                let f = |a: usize, b: usize| {
                    std::str::from_utf8(&h[a..b]).ok().and_then(|s| u64::from_str_radix(s, 8).ok())
                };
                match (f(18, 24), f(65, 76), f(59, 65)) {
                    (Some(m), Some(s), Some(n)) => (m, s, n, 76u64),
                    _ => {
                        self.skip(
                            cloc,
                            off,
                            format!("cpio header at offset {off} is corrupt: the rest of the archive not read"),
                        );
                        break;
                    }
                }
            } else {
                let what = if got < 6 { "truncated (no TRAILER!!! entry)" } else { "corrupt (no cpio header)" };
                self.skip(cloc, off, format!("cpio archive {what} at offset {off}: the rest not read"));
                break;
            };
            if namesize == 0 || namesize > 4096 {
                self.skip(
                    cloc,
                    off,
                    format!(
                        "cpio entry at offset {off} has a name of {namesize} bytes: the rest of the archive not read"
                    ),
                );
                break;
            }
            let mut name = vec![0u8; usize::try_from(namesize).unwrap_or(0)];
            if r.read_full_at(off + hlen, &mut name).ok().map(|n| n as u64) != Some(namesize) {
                self.skip(cloc, off, format!("cpio archive truncated at offset {off}"));
                break;
            }
            let nul = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            name.truncate(nul);
            let pad = |x: u64| if newc { x.div_ceil(4) * 4 } else { x };
            let data = off + pad(hlen + namesize);
            if name == b"TRAILER!!!" {
                off = data;
                break;
            }
            let remaining = r.len.saturating_sub(data);
            if mode & 0o170000 == 0o100000 {
                entries += 1;
                if !self.entry_allowed(cloc, entries, off) {
                    off = r.len;
                    break;
                }
                let mloc = member(cloc, &String::from_utf8_lossy(&name));
                let end = self.stream(&mloc, Input::Region(r.sub(data, size)), depth + 1, false);
                if let Some(e) = end.err {
                    self.skip(&mloc, end.bytes, format!("read error after {} bytes: {e}", end.bytes));
                }
            }
            if size > remaining {
                self.skip(cloc, off, format!("cpio entry at offset {off} claims {size} bytes but only {remaining} remain: archive truncated or corrupt"));
                off = r.len;
                break;
            }
            off = data + pad(size);
        }
        Open::Done(off.max(6))
    }

    fn open_zip(&mut self, cloc: &str, r: Region<'_>, depth: u32) -> Open {
        // Its end record, central directory and first local header were found
        // where they point to each other: a zip that fails now is corrupt.
        let mut za = match zip::ZipArchive::new(BufReader::new(r.reader())) {
            Ok(z) => z,
            Err(e) => {
                self.skip(cloc, 0, format!("zip archive corrupt: {e}"));
                return Open::Done(r.len);
            }
        };
        self.report.containers += 1;
        let mut ranges: BTreeMap<u64, u64> = BTreeMap::new();
        for i in 0..za.len() {
            if !self.entry_allowed(cloc, i as u64 + 1, 0) || self.stopped() {
                break;
            }
            let meta = match za.by_index_raw(i) {
                Ok(f) => (
                    f.name().to_string(),
                    f.is_file(),
                    f.encrypted(),
                    f.compression(),
                    f.data_start(),
                    f.compressed_size(),
                ),
                Err(e) => {
                    self.skip(cloc, 0, format!("zip entry #{i} unreadable: {e}"));
                    continue;
                }
            };
            let (name, is_file, encrypted, method, data_start, csize) = meta;
            if !is_file {
                continue;
            }
            let mloc = member(cloc, &name);
            if encrypted {
                self.skip(&mloc, 0, "encrypted zip entry: not read".into());
                continue;
            }
            if let Some(ds) = data_start {
                let end = ds.saturating_add(csize);
                let before = ranges.range(..=ds).next_back().is_some_and(|(_, &e)| e > ds);
                let after = ranges.range(ds..).next().is_some_and(|(&s, _)| s < end);
                if csize > 0 && (before || after) {
                    self.skip(&mloc, 0, "zip entry overlaps another entry's data (a zip bomb?): not read".into());
                    continue;
                }
                if csize > 0 {
                    ranges.insert(ds, end);
                }
                if method == zip::CompressionMethod::Stored {
                    let end = self.stream(&mloc, Input::Region(r.sub(ds, csize)), depth + 1, false);
                    if let Some(e) = end.err {
                        self.skip(&mloc, end.bytes, format!("read error after {} bytes: {e}", end.bytes));
                    }
                    continue;
                }
            }
            match za.by_index(i) {
                Ok(mut f) => {
                    let end = self.stream(&mloc, Input::Reader(&mut f), depth + 1, false);
                    if let Some(e) = end.err {
                        self.skip(&mloc, end.bytes, format!("zip entry corrupt after {} bytes: {e}", end.bytes));
                    }
                }
                Err(e) => self.skip(&mloc, 0, format!("zip entry not read ({method}): {e}")),
            }
        }
        Open::Done(r.len)
    }

    fn open_squashfs(&mut self, cloc: &str, r: Region<'_>, depth: u32) -> Open {
        let mut sb = [0u8; 96];
        if !matches!(r.read_full_at(0, &mut sb), Ok(96)) {
            self.skip(cloc, 0, "squashfs truncated in its superblock".into());
            return Open::Done(r.len);
        }
        let bytes_used = le64(&sb, 40);
        let extent = bytes_used.clamp(96, r.len.max(96));
        if let Err(reason) = squashfs_sane(&sb, &r, self.limits) {
            self.skip(cloc, 0, reason);
            return Open::Done(extent);
        }
        let fs_region = r.sub(0, bytes_used);
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let kind = backhand::kind::Kind::new(&DECODERS);
            backhand::FilesystemReader::from_reader_with_offset_and_kind(BufReader::new(fs_region.reader()), 0, kind)
        }));
        let fs = match parsed {
            Ok(Ok(fs)) => fs,
            Ok(Err(e)) => {
                self.skip(cloc, 0, format!("squashfs corrupt: {e}"));
                return Open::Done(extent);
            }
            Err(_) => {
                self.skip(cloc, 0, "squashfs corrupt: its reader failed (panicked)".into());
                return Open::Done(extent);
            }
        };
        self.report.containers += 1;
        // backhand allocates (and zeroes) what a block or fragment claims to
        // hold before reading it: none may claim more than a block.
        let block = fs.block_size;
        if let Some(bad) = fs.fragments.iter().flatten().find(|fr| fr.size.size() > block) {
            self.skip(
                cloc,
                0,
                format!("squashfs corrupt: a fragment claims {} bytes, blocks hold {block}: not read", bad.size.size()),
            );
            return Open::Done(extent);
        }
        let mut entries = 0u64;
        for node in fs.files() {
            if self.stopped() {
                break;
            }
            let backhand::InnerNode::File(f) = &node.inner else { continue };
            entries += 1;
            if !self.entry_allowed(cloc, entries, 0) {
                break;
            }
            let mloc = member(cloc, &node.fullpath.to_string_lossy());
            // backhand indexes the fragment table with the inode's index unchecked.
            let frags = fs.fragments.as_ref().map_or(0, Vec::len);
            if f.frag_index() != 0xffff_ffff && f.frag_index() >= frags {
                let reason = format!("squashfs file names fragment {} of {frags}: corrupt, not read", f.frag_index());
                self.skip(&mloc, 0, reason);
                continue;
            }
            if let Some(bad) = f.block_sizes().iter().find(|b| b.size() > block) {
                let reason = format!(
                    "squashfs file claims a block of {} bytes, blocks hold {block}: corrupt, not read",
                    bad.size()
                );
                self.skip(&mloc, 0, reason);
                continue;
            }
            if f.frag_index() != 0xffff_ffff {
                // The file's tail sits in a fragment, a block at most: it must fit there.
                let whole = f.block_sizes().len() as u64 * u64::from(block);
                let tail = (f.file_len() as u64).saturating_sub(whole);
                if u64::from(f.block_offset()) + tail > u64::from(block) {
                    self.skip(&mloc, 0, "squashfs file's tail runs past its fragment: corrupt, not read".into());
                    continue;
                }
            }
            let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fs.file(f).reader()));
            let Ok(rd) = made else {
                self.skip(&mloc, 0, "squashfs file corrupt: its reader failed (panicked)".into());
                continue;
            };
            let mut rd = Guarded(rd);
            let end = self.stream(&mloc, Input::Reader(&mut rd), depth + 1, false);
            if let Some(e) = end.err {
                let what = if e.kind() == io::ErrorKind::UnexpectedEof { "truncated" } else { "corrupt" };
                self.skip(&mloc, end.bytes, format!("squashfs file {what} after {} bytes: {e}", end.bytes));
            }
        }
        Open::Done(extent)
    }
}

/// Squashfs block decoders, each bounded to a block's size (8 KiB of
/// metadata, at most 1 MiB of data).
struct Decoders;

static DECODERS: Decoders = Decoders;

/// The most a squashfs block (data, fragment or metadata) holds.
const SQUASHFS_BLOCK_MAX: usize = 1 << 20;

impl backhand::compression::CompressionAction for Decoders {
    fn decompress(
        &self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        compressor: backhand::compression::Compressor,
    ) -> Result<(), backhand::BackhandError> {
        use backhand::compression::Compressor;
        let start = out.len();
        // backhand reserves what the block may hold: 8 KiB for metadata (what
        // the metadata bound in `squashfs_sane` counts on), the block size for data.
        let cap = (out.capacity() - start).clamp(8192, SQUASHFS_BLOCK_MAX);
        let bounded = |r: &mut dyn Read, out: &mut Vec<u8>| -> io::Result<()> {
            r.take(cap as u64 + 1).read_to_end(out)?;
            if out.len() - start > cap {
                return Err(io::Error::other("a squashfs block expands beyond its size"));
            }
            Ok(())
        };
        match compressor {
            Compressor::None => out.extend_from_slice(bytes),
            Compressor::Gzip => bounded(&mut flate2::read::ZlibDecoder::new(bytes), out)?,
            // mksquashfs makes the dictionary at most the block size.
            Compressor::Xz => bounded(&mut lzma_rust2::XzReader::new_mem_limit(bytes, true, 16 * 1024), out)?,
            Compressor::Lz4 => {
                out.resize(start + cap, 0);
                match lz4_flex::block::decompress_into(bytes, &mut out[start..]) {
                    Ok(n) => out.truncate(start + n),
                    Err(_) => {
                        out.truncate(start);
                        return Err(backhand::BackhandError::CorruptedOrInvalidSquashfs);
                    }
                }
            }
            other => return Err(backhand::BackhandError::UnsupportedCompression(other)),
        }
        Ok(())
    }

    fn compress(
        &self,
        _: &[u8],
        _: backhand::FilesystemCompressor,
        _: u32,
    ) -> Result<Vec<u8>, backhand::BackhandError> {
        Err(backhand::BackhandError::UnsupportedCompression(backhand::compression::Compressor::None))
    }

    fn compression_options(
        &self,
        _: &mut backhand::SuperBlock,
        _: &backhand::kind::Kind,
        _: backhand::FilesystemCompressor,
    ) -> Result<Vec<u8>, backhand::BackhandError> {
        Err(backhand::BackhandError::UnsupportedCompression(backhand::compression::Compressor::None))
    }
}

/// Reads at most 64 KiB at a time.
struct Small<R>(R);

impl<R: Read> Read for Small<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(64 * 1024);
        self.0.read(&mut buf[..n])
    }
}

/// A third-party reader whose panics become errors (a last resort: the
/// superblock and tables are checked before the reader is made).
struct Guarded<R>(R);

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.read(buf)))
            .unwrap_or_else(|_| Err(io::Error::other("the squashfs reader failed (panicked)")))
    }
}

/// A squashfs superblock's claims, checked against the bytes there are and
/// the limits before a parser is asked to allocate anything for them.
fn squashfs_sane(sb: &[u8], r: &Region<'_>, limits: &Limits) -> Result<(), String> {
    let compressor = le16(sb, 20);
    let name = match compressor {
        1 => "gzip",
        2 => "lzma",
        3 => "lzo",
        4 => "xz",
        5 => "lz4",
        6 => "zstd",
        _ => "an unknown compressor",
    };
    if !matches!(compressor, 1 | 4 | 5) {
        return Err(format!("squashfs compressed with {name}: not supported (no pure-Rust decoder built in)"));
    }
    let bytes_used = le64(sb, 40);
    if bytes_used > r.len {
        return Err(format!("squashfs truncated: its superblock says {bytes_used} bytes, only {} are there", r.len));
    }
    let (inode_count, frag_count, id_count) = (le32(sb, 4), le32(sb, 16), le16(sb, 26));
    let (id_table, inode_table, dir_table) = (le64(sb, 48), le64(sb, 64), le64(sb, 72));
    let (xattr_table, frag_table, export_table) = (le64(sb, 56), le64(sb, 80), le64(sb, 88));
    let unset = u64::MAX;
    let bad = |what: &str| Err(format!("squashfs superblock corrupt: {what}"));
    if !(96..=bytes_used).contains(&inode_table) || !(inode_table..=bytes_used).contains(&dir_table) {
        return bad("inode or directory table outside the filesystem");
    }
    if !(dir_table..bytes_used).contains(&id_table) {
        return bad("id table outside the filesystem");
    }
    for (t, what) in [(xattr_table, "xattr"), (frag_table, "fragment"), (export_table, "export")] {
        if t != unset && !(dir_table..bytes_used).contains(&t) {
            return bad(&format!("{what} table outside the filesystem"));
        }
    }
    if inode_count == 0 || inode_count > bytes_used || frag_count > bytes_used || id_count == 0 {
        return bad(&format!("{inode_count} inodes, {frag_count} fragments, {id_count} ids in {bytes_used} bytes"));
    }
    // The metadata read whole into memory: blocks of at most 8 KiB each, from
    // the inode table to the first lookup table after the directory table.
    let end = [id_table, frag_table, export_table, xattr_table]
        .into_iter()
        .filter(|&t| t != unset)
        .min()
        .unwrap_or(bytes_used);
    let max_blocks = limits.max_squashfs_metadata / 8192;
    let (mut at, mut blocks) = (inode_table, 0u64);
    let mut hdr = [0u8; 2];
    while at + 2 <= end {
        if r.read_full_at(at, &mut hdr).ok() != Some(2) {
            break;
        }
        let len = u64::from(u16::from_le_bytes(hdr) & 0x7fff);
        if len == 0 || len > 8192 {
            break;
        }
        blocks += 1;
        if blocks > max_blocks {
            return Err(format!(
                "squashfs metadata larger than the limit ({}): not opened",
                human(limits.max_squashfs_metadata)
            ));
        }
        at += 2 + len;
    }
    Ok(())
}

/// The start and end (offsets in `view`) of the zip whose end record is at
/// `eocd`, and the number of entries it claims.
fn zip_extent(view: &Region<'_>, eocd: u64) -> Option<(u64, u64, u64)> {
    let mut e = [0u8; 22];
    if view.read_full_at(eocd, &mut e).ok()? != 22 {
        return None;
    }
    let (mut total, mut cd_size, mut cd_off) = (le16(&e, 10), le32(&e, 12), le32(&e, 16));
    let end = (eocd + 22 + le16(&e, 20)).min(view.len);
    let cd_end = if total == 0xffff || cd_size == 0xffff_ffff || cd_off == 0xffff_ffff {
        // zip64: the locator just before, and the zip64 end record before it.
        let mut loc = [0u8; 20];
        view.read_full_at(eocd.checked_sub(20)?, &mut loc).ok()?;
        if &loc[..4] != b"PK\x06\x07" {
            return None;
        }
        let rec_at = eocd.checked_sub(20 + 56)?;
        let mut rec = [0u8; 56];
        if view.read_full_at(rec_at, &mut rec).ok()? != 56 || &rec[..4] != b"PK\x06\x06" {
            return None;
        }
        total = le64(&rec, 32);
        cd_size = le64(&rec, 40);
        cd_off = le64(&rec, 48);
        rec_at
    } else {
        eocd
    };
    if total == 0 {
        return None;
    }
    let start = cd_end.checked_sub(cd_size)?.checked_sub(cd_off)?;
    let mut sig = [0u8; 4];
    view.read_full_at(start, &mut sig).ok()?;
    if &sig != b"PK\x03\x04" {
        return None;
    }
    view.read_full_at(start + cd_off, &mut sig).ok()?;
    if &sig != b"PK\x01\x02" {
        return None;
    }
    Some((start, end, total))
}

/// A tar size field: octal, or GNU base-256 (first byte's high bit set).
fn tar_size(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for &c in &f[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(c))?;
        }
        Some(v)
    } else {
        octal(f)
    }
}

/// A ustar name: prefix "/" name (prefix only with the POSIX magic).
fn ustar_name(h: &[u8]) -> Vec<u8> {
    let field = |f: &[u8]| f[..f.iter().position(|&c| c == 0).unwrap_or(f.len())].to_vec();
    let name = field(&h[..100]);
    let prefix = if &h[257..263] == b"ustar\0" { field(&h[345..500]) } else { Vec::new() };
    if prefix.is_empty() {
        name
    } else {
        [prefix, b"/".to_vec(), name].concat()
    }
}

/// A value of a pax extended header ("LEN KEY=VALUE\n" records).
fn pax_value(mut v: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    while !v.is_empty() {
        let sp = v.iter().position(|&c| c == b' ')?;
        let len: usize = std::str::from_utf8(&v[..sp]).ok()?.parse().ok()?;
        if len <= sp || len > v.len() {
            return None;
        }
        let rec = &v[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|&c| c == b'=') {
            if &rec[..eq] == key {
                return Some(rec[eq + 1..].to_vec());
            }
        }
        v = &v[len..];
    }
    None
}

/// `A!NAME`, with the location syntax's own characters escaped in NAME.
fn member(cloc: &str, name: &str) -> String {
    let mut s = String::with_capacity(cloc.len() + 1 + name.len());
    s.push_str(cloc);
    s.push('!');
    for c in name.chars() {
        match c {
            '%' | '!' | '|' | '@' => s.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_control() => s.push_str(&format!("%{:02X}", c as u32)),
            c => s.push(c),
        }
    }
    s
}

/// "1 GiB", "5 MiB", or bytes.
fn human(n: u64) -> String {
    if n >= 1 << 30 && n % (1 << 30) == 0 {
        format!("{} GiB", n >> 30)
    } else if n >= MIB && n % MIB == 0 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}
