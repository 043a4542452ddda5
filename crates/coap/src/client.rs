//! The client side: one [`Exchange`] is one request and its response, with
//! block-wise transfers done for the caller, over Confirmable messages.
//!
//! The caller sends [`Exchange::datagram`], feeds every datagram from the
//! server to [`Exchange::receive`], and resends the same datagram when
//! [`Retransmission`] says so (a retransmission: same message id). Each new
//! message of the exchange (the next Block1 block, the request for the next
//! Block2 block) takes the next message id; the token stays the same.

use std::time::Duration;

use crate::block::{self, Block};
use crate::msg::{Code, DecodeError, Message, Type};
use crate::option;

/// The largest response body an [`Exchange`] gathers by default (64 KiB).
pub const DEFAULT_MAX_RESPONSE: usize = 64 * 1024;

/// RFC 7252 §4.8 ACK_TIMEOUT.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// RFC 7252 §4.8 ACK_RANDOM_FACTOR.
pub const ACK_RANDOM_FACTOR: f64 = 1.5;
/// RFC 7252 §4.8 MAX_RETRANSMIT.
pub const MAX_RETRANSMIT: u32 = 4;

/// The retransmission timer of one Confirmable message (RFC 7252 §4.2):
/// the first wait is random between ACK_TIMEOUT and ACK_TIMEOUT ×
/// ACK_RANDOM_FACTOR, each retransmission doubles it, and after
/// MAX_RETRANSMIT retransmissions the exchange has failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Retransmission {
    timeout: Duration,
    retransmissions: u32,
}

impl Retransmission {
    /// A timer for a message just sent; `random` (in 0..=1, clamped) picks
    /// the initial timeout in its range.
    pub fn new(random: f64) -> Retransmission {
        let r = if random.is_nan() { 0.0 } else { random.clamp(0.0, 1.0) };
        Retransmission { timeout: ACK_TIMEOUT.mul_f64(1.0 + r * (ACK_RANDOM_FACTOR - 1.0)), retransmissions: 0 }
    }

    /// How long to wait for the answer to the last transmission.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How many retransmissions were made.
    pub fn retransmissions(&self) -> u32 {
        self.retransmissions
    }

    /// The wait ran out: `true` to retransmit (and wait the doubled
    /// [`Retransmission::timeout`]), `false` to give up.
    pub fn on_timeout(&mut self) -> bool {
        if self.retransmissions >= MAX_RETRANSMIT {
            return false;
        }
        self.retransmissions += 1;
        self.timeout = self.timeout.saturating_mul(2);
        true
    }
}

/// The response an [`Exchange`] ended with (Block2 gathered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    /// The response code (4.xx and 5.xx are responses too).
    pub code: Code,
    /// The Content-Format of the payload.
    pub content_format: Option<u16>,
    /// Max-Age in seconds, when given.
    pub max_age: Option<u32>,
    /// The whole payload.
    pub payload: Vec<u8>,
}

/// What [`Exchange::receive`] made of a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Send [`Exchange::datagram`] now: the next Block1 block or the request
    /// for the next Block2 block (a new message: restart the timer).
    Send,
    /// The server acknowledged the request with an Empty ACK: stop
    /// retransmitting, the response will come in a message of its own.
    Acknowledged,
    /// The exchange is over.
    Done(ClientResponse),
    /// Not for this exchange (another message id or token, a duplicate).
    Ignored,
    /// The exchange failed (a Reset, a malformed or inconsistent answer, a
    /// response too large).
    Failed(String),
}

enum Phase {
    /// Sending the request (block `num` of it when block-wise).
    Upload {
        num: u32,
    },
    /// Asking for block `num` of the response.
    Download {
        num: u32,
        code: Code,
        content_format: Option<u16>,
        max_age: Option<u32>,
        etag: Option<Vec<u8>>,
        body: Vec<u8>,
    },
    Finished,
}

/// One request and its response.
pub struct Exchange {
    method: Code,
    path: Vec<String>,
    query: Vec<String>,
    content_format: Option<u16>,
    accept: Option<u16>,
    payload: Vec<u8>,
    blockwise: bool,
    szx1: u8,
    szx2: u8,
    max_response: usize,
    message_id: u16,
    token: Vec<u8>,
    phase: Phase,
    ack: Option<Vec<u8>>,
    separate_seen: Option<u16>,
}

fn opt_uint(m: &Message, number: u16, max: usize) -> Option<u32> {
    m.option(number).and_then(|v| option::decode_uint(v, max))
}

impl Exchange {
    /// A request for `path` (`/a/b?x=1&y`: segments after each `/`,
    /// queries after `?` split on `&`), sent in blocks of 2^(szx+4) bytes
    /// when the payload is larger. Refused: a token of more than 8 bytes,
    /// `szx` above 6, a path segment or query of more than 255 bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        method: Code,
        path: &str,
        content_format: Option<u16>,
        accept: Option<u16>,
        payload: Vec<u8>,
        szx: u8,
        first_message_id: u16,
        token: Vec<u8>,
    ) -> Result<Exchange, DecodeError> {
        if token.len() > 8 {
            return Err(DecodeError::TokenLength(token.len()));
        }
        if szx > block::MAX_SZX {
            return Err(DecodeError::BlockSzx(szx));
        }
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        let segments: Vec<String> =
            p.strip_prefix('/').unwrap_or(p).split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        let query: Vec<String> = q.split('&').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        for (number, s) in
            segments.iter().map(|s| (option::URI_PATH, s)).chain(query.iter().map(|s| (option::URI_QUERY, s)))
        {
            if s.len() > 255 {
                return Err(DecodeError::OptionTooLong { number, len: s.len() });
            }
        }
        let blockwise = payload.len() > block::size_of(szx);
        Ok(Exchange {
            method,
            path: segments,
            query,
            content_format,
            accept,
            payload,
            blockwise,
            szx1: szx,
            szx2: szx,
            max_response: DEFAULT_MAX_RESPONSE,
            message_id: first_message_id,
            token,
            phase: Phase::Upload { num: 0 },
            ack: None,
            separate_seen: None,
        })
    }

    /// Sets the largest response body gathered (default
    /// [`DEFAULT_MAX_RESPONSE`]); a larger one fails the exchange.
    pub fn with_max_response(mut self, max: usize) -> Exchange {
        self.max_response = max;
        self
    }

    /// The message id of the message to send now.
    pub fn message_id(&self) -> u16 {
        self.message_id
    }

    /// Whether the exchange is over (done or failed).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// An Empty ACK to send, once, after [`Exchange::receive`] took a
    /// response that came as a Confirmable message of its own.
    pub fn take_ack(&mut self) -> Option<Vec<u8>> {
        self.ack.take()
    }

    /// The message to send now; sending it again is a retransmission.
    pub fn datagram(&self) -> Vec<u8> {
        let mut m = Message::new(Type::Con, self.method, self.message_id);
        m.token = self.token.clone();
        for s in &self.path {
            m.add_option(option::URI_PATH, s.as_bytes().to_vec());
        }
        for s in &self.query {
            m.add_option(option::URI_QUERY, s.as_bytes().to_vec());
        }
        if let Some(a) = self.accept {
            m.add_uint_option(option::ACCEPT, u32::from(a));
        }
        match &self.phase {
            Phase::Download { num, .. } => {
                if let Ok(b) = Block::new(*num, false, self.szx2) {
                    m.add_option(option::BLOCK2, b.encode());
                }
            }
            Phase::Upload { num } => {
                if let Some(cf) = self.content_format {
                    m.add_uint_option(option::CONTENT_FORMAT, u32::from(cf));
                }
                let last = if self.blockwise {
                    let size = block::size_of(self.szx1);
                    let offset = (*num as usize).saturating_mul(size).min(self.payload.len());
                    let end = offset.saturating_add(size).min(self.payload.len());
                    let more = end < self.payload.len();
                    if let Ok(b) = Block::new(*num, more, self.szx1) {
                        m.add_option(option::BLOCK1, b.encode());
                    }
                    if *num == 0 {
                        m.add_uint_option(option::SIZE1, u32::try_from(self.payload.len()).unwrap_or(u32::MAX));
                    }
                    m.payload = self.payload[offset..end].to_vec();
                    !more
                } else {
                    m.payload = self.payload.clone();
                    true
                };
                // Early negotiation (RFC 7959 §2.4): ask for smaller response
                // blocks than the largest.
                if last && self.szx2 < block::MAX_SZX {
                    if let Ok(b) = Block::new(0, false, self.szx2) {
                        m.add_option(option::BLOCK2, b.encode());
                    }
                }
            }
            Phase::Finished => {}
        }
        m.encode()
    }

    /// Takes a datagram from the server.
    pub fn receive(&mut self, datagram: &[u8]) -> Progress {
        if self.is_finished() {
            return Progress::Ignored;
        }
        let msg = match Message::decode(datagram) {
            Ok(m) => m,
            Err(e) => return self.fail(format!("malformed answer: {e}")),
        };
        match msg.ty {
            Type::Rst if msg.message_id == self.message_id => self.fail("the server reset the request".to_owned()),
            Type::Rst => Progress::Ignored,
            Type::Ack if msg.message_id != self.message_id => Progress::Ignored,
            Type::Ack if msg.code == Code::EMPTY => Progress::Acknowledged,
            Type::Ack if msg.token != self.token => Progress::Ignored,
            Type::Ack => self.response(msg),
            Type::Con | Type::Non => {
                if !msg.code.is_response() || msg.token != self.token {
                    return Progress::Ignored;
                }
                if msg.ty == Type::Con {
                    self.ack = Some(Message::new(Type::Ack, Code::EMPTY, msg.message_id).encode());
                }
                if self.separate_seen == Some(msg.message_id) {
                    return Progress::Ignored;
                }
                self.separate_seen = Some(msg.message_id);
                self.response(msg)
            }
        }
    }

    fn fail(&mut self, why: String) -> Progress {
        self.phase = Phase::Finished;
        Progress::Failed(why)
    }

    fn next(&mut self) -> Progress {
        self.message_id = self.message_id.wrapping_add(1);
        Progress::Send
    }

    fn response(&mut self, msg: Message) -> Progress {
        if !msg.code.is_response() {
            return self.fail(format!("answer with code {}, not a response", msg.code));
        }
        let block1 = match msg.option(option::BLOCK1).map(Block::decode).transpose() {
            Ok(b) => b,
            Err(e) => return self.fail(format!("Block1 in the answer: {e}")),
        };
        let block2 = match msg.option(option::BLOCK2).map(Block::decode).transpose() {
            Ok(b) => b,
            Err(e) => return self.fail(format!("Block2 in the answer: {e}")),
        };
        match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::Finished => Progress::Ignored,
            Phase::Upload { num } => {
                if msg.code == Code::CONTINUE {
                    let size = block::size_of(self.szx1);
                    let sent_end = (num as usize + 1).saturating_mul(size);
                    if !self.blockwise || sent_end >= self.payload.len() {
                        return self.fail("2.31 Continue to the whole request".to_owned());
                    }
                    let Some(b1) = block1.filter(|b| b.num() == num) else {
                        return self.fail("2.31 Continue without our Block1 echoed".to_owned());
                    };
                    // The server may ask for smaller blocks: continue at the
                    // same offset in its size.
                    self.szx1 = self.szx1.min(b1.szx());
                    let next = sent_end / block::size_of(self.szx1);
                    let Ok(next) = u32::try_from(next) else {
                        return self.fail("request too large for block numbers".to_owned());
                    };
                    self.phase = Phase::Upload { num: next };
                    return self.next();
                }
                self.first_response(msg, block2)
            }
            Phase::Download { num, code, content_format, max_age, etag, mut body } => {
                if !msg.code.is_success() {
                    return Progress::Done(self.done(msg));
                }
                let Some(b2) = block2 else {
                    return self.fail("a block of the response without Block2".to_owned());
                };
                if msg.option(option::ETAG) != etag.as_deref() {
                    return self.fail("the response changed during the block-wise transfer (ETag)".to_owned());
                }
                if b2.num() != num || b2.offset() != body.len() {
                    return self.fail(format!("asked for block {num}, got block {} of size {}", b2.num(), b2.size()));
                }
                if body.len() + msg.payload.len() > self.max_response {
                    return self.fail(format!("response larger than {} bytes", self.max_response));
                }
                if b2.more() && msg.payload.len() != b2.size() {
                    return self.fail("a response block shorter than its size".to_owned());
                }
                body.extend_from_slice(&msg.payload);
                if !b2.more() {
                    return Progress::Done(ClientResponse { code, content_format, max_age, payload: body });
                }
                self.szx2 = b2.szx();
                let Ok(next) = u32::try_from(body.len() / b2.size()) else {
                    return self.fail("response too large for block numbers".to_owned());
                };
                self.phase = Phase::Download { num: next, code, content_format, max_age, etag, body };
                self.next()
            }
        }
    }

    /// The final response to the request: whole, or block 0 of it.
    fn first_response(&mut self, msg: Message, block2: Option<Block>) -> Progress {
        let Some(b2) = block2.filter(|b| b.more()) else {
            if msg.payload.len() > self.max_response {
                return self.fail(format!("response larger than {} bytes", self.max_response));
            }
            return Progress::Done(self.done(msg));
        };
        if !msg.code.is_success() {
            return Progress::Done(self.done(msg));
        }
        if b2.num() != 0 || msg.payload.len() != b2.size() {
            return self.fail("the first response block is not a whole block 0".to_owned());
        }
        if opt_uint(&msg, option::SIZE2, 4).is_some_and(|s| s as usize > self.max_response)
            || msg.payload.len() > self.max_response
        {
            return self.fail(format!("response larger than {} bytes", self.max_response));
        }
        self.szx2 = b2.szx();
        self.phase = Phase::Download {
            num: 1,
            code: msg.code,
            content_format: opt_uint(&msg, option::CONTENT_FORMAT, 2).map(|v| v as u16),
            max_age: opt_uint(&msg, option::MAX_AGE, 4),
            etag: msg.option(option::ETAG).map(<[u8]>::to_vec),
            body: msg.payload,
        };
        self.next()
    }

    fn done(&mut self, msg: Message) -> ClientResponse {
        self.phase = Phase::Finished;
        ClientResponse {
            code: msg.code,
            content_format: opt_uint(&msg, option::CONTENT_FORMAT, 2).map(|v| v as u16),
            max_age: opt_uint(&msg, option::MAX_AGE, 4),
            payload: msg.payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmission_timing() {
        let mut r = Retransmission::new(0.0);
        assert_eq!(r.timeout(), Duration::from_secs(2));
        let mut waits = vec![r.timeout()];
        while r.on_timeout() {
            waits.push(r.timeout());
        }
        assert_eq!(waits, [2, 4, 8, 16, 32].map(Duration::from_secs).to_vec());
        assert_eq!(r.retransmissions(), MAX_RETRANSMIT);
        assert!(!r.on_timeout());
        assert_eq!(Retransmission::new(1.0).timeout(), Duration::from_secs(3));
        assert_eq!(Retransmission::new(0.5).timeout(), Duration::from_millis(2500));
        assert_eq!(Retransmission::new(7.0).timeout(), Duration::from_secs(3));
        assert_eq!(Retransmission::new(f64::NAN).timeout(), Duration::from_secs(2));
    }

    #[test]
    fn request_shape() {
        let e = Exchange::new(
            Code::POST,
            "/.well-known/est/sren?x=1&y",
            Some(286),
            Some(281),
            vec![7; 100],
            6,
            0x1000,
            vec![0xab],
        )
        .unwrap();
        let m = Message::decode(&e.datagram()).unwrap();
        assert_eq!((m.ty, m.code, m.message_id), (Type::Con, Code::POST, 0x1000));
        assert_eq!(m.token, vec![0xab]);
        let path: Vec<&[u8]> = m.options_of(option::URI_PATH).collect();
        assert_eq!(path, vec![&b".well-known"[..], b"est", b"sren"]);
        let query: Vec<&[u8]> = m.options_of(option::URI_QUERY).collect();
        assert_eq!(query, vec![&b"x=1"[..], b"y"]);
        assert_eq!(opt_uint(&m, option::CONTENT_FORMAT, 2), Some(286));
        assert_eq!(opt_uint(&m, option::ACCEPT, 2), Some(281));
        assert!(m.option(option::BLOCK1).is_none());
        assert_eq!(m.payload, vec![7; 100]);
        // The same datagram again is a retransmission.
        assert_eq!(e.datagram(), e.datagram());

        assert!(matches!(
            Exchange::new(Code::GET, "/", None, None, vec![], 6, 0, vec![0; 9]),
            Err(DecodeError::TokenLength(9))
        ));
        assert!(matches!(
            Exchange::new(Code::GET, "/", None, None, vec![], 7, 0, vec![]),
            Err(DecodeError::BlockSzx(7))
        ));
    }

    #[test]
    fn reset_and_foreign_answers() {
        let mut e = Exchange::new(Code::GET, "/a", None, None, vec![], 6, 5, vec![1]).unwrap();
        let other = Message::new(Type::Rst, Code::EMPTY, 6).encode();
        assert_eq!(e.receive(&other), Progress::Ignored);
        let mut wrong_token = Message::new(Type::Ack, Code::CONTENT, 5);
        wrong_token.token = vec![2];
        assert_eq!(e.receive(&wrong_token.encode()), Progress::Ignored);
        let empty_ack = Message::new(Type::Ack, Code::EMPTY, 5).encode();
        assert_eq!(e.receive(&empty_ack), Progress::Acknowledged);
        // The separate response, as a CON: done, and an Empty ACK to send.
        let mut sep = Message::new(Type::Con, Code::CONTENT, 0x9999);
        sep.token = vec![1];
        sep.payload = b"hi".to_vec();
        match e.receive(&sep.encode()) {
            Progress::Done(r) => assert_eq!(r.payload, b"hi"),
            p => panic!("{p:?}"),
        }
        assert_eq!(Message::decode(&e.take_ack().unwrap()).unwrap(), Message::new(Type::Ack, Code::EMPTY, 0x9999));
        assert!(e.is_finished());

        let mut e = Exchange::new(Code::GET, "/a", None, None, vec![], 6, 5, vec![1]).unwrap();
        let rst = Message::new(Type::Rst, Code::EMPTY, 5).encode();
        assert!(matches!(e.receive(&rst), Progress::Failed(_)));
        let mut e = Exchange::new(Code::GET, "/a", None, None, vec![], 6, 5, vec![1]).unwrap();
        assert!(matches!(e.receive(&[0x40]), Progress::Failed(_)));
    }
}
