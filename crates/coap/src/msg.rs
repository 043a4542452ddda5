//! The CoAP message (RFC 7252 §3) and its codec.
//!
//! [`Message::decode`] is strict: anything RFC 7252 calls a message format
//! error is a [`DecodeError`] saying what is wrong. It allocates no more than
//! the input's length (token, option values and payload are copies of parts
//! of it, and every option takes at least one input byte).
//! [`Message::encode`] is canonical (options in order, the shortest extended
//! forms), so whatever decodes encodes to bytes that decode to the same
//! message.

use std::fmt;

/// The message type (RFC 7252 §3, the T field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    /// Confirmable (0): the recipient acknowledges it, the sender retransmits it.
    Con,
    /// Non-confirmable (1).
    Non,
    /// Acknowledgement (2): acknowledges a Confirmable message, may carry
    /// the response (piggybacked).
    Ack,
    /// Reset (3): the recipient could not process a message.
    Rst,
}

impl Type {
    fn bits(self) -> u8 {
        match self {
            Type::Con => 0,
            Type::Non => 1,
            Type::Ack => 2,
            Type::Rst => 3,
        }
    }

    fn from_bits(bits: u8) -> Type {
        match bits & 3 {
            0 => Type::Con,
            1 => Type::Non,
            2 => Type::Ack,
            _ => Type::Rst,
        }
    }
}

/// A message code: class (3 bits) and detail (5 bits), written `c.dd`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub u8);

impl Code {
    /// 0.00, the code of an Empty message.
    pub const EMPTY: Code = Code::new(0, 0);
    /// 0.01 GET.
    pub const GET: Code = Code::new(0, 1);
    /// 0.02 POST.
    pub const POST: Code = Code::new(0, 2);
    /// 0.03 PUT.
    pub const PUT: Code = Code::new(0, 3);
    /// 0.04 DELETE.
    pub const DELETE: Code = Code::new(0, 4);
    /// 2.01 Created.
    pub const CREATED: Code = Code::new(2, 1);
    /// 2.02 Deleted.
    pub const DELETED: Code = Code::new(2, 2);
    /// 2.03 Valid.
    pub const VALID: Code = Code::new(2, 3);
    /// 2.04 Changed.
    pub const CHANGED: Code = Code::new(2, 4);
    /// 2.05 Content.
    pub const CONTENT: Code = Code::new(2, 5);
    /// 2.31 Continue (RFC 7959): a Block1 block was received, send the next.
    pub const CONTINUE: Code = Code::new(2, 31);
    /// 4.00 Bad Request.
    pub const BAD_REQUEST: Code = Code::new(4, 0);
    /// 4.01 Unauthorized.
    pub const UNAUTHORIZED: Code = Code::new(4, 1);
    /// 4.02 Bad Option: an unrecognized or malformed critical option.
    pub const BAD_OPTION: Code = Code::new(4, 2);
    /// 4.03 Forbidden.
    pub const FORBIDDEN: Code = Code::new(4, 3);
    /// 4.04 Not Found.
    pub const NOT_FOUND: Code = Code::new(4, 4);
    /// 4.05 Method Not Allowed.
    pub const METHOD_NOT_ALLOWED: Code = Code::new(4, 5);
    /// 4.06 Not Acceptable.
    pub const NOT_ACCEPTABLE: Code = Code::new(4, 6);
    /// 4.08 Request Entity Incomplete (RFC 7959): a Block1 block that
    /// continues no upload the server holds.
    pub const REQUEST_ENTITY_INCOMPLETE: Code = Code::new(4, 8);
    /// 4.12 Precondition Failed.
    pub const PRECONDITION_FAILED: Code = Code::new(4, 12);
    /// 4.13 Request Entity Too Large (with Size1: the largest accepted).
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code::new(4, 13);
    /// 4.15 Unsupported Content-Format.
    pub const UNSUPPORTED_CONTENT_FORMAT: Code = Code::new(4, 15);
    /// 5.00 Internal Server Error.
    pub const INTERNAL_SERVER_ERROR: Code = Code::new(5, 0);
    /// 5.01 Not Implemented.
    pub const NOT_IMPLEMENTED: Code = Code::new(5, 1);
    /// 5.03 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: Code = Code::new(5, 3);
    /// 5.05 Proxying Not Supported.
    pub const PROXYING_NOT_SUPPORTED: Code = Code::new(5, 5);

    /// The code `class.detail` (class 0–7, detail 0–31; higher bits are dropped).
    pub const fn new(class: u8, detail: u8) -> Code {
        Code(((class & 7) << 5) | (detail & 31))
    }

    /// The class (0 request, 2 success, 4 client error, 5 server error).
    pub const fn class(self) -> u8 {
        self.0 >> 5
    }

    /// The detail.
    pub const fn detail(self) -> u8 {
        self.0 & 31
    }

    /// A request method (class 0, not 0.00).
    pub const fn is_request(self) -> bool {
        self.class() == 0 && self.detail() != 0
    }

    /// A response (class 2, 4 or 5).
    pub const fn is_response(self) -> bool {
        matches!(self.class(), 2 | 4 | 5)
    }

    /// A success response (class 2).
    pub const fn is_success(self) -> bool {
        self.class() == 2
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The longest option value the format can carry (RFC 7252 §3.1: 269 + 0xffff).
pub const MAX_OPTION_LEN: usize = 269 + 0xffff;

/// What is wrong with a message (or with the parts a caller gave to build one).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer than the 4 bytes of the fixed header.
    TooShort {
        /// The input's length.
        len: usize,
    },
    /// A version other than 1.
    Version(u8),
    /// A token length above 8 (9–15 are reserved).
    TokenLength(usize),
    /// The input ends inside the token.
    TruncatedToken,
    /// An option delta nibble of 15 that is not the payload marker 0xFF.
    ReservedDelta,
    /// An option length nibble of 15.
    ReservedLength,
    /// The input ends inside an option's extended delta, length or value.
    TruncatedOption {
        /// The number of the option (as far as it was decoded).
        number: u32,
    },
    /// Option numbers add up past 65535.
    OptionNumberTooLarge(u32),
    /// A payload marker with no payload after it.
    EmptyPayload,
    /// A message with code 0.00 and something after the message id.
    EmptyNotEmpty,
    /// A block option value longer than 3 bytes.
    BlockLength(usize),
    /// A block option with SZX 7 (reserved).
    BlockSzx(u8),
    /// A block number of 2^20 or more.
    BlockNum(u32),
    /// An option value too long for its option (when building a message).
    OptionTooLong {
        /// The option number.
        number: u16,
        /// The value's length.
        len: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooShort { len } => {
                write!(f, "{len} bytes, shorter than the 4-byte CoAP header")
            }
            DecodeError::Version(v) => write!(f, "CoAP version {v}, expected 1"),
            DecodeError::TokenLength(n) => write!(f, "token of {n} bytes (at most 8)"),
            DecodeError::TruncatedToken => write!(f, "the message ends inside the token"),
            DecodeError::ReservedDelta => {
                write!(f, "option delta 15 without the payload marker's length 15")
            }
            DecodeError::ReservedLength => write!(f, "option length 15 (reserved)"),
            DecodeError::TruncatedOption { number } => {
                write!(f, "the message ends inside option {number}")
            }
            DecodeError::OptionNumberTooLarge(n) => {
                write!(f, "option number {n} (the largest is 65535)")
            }
            DecodeError::EmptyPayload => {
                write!(f, "a payload marker followed by an empty payload")
            }
            DecodeError::EmptyNotEmpty => {
                write!(f, "an Empty message (0.00) with a token, options or a payload")
            }
            DecodeError::BlockLength(n) => {
                write!(f, "block option value of {n} bytes (at most 3)")
            }
            DecodeError::BlockSzx(s) => write!(f, "block SZX {s} (7 is reserved)"),
            DecodeError::BlockNum(n) => write!(f, "block number {n} (at most 2^20 - 1)"),
            DecodeError::OptionTooLong { number, len } => {
                write!(f, "option {number} of {len} bytes is too long")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// What precedes the options: enough to answer a message whose options or
/// payload did not decode (RFC 7252 §4.2: a Reset, §5.4.1: 4.02).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The type.
    pub ty: Type,
    /// The code.
    pub code: Code,
    /// The message id.
    pub message_id: u16,
    /// The token (0–8 bytes).
    pub token: Vec<u8>,
}

/// A CoAP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The type.
    pub ty: Type,
    /// The code (a method, a response code, or 0.00 Empty).
    pub code: Code,
    /// The message id (matches an ACK or RST to its message, detects duplicates).
    pub message_id: u16,
    /// The token (0–8 bytes; matches a response to its request).
    pub token: Vec<u8>,
    /// The options, sorted by number (a repeated option keeps its order).
    pub options: Vec<(u16, Vec<u8>)>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Reads an option's extended delta or length (RFC 7252 §3.1).
fn extended(nibble: u8, input: &[u8], at: &mut usize) -> Option<u32> {
    match nibble {
        13 => {
            let b = *input.get(*at)?;
            *at += 1;
            Some(13 + u32::from(b))
        }
        14 => {
            let hi = *input.get(*at)?;
            let lo = *input.get(*at + 1)?;
            *at += 2;
            Some(269 + u32::from(u16::from_be_bytes([hi, lo])))
        }
        n => Some(u32::from(n)),
    }
}

/// The nibble and extension bytes for a delta or length (`value` ≤ MAX_OPTION_LEN).
fn nibble(value: usize) -> (u8, Vec<u8>) {
    match value {
        0..=12 => (value as u8, Vec::new()),
        13..=268 => (13, vec![(value - 13) as u8]),
        _ => {
            let v = (value - 269).min(0xffff) as u16;
            (14, v.to_be_bytes().to_vec())
        }
    }
}

impl Message {
    /// A message with no token, options or payload.
    pub fn new(ty: Type, code: Code, message_id: u16) -> Message {
        Message { ty, code, message_id, token: Vec::new(), options: Vec::new(), payload: Vec::new() }
    }

    /// Adds an option, after any with the same number (the order of a
    /// repeated option is kept).
    pub fn add_option(&mut self, number: u16, value: Vec<u8>) {
        let at = self.options.partition_point(|(n, _)| *n <= number);
        self.options.insert(at, (number, value));
    }

    /// Adds a uint option in its minimal encoding.
    pub fn add_uint_option(&mut self, number: u16, value: u32) {
        self.add_option(number, crate::option::encode_uint(value));
    }

    /// The first value of option `number`.
    pub fn option(&self, number: u16) -> Option<&[u8]> {
        self.options.iter().find(|(n, _)| *n == number).map(|(_, v)| v.as_slice())
    }

    /// Every value of option `number`, in order.
    pub fn options_of(&self, number: u16) -> impl Iterator<Item = &[u8]> {
        self.options.iter().filter(move |(n, _)| *n == number).map(|(_, v)| v.as_slice())
    }

    /// Decodes the fixed header and the token only.
    pub fn decode_header(input: &[u8]) -> Result<Header, DecodeError> {
        let (header, _) = Self::header(input)?;
        Ok(header)
    }

    fn header(input: &[u8]) -> Result<(Header, usize), DecodeError> {
        if input.len() < 4 {
            return Err(DecodeError::TooShort { len: input.len() });
        }
        let version = input[0] >> 6;
        if version != 1 {
            return Err(DecodeError::Version(version));
        }
        let tkl = usize::from(input[0] & 0x0f);
        if tkl > 8 {
            return Err(DecodeError::TokenLength(tkl));
        }
        let token = input.get(4..4 + tkl).ok_or(DecodeError::TruncatedToken)?.to_vec();
        Ok((
            Header {
                ty: Type::from_bits(input[0] >> 4),
                code: Code(input[1]),
                message_id: u16::from_be_bytes([input[2], input[3]]),
                token,
            },
            4 + tkl,
        ))
    }

    /// Decodes a message, refusing every message format error.
    pub fn decode(input: &[u8]) -> Result<Message, DecodeError> {
        let (header, mut at) = Self::header(input)?;
        if header.code == Code::EMPTY && input.len() > 4 {
            return Err(DecodeError::EmptyNotEmpty);
        }
        let mut options = Vec::new();
        let mut number: u32 = 0;
        let mut payload = Vec::new();
        while at < input.len() {
            let byte = input[at];
            at += 1;
            if byte == 0xff {
                if at == input.len() {
                    return Err(DecodeError::EmptyPayload);
                }
                payload = input[at..].to_vec();
                break;
            }
            let (d, l) = (byte >> 4, byte & 0x0f);
            if d == 15 {
                return Err(DecodeError::ReservedDelta);
            }
            if l == 15 {
                return Err(DecodeError::ReservedLength);
            }
            let delta =
                extended(d, input, &mut at).ok_or(DecodeError::TruncatedOption { number: number + u32::from(d) })?;
            number += delta;
            if number > u32::from(u16::MAX) {
                return Err(DecodeError::OptionNumberTooLarge(number));
            }
            let len = extended(l, input, &mut at).ok_or(DecodeError::TruncatedOption { number })?;
            let end = at
                .checked_add(len as usize)
                .filter(|&end| end <= input.len())
                .ok_or(DecodeError::TruncatedOption { number })?;
            // `number` was checked to fit in u16 just above.
            options.push((number as u16, input[at..end].to_vec()));
            at = end;
        }
        Ok(Message {
            ty: header.ty,
            code: header.code,
            message_id: header.message_id,
            token: header.token,
            options,
            payload,
        })
    }

    /// Encodes the message. Options are written in number order whatever
    /// the order of [`Message::options`]. A token longer than 8 bytes or an
    /// option value longer than [`MAX_OPTION_LEN`] cannot be encoded: they
    /// are cut to those lengths (a caller error; [`Message::decode`] never
    /// produces them).
    pub fn encode(&self) -> Vec<u8> {
        let token = &self.token[..self.token.len().min(8)];
        let mut out = Vec::with_capacity(
            4 + token.len() + self.options.iter().map(|(_, v)| v.len() + 5).sum::<usize>() + 1 + self.payload.len(),
        );
        out.push((1 << 6) | (self.ty.bits() << 4) | token.len() as u8);
        out.push(self.code.0);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(token);
        let mut sorted: Vec<&(u16, Vec<u8>)> = self.options.iter().collect();
        sorted.sort_by_key(|(n, _)| *n);
        let mut previous = 0u16;
        for (number, value) in sorted {
            let value = &value[..value.len().min(MAX_OPTION_LEN)];
            let (dn, dx) = nibble(usize::from(number - previous));
            let (ln, lx) = nibble(value.len());
            out.push((dn << 4) | ln);
            out.extend_from_slice(&dx);
            out.extend_from_slice(&lx);
            out.extend_from_slice(value);
            previous = *number;
        }
        if !self.payload.is_empty() {
            out.push(0xff);
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::option;

    /// RFC 7252 Appendix A, Figure 16: CON GET /temperature, MID 0x7d34, no
    /// token; its answer is ACK 2.05 "22.3 C". The bytes are written from the
    /// figure's field values by hand.
    #[test]
    fn rfc7252_appendix_a_figure_16() {
        let request = [0x40, 0x01, 0x7d, 0x34, 0xbb, b't', b'e', b'm', b'p', b'e', b'r', b'a', b't', b'u', b'r', b'e'];
        let m = Message::decode(&request).unwrap();
        assert_eq!(m.ty, Type::Con);
        assert_eq!(m.code, Code::GET);
        assert_eq!(m.message_id, 0x7d34);
        assert!(m.token.is_empty());
        assert_eq!(m.options, vec![(option::URI_PATH, b"temperature".to_vec())]);
        assert!(m.payload.is_empty());
        assert_eq!(m.encode(), request);

        let response = [0x60, 0x45, 0x7d, 0x34, 0xff, b'2', b'2', b'.', b'3', b' ', b'C'];
        let mut r = Message::new(Type::Ack, Code::CONTENT, 0x7d34);
        r.payload = b"22.3 C".to_vec();
        assert_eq!(r.encode(), response);
        assert_eq!(Message::decode(&response).unwrap(), r);
    }

    /// RFC 7252 Appendix A, Figure 17: the same with a 2-byte token 0x2001.
    #[test]
    fn rfc7252_appendix_a_figure_17_token() {
        let request = [
            0x42, 0x01, 0x7d, 0x35, 0x20, 0x01, 0xbb, b't', b'e', b'm', b'p', b'e', b'r', b'a', b't', b'u', b'r', b'e',
        ];
        let m = Message::decode(&request).unwrap();
        assert_eq!(m.token, vec![0x20, 0x01]);
        assert_eq!(m.message_id, 0x7d35);
        assert_eq!(m.encode(), request);
    }

    #[test]
    fn code_display() {
        assert_eq!(Code::NOT_FOUND.to_string(), "4.04");
        assert_eq!(Code::CONTINUE.to_string(), "2.31");
        assert_eq!(Code::GET.to_string(), "0.01");
        assert_eq!(Code::EMPTY.to_string(), "0.00");
        assert_eq!(Code::REQUEST_ENTITY_TOO_LARGE.0, 0x8d);
        assert!(Code::POST.is_request() && !Code::POST.is_response());
        assert!(!Code::EMPTY.is_request());
        assert!(Code::CHANGED.is_response() && Code::CHANGED.is_success());
        assert!(!Code::new(1, 0).is_response() && !Code::new(6, 0).is_response());
    }

    fn sample() -> Message {
        let mut m = Message::new(Type::Non, Code::POST, 0xbeef);
        m.token = vec![1, 2, 3, 4, 5, 6, 7, 8];
        m.add_option(option::URI_PATH, b".well-known".to_vec());
        m.add_option(option::URI_PATH, b"est".to_vec());
        m.add_option(option::URI_PATH, b"sren".to_vec());
        m.add_uint_option(option::CONTENT_FORMAT, 286);
        m.add_uint_option(option::BLOCK1, 0x1e);
        m.add_uint_option(option::SIZE1, 3000);
        m.payload = vec![0xaa; 300];
        m
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        assert_eq!(Message::decode(&bytes).unwrap().encode(), bytes);
        // Options given out of order are encoded in order.
        let mut shuffled = m.clone();
        shuffled.options.reverse();
        let d = Message::decode(&shuffled.encode()).unwrap();
        assert_eq!(d.options.iter().map(|o| o.0).collect::<Vec<_>>(), vec![11, 11, 11, 12, 27, 60]);
    }

    #[test]
    fn extended_lengths_and_deltas() {
        let mut m = Message::new(Type::Con, Code::GET, 1);
        m.add_option(12, vec![1; 12]); // delta 12, length 12: plain nibbles
        m.add_option(25, vec![2; 13]); // delta 13 (13 form), length 13 (13 form)
        m.add_option(293, vec![3; 268]); // delta 268 (13 form max), length 268
        m.add_option(562, vec![4; 269]); // delta 269 (14 form min), length 269
        m.add_option(65535, vec![5; 1000]); // delta 64973 (14 form)
        let bytes = m.encode();
        assert_eq!(bytes[4], 0xcc);
        let second = 4 + 1 + 12;
        assert_eq!(&bytes[second..second + 3], &[0xdd, 0, 0]);
        let third = second + 3 + 13;
        assert_eq!(&bytes[third..third + 3], &[0xdd, 255, 255]);
        let fourth = third + 3 + 268;
        assert_eq!(&bytes[fourth..fourth + 5], &[0xee, 0, 0, 0, 0]);
        let fifth = fourth + 5 + 269;
        let d = 65535u32 - 562 - 269;
        let l = 1000u32 - 269;
        assert_eq!(&bytes[fifth..fifth + 5], &[0xee, (d >> 8) as u8, d as u8, (l >> 8) as u8, l as u8]);
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        // The longest value the format carries.
        let mut big = Message::new(Type::Con, Code::PUT, 2);
        big.add_option(4, vec![9; MAX_OPTION_LEN]);
        assert_eq!(Message::decode(&big.encode()).unwrap(), big);
    }

    #[test]
    fn every_decode_error() {
        let e = |b: &[u8]| Message::decode(b).unwrap_err();
        assert_eq!(e(&[0x40, 1, 0]), DecodeError::TooShort { len: 3 });
        assert_eq!(e(&[0x80, 1, 0, 0]), DecodeError::Version(2));
        assert_eq!(e(&[0x00, 1, 0, 0]), DecodeError::Version(0));
        assert_eq!(e(&[0x49, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), DecodeError::TokenLength(9));
        assert_eq!(e(&[0x4f, 1, 0, 0]), DecodeError::TokenLength(15));
        assert_eq!(e(&[0x42, 1, 0, 0, 1]), DecodeError::TruncatedToken);
        assert_eq!(e(&[0x40, 1, 0, 0, 0xf0]), DecodeError::ReservedDelta);
        assert_eq!(e(&[0x40, 1, 0, 0, 0xf1, 0]), DecodeError::ReservedDelta);
        assert_eq!(e(&[0x40, 1, 0, 0, 0x1f]), DecodeError::ReservedLength);
        assert_eq!(e(&[0x40, 1, 0, 0, 0xd0]), DecodeError::TruncatedOption { number: 13 });
        assert_eq!(e(&[0x40, 1, 0, 0, 0xe0, 1]), DecodeError::TruncatedOption { number: 14 });
        assert_eq!(e(&[0x40, 1, 0, 0, 0x1d]), DecodeError::TruncatedOption { number: 1 });
        assert_eq!(e(&[0x40, 1, 0, 0, 0xb3, b'a', b'b']), DecodeError::TruncatedOption { number: 11 });
        assert_eq!(e(&[0x40, 1, 0, 0, 0x10, 0xe0, 0xff, 0xff]), DecodeError::OptionNumberTooLarge(1 + 269 + 0xffff));
        assert_eq!(e(&[0x40, 1, 0, 0, 0xff]), DecodeError::EmptyPayload);
        assert_eq!(e(&[0x40, 1, 0, 0, 0xb1, b'a', 0xff]), DecodeError::EmptyPayload);
        assert_eq!(e(&[0x41, 0, 0, 0, 7]), DecodeError::EmptyNotEmpty);
        assert_eq!(e(&[0x40, 0, 0, 0, 0xff, 1]), DecodeError::EmptyNotEmpty);
        assert_eq!(e(&[0x40, 0, 0, 0, 0x10]), DecodeError::EmptyNotEmpty);
        // The Empty message itself, and an option number of exactly 65535.
        assert_eq!(Message::decode(&[0x40, 0, 0, 7]).unwrap().code, Code::EMPTY);
        assert!(Message::decode(&[0x40, 1, 0, 0, 0xe0, 0xfe, 0xf2]).is_ok());
        for err in
            [DecodeError::TooShort { len: 3 }, DecodeError::EmptyPayload, DecodeError::TruncatedOption { number: 11 }]
        {
            assert!(!err.to_string().is_empty());
        }
        assert!(DecodeError::TruncatedOption { number: 11 }.to_string().contains("option 11"));
    }

    #[test]
    fn header_survives_bad_options() {
        let bytes = [0x52, 0x02, 0x12, 0x34, 0xaa, 0xbb, 0xf5, 0xff];
        assert!(Message::decode(&bytes).is_err());
        let h = Message::decode_header(&bytes).unwrap();
        assert_eq!(h.ty, Type::Non);
        assert_eq!(h.code, Code::POST);
        assert_eq!(h.message_id, 0x1234);
        assert_eq!(h.token, vec![0xaa, 0xbb]);
    }
}
