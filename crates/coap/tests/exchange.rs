//! The server Endpoint driven by the client Exchange (in memory), and the
//! endpoint's refusals, with hand-built datagrams.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use iotpki_coap::block::Block;
use iotpki_coap::client::{ClientResponse, Exchange, Progress};
use iotpki_coap::msg::{Code, Message, Type};
use iotpki_coap::option;
use iotpki_coap::server::{Endpoint, Limits, Received, Request, Response};

/// A deterministic coin (xorshift), so that a lossy run can be replayed.
struct Coin(u64);

impl Coin {
    fn flip(&mut self, percent: u64) -> bool {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % 100 < percent
    }
}

/// The body the test application makes from a request: long enough to go
/// block-wise, and depending on every byte of the request.
fn answer_body(req: &Request) -> Vec<u8> {
    let sum: u32 = req.payload.iter().map(|&b| u32::from(b)).sum();
    let mut body = format!("{} {} {sum}:", req.path.join("/"), req.payload.len()).into_bytes();
    body.extend((0..3000u32).map(|i| (i * 7 + sum) as u8));
    body
}

struct Run {
    response: Option<ClientResponse>,
    failed: Option<String>,
    app_calls: usize,
    requests: Vec<Request>,
    datagrams: usize,
}

/// Runs an exchange against an endpoint, losing `loss`% and duplicating
/// `dup`% of the datagrams each way.
fn run(ep: &mut Endpoint, mut ex: Exchange, coin: &mut Coin, loss: u64, dup: u64) -> Run {
    let mut out = Run { response: None, failed: None, app_calls: 0, requests: Vec::new(), datagrams: 0 };
    let now = Instant::now();
    let mut attempts = 0;
    'exchange: loop {
        attempts += 1;
        assert!(attempts < 500, "no progress");
        let request = ex.datagram();
        out.datagrams += 1;
        let copies = if coin.flip(loss) {
            0
        } else if coin.flip(dup) {
            2
        } else {
            1
        };
        let mut answers = Vec::new();
        for _ in 0..copies {
            match ep.receive(&request, now) {
                Received::Reply(bytes) => answers.push(bytes),
                Received::Request(req) => {
                    out.app_calls += 1;
                    let body = answer_body(&req);
                    let code = if req.method == Code::GET { Code::CONTENT } else { Code::CHANGED };
                    out.requests.push(req.clone());
                    answers.push(ep.respond(&req, Response::with(code, 281, body)));
                }
                Received::Nothing => {}
            }
        }
        if copies == 2 && answers.len() == 2 {
            assert_eq!(answers[0], answers[1], "a duplicate got another answer");
        }
        for answer in answers {
            let copies = if coin.flip(loss) {
                0
            } else if coin.flip(dup) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                match ex.receive(&answer) {
                    Progress::Send => continue 'exchange,
                    Progress::Done(r) => {
                        out.response = Some(r);
                        return out;
                    }
                    Progress::Failed(why) => {
                        out.failed = Some(why);
                        return out;
                    }
                    Progress::Ignored | Progress::Acknowledged => {}
                }
            }
        }
        // Nothing came back: the timer runs out, the same datagram goes again.
    }
}

fn post(payload: Vec<u8>, szx: u8, mid: u16) -> Exchange {
    Exchange::new(
        Code::POST,
        "/.well-known/est/sren",
        Some(286),
        Some(281),
        payload,
        szx,
        mid,
        vec![0xde, 0xad, mid as u8],
    )
    .unwrap()
}

fn body(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn block1_upload_and_block2_download() {
    let mut ep = Endpoint::new(Limits::default());
    let payload = body(5000, 1);
    let r = run(&mut ep, post(payload.clone(), 6, 100), &mut Coin(1), 0, 0);
    assert_eq!(r.failed, None);
    assert_eq!(r.app_calls, 1);
    let req = &r.requests[0];
    assert_eq!(req.payload, payload);
    assert_eq!(req.path, vec![".well-known", "est", "sren"]);
    assert_eq!(req.content_format, Some(286));
    assert_eq!(req.accept, Some(281));
    let resp = r.response.unwrap();
    assert_eq!(resp.code, Code::CHANGED);
    assert_eq!(resp.content_format, Some(281));
    assert_eq!(resp.payload, answer_body(req));
    // 5 Block1 blocks of 1024 and 3 Block2 blocks of 1024 (3000+ bytes): 7 messages.
    assert_eq!(r.datagrams, 5 + 2);
    assert!(ep.bytes_held() <= ep.limits().bound());
}

#[test]
fn small_request_and_response_in_one_message() {
    let mut ep = Endpoint::new(Limits::default());
    let ex = Exchange::new(Code::GET, "/est/att", None, None, vec![], 6, 7, vec![1]).unwrap();
    let first = Message::decode(&ex.datagram()).unwrap();
    assert!(first.option(option::BLOCK1).is_none() && first.option(option::BLOCK2).is_none());
    let Received::Request(req) = ep.receive(&ex.datagram(), Instant::now()) else { panic!() };
    assert_eq!(req.path, vec!["est", "att"]);
    assert!(req.is_confirmable());
    let bytes = ep.respond(&req, Response::with(Code::CONTENT, 285, vec![0x30, 0]));
    let m = Message::decode(&bytes).unwrap();
    assert_eq!((m.ty, m.code, m.message_id, m.token.as_slice()), (Type::Ack, Code::CONTENT, 7, &[1u8][..]));
    assert_eq!(m.option(option::CONTENT_FORMAT), Some(&[1, 29][..]));
    assert!(m.option(option::BLOCK2).is_none());
    assert_eq!(ep.bytes_held(), bytes.len());
}

#[test]
fn server_lowers_the_block_size() {
    let mut ep = Endpoint::new(Limits { preferred_szx: 4, ..Limits::default() });
    let payload = body(3000, 2);
    let ex = post(payload.clone(), 6, 1);
    // Block 0 of 1024 bytes is taken whole; the 2.31 asks for 256-byte blocks.
    let Received::Reply(cont) = ep.receive(&ex.datagram(), Instant::now()) else { panic!() };
    let m = Message::decode(&cont).unwrap();
    assert_eq!(m.code, Code::CONTINUE);
    let echo = Block::decode(m.option(option::BLOCK1).unwrap()).unwrap();
    assert_eq!((echo.num(), echo.more(), echo.szx()), (0, true, 4));
    let mut ex = ex;
    assert_eq!(ex.receive(&cont), Progress::Send);
    let next = Message::decode(&ex.datagram()).unwrap();
    let b1 = Block::decode(next.option(option::BLOCK1).unwrap()).unwrap();
    assert_eq!((b1.num(), b1.szx()), (4, 4), "continues at byte 1024 in 256-byte blocks");
    assert_eq!(next.payload, payload[1024..1280]);
    // And the whole exchange, on a fresh endpoint.
    let mut ep = Endpoint::new(Limits { preferred_szx: 4, ..Limits::default() });
    let r = run(&mut ep, post(payload.clone(), 6, 1), &mut Coin(3), 0, 0);
    assert_eq!(r.requests[0].payload, payload);
    let resp = r.response.unwrap();
    assert_eq!(resp.payload, answer_body(&r.requests[0]));
}

#[test]
fn client_asks_for_small_response_blocks() {
    let mut ep = Endpoint::new(Limits::default());
    let ex = Exchange::new(Code::GET, "/est/crts", None, None, vec![], 2, 9, vec![]).unwrap();
    let Received::Request(req) = ep.receive(&ex.datagram(), Instant::now()) else { panic!() };
    let bytes = ep.respond(&req, Response::with(Code::CONTENT, 281, body(1000, 3)));
    let m = Message::decode(&bytes).unwrap();
    let b2 = Block::decode(m.option(option::BLOCK2).unwrap()).unwrap();
    assert_eq!((b2.num(), b2.more(), b2.size()), (0, true, 64));
    assert_eq!(m.payload.len(), 64);
    assert_eq!(option::decode_uint(m.option(option::SIZE2).unwrap(), 4), Some(1000));
    let mut ep = Endpoint::new(Limits::default());
    let r = run(&mut ep, ex, &mut Coin(4), 0, 0);
    assert_eq!(r.response.unwrap().payload, answer_body(&r.requests[0]));
    assert_eq!(r.datagrams, answer_body(&r.requests[0]).len().div_ceil(64));
}

#[test]
fn lossy_and_duplicating_network() {
    for seed in 1..60u64 {
        let mut ep = Endpoint::new(Limits::default());
        let payload = body(4000 + seed as usize * 13, seed as u8);
        let r = run(&mut ep, post(payload.clone(), 5, seed as u16 * 1000), &mut Coin(seed * 7919), 25, 25);
        assert_eq!(r.failed, None, "seed {seed}");
        assert_eq!(r.app_calls, 1, "seed {seed}: the application saw the request once");
        assert_eq!(r.requests[0].payload, payload, "seed {seed}");
        assert_eq!(r.response.unwrap().payload, answer_body(&r.requests[0]), "seed {seed}");
        assert!(ep.bytes_held() <= ep.limits().bound());
    }
}

fn con(code: Code, mid: u16, path: &[&str]) -> Message {
    let mut m = Message::new(Type::Con, code, mid);
    m.token = vec![0x42, mid as u8];
    for s in path {
        m.add_option(option::URI_PATH, s.as_bytes().to_vec());
    }
    m
}

fn block1(mid: u16, num: u32, more: bool, szx: u8, data: &[u8]) -> Vec<u8> {
    let mut m = con(Code::POST, mid, &["est", "sen"]);
    m.add_option(option::BLOCK1, Block::new(num, more, szx).unwrap().encode());
    m.payload = data.to_vec();
    m.encode()
}

fn reply(r: Received) -> Message {
    match r {
        Received::Reply(bytes) => Message::decode(&bytes).unwrap(),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn out_of_order_block_is_incomplete() {
    let mut ep = Endpoint::new(Limits::default());
    let now = Instant::now();
    // A block for no upload.
    let m = reply(ep.receive(&block1(1, 1, true, 2, &[0; 64]), now));
    assert_eq!((m.ty, m.code, m.message_id), (Type::Ack, Code::REQUEST_ENTITY_INCOMPLETE, 1));
    assert_eq!(m.token, vec![0x42, 1]);
    // Block 0, then block 2: a gap.
    assert_eq!(reply(ep.receive(&block1(2, 0, true, 2, &[1; 64]), now)).code, Code::CONTINUE);
    assert_eq!(reply(ep.receive(&block1(3, 2, true, 2, &[2; 64]), now)).code, Code::REQUEST_ENTITY_INCOMPLETE);
    // The upload is still there: block 1 continues it.
    assert_eq!(reply(ep.receive(&block1(4, 1, true, 2, &[3; 64]), now)).code, Code::CONTINUE);
    // A block of the wrong length for its SZX.
    assert_eq!(reply(ep.receive(&block1(5, 2, true, 2, &[3; 63]), now)).code, Code::BAD_REQUEST);
    // The same block number for another path.
    let mut other = Message::decode(&block1(6, 2, false, 2, &[4; 10])).unwrap();
    other.options.retain(|(n, _)| *n != option::URI_PATH);
    other.add_option(option::URI_PATH, b"x".to_vec());
    assert_eq!(reply(ep.receive(&other.encode(), now)).code, Code::REQUEST_ENTITY_INCOMPLETE);
    // The last block: the application gets 64+64+10 bytes, and the
    // response echoes Block1.
    let Received::Request(req) = ep.receive(&block1(7, 2, false, 2, &[5; 10]), now) else { panic!() };
    assert_eq!(req.payload, [vec![1; 64], vec![3; 64], vec![5; 10]].concat());
    let m = Message::decode(&ep.respond(&req, Response::code(Code::CHANGED))).unwrap();
    assert_eq!(m.code, Code::CHANGED);
    let echo = Block::decode(m.option(option::BLOCK1).unwrap()).unwrap();
    assert_eq!((echo.num(), echo.more(), echo.szx()), (2, false, 2));
    // Done: another block 3 has no upload.
    assert_eq!(reply(ep.receive(&block1(8, 3, false, 2, &[5; 10]), now)).code, Code::REQUEST_ENTITY_INCOMPLETE);
}

#[test]
fn too_large_is_413_with_size1() {
    let limits = Limits { max_body: 1000, ..Limits::default() };
    let mut ep = Endpoint::new(limits);
    let now = Instant::now();
    let size1 = |m: &Message| option::decode_uint(m.option(option::SIZE1).unwrap(), 4).unwrap();
    // Declared too large in Size1.
    let mut first = Message::decode(&block1(1, 0, true, 6, &[0; 1024])).unwrap();
    first.add_uint_option(option::SIZE1, 5000);
    let m = reply(ep.receive(&first.encode(), now));
    assert_eq!(m.code, Code::REQUEST_ENTITY_TOO_LARGE);
    assert_eq!(size1(&m), 1000);
    assert_eq!(ep.bytes_held(), m.encode().len());
    // Not declared, but the running total passes the limit.
    assert_eq!(reply(ep.receive(&block1(2, 0, true, 4, &[0; 256]), now)).code, Code::CONTINUE);
    assert_eq!(reply(ep.receive(&block1(3, 1, true, 4, &[0; 256]), now)).code, Code::CONTINUE);
    assert_eq!(reply(ep.receive(&block1(4, 2, true, 4, &[0; 256]), now)).code, Code::CONTINUE);
    let m = reply(ep.receive(&block1(5, 3, true, 4, &[0; 256]), now));
    assert_eq!((m.code, size1(&m)), (Code::REQUEST_ENTITY_TOO_LARGE, 1000));
    // The upload is gone.
    assert_eq!(reply(ep.receive(&block1(6, 4, false, 4, &[0; 1]), now)).code, Code::REQUEST_ENTITY_INCOMPLETE);
    // A single message too large.
    let mut m = con(Code::POST, 7, &["est", "sen"]);
    m.payload = vec![0; 1001];
    let m = reply(ep.receive(&m.encode(), now));
    assert_eq!((m.code, size1(&m)), (Code::REQUEST_ENTITY_TOO_LARGE, 1000));
    // Exactly the limit is fine.
    let mut m = con(Code::POST, 8, &["est", "sen"]);
    m.payload = vec![0; 1000];
    assert!(matches!(ep.receive(&m.encode(), now), Received::Request(_)));
    // And the client sees a 4.13 as a response, not a failure.
    let mut ep = Endpoint::new(Limits { max_body: 1000, ..Limits::default() });
    let r = run(&mut ep, post(body(3000, 0), 6, 1), &mut Coin(5), 0, 0);
    assert_eq!(r.response.unwrap().code, Code::REQUEST_ENTITY_TOO_LARGE);
    assert_eq!(r.app_calls, 0);
}

#[test]
fn unfinished_upload_expires() {
    let mut ep = Endpoint::new(Limits::default());
    let t0 = Instant::now();
    assert_eq!(reply(ep.receive(&block1(1, 0, true, 6, &[9; 1024]), t0)).code, Code::CONTINUE);
    assert!(ep.bytes_held() >= 1024);
    ep.expire(t0 + Duration::from_secs(29));
    assert_eq!(
        reply(ep.receive(&block1(2, 1, true, 6, &[9; 1024]), t0 + Duration::from_secs(29))).code,
        Code::CONTINUE
    );
    // 30 s after the last block it is still there, past 30 s it is gone.
    ep.expire(t0 + Duration::from_secs(59));
    assert!(ep.bytes_held() >= 2048);
    ep.expire(t0 + Duration::from_secs(60));
    assert!(ep.bytes_held() < 2048);
    assert_eq!(
        reply(ep.receive(&block1(3, 2, false, 6, &[9; 10]), t0 + Duration::from_secs(60))).code,
        Code::REQUEST_ENTITY_INCOMPLETE
    );
    // Remembered answers go after EXCHANGE_LIFETIME.
    ep.expire(t0 + Duration::from_secs(60 + 248));
    assert_eq!(ep.bytes_held(), 0);
}

#[test]
fn held_response_expires() {
    let mut ep = Endpoint::new(Limits::default());
    let t0 = Instant::now();
    let Received::Request(req) = ep.receive(&con(Code::GET, 1, &["est", "crts"]).encode(), t0) else { panic!() };
    ep.respond(&req, Response::with(Code::CONTENT, 281, vec![1; 5000]));
    assert!(ep.bytes_held() >= 5000);
    let mut next = con(Code::GET, 2, &["est", "crts"]);
    next.add_option(option::BLOCK2, Block::new(1, false, 6).unwrap().encode());
    let m = reply(ep.receive(&next.encode(), t0 + Duration::from_secs(10)));
    assert_eq!(m.code, Code::CONTENT);
    ep.expire(t0 + Duration::from_secs(61));
    assert!(ep.bytes_held() < 5000);
    // A GET for block 1 with nothing held goes to the application, and
    // the answer is block 1 of the new body.
    next.message_id = 3;
    let Received::Request(req) = ep.receive(&next.encode(), t0 + Duration::from_secs(61)) else { panic!() };
    let m = Message::decode(&ep.respond(&req, Response::with(Code::CONTENT, 281, vec![2; 5000]))).unwrap();
    let b2 = Block::decode(m.option(option::BLOCK2).unwrap()).unwrap();
    assert_eq!((b2.num(), b2.more()), (1, true));
    assert_eq!(m.payload, vec![2; 1024]);
    // A POST for block 1 with nothing held: 4.08, the enrollment is not redone.
    let mut post = con(Code::POST, 4, &["est", "sen"]);
    post.add_option(option::BLOCK2, Block::new(1, false, 6).unwrap().encode());
    assert_eq!(reply(ep.receive(&post.encode(), t0)).code, Code::REQUEST_ENTITY_INCOMPLETE);
    // A block past the end: 4.02.
    next.message_id = 5;
    next.options.retain(|(n, _)| *n != option::BLOCK2);
    next.add_option(option::BLOCK2, Block::new(9, false, 6).unwrap().encode());
    assert_eq!(reply(ep.receive(&next.encode(), t0 + Duration::from_secs(62))).code, Code::BAD_OPTION);
}

#[test]
fn duplicates_get_the_same_bytes() {
    let mut ep = Endpoint::new(Limits::default());
    let now = Instant::now();
    let request = con(Code::GET, 77, &["est", "crts"]).encode();
    let Received::Request(req) = ep.receive(&request, now) else { panic!() };
    // Still with the application: nothing.
    assert_eq!(ep.receive(&request, now), Received::Nothing);
    let answer = ep.respond(&req, Response::with(Code::CONTENT, 281, vec![3; 100]));
    assert_eq!(ep.receive(&request, now), Received::Reply(answer.clone()));
    assert_eq!(ep.receive(&request, now), Received::Reply(answer));
    // A refusal is remembered too.
    let bad = block1(78, 5, true, 2, &[0; 64]);
    let first = ep.receive(&bad, now);
    assert_eq!(ep.receive(&bad, now), first);
    // After `dedup` other requests, the id is forgotten.
    for mid in 1000..1008 {
        let Received::Request(r) = ep.receive(&con(Code::GET, mid, &["x"]).encode(), now) else { panic!() };
        ep.respond(&r, Response::code(Code::NOT_FOUND));
    }
    assert!(matches!(ep.receive(&request, now), Received::Request(_)));
}

#[test]
fn non_confirmable_request() {
    let mut ep = Endpoint::new(Limits::default());
    ep.set_next_message_id(500);
    let now = Instant::now();
    let mut m = con(Code::GET, 9, &["est", "crts"]);
    m.ty = Type::Non;
    let Received::Request(req) = ep.receive(&m.encode(), now) else { panic!() };
    assert!(!req.is_confirmable());
    let a = Message::decode(&ep.respond(&req, Response::code(Code::CONTENT))).unwrap();
    assert_eq!((a.ty, a.message_id, a.token), (Type::Non, 500, m.token.clone()));
    // A duplicated NON is dropped.
    assert_eq!(ep.receive(&m.encode(), now), Received::Nothing);
    // A NON with an unknown critical option gets a NON 4.02.
    m.message_id = 10;
    m.add_option(9, vec![]);
    let a = reply(ep.receive(&m.encode(), now));
    assert_eq!((a.ty, a.code, a.message_id), (Type::Non, Code::BAD_OPTION, 501));
}

#[test]
fn option_refusals() {
    let mut ep = Endpoint::new(Limits::default());
    let now = Instant::now();
    let mut mid = 0;
    let mut with = |number: u16, value: Vec<u8>| {
        mid += 1;
        let mut m = con(Code::GET, mid, &["est", "crts"]);
        m.add_option(number, value);
        ep.receive(&m.encode(), now)
    };
    // Unknown critical options (9 is unassigned, If-Match is not supported).
    assert_eq!(reply(with(9, vec![1])).code, Code::BAD_OPTION);
    assert_eq!(reply(with(option::IF_MATCH, vec![1])).code, Code::BAD_OPTION);
    assert_eq!(reply(with(2049, vec![])).code, Code::BAD_OPTION);
    // A critical option of a wrong length.
    assert_eq!(reply(with(option::ACCEPT, vec![1, 2, 3])).code, Code::BAD_OPTION);
    assert_eq!(reply(with(option::BLOCK2, vec![1, 2, 3, 4])).code, Code::BAD_OPTION);
    // SZX 7: 4.00 (RFC 7959 §2.2).
    assert_eq!(reply(with(option::BLOCK2, vec![0x07])).code, Code::BAD_REQUEST);
    // Proxying is not offered.
    assert_eq!(reply(with(option::PROXY_URI, b"coap://x/".to_vec())).code, Code::PROXYING_NOT_SUPPORTED);
    // Elective options we do not know are ignored, and so is a bad Content-Format.
    assert!(matches!(with(10, vec![1]), Received::Request(_)));
    assert!(matches!(with(option::NO_RESPONSE, vec![2]), Received::Request(r) if r.path == ["est", "crts"]));
    assert!(matches!(with(option::CONTENT_FORMAT, vec![1, 2, 3]), Received::Request(r) if r.content_format.is_none()));
    // A non-UTF-8 path segment: 4.00.
    assert_eq!(reply(with(option::URI_PATH, vec![0xff, 0xfe])).code, Code::BAD_REQUEST);
    // A request URI past the limit: 4.00.
    mid += 1;
    let mut long = con(Code::GET, mid, &[]);
    for _ in 0..5 {
        long.add_option(option::URI_QUERY, vec![b'q'; 250]);
    }
    assert_eq!(reply(ep.receive(&long.encode(), now)).code, Code::BAD_REQUEST);
}

#[test]
fn what_is_not_a_request() {
    let mut ep = Endpoint::new(Limits::default());
    let now = Instant::now();
    // CoAP ping: an Empty CON gets a Reset.
    let r = reply(ep.receive(&Message::new(Type::Con, Code::EMPTY, 0x1234).encode(), now));
    assert_eq!(r, Message::new(Type::Rst, Code::EMPTY, 0x1234));
    // A response sent to the server as a CON: Reset; as a NON: nothing.
    assert_eq!(reply(ep.receive(&Message::new(Type::Con, Code::CONTENT, 5).encode(), now)).ty, Type::Rst);
    assert_eq!(ep.receive(&Message::new(Type::Non, Code::CONTENT, 6).encode(), now), Received::Nothing);
    // A reserved class (1.xx): Reset.
    assert_eq!(reply(ep.receive(&Message::new(Type::Con, Code::new(1, 1), 7).encode(), now)).ty, Type::Rst);
    // ACK and RST: nothing.
    assert_eq!(ep.receive(&Message::new(Type::Ack, Code::EMPTY, 8).encode(), now), Received::Nothing);
    assert_eq!(ep.receive(&Message::new(Type::Rst, Code::EMPTY, 9).encode(), now), Received::Nothing);
    // A CON with a message format error: Reset with its id.
    let r = reply(ep.receive(&[0x40, 0x01, 0xab, 0xcd, 0xff], now));
    assert_eq!((r.ty, r.message_id), (Type::Rst, 0xabcd));
    let r = reply(ep.receive(&[0x49, 0x01, 0xab, 0xce], now));
    assert_eq!((r.ty, r.message_id), (Type::Rst, 0xabce));
    // Not CoAP at all: nothing.
    assert_eq!(ep.receive(&[0x16, 0xfe, 0xfd, 0, 0, 0], now), Received::Nothing);
    assert_eq!(ep.receive(&[0x40], now), Received::Nothing);
    assert_eq!(ep.receive(&[0x50, 0x01, 0, 1, 0xff], now), Received::Nothing);
    assert_eq!(ep.bytes_held(), 0);
}

#[test]
fn response_too_large_to_hold_is_500() {
    let mut ep = Endpoint::new(Limits { max_response: 2000, ..Limits::default() });
    let Received::Request(req) = ep.receive(&con(Code::GET, 1, &["est", "crts"]).encode(), Instant::now()) else {
        panic!()
    };
    let m = Message::decode(&ep.respond(&req, Response::with(Code::CONTENT, 281, vec![0; 2001]))).unwrap();
    assert_eq!(m.code, Code::INTERNAL_SERVER_ERROR);
    assert!(m.payload.is_empty());
    assert!(ep.bytes_held() <= ep.limits().bound());
}

#[test]
fn client_refuses_a_response_too_large() {
    let mut ep = Endpoint::new(Limits::default());
    let ex = Exchange::new(Code::GET, "/est/crts", None, None, vec![], 6, 1, vec![1]).unwrap().with_max_response(2000);
    let r = run(&mut ep, ex, &mut Coin(9), 0, 0);
    assert!(r.failed.unwrap().contains("larger than 2000"));
}

#[test]
fn memory_stays_bounded_under_a_flood() {
    let limits = Limits {
        max_body: 2000,
        max_response: 3000,
        max_cached_responses: 2,
        dedup: 4,
        preferred_szx: 4,
        ..Limits::default()
    };
    let bound = limits.bound();
    let mut ep = Endpoint::new(limits);
    let now = Instant::now();
    let mut max = 0;
    for i in 0..400u16 {
        let path = format!("p{}", i % 7);
        let d = match i % 5 {
            0 | 1 => {
                let mut m = con(Code::POST, i, &[&path]);
                m.add_option(option::BLOCK1, Block::new(u32::from(i % 3), true, 4).unwrap().encode());
                m.payload = vec![i as u8; 256];
                m.encode()
            }
            2 => {
                let mut m = con(Code::GET, i, &[&path]);
                m.add_option(option::BLOCK2, Block::new(u32::from(i % 4), false, 3).unwrap().encode());
                m.encode()
            }
            _ => con(Code::GET, i, &[&path]).encode(),
        };
        if let Received::Request(r) = ep.receive(&d, now) {
            ep.respond(&r, Response::with(Code::CONTENT, 0, vec![1; (i as usize * 37) % 3500]));
        }
        max = max.max(ep.bytes_held());
        assert!(ep.bytes_held() <= bound, "{} > {bound}", ep.bytes_held());
    }
    assert!(max > 3000, "the flood did hold something ({max})");
}

#[test]
fn body_replaced_during_download_fails_the_client() {
    let mut ep = Endpoint::new(Limits::default());
    let now = Instant::now();
    let mut ex = Exchange::new(Code::GET, "/est/crts", None, None, vec![], 6, 1, vec![1]).unwrap();
    let Received::Request(req) = ep.receive(&ex.datagram(), now) else { panic!() };
    let block0 = ep.respond(&req, Response::with(Code::CONTENT, 281, vec![1; 3000]));
    let etag0 = Message::decode(&block0).unwrap().option(option::ETAG).unwrap().to_vec();
    assert_eq!(ex.receive(&block0), Progress::Send);
    // Another GET of the same resource (say, a second exchange of the
    // peer) replaces the held body.
    let other = con(Code::GET, 50, &["est", "crts"]);
    let Received::Request(req2) = ep.receive(&other.encode(), now) else { panic!() };
    let other0 = Message::decode(&ep.respond(&req2, Response::with(Code::CONTENT, 281, vec![2; 3000]))).unwrap();
    assert_ne!(other0.option(option::ETAG).unwrap(), etag0.as_slice());
    // Block 1 now comes from the other body: the client refuses to stitch.
    let Received::Reply(block1) = ep.receive(&ex.datagram(), now) else { panic!() };
    let m = Message::decode(&block1).unwrap();
    assert_eq!(m.payload, vec![2; 1024]);
    match ex.receive(&block1) {
        Progress::Failed(why) => assert!(why.contains("ETag"), "{why}"),
        p => panic!("{p:?}"),
    }
}
