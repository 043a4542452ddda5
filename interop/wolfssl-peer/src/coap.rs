//! Just enough CoAP (RFC 7252) and block-wise transfer (RFC 7959) for one
//! EST-coaps request: build a confirmable request by hand, parse what comes back.
//!
//! Pure: bytes in, bytes or a decision out. No sockets, no clock.

use std::fmt;

/// Option number of Uri-Path (RFC 7252, 5.10).
pub const OPT_URI_PATH: u16 = 11;
/// Option number of Content-Format (RFC 7252, 5.10).
pub const OPT_CONTENT_FORMAT: u16 = 12;
/// Option number of Accept (RFC 7252, 5.10).
pub const OPT_ACCEPT: u16 = 17;
/// Option number of Block2 (RFC 7959, 2.1).
pub const OPT_BLOCK2: u16 = 23;

/// The most a single request body may be: we do not implement Block1, so the body
/// must fit one message, and RFC 7252 (4.6) advises 1024 bytes of payload when the
/// path MTU is unknown.
pub const MAX_REQUEST_BODY: usize = 1024;

/// Message type (RFC 7252, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    /// Confirmable.
    Con,
    /// Non-confirmable.
    Non,
    /// Acknowledgement.
    Ack,
    /// Reset.
    Rst,
}

impl MsgType {
    fn bits(self) -> u8 {
        match self {
            MsgType::Con => 0,
            MsgType::Non => 1,
            MsgType::Ack => 2,
            MsgType::Rst => 3,
        }
    }

    fn from_bits(b: u8) -> MsgType {
        match b & 3 {
            0 => MsgType::Con,
            1 => MsgType::Non,
            2 => MsgType::Ack,
            _ => MsgType::Rst,
        }
    }
}

/// Request method (RFC 7252, 12.1.1), the two EST-coaps uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// 0.01 GET.
    Get,
    /// 0.02 POST.
    Post,
}

impl Method {
    fn code(self) -> u8 {
        match self {
            Method::Get => 0x01,
            Method::Post => 0x02,
        }
    }
}

/// A CoAP code, class.detail (RFC 7252, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub u8);

impl Code {
    /// 0.00, the code of an empty message.
    pub const EMPTY: Code = Code(0);

    /// The class (the `c` of `c.dd`).
    pub fn class(self) -> u8 {
        self.0 >> 5
    }

    /// The detail (the `dd` of `c.dd`).
    pub fn detail(self) -> u8 {
        self.0 & 0x1f
    }

    /// A success response: class 2.
    pub fn is_success(self) -> bool {
        self.class() == 2
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

/// A Block2 option value (RFC 7959, 2.2): block number, more flag, size exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// NUM: the block number.
    pub num: u32,
    /// M: more blocks follow.
    pub more: bool,
    /// SZX: the block size is 2^(SZX + 4), SZX 0..=6.
    pub szx: u8,
}

impl Block {
    /// The block size in bytes.
    pub fn size(self) -> usize {
        16usize << self.szx
    }

    /// The option value (NUM << 4 | M << 3 | SZX), as an unsigned integer.
    fn to_uint(self) -> u32 {
        (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx)
    }

    fn from_uint(v: u32) -> Result<Block, CoapError> {
        let szx = (v & 7) as u8;
        if szx == 7 {
            // SZX 7 is reserved (RFC 7959, 2.2); RFC 8323's BERT does not apply to UDP.
            return Err(CoapError::BadBlock2(v));
        }
        Ok(Block { num: v >> 4, more: v & 8 != 0, szx })
    }
}

/// A request to encode.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// GET or POST.
    pub method: Method,
    /// Message ID.
    pub message_id: u16,
    /// Token, 0 to 8 bytes.
    pub token: &'a [u8],
    /// Path segments, each sent as one Uri-Path option.
    pub path: Vec<&'a str>,
    /// Content-Format of the payload, if any.
    pub content_format: Option<u16>,
    /// Accept, if any.
    pub accept: Option<u16>,
    /// Block2 (asking for one block of the response), if any.
    pub block2: Option<Block>,
    /// The payload (empty: no payload marker).
    pub payload: &'a [u8],
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message type.
    pub mtype: MsgType,
    /// The code.
    pub code: Code,
    /// The message ID.
    pub message_id: u16,
    /// The token.
    pub token: Vec<u8>,
    /// The Block2 option, if present.
    pub block2: Option<Block>,
    /// The Content-Format option, if present.
    pub content_format: Option<u16>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Why bytes are not a CoAP message we can use.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoapError {
    /// Fewer than the 4 header bytes, or the token runs past the end.
    Truncated,
    /// The version field is not 1.
    BadVersion(u8),
    /// A token length above 8 (reserved, RFC 7252, 3).
    BadTokenLength(u8),
    /// An option delta or length nibble of 15 outside the payload marker, or an
    /// option running past the end.
    BadOption,
    /// A payload marker followed by nothing (RFC 7252, 3: a format error).
    EmptyPayloadAfterMarker,
    /// A Block2 value we cannot use (reserved SZX, or longer than 3 bytes).
    BadBlock2(u32),
    /// The path has an empty segment or a segment over 255 bytes.
    BadPath(String),
    /// The token is longer than 8 bytes.
    TokenTooLong(usize),
}

impl fmt::Display for CoapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoapError::Truncated => write!(f, "CoAP message truncated"),
            CoapError::BadVersion(v) => write!(f, "CoAP version {v}, expected 1"),
            CoapError::BadTokenLength(l) => write!(f, "CoAP token length {l} is reserved"),
            CoapError::BadOption => write!(f, "CoAP option malformed"),
            CoapError::EmptyPayloadAfterMarker => {
                write!(f, "CoAP payload marker followed by no payload")
            }
            CoapError::BadBlock2(v) => write!(f, "Block2 value {v:#x} unusable"),
            CoapError::BadPath(p) => write!(f, "path {p:?}: empty or over-long segment"),
            CoapError::TokenTooLong(l) => write!(f, "token of {l} bytes, at most 8"),
        }
    }
}

impl std::error::Error for CoapError {}

/// Splits `/a/b/c` into Uri-Path segments (leading and trailing `/` ignored).
pub fn split_path(path: &str) -> Result<Vec<&str>, CoapError> {
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let segs: Vec<&str> = trimmed.split('/').collect();
    if segs.iter().any(|s| s.is_empty() || s.len() > 255) {
        return Err(CoapError::BadPath(path.to_owned()));
    }
    Ok(segs)
}

/// Minimal big-endian bytes of an unsigned option value (0 is the empty string).
fn uint_bytes(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    b[skip..].to_vec()
}

/// The 4-bit nibble and extended bytes for an option delta or length.
fn nibble(v: usize, ext: &mut Vec<u8>) -> u8 {
    if v < 13 {
        v as u8
    } else if v < 269 {
        ext.push((v - 13) as u8);
        13
    } else {
        let x = (v - 269) as u16;
        ext.extend_from_slice(&x.to_be_bytes());
        14
    }
}

/// Encodes a request. Options are emitted in ascending number order, as RFC 7252
/// (3.1) requires of their delta encoding.
pub fn encode_request(req: &Request<'_>) -> Result<Vec<u8>, CoapError> {
    if req.token.len() > 8 {
        return Err(CoapError::TokenTooLong(req.token.len()));
    }
    let mut opts: Vec<(u16, Vec<u8>)> = Vec::new();
    for seg in &req.path {
        if seg.is_empty() || seg.len() > 255 {
            return Err(CoapError::BadPath((*seg).to_owned()));
        }
        opts.push((OPT_URI_PATH, seg.as_bytes().to_vec()));
    }
    if let Some(cf) = req.content_format {
        opts.push((OPT_CONTENT_FORMAT, uint_bytes(u32::from(cf))));
    }
    if let Some(a) = req.accept {
        opts.push((OPT_ACCEPT, uint_bytes(u32::from(a))));
    }
    if let Some(b) = req.block2 {
        opts.push((OPT_BLOCK2, uint_bytes(b.to_uint())));
    }
    // Stable: Uri-Path segments keep their order.
    opts.sort_by_key(|(n, _)| *n);

    let mut out = Vec::with_capacity(16 + req.payload.len());
    out.push((1 << 6) | (MsgType::Con.bits() << 4) | req.token.len() as u8);
    out.push(req.method.code());
    out.extend_from_slice(&req.message_id.to_be_bytes());
    out.extend_from_slice(req.token);
    let mut last = 0u16;
    for (num, val) in &opts {
        let mut ext = Vec::new();
        let d = nibble(usize::from(num - last), &mut ext);
        let l = nibble(val.len(), &mut ext);
        out.push((d << 4) | l);
        out.extend_from_slice(&ext);
        out.extend_from_slice(val);
        last = *num;
    }
    if !req.payload.is_empty() {
        out.push(0xff);
        out.extend_from_slice(req.payload);
    }
    Ok(out)
}

/// Encodes an empty ACK (to acknowledge a separate, confirmable response).
pub fn encode_empty_ack(message_id: u16) -> Vec<u8> {
    let mut out = vec![(1 << 6) | (MsgType::Ack.bits() << 4), 0];
    out.extend_from_slice(&message_id.to_be_bytes());
    out
}

fn read_ext(nib: u8, buf: &[u8], pos: &mut usize) -> Result<usize, CoapError> {
    match nib {
        0..=12 => Ok(usize::from(nib)),
        13 => {
            let b = *buf.get(*pos).ok_or(CoapError::BadOption)?;
            *pos += 1;
            Ok(usize::from(b) + 13)
        }
        14 => {
            let hi = *buf.get(*pos).ok_or(CoapError::BadOption)?;
            let lo = *buf.get(*pos + 1).ok_or(CoapError::BadOption)?;
            *pos += 2;
            Ok(usize::from(u16::from_be_bytes([hi, lo])) + 269)
        }
        _ => Err(CoapError::BadOption),
    }
}

fn read_uint(val: &[u8]) -> Option<u32> {
    if val.len() > 4 {
        return None;
    }
    Some(val.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// Decodes a message. Options other than Block2 and Content-Format are skipped
/// (a response carries no critical option a client of this kind must understand
/// beyond those).
pub fn decode(buf: &[u8]) -> Result<Message, CoapError> {
    if buf.len() < 4 {
        return Err(CoapError::Truncated);
    }
    let ver = buf[0] >> 6;
    if ver != 1 {
        return Err(CoapError::BadVersion(ver));
    }
    let mtype = MsgType::from_bits(buf[0] >> 4);
    let tkl = buf[0] & 0x0f;
    if tkl > 8 {
        return Err(CoapError::BadTokenLength(tkl));
    }
    let code = Code(buf[1]);
    let message_id = u16::from_be_bytes([buf[2], buf[3]]);
    let mut pos = 4 + usize::from(tkl);
    let token = buf.get(4..pos).ok_or(CoapError::Truncated)?.to_vec();
    let mut num = 0usize;
    let mut block2 = None;
    let mut content_format = None;
    let mut payload = Vec::new();
    while pos < buf.len() {
        let b = buf[pos];
        pos += 1;
        if b == 0xff {
            if pos == buf.len() {
                return Err(CoapError::EmptyPayloadAfterMarker);
            }
            payload = buf[pos..].to_vec();
            break;
        }
        let delta = read_ext(b >> 4, buf, &mut pos)?;
        let len = read_ext(b & 0x0f, buf, &mut pos)?;
        num += delta;
        let val = buf.get(pos..pos + len).ok_or(CoapError::BadOption)?;
        pos += len;
        match u16::try_from(num).map_err(|_| CoapError::BadOption)? {
            OPT_BLOCK2 => {
                if val.len() > 3 {
                    return Err(CoapError::BadBlock2(read_uint(val).unwrap_or(u32::MAX)));
                }
                block2 = Some(Block::from_uint(read_uint(val).unwrap_or(0))?);
            }
            OPT_CONTENT_FORMAT => {
                content_format = read_uint(val).and_then(|v| u16::try_from(v).ok());
            }
            _ => {}
        }
    }
    Ok(Message { mtype, code, message_id, token, block2, content_format, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_with_path_and_accept_encodes_as_rfc_7252_says() {
        let req = Request {
            method: Method::Get,
            message_id: 0x1234,
            token: &[0xaa, 0xbb],
            path: split_path("/.well-known/est/crts").unwrap(),
            content_format: None,
            accept: Some(281),
            block2: None,
            payload: &[],
        };
        let bytes = encode_request(&req).unwrap();
        let mut want = vec![0x42, 0x01, 0x12, 0x34, 0xaa, 0xbb];
        // Uri-Path ".well-known": delta 11, length 11.
        want.push(0xbb);
        want.extend_from_slice(b".well-known");
        want.push(0x03);
        want.extend_from_slice(b"est");
        want.push(0x04);
        want.extend_from_slice(b"crts");
        // Accept 281 = 0x0119: delta 6, length 2.
        want.extend_from_slice(&[0x62, 0x01, 0x19]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn post_block2_and_payload() {
        let req = Request {
            method: Method::Post,
            message_id: 1,
            token: &[1],
            path: vec!["est", "sen"],
            content_format: Some(286),
            accept: Some(281),
            block2: Some(Block { num: 2, more: false, szx: 6 }),
            payload: b"csr",
        };
        let bytes = encode_request(&req).unwrap();
        // Block2 after Accept: delta 6, value 0x26.
        assert_eq!(&bytes[bytes.len() - 6..], &[0x61, 0x26, 0xff, b'c', b's', b'r']);
        let m = decode(&bytes).unwrap();
        assert_eq!(m.code, Code(2));
        assert_eq!(m.content_format, Some(286));
        assert_eq!(m.block2, Some(Block { num: 2, more: false, szx: 6 }));
        assert_eq!(m.payload, b"csr");
    }

    #[test]
    fn long_option_uses_extended_length() {
        let seg = "x".repeat(200);
        let req = Request {
            method: Method::Get,
            message_id: 1,
            token: &[],
            path: vec![&seg],
            content_format: None,
            accept: None,
            block2: None,
            payload: &[],
        };
        let bytes = encode_request(&req).unwrap();
        // delta 11, length nibble 13 then 200 - 13.
        assert_eq!(&bytes[4..6], &[0xbd, 187]);
        // And Uri-Path's limit of 255 bytes holds.
        let seg = "x".repeat(256);
        let too_long = Request { path: vec![&seg], ..req };
        assert!(encode_request(&too_long).is_err());
    }

    #[test]
    fn decode_refuses_what_rfc_7252_calls_a_format_error() {
        assert_eq!(decode(&[0x60, 0x45]), Err(CoapError::Truncated));
        assert_eq!(decode(&[0x20, 0x45, 0, 1]), Err(CoapError::BadVersion(0)));
        assert_eq!(decode(&[0x69, 0x45, 0, 1]), Err(CoapError::BadTokenLength(9)));
        assert_eq!(decode(&[0x60, 0x45, 0, 1, 0xff]), Err(CoapError::EmptyPayloadAfterMarker));
        assert_eq!(decode(&[0x60, 0x45, 0, 1, 0xf0]), Err(CoapError::BadOption));
        // Block2 with SZX 7.
        assert_eq!(decode(&[0x60, 0x45, 0, 1, 0xd1, 10, 0x07]), Err(CoapError::BadBlock2(7)));
    }

    #[test]
    fn code_display() {
        assert_eq!(Code(0x44).to_string(), "2.04");
        assert_eq!(Code(0x84).to_string(), "4.04");
        assert!(Code(0x45).is_success());
        assert!(!Code(0xa0).is_success());
    }

    #[test]
    fn split_path_refuses_empty_segments() {
        assert_eq!(split_path("/a/b/").unwrap(), vec!["a", "b"]);
        assert!(split_path("/a//b").is_err());
        assert!(split_path("/").unwrap().is_empty());
    }
}
