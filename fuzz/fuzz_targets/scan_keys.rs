//! The firmware scanner's key finder over arbitrary bytes (scan::keys): fed in
//! chunks whose sizes come from the input, it finds exactly what it finds in
//! the whole input at once, and what it reports holds hashes, never key bytes.
#![no_main]
use iotpki_scan::keys::{self, internal, Finder};
use iotpki_scan::FindingKind;
use libfuzzer_sys::fuzz_target;

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

fn check(found: &[(u64, FindingKind)], len: usize) {
    for (offset, f) in found {
        assert!((*offset as usize) < len);
        match f {
            FindingKind::PrivateKey { algorithm, spki_sha256, encoding, note, .. } => {
                assert!(spki_sha256.as_deref().is_none_or(is_hash));
                assert!(
                    algorithm.len() <= 16 && algorithm.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'),
                    "{algorithm}"
                );
                assert!(encoding == "PEM" || encoding == "DER");
                // Notes are the scanner's own sentences (at most an OID or a cipher name from the input).
                assert!(note.as_deref().is_none_or(|n| n.len() < 400));
            }
            FindingKind::Certificate { spki_sha256, serial, .. } => {
                assert!(is_hash(spki_sha256));
                assert!(serial.bytes().all(|c| c.is_ascii_hexdigit()));
            }
            FindingKind::TokenCandidate { token_sha256 } => assert!(is_hash(token_sha256)),
        }
    }
}

fn sorted(mut v: Vec<(u64, FindingKind)>) -> Vec<String> {
    let mut s: Vec<String> = v.drain(..).map(|f| format!("{f:?}")).collect();
    s.sort();
    s
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else { return };
    let n = usize::from(head % 8) + 1;
    if rest.len() < n + 2 {
        return;
    }
    let (sizes, rest) = rest.split_at(n);
    let (limits, stream) = rest.split_at(2);
    let sizes: Vec<usize> = sizes.iter().map(|&b| usize::from(b) * 3 + 1).collect();

    // The default finder: chunked versus whole.
    let whole = keys::find_all(stream);
    check(&whole, stream.len());
    let mut out = Vec::new();
    let mut f = Finder::new();
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= stream.len() {
            break;
        }
        let end = (at + size).min(stream.len());
        f.feed(&stream[at..end], &mut out);
        at = end;
    }
    f.finish(&mut out);
    assert_eq!(sorted(out), sorted(whole));

    // Small windows and rounds, so that small inputs cross round boundaries.
    let max_object = 64 + usize::from(limits[0]) * 8;
    let step = 1 + usize::from(limits[1]) * 4;
    let whole = internal::find_all(stream, max_object, step);
    check(&whole, stream.len());
    let mut out = Vec::new();
    let mut f = internal::finder(max_object, step);
    let mut at = 0;
    for size in sizes.iter().rev().cycle() {
        if at >= stream.len() {
            break;
        }
        let end = (at + size).min(stream.len());
        f.feed(&stream[at..end], &mut out);
        at = end;
    }
    f.finish(&mut out);
    assert_eq!(sorted(out), sorted(whole));
});
