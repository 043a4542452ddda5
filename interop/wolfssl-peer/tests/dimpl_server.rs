//! wolfssl-estcoaps (wolfSSL) against a tiny EST-coaps responder on dimpl, the DTLS
//! stack our server uses: DTLS 1.3 and 1.2, mutual certificate authentication,
//! Block2, and the refusals (wrong CA, a 4.04).
//!
//! The responder parses CoAP with its own few lines below, not with the binary's
//! encoder, so that the two sides are checked against each other.
//!
//! `RUST_LOG=debug` shows dimpl's log (env_logger).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dimpl::crypto::Dtls13CipherSuite;
use dimpl::{Config, Dtls, DtlsCertificate, NamedGroup, ProtocolVersion};

const BIN: &str = env!("CARGO_BIN_EXE_wolfssl-estcoaps");

// ---------------------------------------------------------------- fixtures

/// A CA, a server and a client certificate (P-256), made with the openssl CLI in a
/// fresh directory.
struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn issue(dir: &Path, ca: &str, name: &str, cn: &str, eku: &str) {
    issue_with(dir, ca, name, cn, eku, &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
}

fn issue_with(dir: &Path, ca: &str, name: &str, cn: &str, eku: &str, newkey: &[&str]) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let pem = format!("{name}.pem");
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        format!("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={eku}\n"),
    )
    .unwrap();
    let subj = format!("/CN={cn}");
    let mut req = vec!["req", "-new"];
    req.extend_from_slice(newkey);
    req.extend_from_slice(&["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(dir, &req);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            "0x1234",
            "-days",
            "2",
            "-sha256",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
    );
    openssl(dir, &["x509", "-in", &pem, "-outform", "DER", "-out", &format!("{name}.der")]);
    openssl(dir, &["pkey", "-in", &key, "-outform", "DER", "-out", &format!("{name}.key.der")]);
}

fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(dir, &["x509", "-in", &format!("{name}.pem"), "-outform", "DER", "-out", &format!("{name}.der")]);
}

impl Pki {
    fn new(test: &str) -> Pki {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pki-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        make_ca(&dir, "ca");
        // The server's certificate does not name 127.0.0.1: the client checks the chain only.
        issue(&dir, "ca", "server", "estcoaps-test-server", "serverAuth");
        issue(&dir, "ca", "client", "device-0001", "clientAuth");
        // A second CA, which signed nothing the server shows.
        make_ca(&dir, "other");
        Pki { dir }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    fn read(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.path(f)).unwrap()
    }
}

// ---------------------------------------------------------------- a tiny CoAP responder

/// What the responder saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    code: u8,
    path: Vec<String>,
    block2: Option<u32>,
    content_format: Option<u32>,
    accept: Option<u32>,
    payload: Vec<u8>,
}

/// Parses a request; independent of the binary's encoder.
fn parse(m: &[u8]) -> (u8, u16, Vec<u8>, Seen) {
    assert!(m.len() >= 4, "short CoAP message");
    assert_eq!(m[0] >> 6, 1, "CoAP version");
    let mtype = (m[0] >> 4) & 3;
    let tkl = usize::from(m[0] & 15);
    let mid = u16::from_be_bytes([m[2], m[3]]);
    let token = m[4..4 + tkl].to_vec();
    let mut seen = Seen { code: m[1], path: vec![], block2: None, content_format: None, accept: None, payload: vec![] };
    let mut i = 4 + tkl;
    let mut num = 0u32;
    let ext = |n: u8, i: &mut usize| -> u32 {
        match n {
            13 => {
                *i += 1;
                u32::from(m[*i - 1]) + 13
            }
            14 => {
                *i += 2;
                u32::from(u16::from_be_bytes([m[*i - 2], m[*i - 1]])) + 269
            }
            15 => panic!("nibble 15 in an option"),
            n => u32::from(n),
        }
    };
    while i < m.len() {
        let b = m[i];
        i += 1;
        if b == 0xff {
            assert!(i < m.len(), "payload marker with no payload");
            seen.payload = m[i..].to_vec();
            break;
        }
        num += ext(b >> 4, &mut i);
        let len = ext(b & 15, &mut i) as usize;
        let val = &m[i..i + len];
        i += len;
        let uint = val.iter().fold(0u32, |a, x| (a << 8) | u32::from(*x));
        match num {
            11 => seen.path.push(String::from_utf8(val.to_vec()).unwrap()),
            12 => seen.content_format = Some(uint),
            17 => seen.accept = Some(uint),
            23 => seen.block2 = Some(uint),
            other => panic!("unexpected option {other}"),
        }
    }
    assert_eq!(mtype, 0, "requests are confirmable");
    (mtype, mid, token, seen)
}

fn opt(out: &mut Vec<u8>, last: &mut u16, num: u16, val: &[u8]) {
    let d = num - *last;
    assert!(d < 13 && val.len() < 13);
    out.push(((d as u8) << 4) | val.len() as u8);
    out.extend_from_slice(val);
    *last = num;
}

fn uint(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    b[b.iter().take_while(|x| **x == 0).count()..].to_vec()
}

/// A piggybacked ACK carrying `code` and one block of `body`: 1024 bytes, or the
/// size the request's Block2 asks for.
fn answer(mid: u16, token: &[u8], code: u8, body: &[u8], block: Option<u32>) -> Vec<u8> {
    let mut out = vec![0x60 | token.len() as u8, code];
    out.extend_from_slice(&mid.to_be_bytes());
    out.extend_from_slice(token);
    let mut last = 0;
    opt(&mut out, &mut last, 12, &uint(281));
    let szx = block.map(|b| b & 7).unwrap_or(6).min(6);
    let size = 16usize << szx;
    if body.len() > size || block.is_some() {
        let num = block.map(|b| b >> 4).unwrap_or(0);
        let start = num as usize * size;
        let end = (start + size).min(body.len());
        let more = end < body.len();
        opt(&mut out, &mut last, 23, &uint((num << 4) | (u32::from(more) << 3) | szx));
        out.push(0xff);
        out.extend_from_slice(&body[start..end]);
    } else if !body.is_empty() {
        out.push(0xff);
        out.extend_from_slice(body);
    }
    out
}

/// The "CA certificates" a GET returns: 2500 bytes, so three blocks of 1024.
fn crts_body() -> Vec<u8> {
    (0..2500u32).map(|i| (i * 7 + i / 256) as u8).collect()
}

/// What a POST returns: 1300 bytes made from the request body, so two blocks.
fn enroll_body(req: &[u8]) -> Vec<u8> {
    req.iter().rev().cycle().take(1300).copied().collect()
}

fn respond(mid: u16, token: &[u8], seen: &Seen, first_post_body: &mut Option<Vec<u8>>) -> Vec<u8> {
    let path: Vec<&str> = seen.path.iter().map(String::as_str).collect();
    match (seen.code, path.as_slice()) {
        (1, [".well-known", "est", "crts"]) => answer(mid, token, 0x45, &crts_body(), seen.block2),
        (2, [".well-known", "est", "sen"]) => {
            if seen.block2.map(|b| b >> 4).unwrap_or(0) == 0 {
                *first_post_body = Some(seen.payload.clone());
            }
            let body = enroll_body(first_post_body.as_deref().unwrap_or_default());
            answer(mid, token, 0x44, &body, seen.block2)
        }
        _ => answer(mid, token, 0x84, b"not here", None),
    }
}

// ---------------------------------------------------------------- the dimpl server

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    V13,
    V12,
    Auto,
}

/// What the server saw, for the test to check.
#[derive(Debug, Default)]
struct ServerLog {
    connected: bool,
    version: Option<ProtocolVersion>,
    peer_cert: Option<Vec<u8>>,
    requests: Vec<Seen>,
    close_notify: bool,
    errors: Vec<String>,
    /// Datagrams dropped on purpose.
    dropped: usize,
    /// The largest datagram dimpl produced.
    max_datagram: usize,
}

struct Server {
    addr: SocketAddr,
    thread: JoinHandle<ServerLog>,
}

/// How the dimpl server is set up, and which datagrams it loses on purpose.
#[derive(Debug, Clone)]
struct ServerOpts {
    mode: Mode,
    cookie: bool,
    mtu: Option<usize>,
    suites13: Option<Vec<Dtls13CipherSuite>>,
    groups: Option<Vec<NamedGroup>>,
    /// Received datagrams (0-based, in arrival order) dropped before dimpl sees them.
    drop_rx: Vec<usize>,
    /// Datagrams dimpl sends (0-based) that never reach the socket.
    drop_tx: Vec<usize>,
    /// CoAP requests (0-based) the responder does not answer, as if lost.
    ignore_requests: Vec<usize>,
}

impl ServerOpts {
    fn new(mode: Mode, cookie: bool) -> ServerOpts {
        ServerOpts {
            mode,
            cookie,
            mtu: None,
            suites13: None,
            groups: None,
            drop_rx: vec![],
            drop_tx: vec![],
            ignore_requests: vec![],
        }
    }
}

fn start_server(pki: &Pki, mode: Mode, cookie: bool) -> Server {
    start_server_with(pki, ServerOpts::new(mode, cookie))
}

fn start_server_with(pki: &Pki, opts: ServerOpts) -> Server {
    let _ = env_logger::builder().is_test(true).try_init();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let mut b = Config::builder().require_client_certificate(true).use_server_cookie(opts.cookie);
    if let Some(m) = opts.mtu {
        b = b.mtu(m);
    }
    if let Some(s) = &opts.suites13 {
        b = b.dtls13_cipher_suites(s);
    }
    if let Some(g) = &opts.groups {
        b = b.kx_groups(g);
    }
    let config = Arc::new(b.build().unwrap());
    let cert = DtlsCertificate { certificate: pki.read("server.der"), private_key: pki.read("server.key.der") };
    let now = Instant::now();
    let dtls = match opts.mode {
        Mode::V13 => Dtls::new_13(config, cert, now),
        Mode::V12 => Dtls::new_12(config, cert, now),
        Mode::Auto => Dtls::new_auto(config, cert, now),
    };
    let thread = std::thread::spawn(move || serve(socket, dtls, opts));
    Server { addr, thread }
}

fn serve(socket: UdpSocket, mut dtls: Dtls, opts: ServerOpts) -> ServerLog {
    let mut log = ServerLog::default();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(40);
    let mut peer: Option<SocketAddr> = None;
    let mut rx = vec![0u8; 4096];
    let mut out = vec![0u8; 4096];
    let mut next_timer;
    let (mut n_rx, mut n_tx) = (0usize, 0usize);
    let mut first_post_body = None;
    loop {
        let mut app = Vec::new();
        loop {
            match dtls.poll_output(&mut out) {
                dimpl::Output::Packet(p) => {
                    n_tx += 1;
                    log.max_datagram = log.max_datagram.max(p.len());
                    if opts.drop_tx.contains(&(n_tx - 1)) {
                        log.dropped += 1;
                    } else if let Some(to) = peer {
                        socket.send_to(p, to).unwrap();
                    }
                }
                dimpl::Output::Timeout(t) => {
                    next_timer = t;
                    break;
                }
                dimpl::Output::Connected => {
                    log.connected = true;
                    log.version = dtls.protocol_version();
                }
                dimpl::Output::PeerCert(c) => log.peer_cert = Some(c.to_vec()),
                dimpl::Output::ApplicationData(d) => app.push(d.to_vec()),
                dimpl::Output::CloseNotify => log.close_notify = true,
                dimpl::Output::BufferTooSmall { needed } => out.resize(needed, 0),
                _ => {}
            }
        }
        if !app.is_empty() {
            for m in app {
                let (_, mid, token, seen) = parse(&m);
                log.requests.push(seen.clone());
                if opts.ignore_requests.contains(&(log.requests.len() - 1)) {
                    continue;
                }
                let resp = respond(mid, &token, &seen, &mut first_post_body);
                if let Err(e) = dtls.send_application_data(&resp) {
                    log.errors.push(format!("send_application_data: {e}"));
                }
            }
            continue;
        }
        let now = Instant::now();
        // A client that never sent a datagram (it failed before its ClientHello) ends the test early.
        if log.close_notify || now >= deadline || (peer.is_none() && now >= started + Duration::from_secs(5)) {
            return log;
        }
        let wait =
            next_timer.saturating_duration_since(now).clamp(Duration::from_millis(1), Duration::from_millis(500));
        socket.set_read_timeout(Some(wait)).unwrap();
        match socket.recv_from(&mut rx) {
            Ok((n, from)) => {
                peer = Some(from);
                n_rx += 1;
                if opts.drop_rx.contains(&(n_rx - 1)) {
                    log.dropped += 1;
                    continue;
                }
                // dimpl's contract: refresh its clock before each packet. Without it, the
                // first ClientHello panics dimpl 0.9 (`server.random.unwrap()` in
                // send_server_hello: the random is set in handle_timeout).
                if let Err(e) = dtls.handle_timeout(Instant::now()) {
                    log.errors.push(format!("handle_timeout: {e}"));
                    return log;
                }
                if let Err(e) = dtls.handle_packet(&rx[..n]) {
                    log.errors.push(format!("handle_packet: {e}"));
                    // dimpl 0.9 reports the peer's fatal alert here but does not mark
                    // itself closed (is_closed() stays false, and it goes on resending
                    // its flight until the handshake timeout): the caller must drop it.
                    return log;
                }
            }
            Err(_) => {
                let now = Instant::now();
                if now >= next_timer {
                    if let Err(e) = dtls.handle_timeout(now) {
                        log.errors.push(format!("handle_timeout: {e}"));
                        return log;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- the client

struct Run {
    out: Output,
    payload: Vec<u8>,
    report: String,
    log: ServerLog,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
}

fn run(pki: &Pki, server: Server, name: &str, extra: &[&str]) -> Run {
    let out_file = pki.path(&format!("{name}.out"));
    let report = pki.path(&format!("{name}.json"));
    let mut cmd = Command::new(BIN);
    cmd.arg("--server")
        .arg(server.addr.to_string())
        // The CA as DER, our own certificate and key as PEM: both formats on every run.
        .arg("--ca")
        .arg(pki.path("ca.der"))
        .arg("--cert")
        .arg(pki.path("client.pem"))
        .arg("--key")
        .arg(pki.path("client.key"))
        .arg("--out")
        .arg(&out_file)
        .arg("--report")
        .arg(&report)
        .arg("--handshake-timeout")
        .arg("15")
        .args(extra);
    let out = cmd.output().expect("run wolfssl-estcoaps");
    eprintln!(
        "{name}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The client sent close_notify (or failed): the server stops on it, or by its deadline.
    let log = server.thread.join().expect("server thread");
    eprintln!("{name}: server saw {log:?}");
    Run {
        payload: std::fs::read(&out_file).unwrap_or_default(),
        report: std::fs::read_to_string(&report).unwrap_or_default(),
        out,
        log,
    }
}

fn check_mutual_auth(pki: &Pki, r: &Run, version: ProtocolVersion) {
    assert!(r.log.connected, "dimpl never completed the handshake");
    assert_eq!(r.log.version, Some(version));
    assert_eq!(
        r.log.peer_cert.as_deref(),
        Some(pki.read("client.der").as_slice()),
        "dimpl did not receive our client certificate"
    );
    assert!(r.log.errors.is_empty(), "{:?}", r.log.errors);
    assert!(r.log.close_notify, "no close_notify reached the server");
}

fn report_field<'a>(report: &'a str, key: &str) -> &'a str {
    let k = format!("\"{key}\":");
    let start = report.find(&k).unwrap_or_else(|| panic!("{key} in {report}")) + k.len();
    let rest = &report[start..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].trim_matches('"')
}

fn get_blockwise(mode: Mode, cookie: bool, dtls12: bool, expect: ProtocolVersion, name: &str) {
    let pki = Pki::new(name);
    let server = start_server(&pki, mode, cookie);
    let mut extra = vec!["--get", "/.well-known/est/crts", "--accept", "281"];
    if dtls12 {
        extra.push("--dtls12");
    }
    let r = run(&pki, server, name, &extra);
    assert!(r.out.status.success(), "exit {:?}", r.out.status);
    let vname = if expect == ProtocolVersion::DTLS1_3 { "DTLSv1.3" } else { "DTLSv1.2" };
    assert_eq!(r.stdout(), format!("version={vname}\ncode=2.05\n"));
    assert_eq!(r.payload, crts_body(), "the payload reassembled from Block2");
    check_mutual_auth(&pki, &r, expect);
    // Three requests: the first without Block2, then NUM 1 and 2 with SZX 6 (1024).
    let blocks: Vec<Option<u32>> = r.log.requests.iter().map(|s| s.block2).collect();
    assert_eq!(blocks, vec![None, Some(0x16), Some(0x26)]);
    for s in &r.log.requests {
        assert_eq!(s.path, [".well-known", "est", "crts"]);
        assert_eq!(s.accept, Some(281));
        assert!(s.payload.is_empty());
    }
    assert_eq!(report_field(&r.report, "version"), vname);
    assert_eq!(report_field(&r.report, "code"), "2.05");
    let sent: u64 = report_field(&r.report, "datagrams_sent").parse().unwrap();
    let received: u64 = report_field(&r.report, "datagrams_received").parse().unwrap();
    let bytes: u64 = report_field(&r.report, "bytes_received").parse().unwrap();
    // At least the three requests and their answers, on top of the handshake.
    assert!(sent >= 5 && received >= 5, "{}", r.report);
    assert!(bytes > 2500, "{}", r.report);
}

fn post_blockwise(mode: Mode, dtls12: bool, expect: ProtocolVersion, name: &str) {
    let pki = Pki::new(name);
    let body = b"a CSR would be here, in DER".to_vec();
    std::fs::write(pki.path("body.bin"), &body).unwrap();
    let server = start_server(&pki, mode, true);
    let body_path = pki.path("body.bin");
    let mut extra = vec![
        "--post",
        "/.well-known/est/sen",
        "--content-format",
        "286",
        "--accept",
        "281",
        "--body",
        body_path.to_str().unwrap(),
    ];
    if dtls12 {
        extra.push("--dtls12");
    }
    let r = run(&pki, server, name, &extra);
    assert!(r.out.status.success(), "exit {:?}", r.out.status);
    assert!(r.stdout().ends_with("code=2.04\n"), "{}", r.stdout());
    assert_eq!(r.payload, enroll_body(&body));
    check_mutual_auth(&pki, &r, expect);
    // The body goes once, with its Content-Format; the request for block 1 carries none.
    assert_eq!(r.log.requests.len(), 2);
    assert_eq!(r.log.requests[0].payload, body);
    assert_eq!(r.log.requests[0].content_format, Some(286));
    assert_eq!(r.log.requests[0].block2, None);
    assert!(r.log.requests[1].payload.is_empty());
    assert_eq!(r.log.requests[1].block2, Some(0x16));
}

// ---------------------------------------------------------------- the tests

#[test]
fn dtls13_get_blockwise_with_cookie() {
    get_blockwise(Mode::V13, true, false, ProtocolVersion::DTLS1_3, "13-get-cookie");
}

#[test]
fn dtls13_get_blockwise_without_cookie() {
    get_blockwise(Mode::V13, false, false, ProtocolVersion::DTLS1_3, "13-get-nocookie");
}

#[test]
fn dtls12_get_blockwise() {
    get_blockwise(Mode::V12, true, true, ProtocolVersion::DTLS1_2, "12-get");
}

#[test]
fn dtls13_post_blockwise() {
    post_blockwise(Mode::V13, false, ProtocolVersion::DTLS1_3, "13-post");
}

#[test]
fn dtls12_post_blockwise() {
    post_blockwise(Mode::V12, true, ProtocolVersion::DTLS1_2, "12-post");
}

#[test]
fn auto_server_negotiates_13_and_12() {
    get_blockwise(Mode::Auto, true, false, ProtocolVersion::DTLS1_3, "auto-13");
    get_blockwise(Mode::Auto, true, true, ProtocolVersion::DTLS1_2, "auto-12");
}

#[test]
fn a_server_chain_from_another_ca_fails_the_handshake() {
    let pki = Pki::new("wrong-ca");
    let server = start_server(&pki, Mode::V13, true);
    let out = Command::new(BIN)
        .arg("--server")
        .arg(server.addr.to_string())
        .arg("--ca")
        .arg(pki.path("other.pem"))
        .arg("--cert")
        .arg(pki.path("client.pem"))
        .arg("--key")
        .arg(pki.path("client.key"))
        .args(["--get", "/.well-known/est/crts", "--out"])
        .arg(pki.path("never.out"))
        .args(["--handshake-timeout", "5"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("handshake failed"), "{stderr}");
    assert!(out.stdout.is_empty());
    let log = server.thread.join().unwrap();
    eprintln!("server saw {log:?}");
    assert!(log.requests.is_empty());
    assert!(!log.connected);
    // wolfSSL told dimpl why, in an encrypted (epoch 2) alert: unknown_ca (48).
    assert_eq!(log.errors, ["handle_packet: security error: received fatal alert: description=48"]);
    assert!(!pki.path("never.out").exists());
}

#[test]
fn a_4_04_exits_non_zero_and_names_the_code() {
    let pki = Pki::new("404");
    let server = start_server(&pki, Mode::V13, true);
    let r = run(&pki, server, "404", &["--get", "/.well-known/est/nothing"]);
    assert_eq!(r.out.status.code(), Some(4));
    assert_eq!(r.stdout(), "version=DTLSv1.3\ncode=4.04\n");
    assert_eq!(r.payload, b"not here");
    assert_eq!(report_field(&r.report, "code"), "4.04");
}

// ---------------------------------------------------------------- the interop matrix

/// One GET of three blocks under a given server setup and client flags; returns
/// a one-line verdict with what was negotiated.
fn attempt(name: &str, opts: ServerOpts, client: &[&str]) -> (bool, String) {
    let pki = Pki::new(name);
    let v12 = opts.mode == Mode::V12 || client.contains(&"--dtls12");
    let server = start_server_with(&pki, opts);
    let mut extra = vec!["--get", "/.well-known/est/crts", "--accept", "281"];
    if client.iter().any(|a| a.contains("client-rsa")) {
        issue_with(&pki.dir, "ca", "client-rsa", "device-rsa", "clientAuth", &["-newkey", "rsa:2048"]);
    }
    let dir = pki.dir.to_str().unwrap().to_owned();
    let client: Vec<String> = client.iter().map(|a| a.replace("{dir}", &dir)).collect();
    extra.extend(client.iter().map(String::as_str));
    let started = Instant::now();
    let r = run(&pki, server, name, &extra);
    let ok = r.out.status.success()
        && r.payload == crts_body()
        && r.log.connected
        && r.log.errors.is_empty()
        && r.log.version == Some(if v12 { ProtocolVersion::DTLS1_2 } else { ProtocolVersion::DTLS1_3 });
    let verdict = format!(
        "{name}: {} in {:.1} s; client: {} {} {}; server: dropped {}, largest datagram {}, errors {:?}; stderr: {}",
        if ok { "OK" } else { "FAIL" },
        started.elapsed().as_secs_f64(),
        report_field_or(&r.report, "version"),
        report_field_or(&r.report, "cipher"),
        report_field_or(&r.report, "group"),
        r.log.dropped,
        r.log.max_datagram,
        r.log.errors,
        String::from_utf8_lossy(&r.out.stderr).lines().last().unwrap_or(""),
    );
    (ok, verdict)
}

fn report_field_or<'a>(report: &'a str, key: &str) -> &'a str {
    if report.contains(&format!("\"{key}\":")) {
        report_field(report, key)
    } else {
        "-"
    }
}

fn run_matrix(cases: Vec<(&str, ServerOpts, Vec<&str>)>) -> Vec<(bool, String)> {
    let mut table = Vec::new();
    for (name, opts, client) in cases {
        if let Ok(only) = std::env::var("MATRIX_ONLY") {
            if !name.contains(&only) {
                continue;
            }
        }
        table.push(attempt(name, opts, &client));
    }
    println!("\n==== matrix\n{}", table.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join("\n"));
    table
}

/// What interoperates: every cipher suite and group both sides have, the cookie
/// exchange on and off, a HelloRetryRequest for the group, small MTUs with Block2
/// early negotiation, and a lost datagram at each step of the handshake (each
/// direction) and of the CoAP exchange.
#[test]
fn interop_matrix() {
    let v13 = || ServerOpts::new(Mode::V13, true);
    let v12 = || ServerOpts::new(Mode::V12, true);
    let cases: Vec<(&str, ServerOpts, Vec<&str>)> = vec![
        ("m-aes128", v13(), vec!["--cipher-list", "TLS13-AES128-GCM-SHA256"]),
        ("m-aes256", v13(), vec!["--cipher-list", "TLS13-AES256-GCM-SHA384"]),
        ("m-chacha", v13(), vec!["--cipher-list", "TLS13-CHACHA20-POLY1305-SHA256"]),
        ("m-p256", v13(), vec!["--groups", "P-256"]),
        ("m-x25519", v13(), vec!["--groups", "X25519"]),
        // wolfSSL's first key share is X25519: dimpl asks for P-256 in a HelloRetryRequest.
        ("m-srv-p256", ServerOpts { groups: Some(vec![NamedGroup::Secp256r1]), ..v13() }, vec![]),
        (
            "m-srv-p256-nocookie",
            ServerOpts { groups: Some(vec![NamedGroup::Secp256r1]), cookie: false, ..v13() },
            vec![],
        ),
        ("m-srv-aes128", ServerOpts { suites13: Some(vec![Dtls13CipherSuite::AES_128_GCM_SHA256]), ..v13() }, vec![]),
        ("m-mtu512-block256", ServerOpts { mtu: Some(512), ..v13() }, vec!["--mtu", "512", "--block-size", "256"]),
        ("m-srvmtu300", ServerOpts { mtu: Some(300), ..v13() }, vec!["--block-size", "128"]),
        ("m-drop-rx0", ServerOpts { drop_rx: vec![0], ..v13() }, vec![]),
        ("m-drop-rx1", ServerOpts { drop_rx: vec![1], ..v13() }, vec![]),
        ("m-drop-rx2", ServerOpts { drop_rx: vec![2], ..v13() }, vec![]),
        ("m-drop-rx3", ServerOpts { drop_rx: vec![3], ..v13() }, vec![]),
        ("m-drop-tx0", ServerOpts { drop_tx: vec![0], ..v13() }, vec![]),
        ("m-drop-tx1", ServerOpts { drop_tx: vec![1], ..v13() }, vec![]),
        ("m-drop-tx2", ServerOpts { drop_tx: vec![2], ..v13() }, vec![]),
        ("m-drop-tx3", ServerOpts { drop_tx: vec![3], ..v13() }, vec![]),
        ("m-coap-lost", ServerOpts { ignore_requests: vec![1], ..v13() }, vec![]),
        ("m12-aes128", v12(), vec!["--dtls12", "--cipher-list", "ECDHE-ECDSA-AES128-GCM-SHA256"]),
        ("m12-aes256", v12(), vec!["--dtls12", "--cipher-list", "ECDHE-ECDSA-AES256-GCM-SHA384"]),
        ("m12-chacha", v12(), vec!["--dtls12", "--cipher-list", "ECDHE-ECDSA-CHACHA20-POLY1305"]),
        ("m12-p256", v12(), vec!["--dtls12", "--groups", "P-256"]),
        (
            "m12-mtu512-block256",
            ServerOpts { mtu: Some(512), ..v12() },
            vec!["--dtls12", "--mtu", "512", "--block-size", "256"],
        ),
        ("m12-drop-rx1", ServerOpts { drop_rx: vec![1], ..v12() }, vec!["--dtls12"]),
        ("m12-drop-rx2", ServerOpts { drop_rx: vec![2], ..v12() }, vec!["--dtls12"]),
        ("m12-drop-tx1", ServerOpts { drop_tx: vec![1], ..v12() }, vec!["--dtls12"]),
        ("m12-drop-tx2", ServerOpts { drop_tx: vec![2], ..v12() }, vec!["--dtls12"]),
    ];
    let failed: Vec<String> = run_matrix(cases).into_iter().filter(|(ok, _)| !ok).map(|(_, v)| v).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

/// What does not, each for a known reason (slow: each waits for a timeout).
///
/// - a wolfSSL MTU of 512 with 1024-byte blocks: the 1024-byte block makes a 1064-byte
///   (1.3) or 1079-byte (1.2) record that dimpl sends whole (application records are
///   not fragmented; dimpl's own MTU does not split them) and a wolfSSL limited to 512
///   never delivers; `--block-size 256` fixes it (see the matrix above);
/// - a wolfSSL MTU of 400 or 300: BUFFER_E (-132) in the handshake, in wolfSSL itself:
///   wolfssl-sys 5.3.0 patches DTLS 1.3 handshake fragmentation to leave 500 bytes of
///   headroom (patches/CVPN-1945-...), so a message that must be fragmented below an
///   MTU of about 540 cannot be (the client Certificate at 400, the ClientHello with
///   dimpl's cookie at 300);
/// - TLS13-AES128-CCM-8-SHA256: not built into this wolfSSL (wolfssl-sys feature
///   `aesccm` off), and not in dimpl 0.9 either (GCM and ChaCha20 only);
/// - an RSA client certificate: dimpl 0.9 does ECDSA only. In 1.3 its
///   CertificateRequest offers only ECDSA schemes, wolfSSL cannot sign and sends
///   illegal_parameter (47); in 1.2 dimpl takes the certificate and then fails
///   ("unsupported signature algorithm: RSA").
#[test]
#[ignore = "slow: each case waits for a timeout"]
fn matrix_known_failures() {
    let v13 = || ServerOpts::new(Mode::V13, true);
    let v12 = || ServerOpts::new(Mode::V12, true);
    let cases: Vec<(&str, ServerOpts, Vec<&str>)> = vec![
        ("f-mtu512", ServerOpts { mtu: Some(512), ..v13() }, vec!["--mtu", "512"]),
        ("f12-mtu512", ServerOpts { mtu: Some(512), ..v12() }, vec!["--dtls12", "--mtu", "512"]),
        ("f-mtu400", ServerOpts { mtu: Some(400), ..v13() }, vec!["--mtu", "400", "--block-size", "256"]),
        ("f-mtu300", ServerOpts { mtu: Some(300), ..v13() }, vec!["--mtu", "300", "--block-size", "128"]),
        ("f-ccm8", v13(), vec!["--cipher-list", "TLS13-AES128-CCM-8-SHA256"]),
        ("f-rsa-client", v13(), vec!["--cert", "{dir}/client-rsa.pem", "--key", "{dir}/client-rsa.key"]),
        ("f12-rsa-client", v12(), vec!["--dtls12", "--cert", "{dir}/client-rsa.pem", "--key", "{dir}/client-rsa.key"]),
    ];
    let passed: Vec<String> = run_matrix(cases).into_iter().filter(|(ok, _)| *ok).map(|(_, v)| v).collect();
    assert!(passed.is_empty(), "now interoperating: {passed:#?}");
}
