//! Finding keys, certificates and token candidates in a stream of bytes.
//!
//! The stream is read in rounds of up to 256 KiB of new bytes. Each round looks
//! for candidates that *start* in its range, and judges each candidate on at
//! most [`MAX_OBJECT`] bytes from its start (plus a few before it): the bytes
//! a candidate is judged on never depend on how the stream was chunked, so a
//! stream fed one byte at a time finds exactly what [`find_all`] finds.
//!
//! The hot path is bytes that hold nothing. Candidates are found with SIMD
//! substring search (`memchr::memmem`) for a few anchors: `-----BEGIN ` for
//! PEM; `02 01` (the INTEGER version that opens PKCS#1, PKCS#8, SEC1 and PFX,
//! and a certificate's `[0] 02 01 02`); `30 82` for version 1 certificates;
//! the PKCS OID arc for encrypted PKCS#8.
//! Token candidates are found by sampling every 43rd byte: a run of 43
//! base64url characters always covers one sample.

mod decode;
mod der;
mod pem;
mod pfx;
mod ssh;

use base64::Engine;
use memchr::memmem;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::{FindingKind, KeyFormat};

/// The largest encoding looked for: anything larger is not a key we look for.
pub const MAX_OBJECT: usize = 64 * 1024;
/// New bytes per round: amortises the tail kept between rounds.
const STEP: usize = 256 << 10;
/// Bytes kept before a round's first candidate (DER headers before their
/// anchor, the character before a token).
const LOOKBEHIND: usize = 64;
/// How far past the anchor a DER candidate may start.
const ANCHOR_SLACK: usize = 16;
/// Token candidates reported per stream, at most.
pub const MAX_TOKENS: usize = 100_000;
/// An enrollment token: 32 random octets in unpadded base64url.
const TOKEN_LEN: usize = 43;

/// OID arc 1.2.840.113549.1 (PKCS): opens PBES1, PBES2 and PKCS#12 PBE identifiers.
const PKCS_ARC: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01];

/// Lowercase hex SHA-256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

const fn base64url_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
        i += 1;
    }
    t
}
static BASE64URL: [bool; 256] = base64url_table();

/// What kind of DER structure an anchor suggests at a start offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Candidate {
    /// SEQUENCE { INTEGER 0|1, ... }: PKCS#1, PKCS#8, SEC1.
    Key,
    /// SEQUENCE { INTEGER 3, ContentInfo, ... }.
    Pfx,
    Certificate,
    EncryptedPkcs8,
}

/// "The first `-----END ` at or after `from`": remembered, because a text
/// with many BEGIN lines would otherwise search the same bytes again for each.
#[derive(Debug, Default)]
struct EndCache {
    from: u64,
    searched_to: u64,
    found: Option<u64>,
}

/// Finds keys in one stream fed chunk by chunk, holding at most a bounded
/// tail between chunks (an encoding split across two chunks is still found).
///
/// The tail it holds may be a private key: it is wiped when dropped, and
/// `Debug` shows offsets only.
pub struct Finder {
    /// Stream bytes from `base` on.
    buf: Vec<u8>,
    base: u64,
    /// The first candidate start not yet examined.
    next: u64,
    /// DER candidates starting before this are inside something reported.
    der_covered: u64,
    /// PEM blocks that may still cover token candidates, by start (their ends never decrease).
    pem_blocks: Vec<(u64, u64)>,
    end_cache: EndCache,
    tokens: usize,
    /// [`MAX_OBJECT`] and [`STEP`] unless made smaller for fuzzing.
    max_object: usize,
    step: usize,
    begin: memmem::Finder<'static>,
    end: memmem::Finder<'static>,
    int_version: memmem::Finder<'static>,
    pkcs_arc: memmem::Finder<'static>,
    long_sequence: memmem::Finder<'static>,
}

impl std::fmt::Debug for Finder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finder")
            .field("held_from", &self.base)
            .field("held", &self.buf.len())
            .field("next", &self.next)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl Default for Finder {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Finder {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl Finder {
    pub fn new() -> Self {
        Self::with_limits(MAX_OBJECT, STEP)
    }

    fn with_limits(max_object: usize, step: usize) -> Self {
        Finder {
            max_object: max_object.max(LOOKBEHIND),
            step: step.max(1),
            buf: Vec::new(),
            base: 0,
            next: 0,
            der_covered: 0,
            pem_blocks: Vec::new(),
            end_cache: EndCache::default(),
            tokens: 0,
            begin: memmem::Finder::new(pem::BEGIN),
            end: memmem::Finder::new(pem::END),
            int_version: memmem::Finder::new(&[0x02, 0x01]),
            pkcs_arc: memmem::Finder::new(PKCS_ARC),
            long_sequence: memmem::Finder::new(&[0x30, 0x82]),
        }
    }

    /// Feed the next chunk of the stream. What is found is appended to `out`
    /// with its offset from the start of the stream.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<(u64, FindingKind)>) {
        let full = LOOKBEHIND + self.max_object + self.step;
        while !chunk.is_empty() {
            let n = chunk.len().min(full.saturating_sub(self.buf.len()).max(1));
            self.reserve(n, full);
            self.buf.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if self.buf.len() >= full {
                let end = self.base + self.buf.len() as u64;
                self.round(end - self.max_object as u64, out);
            }
        }
    }

    /// Room for `n` more octets. The buffer grows by hand, never by `Vec`'s
    /// reallocation, so no copy of what it held is left behind unwiped; a
    /// small stream gets a small buffer.
    fn reserve(&mut self, n: usize, full: usize) {
        let need = self.buf.len() + n;
        if need <= self.buf.capacity() {
            return;
        }
        let mut grown = Vec::with_capacity((self.buf.capacity() * 2).max(need).max(4096).min(full.max(need)));
        grown.extend_from_slice(&self.buf);
        self.buf.zeroize();
        self.buf = grown;
    }

    /// The stream ended: examine what is still held.
    pub fn finish(&mut self, out: &mut Vec<(u64, FindingKind)>) {
        let end = self.base + self.buf.len() as u64;
        self.round(end, out);
        self.buf.zeroize();
        self.buf.clear();
        self.base = end;
    }

    /// Examines the candidates that start in `[self.next, to)`; every byte up
    /// to `to + MAX_OBJECT` (or the stream's end) is in `buf`.
    fn round(&mut self, to: u64, out: &mut Vec<(u64, FindingKind)>) {
        let from = self.next;
        if to > from {
            let mut found = Vec::new();
            self.pem(from, to, &mut found);
            self.der(from, to, &mut found);
            self.tokens(from, to, &mut found);
            // Rounds are in stream order; within one, order by offset (stable:
            // a PFX's findings keep their order).
            found.sort_by_key(|f| f.0);
            out.append(&mut found);
        }
        self.next = to;
        self.pem_blocks.retain(|&(_, e)| e > to);
        let keep_from = to.saturating_sub(LOOKBEHIND as u64).max(self.base);
        let drop = (keep_from - self.base) as usize;
        self.buf[..drop].zeroize();
        self.buf.drain(..drop);
        self.base = keep_from;
    }

    fn idx(&self, abs: u64) -> usize {
        (abs - self.base) as usize
    }

    /// The bytes a candidate starting at `start` is judged on.
    fn window(&self, start: u64) -> &[u8] {
        let i = self.idx(start);
        &self.buf[i..self.buf.len().min(i + self.max_object)]
    }

    fn pem(&mut self, from: u64, to: u64, found: &mut Vec<(u64, FindingKind)>) {
        let lo = self.idx(from);
        let hi = (self.idx(to) + pem::BEGIN.len() - 1).min(self.buf.len());
        let hits: Vec<u64> =
            self.begin.find_iter(&self.buf[lo..hi]).map(|h| from + h as u64).filter(|&s| s < to).collect();
        for start in hits {
            let window_end = start + self.window(start).len() as u64;
            let Some((_, body_start)) = pem::begin(self.window(start)) else { continue };
            let Some(end) = self.first_end(start + body_start as u64, window_end) else { continue };
            let i = self.idx(start);
            let w = &self.buf[i..self.buf.len().min(i + self.max_object)];
            if let Some((len, finding)) = pem::block(w, (end - start) as usize) {
                self.pem_blocks.push((start, start + len as u64));
                if let Some(f) = finding {
                    found.push((start, f));
                }
            }
        }
    }

    /// The first "-----END " at or after `from` that starts before `to`.
    fn first_end(&mut self, from: u64, to: u64) -> Option<u64> {
        let c = &self.end_cache;
        if c.from <= from && c.searched_to > from {
            match c.found {
                Some(f) if f >= from => return (f < to).then_some(f),
                None if c.searched_to >= to => return None,
                _ => {}
            }
        }
        let search_from =
            if c.from <= from && c.found.is_none() && c.searched_to > from { c.searched_to } else { from };
        let lo = self.idx(search_from);
        let hi = self.idx(to);
        let found = if lo < hi { self.end.find(&self.buf[lo..hi]).map(|i| search_from + i as u64) } else { None };
        self.end_cache = EndCache { from, searched_to: found.map_or(to, |f| f + 1), found };
        found
    }

    fn der(&mut self, from: u64, to: u64, found: &mut Vec<(u64, FindingKind)>) {
        let lo = self.idx(from);
        let hi = (self.idx(to) + ANCHOR_SLACK).min(self.buf.len());
        let buf = &self.buf;
        let mut cands: Vec<(u64, Candidate)> = Vec::new();
        let seq_before = |end: usize, cands: &mut Vec<usize>| {
            // A SEQUENCE header of 2 to 4 octets that ends at `end`.
            for k in 2..=4 {
                if end >= k
                    && buf[end - k] == der::SEQUENCE
                    && der::header(&buf[end - k..]).is_some_and(|(len, _)| len == k)
                {
                    cands.push(end - k);
                }
            }
        };
        let mut starts: Vec<usize> = Vec::new();
        for q in self.int_version.find_iter(&buf[lo..hi]).map(|q| lo + q) {
            let (Some(&v), Some(&next)) = (buf.get(q + 2), buf.get(q + 3)) else { continue };
            starts.clear();
            match (v, next) {
                (0, 0x30) | (0, 0x02) | (1, 0x30) | (1, 0x04) | (1, 0x02) => {
                    seq_before(q, &mut starts);
                    cands.extend(starts.iter().map(|&s| (self.base + s as u64, Candidate::Key)));
                }
                (3, 0x30) => {
                    seq_before(q, &mut starts);
                    cands.extend(starts.iter().map(|&s| (self.base + s as u64, Candidate::Pfx)));
                }
                _ => {}
            }
            if v <= 2 && q >= 2 && buf[q - 2] == 0xa0 && buf[q - 1] == 0x03 {
                // Certificate { TBSCertificate { [0] { INTEGER version } ...
                let mut tbs = Vec::new();
                seq_before(q - 2, &mut tbs);
                for t in tbs {
                    starts.clear();
                    seq_before(t, &mut starts);
                    cands.extend(starts.iter().map(|&s| (self.base + s as u64, Candidate::Certificate)));
                }
            }
        }
        for q in self.long_sequence.find_iter(&buf[lo..hi]).map(|q| lo + q) {
            // A version 1 certificate: Certificate { TBSCertificate { INTEGER serial, ...
            // (no `[0]` version to anchor on).
            let v1 = matches!(buf.get(q + 4..q + 9), Some([0x30, 0x82, _, _, 0x02]) | Some([0x30, 0x81, _, 0x02, _]));
            if v1 && der::header(&buf[q..]).is_some_and(|(h, _)| h == 4) {
                cands.push((self.base + q as u64, Candidate::Certificate));
            }
        }
        for p in self.pkcs_arc.find_iter(&buf[lo..hi]).map(|p| lo + p) {
            // EncryptedPrivateKeyInfo { AlgorithmIdentifier { OID pbe..., ...
            let Some(arc) = buf.get(p + PKCS_ARC.len()) else { continue };
            if !(*arc == 0x05 || *arc == 0x0c) || p < 2 || buf[p - 2] != der::OID || !(9..=10).contains(&buf[p - 1]) {
                continue;
            }
            let mut algs = Vec::new();
            seq_before(p - 2, &mut algs);
            for a in algs {
                starts.clear();
                seq_before(a, &mut starts);
                cands.extend(starts.iter().map(|&s| (self.base + s as u64, Candidate::EncryptedPkcs8)));
            }
        }
        cands.retain(|&(s, _)| s >= from && s < to);
        cands.sort_unstable();
        cands.dedup();
        for (start, kind) in cands {
            if start < self.der_covered {
                continue;
            }
            let i = (start - self.base) as usize;
            let w = &self.buf[i..self.buf.len().min(i + self.max_object)];
            let Some(t) = der::tlv(w) else { continue };
            let obj = t.raw;
            let mut got: Vec<FindingKind> = Vec::new();
            match kind {
                Candidate::Key => {
                    // The INTEGER version's value, and the tag after it.
                    let key = match (t.content.get(2), t.content.get(3)) {
                        (Some(_), Some(0x30)) => decode::pkcs8(obj).map(|k| k.into_finding(KeyFormat::Pkcs8, "DER")),
                        (Some(1), Some(0x04)) => {
                            decode::sec1(obj, None).map(|k| k.into_finding(KeyFormat::Sec1, "DER"))
                        }
                        (Some(_), Some(0x02)) => decode::pkcs1(obj).map(|k| k.into_finding(KeyFormat::Pkcs1, "DER")),
                        _ => None,
                    };
                    got.extend(key);
                }
                Candidate::Pfx => {
                    if let Some(all) = pfx::pfx(obj) {
                        // A PFX is covered even when nothing in it could be read.
                        self.der_covered = start + obj.len() as u64;
                        got = all;
                    }
                }
                Candidate::Certificate => got.extend(decode::certificate(obj)),
                Candidate::EncryptedPkcs8 => {
                    got.extend(decode::encrypted_pkcs8(obj).map(|k| k.into_finding(KeyFormat::EncryptedPkcs8, "DER")))
                }
            }
            if !got.is_empty() {
                self.der_covered = start + obj.len() as u64;
                found.extend(got.into_iter().map(|f| (start, f)));
            }
        }
    }

    fn in_pem_block(&self, at: u64) -> bool {
        let i = self.pem_blocks.partition_point(|&(s, _)| s <= at);
        i > 0 && self.pem_blocks[i - 1].1 > at
    }

    fn tokens(&mut self, from: u64, to: u64, found: &mut Vec<(u64, FindingKind)>) {
        let buf = &self.buf;
        let lo = self.idx(from);
        let hi = self.idx(to);
        let len = buf.len();
        let limit = (hi + TOKEN_LEN).min(len);
        let mut p = lo;
        let mut runs: Vec<usize> = Vec::new();
        while p < limit {
            if !BASE64URL[usize::from(buf[p])] {
                p += TOKEN_LEN;
                continue;
            }
            let mut a = p;
            while a > 0 && a + TOKEN_LEN >= p && BASE64URL[usize::from(buf[a - 1])] {
                a -= 1;
            }
            let mut z = p + 1;
            while z < len && z <= a + TOKEN_LEN && BASE64URL[usize::from(buf[z])] {
                z += 1;
            }
            if z - a == TOKEN_LEN && (a == 0 || !BASE64URL[usize::from(buf[a - 1])]) && a >= lo && a < hi {
                runs.push(a);
            }
            // Past this run (to its real end when it is too long to be a token).
            while z < len && BASE64URL[usize::from(buf[z])] {
                z += 1;
            }
            p = z + 1;
        }
        for a in runs {
            if self.tokens >= MAX_TOKENS {
                break;
            }
            let at = self.base + a as u64;
            if self.in_pem_block(at) {
                continue;
            }
            let text = &self.buf[a..a + TOKEN_LEN];
            let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text) else { continue };
            if raw.len() != 32 {
                continue;
            }
            self.tokens += 1;
            found.push((at, FindingKind::TokenCandidate { token_sha256: sha256_hex(text) }));
        }
    }
}

/// Everything in `bytes`, as one stream.
pub fn find_all(bytes: &[u8]) -> Vec<(u64, FindingKind)> {
    let mut out = Vec::new();
    let mut f = Finder::new();
    f.feed(bytes, &mut out);
    f.finish(&mut out);
    out
}

/// Hooks for the fuzz target: a finder with a small window and small rounds,
/// so that small inputs cross the boundaries between rounds.
#[doc(hidden)]
pub mod internal {
    use super::{Finder, FindingKind};

    /// A finder judging candidates on `max_object` octets (at least 64), in
    /// rounds of `step` new octets.
    pub fn finder(max_object: usize, step: usize) -> Finder {
        Finder::with_limits(max_object, step)
    }

    /// [`super::find_all`] with those limits.
    pub fn find_all(bytes: &[u8], max_object: usize, step: usize) -> Vec<(u64, FindingKind)> {
        let mut out = Vec::new();
        let mut f = finder(max_object, step);
        f.feed(bytes, &mut out);
        f.finish(&mut out);
        out
    }
}
