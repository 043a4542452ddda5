//! A strict, allocation-free DER reader for the few structures the finder
//! checks by hand, and the few it writes (SubjectPublicKeyInfo).
//!
//! By hand because the finder tries every candidate offset of a blob: it must
//! reject garbage in a handful of comparisons, before any typed decoder runs.

pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const NULL: u8 = 0x05;
pub(crate) const OID: u8 = 0x06;

/// One TLV: its tag, its content, and the whole encoding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub raw: &'a [u8],
}

/// The length of a DER header at the start of `b`, and the content length it
/// announces; `None` unless the length is definite and minimally encoded.
/// Lengths above 16 MiB are refused (nothing we look for is that large).
pub(crate) fn header(b: &[u8]) -> Option<(usize, usize)> {
    let first = *b.get(1)?;
    if first < 0x80 {
        return Some((2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 3 {
        return None;
    }
    let bytes = b.get(2..2 + n)?;
    if bytes[0] == 0 {
        return None;
    }
    let len = bytes.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
    if len < 0x80 {
        return None;
    }
    Some((2 + n, len))
}

/// The TLV at the start of `b`, if whole.
pub(crate) fn tlv(b: &[u8]) -> Option<Tlv<'_>> {
    let tag = *b.first()?;
    // Multi-octet tags never occur in what we read.
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (h, len) = header(b)?;
    let end = h.checked_add(len)?;
    let raw = b.get(..end)?;
    Some(Tlv { tag, content: &raw[h..], raw })
}

/// Reads the TLVs of a constructed value one after another.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(content: &'a [u8]) -> Self {
        Reader { rest: content }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next TLV, whatever its tag.
    pub fn any(&mut self) -> Option<Tlv<'a>> {
        let t = tlv(self.rest)?;
        self.rest = &self.rest[t.raw.len()..];
        Some(t)
    }

    /// The next TLV, which must carry `tag`.
    pub fn expect(&mut self, tag: u8) -> Option<Tlv<'a>> {
        if *self.rest.first()? != tag {
            return None;
        }
        self.any()
    }

    /// The next TLV if it carries `tag`; nothing consumed otherwise.
    pub fn optional(&mut self, tag: u8) -> Option<Tlv<'a>> {
        if self.rest.first() == Some(&tag) {
            self.any()
        } else {
            None
        }
    }

    /// The content of the next INTEGER, which must be minimally encoded.
    pub fn integer(&mut self) -> Option<&'a [u8]> {
        let c = self.expect(INTEGER)?.content;
        match c {
            [] => None,
            [0, b, ..] if *b < 0x80 => None,
            [0xff, b, ..] if *b >= 0x80 => None,
            _ => Some(c),
        }
    }

    /// A small non-negative INTEGER (a version).
    pub fn small(&mut self) -> Option<u32> {
        match self.integer()? {
            [v] if *v < 0x80 => Some(u32::from(*v)),
            _ => None,
        }
    }

    /// A non-negative INTEGER that fits 64 bits (an iteration count).
    pub fn uint(&mut self) -> Option<u64> {
        let c = self.integer()?;
        if c[0] >= 0x80 || c.len() > 9 {
            return None;
        }
        Some(c.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// The magnitude of a positive INTEGER (no sign octet), refusing zero and negatives.
    pub fn positive(&mut self) -> Option<&'a [u8]> {
        let c = self.integer()?;
        if c[0] >= 0x80 {
            return None;
        }
        let m = if c[0] == 0 { &c[1..] } else { c };
        if m.iter().all(|&b| b == 0) {
            return None;
        }
        Some(m)
    }
}

/// The encoding of one TLV.
pub(crate) fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 5);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A positive INTEGER from a big-endian magnitude.
pub(crate) fn encode_uint(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|&&b| b == 0).count();
    let m = &magnitude[skip..];
    let mut c = Vec::with_capacity(m.len() + 1);
    if m.first().is_none_or(|&b| b >= 0x80) {
        c.push(0);
    }
    c.extend_from_slice(m);
    encode(INTEGER, &c)
}

/// A SubjectPublicKeyInfo from an encoded AlgorithmIdentifier and the key's octets.
pub(crate) fn spki(algorithm_identifier: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(key.len() + 1);
    bits.push(0);
    bits.extend_from_slice(key);
    let mut c = algorithm_identifier.to_vec();
    c.extend_from_slice(&encode(BIT_STRING, &bits));
    encode(SEQUENCE, &c)
}

/// The OID's dotted form, for notes.
pub(crate) fn oid_string(content: &[u8]) -> String {
    const_oid::ObjectIdentifier::from_bytes(content).map(|o| o.to_string()).unwrap_or_else(|_| hex::encode(content))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_strict() {
        assert_eq!(header(&[0x30, 0x05]), Some((2, 5)));
        assert_eq!(header(&[0x30, 0x81, 0x80]), Some((3, 128)));
        assert_eq!(header(&[0x30, 0x81, 0x7f]), None, "not minimal");
        assert_eq!(header(&[0x30, 0x82, 0x00, 0x90]), None, "not minimal");
        assert_eq!(header(&[0x30, 0x80]), None, "indefinite");
        assert_eq!(header(&[0x30, 0x82, 0x01, 0x00]), Some((4, 256)));
    }

    #[test]
    fn integers_round_trip() {
        assert_eq!(encode_uint(&[0x80]), vec![2, 2, 0, 0x80]);
        assert_eq!(encode_uint(&[0, 0, 1]), vec![2, 1, 1]);
        let e = encode_uint(&[0x12, 0x34]);
        assert_eq!(Reader::new(&e).positive(), Some(&[0x12u8, 0x34][..]));
        assert_eq!(Reader::new(&[2, 2, 0, 1]).integer(), None, "not minimal");
        let long = encode(OCTET_STRING, &[7u8; 300]);
        assert_eq!(tlv(&long).map(|t| t.content.len()), Some(300));
    }
}
