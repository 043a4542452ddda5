//! Fuzzing hooks, not part of the API: the `coap_block` fuzz target and the
//! seed generator (`examples/coap_fuzz_seeds.rs`) share the script format here.
//!
//! A block script drives one [`Endpoint`] with [`script_limits`]: byte 0
//! picks the preferred SZX (mod 7), then each step is a control byte `c`:
//! the clock moves `c & 0x0f` seconds, `c & 0x10` calls
//! [`Endpoint::expire`] first, and `c >> 5` says what follows:
//!
//! - 0–3, a raw datagram: a 2-byte big-endian length, then that many bytes;
//! - 4–7, a built request, 5 bytes `[a, id, num, flags, plen]`: NON if
//!   `a & 1` else CON, GET if `a & 2` else POST, path `/est/crts` if `a & 4`
//!   else `/est/sen`; message id and token `id`; `flags & 7` the SZX (7 is
//!   sent as is, to be refused), `flags & 8` M, `flags & 0x10` a Block1
//!   option, `flags & 0x20` a Block2 option, `flags & 0x40` Size1 =
//!   `plen * 16`; a payload of a whole block when Block1 has M, else of
//!   `plen` bytes.
//!
//! When the endpoint hands out a request, the next 2 bytes (big-endian) are
//! the size of the response given to [`Endpoint::respond`].

use std::time::{Duration, Instant};

use crate::block;
use crate::msg::{Code, Message, Type};
use crate::option;
use crate::server::{Endpoint, Limits, Received, Response};

/// The small limits of a script's endpoint.
pub fn script_limits(preferred_szx: u8) -> Limits {
    Limits {
        max_body: 600,
        preferred_szx: preferred_szx % 7,
        dedup: 3,
        max_cached_responses: 2,
        max_response: 2000,
        upload_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(10),
    }
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> u16 {
        let hi = self.byte().unwrap_or(0);
        let lo = self.byte().unwrap_or(0);
        u16::from_be_bytes([hi, lo])
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        a.to_vec()
    }
}

/// Runs a block script; panics if the endpoint ever holds more than
/// [`Limits::bound`]. Returns the most bytes it held.
pub fn block_script(data: &[u8]) -> usize {
    let mut input = Input(data);
    let Some(first) = input.byte() else {
        return 0;
    };
    let limits = script_limits(first);
    let bound = limits.bound();
    let mut ep = Endpoint::new(limits);
    let mut now = Instant::now();
    let mut most = 0;
    while let Some(c) = input.byte() {
        now += Duration::from_secs(u64::from(c & 0x0f));
        if c & 0x10 != 0 {
            ep.expire(now);
        }
        let datagram = if c >> 5 < 4 {
            let len = input.u16();
            input.take(usize::from(len))
        } else {
            let [a, id, num, flags, plen] = [(); 5].map(|()| input.byte().unwrap_or(0));
            let ty = if a & 1 != 0 { Type::Non } else { Type::Con };
            let code = if a & 2 != 0 { Code::GET } else { Code::POST };
            let mut m = Message::new(ty, code, u16::from(id));
            m.token = vec![id];
            m.add_option(option::URI_PATH, b"est".to_vec());
            let op: &[u8] = if a & 4 != 0 { b"crts" } else { b"sen" };
            m.add_option(option::URI_PATH, op.to_vec());
            let szx = flags & 7;
            let more = flags & 8 != 0;
            let value = (u32::from(num) << 4) | (u32::from(more) << 3) | u32::from(szx);
            if flags & 0x10 != 0 {
                m.add_uint_option(option::BLOCK1, value);
            }
            if flags & 0x20 != 0 {
                m.add_uint_option(option::BLOCK2, value);
            }
            if flags & 0x40 != 0 {
                m.add_uint_option(option::SIZE1, u32::from(plen) * 16);
            }
            let len = if flags & 0x10 != 0 && more { block::size_of(szx) } else { usize::from(plen) };
            m.payload = vec![id; len];
            m.encode()
        };
        if let Received::Request(r) = ep.receive(&datagram, now) {
            let held = ep.bytes_held();
            assert!(held <= bound, "holds {held} bytes, bound {bound}");
            most = most.max(held);
            let size = usize::from(input.u16());
            let fill = r.payload.len() as u8;
            ep.respond(&r, Response::with(Code::CONTENT, 0, vec![fill; size]));
        }
        let held = ep.bytes_held();
        assert!(held <= bound, "holds {held} bytes, bound {bound}");
        most = most.max(held);
    }
    most
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::PathBuf;

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds").join(target);
        let mut out: Vec<Vec<u8>> =
            std::fs::read_dir(&dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
        out.sort();
        out
    }

    /// The committed seeds (made by `examples/coap_fuzz_seeds.rs`) still decode
    /// and still drive an endpoint into holding something.
    #[test]
    fn committed_seeds() {
        let messages = seeds("coap_message");
        assert!(messages.len() >= 5);
        for m in &messages {
            assert_eq!(&Message::decode(m).unwrap().encode(), m);
        }
        let scripts = seeds("coap_block");
        assert!(scripts.len() >= 4);
        for s in &scripts {
            assert!(block_script(s) > 0);
        }
    }

    #[test]
    fn random_scripts_stay_bounded() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..300 {
            let data: Vec<u8> = (0..2000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Mostly built requests, so that blocks get somewhere.
                    let b = (x >> 24) as u8;
                    if round % 2 == 0 {
                        b | 0x80
                    } else {
                        b
                    }
                })
                .collect();
            block_script(&data);
        }
    }
}
