//! A few DER steps done by hand: taking the exact octets of an element (a
//! certificate's TBS, the certificates of a PKCS#7 set) without re-encoding.

/// One DER element at the start of `input`: its tag, its content, the whole
/// element, and what follows. Only definite, minimal lengths (DER) and
/// one-octet tags; `None` for anything else.
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) content: &'a [u8],
    pub(crate) whole: &'a [u8],
    pub(crate) rest: &'a [u8],
}

pub(crate) fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, after) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-octet tags: none in what we read
    }
    let (&first, after) = after.split_first()?;
    let (len, after) = if first < 0x80 {
        (usize::from(first), after)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || after.len() < n || after[0] == 0 {
            return None; // indefinite, too long, or not minimal
        }
        let len = after[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return None; // long form where the short one fits
        }
        (len, &after[n..])
    };
    if after.len() < len {
        return None;
    }
    let header = input.len() - after.len();
    let (content, rest) = after.split_at(len);
    Some(Tlv { tag, content, whole: &input[..header + len], rest })
}

/// The TBS octets of a signed structure (certificate, CRL, request): the
/// first element inside the outer SEQUENCE, exactly as sent.
pub(crate) fn signed_part(der: &[u8]) -> Option<&[u8]> {
    let outer = tlv(der)?;
    if outer.tag != 0x30 || !outer.rest.is_empty() {
        return None;
    }
    let inner = tlv(outer.content)?;
    (inner.tag == 0x30).then_some(inner.whole)
}
