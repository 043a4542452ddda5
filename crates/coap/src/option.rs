//! CoAP option numbers (RFC 7252 §5.10, RFC 7959 §2.1, RFC 7967) and the
//! helpers for their values.

/// If-Match (critical, repeatable, opaque 0–8 bytes).
pub const IF_MATCH: u16 = 1;
/// Uri-Host (critical, string 1–255 bytes).
pub const URI_HOST: u16 = 3;
/// ETag (elective, repeatable in requests, opaque 1–8 bytes).
pub const ETAG: u16 = 4;
/// If-None-Match (critical, empty).
pub const IF_NONE_MATCH: u16 = 5;
/// Observe (RFC 7641, elective, uint 0–3 bytes).
pub const OBSERVE: u16 = 6;
/// Uri-Port (critical, uint 0–2 bytes).
pub const URI_PORT: u16 = 7;
/// Location-Path (elective, repeatable, string 0–255 bytes).
pub const LOCATION_PATH: u16 = 8;
/// Uri-Path (critical, repeatable, string 0–255 bytes): one path segment each.
pub const URI_PATH: u16 = 11;
/// Content-Format (elective, uint 0–2 bytes).
pub const CONTENT_FORMAT: u16 = 12;
/// Max-Age (elective, uint 0–4 bytes, seconds; 60 when absent).
pub const MAX_AGE: u16 = 14;
/// Uri-Query (critical, repeatable, string 0–255 bytes): one query argument each.
pub const URI_QUERY: u16 = 15;
/// Accept (critical, uint 0–2 bytes).
pub const ACCEPT: u16 = 17;
/// Location-Query (elective, repeatable, string 0–255 bytes).
pub const LOCATION_QUERY: u16 = 20;
/// Block2 (RFC 7959, critical, uint 0–3 bytes): the response's block.
pub const BLOCK2: u16 = 23;
/// Block1 (RFC 7959, critical, uint 0–3 bytes): the request's block.
pub const BLOCK1: u16 = 27;
/// Size2 (RFC 7959, elective, uint 0–4 bytes): the whole response's size.
pub const SIZE2: u16 = 28;
/// Proxy-Uri (critical, string 1–1034 bytes).
pub const PROXY_URI: u16 = 35;
/// Proxy-Scheme (critical, string 1–255 bytes).
pub const PROXY_SCHEME: u16 = 39;
/// Size1 (elective, uint 0–4 bytes): the whole request's size, or in a 4.13
/// answer the largest size the server accepts.
pub const SIZE1: u16 = 60;
/// No-Response (RFC 7967, elective, uint 0–1 byte).
pub const NO_RESPONSE: u16 = 258;

/// Whether option number `n` is critical (RFC 7252 §5.4.6: odd numbers). A
/// critical option the recipient does not understand makes it refuse the
/// message; an elective one is ignored.
pub fn is_critical(n: u16) -> bool {
    n & 1 == 1
}

/// The minimal big-endian encoding of a uint option value (RFC 7252 §3.2):
/// no leading zero bytes, so 0 is the empty value.
pub fn encode_uint(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    bytes[skip..].to_vec()
}

/// Reads a uint option value of at most `max_len` bytes (and at most 4).
/// Leading zero bytes are accepted (RFC 7252 §3.2 says a recipient must).
/// `None` when the value is longer.
pub fn decode_uint(value: &[u8], max_len: usize) -> Option<u32> {
    if value.len() > max_len.min(4) {
        return None;
    }
    Some(value.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint_is_minimal_and_reads_back() {
        assert_eq!(encode_uint(0), Vec::<u8>::new());
        assert_eq!(encode_uint(1), vec![1]);
        assert_eq!(encode_uint(256), vec![1, 0]);
        assert_eq!(encode_uint(0x0102_0304), vec![1, 2, 3, 4]);
        for v in [0u32, 1, 255, 256, 65535, 65536, 0x00ff_ffff, u32::MAX] {
            assert_eq!(decode_uint(&encode_uint(v), 4), Some(v));
        }
        assert_eq!(decode_uint(&[0, 0, 7], 3), Some(7));
        assert_eq!(decode_uint(&[1, 2, 3], 2), None);
        assert_eq!(decode_uint(&[1, 2, 3, 4, 5], 8), None);
    }

    #[test]
    fn critical_is_odd() {
        assert!(is_critical(URI_PATH));
        assert!(is_critical(BLOCK1));
        assert!(is_critical(BLOCK2));
        assert!(!is_critical(CONTENT_FORMAT));
        assert!(!is_critical(SIZE1));
        assert!(!is_critical(SIZE2));
    }
}
