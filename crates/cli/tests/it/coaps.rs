//! EST over secure CoAP (RFC 9148) on DTLS 1.3: the same authority, policy,
//! store and audit as HTTPS, and what UDP adds (cookies, per-peer state,
//! block-wise transfer) bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotpki_agent::coaps_client::{self, CoapsClient};
use iotpki_agent::est_client::ClientIdentity;
use iotpki_coap::msg::Code;
use iotpki_core::keys::{KeyType, Signer as _, SoftKey};
use iotpki_core::name::{DeviceSerial, NameBuilder};
use iotpki_server::coaps::CoapsOptions;
use iotpki_server::{Limits, Running};
use tokio::net::UdpSocket;

use crate::util::Ca;

async fn coaps(ca: &Ca, options: CoapsOptions) -> Running {
    let limits = Limits::from(&ca.authority.config().limits);
    Running::start_coaps(ca.authority.clone(), "127.0.0.1:0".parse().unwrap(), limits, options).await.unwrap()
}

async fn coaps_with(ca: &Ca, limits: Limits) -> Running {
    Running::start_coaps(ca.authority.clone(), "127.0.0.1:0".parse().unwrap(), limits, CoapsOptions::default())
        .await
        .unwrap()
}

/// A device's state directory and its first enrollment's options, over coaps to `udp`.
fn coaps_enrollment(ca: &Ca, udp: &Running, serial: &str) -> (std::path::PathBuf, iotpki_agent::EnrollOptions) {
    let state = ca.tmp.path().join("dev");
    let token = ca.token(serial);
    let mut opts = ca.enroll_opts(&state, serial, &token);
    opts.server = udp.coaps_url();
    (state, opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_enrolls_with_a_token_and_renews_over_coaps_as_over_https() {
    let ca = Ca::start().await;
    let udp = coaps(&ca, CoapsOptions::default()).await;
    let (state, opts) = coaps_enrollment(&ca, &udp, "COAP-1");
    let before = ca.cert_count();
    let id = iotpki_agent::enroll(&opts).await.expect("enrollment over coaps");
    assert_eq!(ca.cert_count(), before + 1);
    assert_eq!(ca.last_audit().event.action, "enroll");
    assert_eq!(ca.last_audit().event.actor, "device:COAP-1");
    assert!(id.server.starts_with("coaps://"));
    // The token is spent: a second enrollment with it is refused, as over HTTPS.
    let again = iotpki_agent::enroll(&iotpki_agent::EnrollOptions {
        state_dir: ca.tmp.path().join("dev-again"),
        ..opts.clone()
    })
    .await
    .expect_err("a spent token");
    assert!(again.to_string().contains("403") || again.to_string().contains("401"), "{again}");

    let renewed = iotpki_agent::renew(&state, None, None).await.expect("renewal over coaps");
    assert_eq!(renewed.renewals, 1);
    assert_eq!(ca.last_audit().event.action, "reenroll");
    assert_eq!(ca.cert_count(), before + 2);
    // The renewed identity renews over HTTPS too: one authority, two transports.
    iotpki_agent::renew(&state, Some(&ca.url), None).await.expect("the same device over HTTPS");
}

/// A device key and the self-signed certificate a first enrollment shows in the handshake.
fn device_key(serial: &str) -> (Arc<SoftKey>, Vec<u8>) {
    let key = Arc::new(SoftKey::generate(KeyType::EcdsaP256).unwrap());
    let cert = coaps_client::self_signed(key.as_ref(), &DeviceSerial::parse(serial).unwrap()).unwrap();
    (key, cert)
}

fn csr_with_token(key: &SoftKey, serial: &str, challenge: &str) -> Vec<u8> {
    let s = DeviceSerial::parse(serial).unwrap();
    let subject = NameBuilder::default().common_name(s.as_str()).unwrap().serial_number(&s).unwrap().build();
    iotpki_core::csr::build_with_challenge(&subject, key, vec![], Some(challenge)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_coaps_is_spent_only_by_the_key_of_the_handshake() {
    let ca = Ca::start().await;
    let udp = coaps(&ca, CoapsOptions::default()).await;
    let token = ca.token("COAP-2");
    let (k1, cert1) = device_key("COAP-2");
    let (k2, _) = device_key("COAP-2");
    let client = CoapsClient::new(
        &udp.coaps_url(),
        None,
        &[ca.authority.root_der().to_vec()],
        &[],
        ClientIdentity { chain: vec![cert1], key: k1.clone() },
    )
    .unwrap();
    let before = (ca.cert_count(), ca.audit_len());
    // Someone who saw the token (not its key's holder) asks for a certificate of another key.
    let e = client
        .simple_enroll(&csr_with_token(&k2, "COAP-2", &format!("COAP-2:{token}")))
        .await
        .expect_err("another key than the handshake's");
    assert!(e.to_string().contains("4.03") && e.to_string().contains("key"), "{e}");
    assert_eq!(ca.cert_count(), before.0, "nothing issued");
    assert_eq!(ca.last_audit().event.action, "refuse.enroll");
    // A wrong token: 4.01 or 4.03, nothing issued, and no signature was needed to say so.
    let e =
        client.simple_enroll(&csr_with_token(&k1, "COAP-2", "COAP-2:not-the-token")).await.expect_err("a wrong token");
    assert!(e.to_string().contains("4.0"), "{e}");
    // No token at all and a self-signed certificate: not a birth certificate either.
    let e = client.simple_enroll(&csr_with_token(&k1, "COAP-2", "no-colon")).await.expect_err("no serial");
    assert!(e.to_string().contains("SERIAL:TOKEN"), "{e}");
    assert_eq!(ca.cert_count(), before.0);
    // The token still works for the key that holds it.
    let cert = client.simple_enroll(&csr_with_token(&k1, "COAP-2", &format!("COAP-2:{token}"))).await.unwrap();
    let info = iotpki_core::profile::cert_info(&cert).unwrap();
    assert_eq!(info.spki_sha256, iotpki_core::keys::spki_fingerprint(k1.public_key_der()));
}

/// The first flight of a DTLS client (dimpl), as bytes: a ClientHello.
fn client_hello(dtls12: bool) -> Vec<u8> {
    let (key, cert) = device_key("HELLO-1");
    let der = key.to_pkcs8().unwrap();
    let cfg = Arc::new(dimpl::Config::default());
    let c = dimpl::DtlsCertificate { certificate: cert, private_key: der.to_vec() };
    let mut d =
        if dtls12 { dimpl::Dtls::new_12(cfg, c, Instant::now()) } else { dimpl::Dtls::new_13(cfg, c, Instant::now()) };
    d.set_active(true);
    d.handle_timeout(Instant::now()).unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        match d.poll_output(&mut buf) {
            dimpl::Output::Packet(p) => return p.to_vec(),
            dimpl::Output::Timeout(_) => panic!("no ClientHello"),
            _ => {}
        }
    }
}

async fn answers(sock: &UdpSocket, wait: Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout(wait, sock.recv(&mut buf)).await {
        out.push(buf[..n].to_vec());
    }
    out
}

/// DTLS 1.2 for stacks without 1.3: only when the server allows it, and then
/// with the same admission (a renewal with our client offering 1.2 only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtls_1_2_is_served_only_when_configured() {
    let ca = Ca::start().await;
    let state = ca.enrolled_device("D12-1").await;
    let id = iotpki_agent::state::load(&state).unwrap();
    let key: Arc<dyn iotpki_core::keys::Signer> = Arc::new(iotpki_agent::state::load_key(&state, &id).unwrap());
    let cert = iotpki_core::pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
    let chain = iotpki_core::pem::decode_all("CERTIFICATE", &id.chain_pem).unwrap();
    for (allowed, offered) in [(false, coaps_client::Versions::Dtls12), (true, coaps_client::Versions::Dtls12)] {
        let udp = coaps(&ca, CoapsOptions { dtls12: allowed, ..Default::default() }).await;
        let client = CoapsClient::new(
            &udp.coaps_url(),
            None,
            &[ca.authority.root_der().to_vec()],
            &chain,
            ClientIdentity { chain: vec![cert.clone()], key: key.clone() },
        )
        .unwrap()
        .with_versions(offered);
        let r = tokio::time::timeout(Duration::from_secs(8), client.cacerts()).await;
        if allowed {
            r.expect("answered").expect("DTLS 1.2 when allowed");
            assert_eq!(client.traffic().version, Some("DTLSv1.2"));
        } else {
            assert!(!matches!(r, Ok(Ok(_))), "DTLS 1.2 is refused unless configured");
        }
        udp.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_client_hello_gets_no_more_bytes_than_it_sent() {
    let ca = Ca::start().await;
    for dtls12 in [false, true] {
        let udp = coaps(&ca, CoapsOptions { dtls12, ..Default::default() }).await;
        let hello = client_hello(dtls12);
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(udp.addr).await.unwrap();
        sock.send(&hello).await.unwrap();
        // Wait out a retransmission too: a spoofed source gets it as well.
        let got = answers(&sock, Duration::from_millis(2500)).await;
        assert!(!got.is_empty(), "the cookie exchange answers (DTLS 1.{})", if dtls12 { 2 } else { 3 });
        let first = &got[0];
        assert!(
            first.len() <= hello.len(),
            "DTLS 1.{}: {} bytes answered to a ClientHello of {}",
            if dtls12 { 2 } else { 3 },
            first.len(),
            hello.len()
        );
        // A handshake record: HelloRetryRequest (a ServerHello, type 2) in 1.3, HelloVerifyRequest (3) in 1.2.
        assert_eq!(first[0], 22, "a handshake record");
        assert_eq!(first[13], if dtls12 { 3 } else { 2 });
        let total: usize = got.iter().map(Vec::len).sum();
        assert!(total <= hello.len() * got.len(), "{total} bytes in {} datagrams", got.len());
        udp.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_udp_is_dropped_unanswered_and_stores_nothing() {
    let ca = Ca::start().await;
    let udp = coaps(&ca, CoapsOptions::default()).await;
    let before = (ca.cert_count(), ca.audit_len());
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(udp.addr).await.unwrap();
    let hello = client_hello(false);
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        vec![22, 0xfe, 0xfd],                                           // a truncated record header
        hello[..hello.len() / 2].to_vec(),                              // a truncated ClientHello
        vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4], // application data, epoch 1, no session
        vec![0x40, 0x01, 0x12, 0x34, 0xff],                             // plain CoAP, no DTLS
        vec![0u8; 3000],                                                // over the datagram limit
    ];
    let mut wrong_epoch = hello.clone();
    wrong_epoch[3] = 0;
    wrong_epoch[4] = 7; // a ClientHello can only be epoch 0
    junk.push(wrong_epoch);
    for j in &junk {
        sock.send(j).await.unwrap();
    }
    let got = answers(&sock, Duration::from_millis(1500)).await;
    assert!(got.is_empty(), "junk answered: {:?}", got.iter().map(Vec::len).collect::<Vec<_>>());
    assert_eq!((ca.cert_count(), ca.audit_len()), before);
    // The listener still serves.
    let st = ca.tmp.path().join("after-junk");
    let mut opts = ca.enroll_opts(&st, "COAP-3", &ca.token("COAP-3"));
    opts.server = udp.coaps_url();
    iotpki_agent::enroll(&opts).await.expect("serves after junk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_dtls_sessions_than_its_share() {
    let ca = Ca::start().await;
    let limits = Limits { udp_sessions_per_address: 4, ..Limits::from(&ca.authority.config().limits) };
    let udp = coaps_with(&ca, limits).await;
    let hello = client_hello(false);
    let mut socks = Vec::new();
    for _ in 0..8 {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.connect(udp.addr).await.unwrap();
        s.send(&hello).await.unwrap();
        socks.push(s);
    }
    let mut answered = 0;
    for s in &socks {
        if !answers(s, Duration::from_millis(300)).await.is_empty() {
            answered += 1;
        }
    }
    assert_eq!(answered, 4, "sessions past the address's share get no answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_datagram_rate_of_an_address_is_bounded() {
    let ca = Ca::start().await;
    let limits =
        Limits { udp_datagram_rate: 1.0, udp_datagram_burst: 3, ..Limits::from(&ca.authority.config().limits) };
    let udp = coaps_with(&ca, limits).await;
    let hello = client_hello(false);
    let mut answered = 0;
    for _ in 0..10 {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.connect(udp.addr).await.unwrap();
        s.send(&hello).await.unwrap();
        if !answers(&s, Duration::from_millis(200)).await.is_empty() {
            answered += 1;
        }
    }
    assert!((3..=5).contains(&answered), "{answered} of 10 answered with a burst of 3 at 1/s");
}

/// A DTLS session of our own client, to send CoAP the agent never would.
async fn raw_session(ca: &Ca, udp: &Running) -> (CoapsClient, SocketAddr) {
    let (k, c) = device_key("RAW-1");
    let client = CoapsClient::new(
        &udp.coaps_url(),
        None,
        &[ca.authority.root_der().to_vec()],
        &[],
        ClientIdentity { chain: vec![c], key: k },
    )
    .unwrap();
    (client, udp.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn est_coaps_resources_answer_with_their_content_formats_and_errors_with_coap_codes() {
    let ca = Ca::start().await;
    let udp = coaps(&ca, CoapsOptions::default()).await;
    let (client, _) = raw_session(&ca, &udp).await;
    // /crts: PKCS#7 certs-only (281), the same certificates as /cacerts over HTTPS, binary.
    let certs = client.cacerts().await.unwrap();
    assert!(certs.iter().any(|c| c == ca.authority.root_der()));
    let r = client.raw(Code::GET, "/.well-known/core?rt=ace.est*", None, None, vec![]).await.unwrap();
    assert_eq!(r.code, Code::CONTENT);
    assert_eq!(r.content_format, Some(iotpki_coap::est::CT_LINK_FORMAT));
    let links = String::from_utf8(r.payload).unwrap();
    assert!(links.contains("ace.est.sen") && links.contains("ace.est.crts"), "{links}");
    let r = client.raw(Code::GET, "/.well-known/est/att", None, None, vec![]).await.unwrap();
    assert_eq!((r.code, r.content_format), (Code::CONTENT, Some(iotpki_coap::est::CT_CSRATTRS)));
    for (method, path, cf, accept, want) in [
        (Code::GET, "/.well-known/est/nope", None, None, "4.04"),
        (Code::GET, "/.well-known/est/sen", None, None, "4.05"),
        (Code::POST, "/.well-known/est/sen", Some(42u16), None, "4.15"),
        (Code::GET, "/.well-known/est/crts", None, Some(50u16), "4.06"),
        // A bare certificate (287) only when the CA certificates are one: here root and issuing CA.
        (Code::GET, "/.well-known/est/crts", None, Some(287u16), "4.06"),
        (Code::POST, "/.well-known/est/skg", Some(286), None, "4.04"),
        (Code::POST, "/.well-known/est/sen", Some(286), None, "4.0"), // an empty body is no request
        (Code::POST, "/.well-known/est/sren", Some(286), None, "4.0"), // a self-signed certificate renews nothing
        (Code::GET, "/.well-known/est/nolabel/crts", None, None, "4.04"),
    ] {
        let r = client.raw(method, path, cf, accept, vec![]).await.unwrap();
        assert!(
            r.code.to_string().starts_with(want),
            "{method} {path}: {} {:?}",
            r.code,
            String::from_utf8_lossy(&r.payload)
        );
        assert_eq!(r.content_format, None, "a diagnostic payload has no content format");
    }
    // A request over the enrollment limit is refused after 16 KiB, with Size1 (block-wise).
    let r = client.raw(Code::POST, "/.well-known/est/sen", Some(286), None, vec![0x30; 20_000]).await.unwrap();
    assert_eq!(r.code, Code::REQUEST_ENTITY_TOO_LARGE);
}

/// An enrolled device's files for a peer we did not write: its certificate
/// (`dev.pem`), the CAs to trust (`cas.pem`: the root and the issuing CA that
/// signed the server certificate, as DTLS sends one certificate) and its key.
async fn peer_files(ca: &Ca, serial: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let state = ca.enrolled_device(serial).await;
    let id = iotpki_agent::state::load(&state).unwrap();
    let dir = ca.tmp.path();
    std::fs::write(dir.join("dev.pem"), &id.cert_pem).unwrap();
    std::fs::write(dir.join("cas.pem"), format!("{}{}", ca.root_pem, id.chain_pem)).unwrap();
    (dir.join("dev.pem"), dir.join("cas.pem"), state.join(&id.key_file))
}

/// A new P-256 key made by openssl in `dir/NAME.pem` and its request for `serial` in `dir/NAME.der`.
fn openssl_request(dir: &std::path::Path, name: &str, serial: &str) {
    let (key, csr) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.der")));
    crate::util::openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key.to_str().unwrap()]);
    let subj = format!("/CN={serial}/serialNumber={serial}");
    let args = [
        "req",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        &subj,
        "-outform",
        "DER",
        "-out",
        csr.to_str().unwrap(),
    ];
    crate::util::openssl(&args);
}

/// libcoap's `coap-client-openssl` (Debian's libcoap3-bin: OpenSSL, DTLS 1.2
/// with certificates), a CoAP and DTLS stack we did not write: GET /crts and
/// POST /sren with a certificate we issued, and a certificate comes back for
/// its new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_gets_crts_and_renews_over_dtls_1_2() {
    let ca = Ca::start().await;
    let udp = coaps(&ca, CoapsOptions { dtls12: true, ..Default::default() }).await;
    let (dev, cas, key) = peer_files(&ca, "LIBCOAP-1").await;
    let t = ca.tmp.path();
    let url = udp.coaps_url();
    let client = |args: Vec<String>| {
        let out = std::process::Command::new("coap-client-openssl").args(&args).output().expect("coap-client-openssl");
        assert!(out.status.success(), "coap-client-openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let dir = t.to_path_buf();
    let common = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["-c", dev.to_str().unwrap(), "-j", key.to_str().unwrap(), "-R", cas.to_str().unwrap(), "-B", "20"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let crts = format!("{url}/.well-known/est/crts");
    let args = common(&["-m", "get", "-A", "281", "-o", dir.join("crts.p7").to_str().unwrap(), &crts]);
    tokio::task::spawn_blocking(move || client(args)).await.unwrap();
    let certs = iotpki_core::pkcs7::parse_certs_only(&std::fs::read(dir.join("crts.p7")).unwrap()).unwrap();
    assert!(certs.iter().any(|c| c == ca.authority.root_der()), "the root in /crts as libcoap got it");

    // A new key and its request, made by openssl; renewed with the current certificate.
    openssl_request(&dir, "new", "LIBCOAP-1");
    let before = ca.cert_count();
    let sren = format!("{url}/.well-known/est/sren");
    let args = common(&[
        "-m",
        "post",
        "-t",
        "286",
        "-A",
        "287",
        "-f",
        dir.join("new.der").to_str().unwrap(),
        "-o",
        dir.join("renewed.der").to_str().unwrap(),
        &sren,
    ]);
    // -b: libcoap sends the 300-byte request in 64-byte blocks (Block1), and takes the answer in blocks (Block2).
    let mut args = args;
    args.splice(0..0, ["-b".to_string(), "64".to_string()]);
    tokio::task::spawn_blocking(move || client(args)).await.unwrap();
    assert_eq!(ca.cert_count(), before + 1);
    assert_eq!(ca.last_audit().event.action, "reenroll");
    let new = std::fs::read(dir.join("renewed.der")).unwrap();
    let info = iotpki_core::profile::cert_info(&new).expect("a bare certificate (287)");
    crate::util::openssl(&[
        "pkey",
        "-in",
        dir.join("new.pem").to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
        "-out",
        dir.join("new.spki").to_str().unwrap(),
    ]);
    let spki = std::fs::read(dir.join("new.spki")).unwrap();
    assert_eq!(info.spki_sha256, iotpki_core::keys::spki_fingerprint(&spki), "issued for openssl's new key");
}

/// The wolfSSL peer (interop/wolfssl-peer, built by scripts/test): its path.
fn wolfssl_peer() -> std::path::PathBuf {
    let p = std::env::var_os("IOTPKI_WOLFSSL_PEER").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../interop/wolfssl-peer/target/release/wolfssl-estcoaps")
    });
    assert!(
        p.exists(),
        "{} not found: run ./scripts/test, which builds the wolfSSL peer (or set IOTPKI_WOLFSSL_PEER)",
        p.display()
    );
    p
}

/// A DTLS 1.3 client on wolfSSL, a DTLS implementation we did not write: the
/// handshake with certificates both ways, /crts, and a renewal with a
/// certificate we issued (and DTLS 1.2 when the server allows it). wolfSSL
/// verifies the server's chain against the CA file; its name check takes DNS
/// names only (`--server-name 127.0.0.1` fails in wolfSSL's setup), so the
/// name is not checked here (our own client checks it: `coaps_client`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wolfssl_dtls_1_3_client_gets_crts_and_renews() {
    let peer = wolfssl_peer();
    let ca = Ca::start().await;
    let udp = coaps(&ca, CoapsOptions { dtls12: true, ..Default::default() }).await;
    let (dev, cas, key) = peer_files(&ca, "WOLF-1").await;
    let dir = ca.tmp.path().to_path_buf();
    let server = udp.addr.to_string();
    let run = |extra: Vec<String>| {
        let mut args: Vec<String> = vec![
            "--server".into(),
            server.clone(),
            "--ca".into(),
            cas.display().to_string(),
            "--cert".into(),
            dev.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ];
        args.extend(extra);
        let peer = peer.clone();
        async move {
            let out =
                tokio::task::spawn_blocking(move || std::process::Command::new(&peer).args(&args).output().unwrap())
                    .await
                    .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(out.status.success(), "wolfssl-estcoaps: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
            stdout
        }
    };
    for (v, flag) in [("DTLSv1.3", None), ("DTLSv1.2", Some("--dtls12"))] {
        let mut args = vec![
            "--get".to_string(),
            "/.well-known/est/crts".into(),
            "--accept".into(),
            "281".into(),
            "--out".into(),
            dir.join("crts.p7").display().to_string(),
        ];
        args.extend(flag.map(String::from));
        let out = run(args).await;
        assert!(out.contains(&format!("version={v}")) && out.contains("code=2.05"), "{out}");
        let certs = iotpki_core::pkcs7::parse_certs_only(&std::fs::read(dir.join("crts.p7")).unwrap()).unwrap();
        assert!(certs.iter().any(|c| c == ca.authority.root_der()));
    }
    // A renewal over DTLS 1.3: a new key made by openssl, its request sent by wolfSSL.
    openssl_request(&dir, "wnew", "WOLF-1");
    let before = ca.cert_count();
    let out = run(vec![
        "--post".into(),
        "/.well-known/est/sren".into(),
        "--content-format".into(),
        "286".into(),
        "--accept".into(),
        "287".into(),
        "--body".into(),
        dir.join("wnew.der").display().to_string(),
        "--out".into(),
        dir.join("wcert.der").display().to_string(),
    ])
    .await;
    assert!(out.contains("version=DTLSv1.3") && out.contains("code=2.05"), "{out}");
    assert_eq!(ca.cert_count(), before + 1);
    assert_eq!(ca.last_audit().event.action, "reenroll");
    let info = iotpki_core::profile::cert_info(&std::fs::read(dir.join("wcert.der")).unwrap()).unwrap();
    assert_eq!(
        info.serial,
        ca.last_audit().event.target.trim_start_matches("cert:"),
        "the certificate the audit names"
    );
}

/// A device born at a manufacturer commissions over coaps with its birth
/// certificate (the same refusals as over HTTPS first), then renews over coaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_birth_certificate_commissions_over_coaps_with_the_refusals_of_https() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let udp = coaps(&op, CoapsOptions::default()).await;
    let devs = crate::util::born_devices(&mfg, "CPB", &["CP-1".to_string(), "CP-2".to_string()]).await;
    let commission = |dev: std::path::PathBuf| {
        let (url, root) = (udp.coaps_url(), op.root_pem.clone());
        async move { iotpki_agent::flow::commission(&dev, Some(&url), Some(&root), None).await }
    };
    let certs = op.cert_count();
    let e = commission(devs[0].clone()).await.expect_err("no manufacturer trusted yet");
    assert!(e.to_string().contains("4.03") && e.to_string().contains("trusts no manufacturer"), "{e}");
    crate::commission::trust(&op, &mfg);
    let e = commission(devs[0].clone()).await.expect_err("not claimed");
    assert!(e.to_string().contains("not owned by this authority"), "{e}");
    assert_eq!(op.last_audit().event.action, "refuse.enroll");
    crate::commission::claim(&op, &mfg, &["CP-1"]);
    let id = commission(devs[0].clone()).await.expect("commissioned over coaps");
    assert_eq!(op.last_audit().event.action, "commission");
    assert_eq!(op.cert_count(), certs + 1);
    assert!(id.birth.is_some());
    iotpki_agent::renew(&devs[0], None, None).await.expect("renewed over coaps");
    assert_eq!(op.last_audit().event.action, "reenroll");
    // The daemon renews there too (due at once), and asks no coaps:// URL for bundles.
    let mut run = iotpki_agent::daemon::RunOptions::new(devs[0].clone());
    run.renew_share = 1e-7;
    run.jitter_share = 0.0;
    run.once = true;
    run.check_ocsp = false;
    assert_eq!(iotpki_agent::daemon::run(&run, |_| {}).await.expect("agent run over coaps"), 1);
    assert_eq!(op.last_audit().event.action, "reenroll");
    assert!(iotpki_agent::state::load(&devs[0]).unwrap().server.starts_with("coaps://"));
    // The other device is not claimed: refused, nothing issued.
    assert!(commission(devs[1].clone()).await.is_err());
    assert_eq!(op.cert_count(), certs + 3);
}

/// The binary: `serve --coaps-listen` says it is ready only once the UDP
/// socket is bound (a line naming it), and `agent enroll` and `agent renew`
/// take the coaps:// URL it printed.
#[test]
fn serve_listens_on_coaps_and_the_agent_binary_enrolls_and_renews_there() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("ca");
    let dir = d.to_str().unwrap();
    crate::util::run_ok(crate::util::bin().args(["init", "--dir", dir]).env("IOTPKI_PASSPHRASE", crate::util::PASS));
    let mut child = crate::util::bin()
        .args(["serve", "--dir", dir, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--coaps-listen", "127.0.0.1:0"])
        .env("IOTPKI_PASSPHRASE", crate::util::PASS)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let _server = crate::util::Server(child);
    let mut coaps = None;
    for _ in 0..3 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if let Some(u) = line.trim().strip_prefix("EST-coaps on ") {
            coaps = Some(u.to_string());
            break;
        }
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let url = coaps.expect("serve names its coaps listener");
    assert!(url.starts_with("coaps://127.0.0.1:"), "{url}");
    let token = crate::util::run_ok(crate::util::bin().args(["token", "create", "--dir", dir, "--serial", "BIN-C1"]));
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, token.trim()).unwrap();
    let state = tmp.path().join("dev");
    let root = d.join("ca/root.crt");
    let enrolled = crate::util::run_ok(
        crate::util::bin().args(["agent", "enroll", "--serial", "BIN-C1", "--server", &url]).args([
            "--state",
            state.to_str().unwrap(),
            "--token-file",
            token_file.to_str().unwrap(),
            "--ca-cert",
            root.to_str().unwrap(),
        ]),
    );
    assert!(enrolled.contains("BIN-C1"), "{enrolled}");
    let renewed = crate::util::run_ok(crate::util::bin().args(["agent", "renew", "--state", state.to_str().unwrap()]));
    assert!(renewed.contains("renewed BIN-C1"), "{renewed}");
}

/// A relay on loopback that records what the device sends.
async fn recording_relay(server: SocketAddr) -> (SocketAddr, Arc<UdpSocket>, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(server).await.unwrap();
    let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let device = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let (f, b, r, d) = (front.clone(), back.clone(), recorded.clone(), device.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *d.lock().unwrap() = Some(from);
            r.lock().unwrap().push(buf[..n].to_vec());
            let _ = b.send(&buf[..n]).await;
        }
    });
    let (f, b) = (front.clone(), back.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = b.recv(&mut buf).await {
            let to = *device.lock().unwrap();
            if let Some(to) = to {
                let _ = f.send_to(&buf[..n], to).await;
            }
        }
    });
    (front.local_addr().unwrap(), back, recorded)
}

/// A recorded renewal, replayed datagram by datagram from the same address,
/// issues nothing: the replayed handshake cannot finish against the server's
/// fresh randomness, and no request is read outside a finished handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_coaps_renewal_replayed_issues_nothing() {
    let ca = Ca::start().await;
    let udp = coaps(&ca, CoapsOptions::default()).await;
    let state = ca.enrolled_device("REPLAY-1").await;
    let (relay, back, recorded) = recording_relay(udp.addr).await;
    iotpki_agent::renew(&state, Some(&format!("coaps://{relay}")), None).await.expect("renewal through the relay");
    let (certs, audit) = (ca.cert_count(), ca.audit_len());
    let datagrams = recorded.lock().unwrap().clone();
    assert!(datagrams.len() >= 4, "{} datagrams recorded", datagrams.len());
    for _ in 0..2 {
        for d in &datagrams {
            back.send(d).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!((ca.cert_count(), ca.audit_len()), (certs, audit), "a replay issued or audited something");
}

/// DTLS handshakes the coaps listener has completed.
fn handshakes(ca: &Ca) -> u64 {
    ca.authority.metrics().accepted_connections.get(&["coaps"])
}

/// DTLS sessions the coaps listener holds now.
fn open_sessions(ca: &Ca) -> i64 {
    ca.authority.metrics().open_connections.with(&["coaps"]).get()
}

/// Wait (at most 5 s) for the listener to hold no session.
async fn until_no_session(ca: &Ca) -> i64 {
    for _ in 0..100 {
        if open_sessions(ca) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    open_sessions(ca)
}

/// An enrollment (`/crts` to complete the server's path and for the chain,
/// then `/sen`) and a renewal each make one DTLS handshake, counted by
/// `iotpki_connections_accepted_total{listener="coaps"}`, and end with a
/// close_notify: the server holds no session after the flow, long before its
/// idle timeout (60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coaps_flow_makes_one_dtls_handshake_and_closes_its_session() {
    let ca = Ca::start().await;
    let udp = coaps(&ca, CoapsOptions::default()).await;
    let (state, opts) = coaps_enrollment(&ca, &udp, "ONE-S1");
    let before = handshakes(&ca);
    iotpki_agent::enroll(&opts).await.expect("enrollment over coaps");
    assert_eq!(handshakes(&ca) - before, 1, "one DTLS handshake per enrollment");
    assert_eq!(until_no_session(&ca).await, 0, "the session ends with the flow");
    iotpki_agent::renew(&state, None, None).await.expect("renewal over coaps");
    assert_eq!(handshakes(&ca) - before, 2, "one DTLS handshake per renewal");
    assert_eq!(until_no_session(&ca).await, 0, "the session ends with the flow");
    let scrape = iotpki_server::metrics::render(&ca.authority);
    assert!(scrape.contains(r#"iotpki_connections_accepted_total{listener="coaps"}"#), "{scrape}");

    // Clones of a one-session client share it: three calls, one handshake.
    let (client, _) = raw_session(&ca, &udp).await;
    let client = client.one_session();
    let before = handshakes(&ca);
    let (a, b) = (client.clone(), client.clone());
    a.cacerts().await.unwrap();
    b.cacerts().await.unwrap();
    client.cacerts().await.unwrap();
    assert_eq!(handshakes(&ca) - before, 1);
    // A plain client: one per call.
    let (plain, _) = raw_session(&ca, &udp).await;
    plain.cacerts().await.unwrap();
    plain.cacerts().await.unwrap();
    assert_eq!(handshakes(&ca) - before, 3);
    drop((a, b, client));
    assert_eq!(until_no_session(&ca).await, 0, "the last clone's drop closes the session");
}

/// A server that ends every session after one request (`max_requests_per_connection
/// = 1`, its close_notify read before the next call): the enrollment still
/// completes, on a second session, whose path needs no second `/crts`; and a
/// session the server closed as idle is opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_coaps_session_the_server_closed_is_opened_again() {
    let ca = Ca::start().await;
    let limits = Limits { max_requests_per_connection: 1, ..Limits::from(&ca.authority.config().limits) };
    let udp = coaps_with(&ca, limits).await;
    let (_, opts) = coaps_enrollment(&ca, &udp, "ONE-S2");
    let before = handshakes(&ca);
    iotpki_agent::enroll(&opts).await.expect("enrollment with a session per request");
    assert_eq!(handshakes(&ca) - before, 2, "/crts on the first session, /sen on a second");
    assert_eq!(ca.last_audit().event.action, "enroll");

    let limits = Limits { idle_timeout: Duration::from_secs(1), ..Limits::from(&ca.authority.config().limits) };
    let idle = coaps_with(&ca, limits).await;
    let (client, _) = raw_session(&ca, &idle).await;
    let client = client.one_session();
    let before = handshakes(&ca);
    client.cacerts().await.unwrap();
    client.cacerts().await.unwrap();
    assert_eq!(handshakes(&ca) - before, 1);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    client.cacerts().await.expect("a new session after the idle timeout");
    assert_eq!(handshakes(&ca) - before, 2);
}

/// A relay that forwards both ways, except from the server while `mute` is
/// set; it counts the datagrams it dropped.
async fn muting_relay(
    server: SocketAddr,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>, Arc<std::sync::atomic::AtomicUsize>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let mute = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (m, dr) = (mute.clone(), dropped.clone());
    let f = front.clone();
    tokio::spawn(async move {
        // One socket toward the server per device address (a new session is a new socket).
        let mut backs = std::collections::HashMap::<SocketAddr, Arc<UdpSocket>>::new();
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            let back = match backs.get(&from) {
                Some(b) => b.clone(),
                None => {
                    let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    b.connect(server).await.unwrap();
                    let (b2, f2, m2, d2) = (b.clone(), f.clone(), m.clone(), dr.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        while let Ok(n) = b2.recv(&mut buf).await {
                            if m2.load(std::sync::atomic::Ordering::SeqCst) {
                                d2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            } else {
                                let _ = f2.send_to(&buf[..n], from).await;
                            }
                        }
                    });
                    backs.insert(from, b.clone());
                    b
                }
            };
            let _ = back.send(&buf[..n]).await;
        }
    });
    (front.local_addr().unwrap(), mute, dropped)
}

/// A kept session the server dropped while its close_notify was lost: the
/// next call hears nothing back, and is sent again on a new session after
/// the first CoAP retransmission timeout (2 to 3 s), not after the minute
/// the retransmissions would take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_coaps_session_the_server_forgot_is_replaced_after_one_silence() {
    let ca = Ca::start().await;
    let limits = Limits { idle_timeout: Duration::from_secs(1), ..Limits::from(&ca.authority.config().limits) };
    let udp = coaps_with(&ca, limits).await;
    let (relay, mute, dropped) = muting_relay(udp.addr).await;
    let (k, c) = device_key("SILENT-1");
    let client = CoapsClient::new(
        &format!("coaps://{relay}"),
        None,
        &[ca.authority.root_der().to_vec()],
        &[],
        ClientIdentity { chain: vec![c], key: k },
    )
    .unwrap()
    .one_session();
    let before = handshakes(&ca);
    client.cacerts().await.unwrap();
    mute.store(true, std::sync::atomic::Ordering::SeqCst);
    // The server ends the idle session; its close_notify goes nowhere.
    assert_eq!(until_no_session(&ca).await, 0);
    // Unmuted only once the relay has read (and dropped) the close_notify: it
    // judges a datagram when it reads it, which may be after the server's close.
    for _ in 0..100 {
        if dropped.load(std::sync::atomic::Ordering::SeqCst) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the server's close_notify was not dropped");
    mute.store(false, std::sync::atomic::Ordering::SeqCst);
    let t0 = Instant::now();
    client.cacerts().await.expect("a new session after the silence");
    let took = t0.elapsed();
    assert_eq!(handshakes(&ca) - before, 2);
    assert!(took < Duration::from_secs(15), "the kept session was given up after {took:?}");
}
