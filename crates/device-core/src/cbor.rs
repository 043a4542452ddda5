//! CBOR, only as much as trust bundles and vouchers use, and only in the
//! deterministic encoding (RFC 8949 section 4.2.1) the authority writes:
//! shortest-form arguments, definite lengths, one item with nothing after it.
//! Anything else (floats, indefinite lengths, longer forms than needed) is
//! refused, as the core refuses what does not re-encode to the same octets.

use alloc::boxed::Box;
use alloc::vec::Vec;

/// Deepest nesting read (the core's limit).
const MAX_DEPTH: usize = 16;

/// A decoded item, borrowing its strings from the input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Uint(u64),
    Nint(u64),
    Bytes(&'a [u8]),
    Text(&'a str),
    Array(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
    Tag(u64, Box<Value<'a>>),
    /// false, true, null, undefined (20 to 23).
    Simple(u8),
}

/// Decode exactly one deterministic item from `bytes`.
pub(crate) fn decode(bytes: &[u8]) -> Result<Value<'_>, &'static str> {
    let (v, rest) = item(bytes, 0)?;
    if !rest.is_empty() {
        return Err("bytes after the CBOR item");
    }
    Ok(v)
}

/// Whether `bytes` is one deterministic CBOR item we read (for fuzzing).
pub fn check_one(bytes: &[u8]) -> bool {
    decode(bytes).is_ok()
}

fn head(input: &[u8]) -> Result<(u8, u8, u64, &[u8]), &'static str> {
    let (&b, rest) = input.split_first().ok_or("CBOR ends early")?;
    let (major, ai) = (b >> 5, b & 0x1f);
    let (n, len) = match ai {
        0..=23 => return Ok((major, ai, u64::from(ai), rest)),
        24 => (1, 24),
        25 => (2, 256),
        26 => (4, 65_536),
        27 => (8, 4_294_967_296),
        _ => return Err("indefinite lengths and reserved values are not deterministic CBOR"),
    };
    if rest.len() < n {
        return Err("CBOR ends early");
    }
    let v = rest[..n].iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    if v < len {
        return Err("not in deterministic CBOR encoding (a longer form than needed)");
    }
    Ok((major, ai, v, &rest[n..]))
}

fn item(input: &[u8], depth: usize) -> Result<(Value<'_>, &[u8]), &'static str> {
    if depth > MAX_DEPTH {
        return Err("CBOR nested too deep");
    }
    let (major, ai, arg, rest) = head(input)?;
    let take = |rest: &[u8]| -> Result<(usize, usize), &'static str> {
        let n = usize::try_from(arg).map_err(|_| "CBOR length too large")?;
        if rest.len() < n {
            return Err("CBOR ends early");
        }
        Ok((n, n))
    };
    Ok(match major {
        0 => (Value::Uint(arg), rest),
        1 => (Value::Nint(arg), rest),
        2 => {
            let (n, _) = take(rest)?;
            (Value::Bytes(&rest[..n]), &rest[n..])
        }
        3 => {
            let (n, _) = take(rest)?;
            let t = core::str::from_utf8(&rest[..n]).map_err(|_| "a CBOR text string is not UTF-8")?;
            (Value::Text(t), &rest[n..])
        }
        4 => {
            // Each element is at least one octet: the length bounds the allocation.
            let n = usize::try_from(arg).ok().filter(|n| *n <= rest.len()).ok_or("CBOR ends early")?;
            let mut out = Vec::with_capacity(n);
            let mut rest = rest;
            for _ in 0..n {
                let (v, r) = item(rest, depth + 1)?;
                out.push(v);
                rest = r;
            }
            (Value::Array(out), rest)
        }
        5 => {
            let n = usize::try_from(arg).ok().filter(|n| n.saturating_mul(2) <= rest.len()).ok_or("CBOR ends early")?;
            let mut out = Vec::with_capacity(n);
            let mut rest = rest;
            for _ in 0..n {
                let (k, r) = item(rest, depth + 1)?;
                let (v, r) = item(r, depth + 1)?;
                out.push((k, v));
                rest = r;
            }
            (Value::Map(out), rest)
        }
        6 => {
            let (v, r) = item(rest, depth + 1)?;
            (Value::Tag(arg, Box::new(v)), r)
        }
        _ => match ai {
            20..=23 => (Value::Simple(ai), rest),
            _ => return Err("CBOR floats and other simple values are not used here"),
        },
    })
}

impl<'a> Value<'a> {
    pub(crate) fn uint(&self, what: &'static str) -> Result<u64, &'static str> {
        match self {
            Value::Uint(u) => Ok(*u),
            _ => Err(what),
        }
    }

    /// A time: an unsigned integer of Unix seconds that fits an `i64`.
    pub(crate) fn time(&self, what: &'static str) -> Result<i64, &'static str> {
        i64::try_from(self.uint(what)?).map_err(|_| what)
    }

    pub(crate) fn bytes(&self, what: &'static str) -> Result<&'a [u8], &'static str> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err(what),
        }
    }

    pub(crate) fn hash(&self, what: &'static str) -> Result<[u8; 32], &'static str> {
        self.bytes(what)?.try_into().map_err(|_| what)
    }

    pub(crate) fn text(&self, what: &'static str) -> Result<&'a str, &'static str> {
        match self {
            Value::Text(t) => Ok(t),
            _ => Err(what),
        }
    }

    pub(crate) fn array(&self, what: &'static str, max: usize) -> Result<&[Value<'a>], &'static str> {
        match self {
            Value::Array(a) if a.len() <= max => Ok(a),
            _ => Err(what),
        }
    }

    /// A map's values, which must have exactly the unsigned integer keys 1..=n, in order.
    pub(crate) fn int_map(&self, n: u64, what: &'static str) -> Result<Vec<&Value<'a>>, &'static str> {
        let Value::Map(entries) = self else { return Err(what) };
        if entries.len() as u64 != n {
            return Err(what);
        }
        let mut out = Vec::with_capacity(entries.len());
        for ((k, v), want) in entries.iter().zip(1..) {
            if *k != Value::Uint(want) {
                return Err(what);
            }
            out.push(v);
        }
        Ok(out)
    }
}

/// Encoding, for the few structures we compare with or sign over.
pub(crate) fn put_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n < 256 {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n < 65_536 {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n < 4_294_967_296 {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

pub(crate) fn put_text(out: &mut Vec<u8>, t: &str) {
    put_head(out, 3, t.len() as u64);
    out.extend_from_slice(t.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_deterministic_encoding_is_read() {
        assert_eq!(decode(&[0x18, 0x18]), Ok(Value::Uint(24)));
        assert!(decode(&[0x18, 0x17]).is_err(), "23 fits the initial byte");
        assert!(decode(&[0x19, 0x00, 0xff]).is_err(), "255 fits one octet");
        assert!(decode(&[0x5f, 0xff]).is_err(), "indefinite length");
        assert!(decode(&[0xf9, 0x3c, 0x00]).is_err(), "a float");
        assert!(decode(&[0x01, 0x00]).is_err(), "a second item");
        assert!(decode(&[0x62, 0xff, 0xfe]).is_err(), "text that is not UTF-8");
        assert!(decode(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err(), "a huge array");
        let mut out = Vec::new();
        for n in [0u64, 23, 24, 255, 256, 65_535, 65_536, u64::from(u32::MAX), u64::MAX] {
            out.clear();
            put_head(&mut out, 0, n);
            assert_eq!(decode(&out), Ok(Value::Uint(n)), "{n}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = [alloc::vec![0x81u8; 16], alloc::vec![0x00]].concat();
        assert!(decode(&deep).is_ok());
        let deeper = [alloc::vec![0x81u8; 17], alloc::vec![0x00]].concat();
        assert!(decode(&deeper).is_err());
    }
}
