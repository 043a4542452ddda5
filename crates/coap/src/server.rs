//! The server side: one [`Endpoint`] per peer (per DTLS session).
//!
//! [`Endpoint::receive`] takes a datagram and either answers it itself
//! ([`Received::Reply`]: an error, a 2.31 Continue, a block of a response it
//! holds, a duplicate's remembered answer, a Reset), hands a whole request to
//! the application ([`Received::Request`]), or drops it
//! ([`Received::Nothing`]). The application answers with
//! [`Endpoint::respond`], which returns the datagram to send.
//!
//! # Block-wise transfers (RFC 7959)
//!
//! Uploads (Block1) are taken in order only: NUM 0 starts an upload (and
//! replaces the one in progress), each following block must start where the
//! previous ended (a gap, or a block for no upload → 4.08). Each block but
//! the last is answered 2.31 Continue with Block1 echoed, its SZX lowered to
//! ours when the client's is larger (the client then continues at the same
//! byte offset with smaller blocks). The last block (M=0) hands the whole
//! body to the application, and the final response echoes it in Block1.
//!
//! A response larger than the block size (the smaller of the client's Block2
//! SZX and ours) is sent as block 0 with Block2 (M=1), Size2 and an ETag of
//! its own (in every block, so that a client notices a body replaced under
//! it), and its body is held: the client asks for block N with the same method, path and query
//! and Block2 NUM=N (for a POST with an empty payload and no Block1, as in
//! RFC 7959 §3.2 and RFC 9148's examples); [`Endpoint::receive`] answers
//! those itself. A Block2 NUM>0 request for a body we do not hold goes to the
//! application for a GET (which is safe to redo; [`Endpoint::respond`]
//! serves the asked block) and is answered 4.08 otherwise (an enrollment is
//! never redone for a lost body).
//!
//! # Duplicates (RFC 7252 §4.5)
//!
//! The answers to the last [`Limits::dedup`] requests are remembered by
//! message id: a retransmitted Confirmable request gets the same bytes again,
//! one still with the application gets nothing, a duplicated Non-confirmable
//! one is dropped.
//!
//! # Memory
//!
//! [`Endpoint::bytes_held`] never exceeds [`Limits::bound`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::block::{self, Block};
use crate::msg::{Code, Header, Message, Type};
use crate::option;

/// How long a remembered answer is kept (RFC 7252 §4.8.2 EXCHANGE_LIFETIME).
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// The most bytes of Uri-Path and Uri-Query (all segments together) a
/// request may have; longer ones are answered 4.00.
pub const MAX_URI: usize = 1024;
/// What a remembered answer may hold beyond its payload block: the header,
/// a token, the options we write and an error's diagnostic payload.
pub const REPLY_OVERHEAD: usize = 128;

/// The limits of one [`Endpoint`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest request body (Block1 reassembled or not); more is
    /// answered 4.13 with Size1 = this. Default 16 KiB, the HTTPS server's
    /// enrollment body limit.
    pub max_body: usize,
    /// The block size exponent we prefer (0–6, size 2^(szx+4)); default 6
    /// (1024 bytes). Larger values are taken as 6.
    pub preferred_szx: u8,
    /// How many recent requests' answers are remembered for duplicates
    /// (default 8).
    pub dedup: usize,
    /// How many response bodies are held for Block2 (default 2).
    pub max_cached_responses: usize,
    /// The largest response body that is held for Block2 (default 64 KiB);
    /// a larger one is answered 5.00 instead.
    pub max_response: usize,
    /// An upload with no block for this long is dropped by
    /// [`Endpoint::expire`] (default 30 s).
    pub upload_timeout: Duration,
    /// A held response body is dropped this long after it was made
    /// (default 60 s).
    pub response_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: 16 * 1024,
            preferred_szx: 6,
            dedup: 8,
            max_cached_responses: 2,
            max_response: 64 * 1024,
            upload_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// The most bytes an [`Endpoint`] with these limits holds
    /// ([`Endpoint::bytes_held`]): one upload (`max_body` and its URI),
    /// `max_cached_responses` bodies (`max_response` and a URI each) and
    /// `dedup` answers (a block of the preferred size and
    /// [`REPLY_OVERHEAD`] each).
    pub fn bound(&self) -> usize {
        let block = block::size_of(self.preferred_szx);
        self.max_body
            + MAX_URI
            + self.max_cached_responses * (self.max_response + MAX_URI)
            + self.dedup * (block + REPLY_OVERHEAD)
    }
}

/// What identifies the request a block belongs to: method, path and query.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    method: Code,
    path: Vec<String>,
    query: Vec<String>,
}

impl Key {
    fn bytes(&self) -> usize {
        self.path.iter().chain(&self.query).map(String::len).sum()
    }
}

/// A remembered answer (None: the request is still with the application).
struct Recent {
    message_id: u16,
    at: Instant,
    answer: Option<Vec<u8>>,
}

struct Upload {
    key: Key,
    body: Vec<u8>,
    content_format: Option<u16>,
    last: Instant,
}

struct Held {
    key: Key,
    code: Code,
    content_format: Option<u16>,
    max_age: Option<u32>,
    body: Vec<u8>,
    etag: [u8; 4],
    at: Instant,
}

/// A whole request for the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method (GET, POST, ...).
    pub method: Code,
    /// The Uri-Path segments (raw UTF-8, no percent-decoding in CoAP).
    pub path: Vec<String>,
    /// The Uri-Query arguments.
    pub query: Vec<String>,
    /// The Content-Format of the payload.
    pub content_format: Option<u16>,
    /// The Content-Format the client accepts.
    pub accept: Option<u16>,
    /// The payload (a Block1 upload reassembled).
    pub payload: Vec<u8>,
    confirmable: bool,
    message_id: u16,
    token: Vec<u8>,
    block1: Option<Block>,
    block2: Option<Block>,
    received: Instant,
}

impl Request {
    /// Whether the request came as a Confirmable message (its answer is
    /// then piggybacked in the ACK).
    pub fn is_confirmable(&self) -> bool {
        self.confirmable
    }

    /// The message id of the request's (last) message.
    pub fn message_id(&self) -> u16 {
        self.message_id
    }

    /// The token.
    pub fn token(&self) -> &[u8] {
        &self.token
    }

    fn key(&self) -> Key {
        Key { method: self.method, path: self.path.clone(), query: self.query.clone() }
    }
}

/// The application's answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The response code.
    pub code: Code,
    /// The Content-Format of the payload.
    pub content_format: Option<u16>,
    /// Max-Age in seconds (absent: 60 s for the client).
    pub max_age: Option<u32>,
    /// The payload (any size: large ones go block-wise).
    pub payload: Vec<u8>,
}

impl Response {
    /// A response with no payload (an error, typically).
    pub fn code(code: Code) -> Response {
        Response { code, content_format: None, max_age: None, payload: Vec::new() }
    }

    /// A response with a payload of a content format.
    pub fn with(code: Code, content_format: u16, payload: Vec<u8>) -> Response {
        Response { code, content_format: Some(content_format), max_age: None, payload }
    }
}

/// What [`Endpoint::receive`] made of a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// Send these bytes back; the application has nothing to do.
    Reply(Vec<u8>),
    /// A whole request: answer it with [`Endpoint::respond`].
    Request(Request),
    /// Nothing to do (an ACK, a Reset, a duplicate still being answered, a
    /// datagram that is not CoAP).
    Nothing,
}

/// The CoAP server endpoint for one peer.
pub struct Endpoint {
    limits: Limits,
    next_message_id: u16,
    next_etag: u32,
    recent: VecDeque<Recent>,
    upload: Option<Upload>,
    held: VecDeque<Held>,
}

/// The options of a request, read.
struct Parsed {
    path: Vec<String>,
    query: Vec<String>,
    content_format: Option<u16>,
    accept: Option<u16>,
    block1: Option<Block>,
    block2: Option<Block>,
    size1: Option<u32>,
}

/// Why a request is refused before the application sees it.
struct Refusal {
    code: Code,
    diagnostic: &'static str,
    size1: Option<u32>,
}

fn refuse(code: Code, diagnostic: &'static str) -> Refusal {
    Refusal { code, diagnostic, size1: None }
}

/// Reads a request's options (RFC 7252 §5.4: an unknown, repeated or
/// wrong-length critical option is a 4.02; an elective one is ignored).
fn parse_options(msg: &Message) -> Result<Parsed, Refusal> {
    let mut p = Parsed {
        path: Vec::new(),
        query: Vec::new(),
        content_format: None,
        accept: None,
        block1: None,
        block2: None,
        size1: None,
    };
    let mut previous: Option<u16> = None;
    for (number, value) in &msg.options {
        let number = *number;
        let repeated = previous == Some(number);
        previous = Some(number);
        let len = value.len();
        let ok = match number {
            option::URI_HOST => !repeated && (1..=255).contains(&len),
            option::ETAG | option::OBSERVE | option::NO_RESPONSE | option::SIZE2 => true,
            option::URI_PORT => !repeated && len <= 2,
            option::URI_PATH | option::URI_QUERY => {
                if len > 255 {
                    false
                } else {
                    let s = std::str::from_utf8(value)
                        .map_err(|_| refuse(Code::BAD_REQUEST, "Uri-Path or Uri-Query is not UTF-8"))?;
                    if number == option::URI_PATH {
                        p.path.push(s.to_owned());
                    } else {
                        p.query.push(s.to_owned());
                    }
                    true
                }
            }
            option::CONTENT_FORMAT | option::ACCEPT => {
                let v = option::decode_uint(value, 2).filter(|_| !repeated);
                // Both fit in u16: at most 2 bytes.
                let v = v.map(|v| v as u16);
                if number == option::CONTENT_FORMAT {
                    p.content_format = v;
                } else {
                    p.accept = v;
                }
                v.is_some()
            }
            option::BLOCK1 | option::BLOCK2 => {
                if repeated {
                    false
                } else {
                    let b = Block::decode(value).map_err(|e| match e {
                        crate::msg::DecodeError::BlockSzx(_) => refuse(Code::BAD_REQUEST, "block SZX 7 is reserved"),
                        _ => refuse(Code::BAD_OPTION, "block option longer than 3 bytes"),
                    })?;
                    if number == option::BLOCK1 {
                        p.block1 = Some(b);
                    } else {
                        p.block2 = Some(b);
                    }
                    true
                }
            }
            option::SIZE1 => {
                p.size1 = option::decode_uint(value, 4).filter(|_| !repeated);
                p.size1.is_some()
            }
            option::PROXY_URI | option::PROXY_SCHEME => {
                return Err(refuse(Code::PROXYING_NOT_SUPPORTED, "this server is no proxy"));
            }
            _ => false,
        };
        if !ok && option::is_critical(number) {
            return Err(refuse(Code::BAD_OPTION, "unrecognized or malformed critical option"));
        }
    }
    let uri: usize = p.path.iter().chain(&p.query).map(String::len).sum();
    if uri > MAX_URI {
        return Err(refuse(Code::BAD_REQUEST, "request URI too long"));
    }
    Ok(p)
}

fn reset(message_id: u16) -> Vec<u8> {
    Message::new(Type::Rst, Code::EMPTY, message_id).encode()
}

impl Endpoint {
    /// An endpoint with no state.
    pub fn new(limits: Limits) -> Endpoint {
        let limits = Limits { preferred_szx: limits.preferred_szx.min(block::MAX_SZX), ..limits };
        Endpoint {
            limits,
            next_message_id: 0,
            next_etag: 1,
            recent: VecDeque::new(),
            upload: None,
            held: VecDeque::new(),
        }
    }

    /// Sets the message id of the next Non-confirmable answer (pick it at
    /// random when the session starts; the default is 0).
    pub fn set_next_message_id(&mut self, id: u16) {
        self.next_message_id = id;
    }

    /// The limits in force (`preferred_szx` clamped to 6).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The bytes this endpoint holds: the upload in progress, the held
    /// response bodies, the URIs they are for and the remembered answers.
    /// Never more than [`Limits::bound`].
    pub fn bytes_held(&self) -> usize {
        let upload = self.upload.as_ref().map_or(0, |u| u.body.len() + u.key.bytes());
        let held: usize = self.held.iter().map(|h| h.body.len() + h.key.bytes()).sum();
        let recent: usize = self.recent.iter().map(|r| r.answer.as_ref().map_or(0, Vec::len)).sum();
        upload + held + recent
    }

    /// Drops an upload with no block for [`Limits::upload_timeout`], held
    /// bodies older than [`Limits::response_timeout`] and answers older
    /// than [`EXCHANGE_LIFETIME`].
    pub fn expire(&mut self, now: Instant) {
        let limits = &self.limits;
        if self.upload.as_ref().is_some_and(|u| now.saturating_duration_since(u.last) > limits.upload_timeout) {
            self.upload = None;
        }
        self.held.retain(|h| now.saturating_duration_since(h.at) <= limits.response_timeout);
        self.recent.retain(|r| now.saturating_duration_since(r.at) <= EXCHANGE_LIFETIME);
    }

    /// Takes a datagram from the peer.
    pub fn receive(&mut self, datagram: &[u8], now: Instant) -> Received {
        let header = match Message::decode_header(datagram) {
            Ok(h) => h,
            Err(_) => {
                // A CON whose 4-byte header parsed is rejected with a Reset
                // (RFC 7252 §4.3); anything else that is not CoAP is dropped.
                return match datagram {
                    [b0, _, m0, m1, ..] if b0 >> 6 == 1 && (b0 >> 4) & 3 == 0 => {
                        Received::Reply(reset(u16::from_be_bytes([*m0, *m1])))
                    }
                    _ => Received::Nothing,
                };
            }
        };
        match header.ty {
            Type::Ack | Type::Rst => return Received::Nothing,
            Type::Con | Type::Non => {}
        }
        if let Some(r) = self.recent.iter().find(|r| r.message_id == header.message_id) {
            return match (&r.answer, header.ty) {
                (Some(answer), Type::Con) => Received::Reply(answer.clone()),
                _ => Received::Nothing,
            };
        }
        let msg = match Message::decode(datagram) {
            Ok(m) => m,
            Err(_) => {
                return match header.ty {
                    Type::Con => Received::Reply(reset(header.message_id)),
                    _ => Received::Nothing,
                };
            }
        };
        if !msg.code.is_request() {
            // An Empty CON ("CoAP ping"), a response or a reserved class
            // sent to a server: rejected (RFC 7252 §4.2, §4.3).
            return match msg.ty {
                Type::Con => Received::Reply(reset(msg.message_id)),
                _ => Received::Nothing,
            };
        }
        self.remember(header.message_id, now);
        match self.handle(&header, msg, now) {
            Ok(Handled::Reply(bytes)) => {
                self.answered(header.message_id, &bytes);
                Received::Reply(bytes)
            }
            Ok(Handled::Request(r)) => Received::Request(r),
            Err(refusal) => {
                let mut m = self.answer_to(&header, refusal.code);
                if let Some(size1) = refusal.size1 {
                    m.add_uint_option(option::SIZE1, size1);
                }
                m.payload = refusal.diagnostic.as_bytes().to_vec();
                let bytes = m.encode();
                self.answered(header.message_id, &bytes);
                Received::Reply(bytes)
            }
        }
    }

    /// Builds the datagram answering `request`: piggybacked in an ACK for
    /// a Confirmable request, a Non-confirmable message otherwise. A
    /// payload larger than the block size goes as block 0 (Block2, Size2)
    /// and is held for the following blocks, unless it is larger than
    /// [`Limits::max_response`] (then 5.00 with no payload is sent).
    pub fn respond(&mut self, request: &Request, response: Response) -> Vec<u8> {
        let header = Header {
            ty: if request.confirmable { Type::Con } else { Type::Non },
            code: request.method,
            message_id: request.message_id,
            token: request.token.clone(),
        };
        let szx = request.block2.map_or(self.limits.preferred_szx, |b| b.szx().min(self.limits.preferred_szx));
        let num = request.block2.map_or(0, |b| b.num());
        let mut m;
        if num == 0 && response.payload.len() <= block::size_of(szx) {
            m = self.answer_to(&header, response.code);
            if let Some(cf) = response.content_format {
                m.add_uint_option(option::CONTENT_FORMAT, u32::from(cf));
            }
            if let Some(age) = response.max_age {
                m.add_uint_option(option::MAX_AGE, age);
            }
            m.payload = response.payload;
        } else if response.payload.len() > self.limits.max_response {
            m = self.answer_to(&header, Code::INTERNAL_SERVER_ERROR);
        } else {
            let key = request.key();
            self.next_etag = self.next_etag.wrapping_add(1);
            self.held.retain(|h| h.key != key);
            while !self.held.is_empty() && self.held.len() >= self.limits.max_cached_responses {
                self.held.pop_front();
            }
            let held = Held {
                key,
                code: response.code,
                content_format: response.content_format,
                max_age: response.max_age,
                etag: self.next_etag.to_be_bytes(),
                body: response.payload,
                at: request.received,
            };
            m = self.block_of(&header, &held, num, szx);
            if self.limits.max_cached_responses > 0 && held.key.bytes() <= MAX_URI {
                self.held.push_back(held);
            }
        }
        if let Some(b1) = request.block1 {
            m.add_option(option::BLOCK1, b1.encode());
        }
        let bytes = m.encode();
        self.answered(request.message_id, &bytes);
        bytes
    }

    /// An answer to the message with `header` (ACK for a CON, else NON),
    /// with its token.
    fn answer_to(&mut self, header: &Header, code: Code) -> Message {
        let (ty, id) = match header.ty {
            Type::Con => (Type::Ack, header.message_id),
            _ => {
                let id = self.next_message_id;
                self.next_message_id = id.wrapping_add(1);
                (Type::Non, id)
            }
        };
        let mut m = Message::new(ty, code, id);
        m.token = header.token.clone();
        m
    }

    /// Block `num` (of size 2^(szx+4)) of a held body; 4.02 past its end.
    fn block_of(&mut self, header: &Header, held: &Held, num: u32, szx: u8) -> Message {
        let size = block::size_of(szx);
        let offset = num as usize * size;
        if offset >= held.body.len() && !(offset == 0 && held.body.is_empty()) {
            let mut m = self.answer_to(header, Code::BAD_OPTION);
            m.payload = b"block number past the end of the response".to_vec();
            return m;
        }
        let end = (offset + size).min(held.body.len());
        let more = end < held.body.len();
        let mut m = self.answer_to(header, held.code);
        if let Some(cf) = held.content_format {
            m.add_uint_option(option::CONTENT_FORMAT, u32::from(cf));
        }
        if let Some(age) = held.max_age {
            m.add_uint_option(option::MAX_AGE, age);
        }
        if let Ok(b) = Block::new(num, more, szx) {
            m.add_option(option::BLOCK2, b.encode());
        }
        m.add_option(option::ETAG, held.etag.to_vec());
        m.add_uint_option(option::SIZE2, u32::try_from(held.body.len()).unwrap_or(u32::MAX));
        m.payload = held.body[offset..end].to_vec();
        m
    }

    fn remember(&mut self, message_id: u16, now: Instant) {
        if self.limits.dedup == 0 {
            return;
        }
        while self.recent.len() >= self.limits.dedup {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent { message_id, at: now, answer: None });
    }

    fn answered(&mut self, message_id: u16, bytes: &[u8]) {
        let cap = block::size_of(self.limits.preferred_szx) + REPLY_OVERHEAD;
        if let Some(r) = self.recent.iter_mut().find(|r| r.message_id == message_id && r.answer.is_none()) {
            // Every answer we build fits (a block of at most the preferred
            // size, our options, a short diagnostic); the check keeps the
            // bound whatever happens.
            if bytes.len() <= cap {
                r.answer = Some(bytes.to_vec());
            }
        }
    }

    fn handle(&mut self, header: &Header, msg: Message, now: Instant) -> Result<Handled, Refusal> {
        let p = parse_options(&msg)?;
        let key = Key { method: msg.code, path: p.path, query: p.query };
        let max_body = self.limits.max_body;
        let too_large = || Refusal {
            code: Code::REQUEST_ENTITY_TOO_LARGE,
            diagnostic: "request body too large",
            size1: Some(u32::try_from(max_body).unwrap_or(u32::MAX)),
        };
        let mut payload = msg.payload;
        let mut content_format = p.content_format;
        if let Some(b1) = p.block1 {
            if p.size1.is_some_and(|s| s as usize > max_body) {
                if b1.num() == 0 {
                    self.upload = None;
                }
                return Err(too_large());
            }
            let size = b1.size();
            if (b1.more() && payload.len() != size) || payload.len() > size {
                return Err(refuse(Code::BAD_REQUEST, "block payload does not match its SZX"));
            }
            if b1.num() == 0 {
                self.upload = None;
                if payload.len() > max_body {
                    return Err(too_large());
                }
                self.upload = Some(Upload { key: key.clone(), body: payload.clone(), content_format, last: now });
            } else {
                let Some(upload) = self.upload.as_mut().filter(|u| u.key == key && u.body.len() == b1.offset()) else {
                    return Err(refuse(
                        Code::REQUEST_ENTITY_INCOMPLETE,
                        "block out of order or for no upload in progress",
                    ));
                };
                if upload.body.len() + payload.len() > max_body {
                    self.upload = None;
                    return Err(too_large());
                }
                upload.body.extend_from_slice(&payload);
                upload.last = now;
                if content_format.is_some() {
                    upload.content_format = content_format;
                }
            }
            if b1.more() {
                let echo = Block::new(b1.num(), true, b1.szx().min(self.limits.preferred_szx))
                    .map_err(|_| refuse(Code::BAD_OPTION, "block number too large"))?;
                let mut m = self.answer_to(header, Code::CONTINUE);
                m.add_option(option::BLOCK1, echo.encode());
                return Ok(Handled::Reply(m.encode()));
            }
            // The last block: the whole body goes to the application.
            if let Some(upload) = self.upload.take() {
                payload = upload.body;
                content_format = upload.content_format;
            }
        } else if payload.len() > max_body {
            return Err(too_large());
        }
        if let Some(b2) = p.block2.filter(|b| b.num() > 0 && p.block1.is_none()) {
            let szx = b2.szx().min(self.limits.preferred_szx);
            if let Some(i) = self.held.iter().position(|h| h.key == key) {
                // Taken out and put back so that `block_of` may borrow self.
                if let Some(held) = self.held.remove(i) {
                    let m = self.block_of(header, &held, b2.num(), szx);
                    self.held.insert(i, held);
                    return Ok(Handled::Reply(m.encode()));
                }
            }
            if key.method != Code::GET {
                return Err(refuse(Code::REQUEST_ENTITY_INCOMPLETE, "no response held for this block"));
            }
        }
        Ok(Handled::Request(Request {
            method: key.method,
            path: key.path,
            query: key.query,
            content_format,
            accept: p.accept,
            payload,
            confirmable: header.ty == Type::Con,
            message_id: header.message_id,
            token: header.token.clone(),
            block1: p.block1,
            block2: p.block2,
            received: now,
        }))
    }
}

enum Handled {
    Reply(Vec<u8>),
    Request(Request),
}
