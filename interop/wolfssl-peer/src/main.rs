//! `wolfssl-estcoaps`: one EST-coaps (RFC 9148) request over DTLS 1.3 (or 1.2) from a
//! wolfSSL client, to prove our server interoperates with a DTLS stack we did not write.
//!
//! Test-only. See README.md for the command line, output and exit codes.

#![forbid(unsafe_code)]

mod coap;
mod dtls;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use coap::{Block, Code, Method, MsgType, Request};
use dtls::{Client, ClientOptions, Group, Version};

/// CoAP's ACK_TIMEOUT (RFC 7252, 4.8); the timeout doubles on each retransmission.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// CoAP's MAX_RETRANSMIT (RFC 7252, 4.8).
const MAX_RETRANSMIT: u32 = 4;
/// How long to wait for a separate response after an empty ACK.
const SEPARATE_RESPONSE_WAIT: Duration = Duration::from_secs(60);
/// The most response bytes we collect over Block2 before giving up.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// Everything that can go wrong, by where it went wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum PeerError {
    /// The command line.
    Usage(String),
    /// Reading or writing a file, or a socket call outside DTLS.
    Io(String, std::io::Error),
    /// Building the wolfSSL context or session (what, wolfSSL's message).
    Setup(&'static str, String),
    /// The DTLS handshake failed.
    Handshake(String),
    /// DTLS failed after the handshake.
    Dtls(String),
    /// The CoAP exchange failed (no answer, reset, malformed, inconsistent blocks).
    Coap(String),
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::Usage(m) => write!(f, "usage: {m}\n{USAGE}"),
            PeerError::Io(what, e) => write!(f, "{what}: {e}"),
            PeerError::Setup(what, e) => write!(f, "wolfSSL setup ({what}): {e}"),
            PeerError::Handshake(e) => write!(f, "DTLS handshake failed: {e}"),
            PeerError::Dtls(e) => write!(f, "DTLS: {e}"),
            PeerError::Coap(e) => write!(f, "CoAP: {e}"),
        }
    }
}

impl std::error::Error for PeerError {}

impl PeerError {
    /// The process exit code for this error.
    fn exit_code(&self) -> u8 {
        match self {
            PeerError::Usage(_) => 2,
            PeerError::Handshake(_) => 3,
            PeerError::Io(..) | PeerError::Setup(..) | PeerError::Dtls(_) | PeerError::Coap(_) => 5,
        }
    }
}

const USAGE: &str = "\
wolfssl-estcoaps --server ADDR:PORT --ca CA --cert CERT --key KEY [--dtls12]
    (--get PATH --out FILE | --post PATH --content-format N --accept N --body FILE --out FILE)
    [--accept N] [--report JSON_FILE] [--server-name NAME] [--cipher-list LIST]
    [--groups P-256,X25519] [--mtu N] [--block-size 16..1024] [--handshake-timeout SECS]
CA, CERT and KEY: PEM or DER (detected by a '-----BEGIN ' line).
stdout: 'version=DTLSv1.3' and 'code=2.05'. Exit: 0 on 2.xx, 4 on another code,
3 on a handshake failure, 5 on other failures, 2 on a usage error.";

/// The parsed command line (no I/O yet).
#[derive(Debug)]
struct Args {
    server: SocketAddr,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    version: Version,
    method: Method,
    path: String,
    content_format: Option<u16>,
    accept: Option<u16>,
    body: Option<PathBuf>,
    out: PathBuf,
    report: Option<PathBuf>,
    server_name: Option<String>,
    cipher_list: Option<String>,
    groups: Vec<Group>,
    mtu: Option<u16>,
    block_size: Option<Block>,
    handshake_timeout: Duration,
}

fn parse_num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, PeerError> {
    v.parse().map_err(|_| PeerError::Usage(format!("{flag}: not a number: {v:?}")))
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Args, PeerError> {
    let mut it = argv.into_iter();
    let mut server = None;
    let (mut ca, mut cert, mut key, mut out, mut body, mut report) = (None, None, None, None, None, None);
    let mut version = Version::Dtls13;
    let mut get = None;
    let mut post = None;
    let (mut content_format, mut accept) = (None, None);
    let (mut server_name, mut cipher_list, mut mtu, mut block_size) = (None, None, None, None);
    let mut groups = Vec::new();
    let mut handshake_timeout = Duration::from_secs(30);
    while let Some(flag) = it.next() {
        if flag == "--dtls12" {
            version = Version::Dtls12;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(PeerError::Usage("help".into()));
        }
        let val = it.next().ok_or_else(|| PeerError::Usage(format!("{flag} needs a value")))?;
        match flag.as_str() {
            "--server" => {
                server = Some(
                    val.parse::<SocketAddr>()
                        .map_err(|_| PeerError::Usage(format!("--server: not ADDR:PORT: {val}")))?,
                )
            }
            "--ca" => ca = Some(PathBuf::from(val)),
            "--cert" => cert = Some(PathBuf::from(val)),
            "--key" => key = Some(PathBuf::from(val)),
            "--get" => get = Some(val),
            "--post" => post = Some(val),
            "--content-format" => content_format = Some(parse_num(&flag, &val)?),
            "--accept" => accept = Some(parse_num(&flag, &val)?),
            "--body" => body = Some(PathBuf::from(val)),
            "--out" => out = Some(PathBuf::from(val)),
            "--report" => report = Some(PathBuf::from(val)),
            "--server-name" => server_name = Some(val),
            "--cipher-list" => cipher_list = Some(val),
            "--mtu" => mtu = Some(parse_num(&flag, &val)?),
            "--block-size" => {
                let size: usize = parse_num(&flag, &val)?;
                let szx = (0u8..=6)
                    .find(|x| 16usize << x == size)
                    .ok_or_else(|| PeerError::Usage(format!("--block-size: 16, 32, ... or 1024, not {size}")))?;
                block_size = Some(Block { num: 0, more: false, szx });
            }
            "--handshake-timeout" => handshake_timeout = Duration::from_secs(parse_num(&flag, &val)?),
            "--groups" => {
                for g in val.split(',') {
                    groups.push(match g {
                        "P-256" | "secp256r1" => Group::P256,
                        "X25519" | "x25519" => Group::X25519,
                        other => return Err(PeerError::Usage(format!("--groups: unknown {other}"))),
                    });
                }
            }
            other => return Err(PeerError::Usage(format!("unknown flag {other}"))),
        }
    }
    let need = |v: Option<PathBuf>, f: &str| v.ok_or_else(|| PeerError::Usage(format!("{f} is required")));
    let (method, path) = match (get, post) {
        (Some(p), None) => {
            if body.is_some() || content_format.is_some() {
                return Err(PeerError::Usage("--get takes no --body or --content-format".into()));
            }
            (Method::Get, p)
        }
        (None, Some(p)) => {
            if body.is_none() || content_format.is_none() || accept.is_none() {
                return Err(PeerError::Usage("--post needs --body, --content-format and --accept".into()));
            }
            (Method::Post, p)
        }
        _ => return Err(PeerError::Usage("exactly one of --get or --post".into())),
    };
    Ok(Args {
        server: server.ok_or_else(|| PeerError::Usage("--server is required".into()))?,
        ca: need(ca, "--ca")?,
        cert: need(cert, "--cert")?,
        key: need(key, "--key")?,
        out: need(out, "--out")?,
        version,
        method,
        path,
        content_format,
        accept,
        body,
        report,
        server_name,
        cipher_list,
        groups,
        mtu,
        block_size,
        handshake_timeout,
    })
}

/// A source of unpredictable-enough bits for message IDs and tokens, from std's
/// randomly keyed hasher (this is a test tool, not a security boundary).
fn random_u64(salt: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(salt);
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

/// The outcome of the whole request (all blocks).
struct Outcome {
    code: Code,
    payload: Vec<u8>,
}

/// One confirmable request: send, retransmit on ACK_TIMEOUT (doubling) up to
/// MAX_RETRANSMIT times, and return the response (piggybacked, or separate after an
/// empty ACK).
fn exchange(client: &mut Client, req: &Request<'_>) -> Result<coap::Message, PeerError> {
    let bytes = coap::encode_request(req).map_err(|e| PeerError::Coap(e.to_string()))?;
    let mut timeout = ACK_TIMEOUT;
    let mut acked = false;
    let mut tries = 0;
    client.send(&bytes)?;
    let mut deadline = Instant::now() + timeout;
    loop {
        let Some(rec) = client.recv(deadline)? else {
            if acked {
                return Err(PeerError::Coap(format!(
                    "no separate response within {} s of the empty ACK",
                    SEPARATE_RESPONSE_WAIT.as_secs()
                )));
            }
            if tries == MAX_RETRANSMIT {
                return Err(PeerError::Coap(format!(
                    "no answer to MID {} after {MAX_RETRANSMIT} retransmissions",
                    req.message_id
                )));
            }
            tries += 1;
            timeout *= 2;
            eprintln!("wolfssl-estcoaps: retransmitting MID {} ({tries})", req.message_id);
            client.send(&bytes)?;
            deadline = Instant::now() + timeout;
            continue;
        };
        let msg = match coap::decode(&rec) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("wolfssl-estcoaps: ignoring a malformed message: {e}");
                continue;
            }
        };
        match msg.mtype {
            MsgType::Rst if msg.message_id == req.message_id => {
                return Err(PeerError::Coap(format!("server reset MID {}", req.message_id)))
            }
            MsgType::Ack if msg.message_id == req.message_id => {
                if msg.code == Code::EMPTY {
                    acked = true;
                    deadline = Instant::now() + SEPARATE_RESPONSE_WAIT;
                    continue;
                }
                if msg.token != req.token {
                    return Err(PeerError::Coap(format!(
                        "ACK for MID {} carries token {:02x?}, we sent {:02x?}",
                        req.message_id, msg.token, req.token
                    )));
                }
                return Ok(msg);
            }
            MsgType::Con | MsgType::Non if msg.token == req.token && msg.code != Code::EMPTY => {
                if msg.mtype == MsgType::Con {
                    client.send(&coap::encode_empty_ack(msg.message_id))?;
                }
                return Ok(msg);
            }
            _ => {
                eprintln!("wolfssl-estcoaps: ignoring {:?} {} MID {}", msg.mtype, msg.code, msg.message_id);
            }
        }
    }
}

/// The request, with Block2 (RFC 7959, 2.4) followed to the last block; with
/// `--block-size` the first request already carries Block2 NUM=0 with that size
/// ("early negotiation", RFC 7959, 2.4), for a path MTU too small for 1024. For a POST,
/// requests for blocks after the first carry no payload (RFC 7959, 3.3, and the
/// EST-coaps examples of RFC 9148, Appendix A): the server already has the request.
fn request(client: &mut Client, args: &Args, body: &[u8]) -> Result<Outcome, PeerError> {
    let path = coap::split_path(&args.path).map_err(|e| PeerError::Usage(e.to_string()))?;
    let mut mid = random_u64(1) as u16;
    let mut payload = Vec::new();
    let mut next: Option<Block> = args.block_size;
    let mut first = true;
    loop {
        let token = random_u64(u64::from(mid)).to_be_bytes();
        let req = Request {
            method: args.method,
            message_id: mid,
            token: &token,
            path: path.clone(),
            content_format: if first { args.content_format } else { None },
            accept: args.accept,
            block2: next,
            payload: if first { body } else { &[] },
        };
        let resp = exchange(client, &req)?;
        mid = mid.wrapping_add(1);
        first = false;
        if !resp.code.is_success() {
            return Ok(Outcome { code: resp.code, payload: resp.payload });
        }
        let Some(b) = resp.block2 else {
            if next.is_some_and(|n| n.num > 0) {
                return Err(PeerError::Coap("a block-wise transfer's later response has no Block2".into()));
            }
            return Ok(Outcome { code: resp.code, payload: resp.payload });
        };
        let want = next.map(|n| n.num).unwrap_or(0);
        if let Some(asked) = next.filter(|n| b.szx > n.szx) {
            return Err(PeerError::Coap(format!(
                "asked for blocks of {} bytes, got {} (RFC 7959, 2.4: the same or smaller)",
                asked.size(),
                b.size()
            )));
        }
        if b.num != want {
            return Err(PeerError::Coap(format!("asked for block {want}, got block {}", b.num)));
        }
        if b.more && resp.payload.len() != b.size() {
            return Err(PeerError::Coap(format!(
                "block {} of {} bytes, but SZX says {} and more follow",
                b.num,
                resp.payload.len(),
                b.size()
            )));
        }
        let offset = b.num as usize * b.size();
        if offset != payload.len() {
            return Err(PeerError::Coap(format!("block {} starts at byte {offset}, we have {}", b.num, payload.len())));
        }
        payload.extend_from_slice(&resp.payload);
        if payload.len() > MAX_RESPONSE {
            return Err(PeerError::Coap(format!("response over {MAX_RESPONSE} bytes")));
        }
        if !b.more {
            return Ok(Outcome { code: resp.code, payload });
        }
        next = Some(Block { num: b.num + 1, more: false, szx: b.szx });
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn run(args: &Args) -> Result<Code, PeerError> {
    let body = match &args.body {
        Some(p) => std::fs::read(p).map_err(|e| PeerError::Io(p.display().to_string(), e))?,
        None => Vec::new(),
    };
    if body.len() > coap::MAX_REQUEST_BODY {
        return Err(PeerError::Usage(format!(
            "--body of {} bytes: at most {} (no Block1)",
            body.len(),
            coap::MAX_REQUEST_BODY
        )));
    }
    let opts = ClientOptions {
        server: args.server,
        ca: &args.ca,
        cert: &args.cert,
        key: &args.key,
        version: args.version,
        server_name: args.server_name.clone(),
        cipher_list: args.cipher_list.clone(),
        groups: args.groups.clone(),
        mtu: args.mtu,
        handshake_timeout: args.handshake_timeout,
    };
    let mut client = Client::connect(&opts)?;
    let version = client.version_name();
    let cipher = client.cipher_name();
    let curve = client.curve_name();
    println!("version={version}");
    eprintln!("wolfssl-estcoaps: {version}, {cipher}, {curve}");
    let outcome = request(&mut client, args, &body);
    client.close();
    let outcome = outcome?;
    println!("code={}", outcome.code);
    std::fs::write(&args.out, &outcome.payload).map_err(|e| PeerError::Io(args.out.display().to_string(), e))?;
    if let Some(report) = &args.report {
        let c = client.counters();
        let json = format!(
            "{{\"version\":{},\"code\":{},\"cipher\":{},\"group\":{},\"bytes_sent\":{},\"bytes_received\":{},\"datagrams_sent\":{},\"datagrams_received\":{},\"payload_bytes\":{}}}\n",
            json_str(version),
            json_str(&outcome.code.to_string()),
            json_str(&cipher),
            json_str(&curve),
            c.bytes_sent,
            c.bytes_received,
            c.datagrams_sent,
            c.datagrams_received,
            outcome.payload.len()
        );
        std::fs::write(report, json).map_err(|e| PeerError::Io(report.display().to_string(), e))?;
    }
    Ok(outcome.code)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wolfssl-estcoaps: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    // wolfSSL's own trace on stderr: built with `--features debug` only.
    #[cfg(feature = "debug")]
    if std::env::var_os("WOLFSSL_DEBUG").is_some() {
        wolfssl::enable_debugging(true);
    }
    match run(&args) {
        Ok(code) if code.is_success() => ExitCode::SUCCESS,
        Ok(code) => {
            eprintln!("wolfssl-estcoaps: server answered {code}");
            ExitCode::from(4)
        }
        Err(e) => {
            eprintln!("wolfssl-estcoaps: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn get_and_post_parse() {
        let a = parse_args(argv("--server 127.0.0.1:5684 --ca a --cert b --key c --get /est/crts --out o")).unwrap();
        assert_eq!(a.method, Method::Get);
        assert_eq!(a.version, Version::Dtls13);
        let a = parse_args(argv(
            "--server 127.0.0.1:5684 --ca a --cert b --key c --dtls12 --post /est/sen \
             --content-format 286 --accept 281 --body x --out o --report r",
        ))
        .unwrap();
        assert_eq!(a.method, Method::Post);
        assert_eq!(a.version, Version::Dtls12);
        assert_eq!((a.content_format, a.accept), (Some(286), Some(281)));
        let a = parse_args(argv("--server 127.0.0.1:5684 --ca a --cert b --key c --get /x --out o --block-size 256"))
            .unwrap();
        assert_eq!(a.block_size, Some(Block { num: 0, more: false, szx: 4 }));
    }

    #[test]
    fn refusals() {
        for bad in [
            "--ca a --cert b --key c --get /x --out o",
            "--server 127.0.0.1:1 --ca a --cert b --key c --out o",
            "--server 127.0.0.1:1 --ca a --cert b --key c --get /x --post /y --out o",
            "--server 127.0.0.1:1 --ca a --cert b --key c --post /y --out o",
            "--server nohost --ca a --cert b --key c --get /x --out o",
            "--server 127.0.0.1:1 --ca a --cert b --key c --get /x --out o --groups P-521",
            "--server 127.0.0.1:1 --ca a --cert b --key c --get /x --out o --block-size 1000",
            "--server 127.0.0.1:1 --ca a --cert b --key c --get /x --out o --block-size 2048",
        ] {
            assert!(matches!(parse_args(argv(bad)), Err(PeerError::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\\n"), "\"a\\\"b\\\\\\u000a\"");
    }
}
