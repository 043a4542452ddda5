//! Seed inputs for the `coap_message` and `coap_block` fuzz targets (run by
//! `scripts/fuzz seeds`): `cargo run -p iotpki-coap --example coap_fuzz_seeds -- fuzz/seeds`.
//!
//! `coap_message/`: the RFC 7252 Appendix A request and answer (bytes
//! written from the figure), a Block1 request and a Block2 answer as our
//! client and server make them, an Empty ACK and a message with extended
//! option forms. `coap_block/`: scripts (format in `iotpki_coap::internal`)
//! recorded from our client talking to an endpoint with the script's limits,
//! and hand-built block sequences (a gap, an expiry, a 4.13).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use iotpki_coap::client::{Exchange, Progress};
use iotpki_coap::internal::script_limits;
use iotpki_coap::msg::{Code, Message, Type};
use iotpki_coap::server::{Endpoint, Limits, Received, Response};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// A block script recorded from a client exchange: each client datagram a
/// raw step (1 s later), each request answered with `response` bytes.
fn recorded(szx: u8, mut ex: Exchange, response: u16) -> Vec<u8> {
    let mut script = vec![szx];
    let mut ep = Endpoint::new(script_limits(szx));
    let now = Instant::now();
    for _ in 0..200 {
        let d = ex.datagram();
        script.push(0x01);
        script.extend_from_slice(&(d.len() as u16).to_be_bytes());
        script.extend_from_slice(&d);
        let answer = match ep.receive(&d, now) {
            Received::Reply(b) => b,
            Received::Request(r) => {
                script.extend_from_slice(&response.to_be_bytes());
                let fill = r.payload.len() as u8;
                ep.respond(&r, Response::with(Code::CONTENT, 0, vec![fill; usize::from(response)]))
            }
            Received::Nothing => break,
        };
        match ex.receive(&answer) {
            Progress::Send => {}
            _ => break,
        }
    }
    script
}

/// A built-request step (see `iotpki_coap::internal`).
fn built(c: u8, a: u8, id: u8, num: u8, flags: u8, plen: u8) -> [u8; 6] {
    [0x80 | c, a, id, num, flags, plen]
}

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/seeds".into()));
    let msg = root.join("coap_message");
    let get = [0x40, 0x01, 0x7d, 0x34, 0xbb, b't', b'e', b'm', b'p', b'e', b'r', b'a', b't', b'u', b'r', b'e'];
    write(&msg, "rfc7252-get.bin", &get);
    write(&msg, "rfc7252-ack.bin", &[0x60, 0x45, 0x7d, 0x34, 0xff, b'2', b'2', b'.', b'3', b' ', b'C']);
    write(&msg, "empty-ack.bin", &Message::new(Type::Ack, Code::EMPTY, 0x1234).encode());
    let ex = Exchange::new(
        Code::POST,
        "/.well-known/est/sren",
        Some(286),
        Some(281),
        vec![0x30; 700],
        4,
        9,
        vec![1, 2, 3, 4],
    )
    .unwrap();
    write(&msg, "block1-post.bin", &ex.datagram());
    let mut ep = Endpoint::new(Limits::default());
    let getc = Exchange::new(Code::GET, "/est/crts", None, Some(281), vec![], 6, 10, vec![5]).unwrap();
    let Received::Request(r) = ep.receive(&getc.datagram(), Instant::now()) else { panic!("GET is a request") };
    write(&msg, "block2-ack.bin", &ep.respond(&r, Response::with(Code::CONTENT, 281, vec![0x30; 3000])));
    let mut ext = Message::new(Type::Non, Code::PUT, 7);
    ext.add_option(4, vec![1; 13]);
    ext.add_option(300, vec![2; 270]);
    ext.add_option(60, vec![0x0b, 0xb8]);
    ext.payload = b"x".to_vec();
    write(&msg, "extended.bin", &ext.encode());

    let blk = root.join("coap_block");
    let post = Exchange::new(Code::POST, "/est/sen", Some(286), Some(281), vec![0x31; 500], 2, 100, vec![7]).unwrap();
    write(&blk, "upload-download.bin", &recorded(6, post, 1500));
    let get = Exchange::new(Code::GET, "/est/crts", None, None, vec![], 6, 200, vec![8]).unwrap();
    write(&blk, "get-blocks.bin", &recorded(4, get, 1800));
    let big = Exchange::new(Code::POST, "/est/sen", Some(286), None, vec![0x32; 900], 5, 300, vec![9]).unwrap();
    write(&blk, "too-large.bin", &recorded(6, big, 10));
    // By hand: blocks 0 and 1 of 64 bytes, a gap (block 3), the last block 2
    // (a response of 300 bytes), then a POST for Block2 block 1, and an
    // upload left to expire.
    let mut s = vec![6u8];
    s.extend(built(1, 0, 1, 0, 0x18 | 2, 0));
    s.extend(built(1, 0, 2, 1, 0x18 | 2, 0));
    s.extend(built(1, 0, 3, 3, 0x18 | 2, 0));
    s.extend(built(1, 0, 4, 2, 0x10 | 2, 40));
    s.extend(300u16.to_be_bytes());
    s.extend(built(1, 0, 5, 1, 0x20 | 2, 0));
    s.extend(built(1, 0, 6, 0, 0x18 | 3, 0));
    s.extend(built(0x1f, 0, 7, 1, 0x18 | 3, 0));
    write(&blk, "by-hand.bin", &s);
    println!("seeds written to {}", root.display());
}
