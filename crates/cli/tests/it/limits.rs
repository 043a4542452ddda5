//! Limits: per-client rates (429 with Retry-After), the connection cap, and
//! clients that send slowly (slowloris) are cut off without starving others.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotpki_server::{Limits, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::Ca;

fn tight() -> Limits {
    Limits {
        handshake_timeout: Duration::from_secs(1),
        header_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        max_connections: 4,
        client_rate: 0.2,
        client_burst: 2,
        ..Limits::default()
    }
}

async fn start(ca: &Ca, limits: Limits) -> Running {
    Running::start_with(ca.authority.clone(), "127.0.0.1:0".parse().unwrap(), limits).await.unwrap()
}

/// POST simpleenroll with Basic USER:nope; returns the status line and the Retry-After header.
fn enroll_as(url: &str, root: &std::path::Path, user: &str) -> (String, Option<String>) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--dump-header", "-", "--output", "/dev/null", "--cacert"])
        .arg(root)
        .args(["--user", &format!("{user}:nope"), "-H", "Content-Type: application/pkcs10", "--data", "MAA="])
        .arg(format!("{url}/.well-known/est/simpleenroll"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    let status = head.lines().next().unwrap_or_default().trim().to_string();
    let retry =
        head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after:").map(|v| v.trim().to_string()));
    (status, retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let ca = Ca::start().await;
    let srv = start(&ca, tight()).await;
    let (url, root) = (srv.url(), ca.root_file());
    let audit = ca.audit_len();
    let (codes, retry, other) = tokio::task::spawn_blocking(move || {
        let codes: Vec<(String, Option<String>)> = (0..3).map(|_| enroll_as(&url, &root, "RATE-1")).collect();
        let other = enroll_as(&url, &root, "RATE-2");
        let retry = codes[2].1.clone();
        (codes, retry, other)
    })
    .await
    .unwrap();
    assert!(codes[0].0.contains(" 401") && codes[1].0.contains(" 401"), "{codes:?}");
    assert!(codes[2].0.contains(" 429"), "{codes:?}");
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=10).contains(&secs), "{secs}");
    assert!(other.0.contains(" 401"), "another client is not limited: {other:?}");
    assert_eq!(ca.audit_len(), audit + 3, "the two refusals of each client are audited; the 429 writes nothing");
}

async fn eof_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    let t = Instant::now();
    while t.elapsed() < limit {
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_cut_off_and_the_server_keeps_serving() {
    let ca = Ca::start().await;
    let srv = start(&ca, tight()).await;
    let addr: SocketAddr = srv.addr;
    // Fill every slot with a socket that never starts TLS.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // One more is closed at once.
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(eof_within(&mut extra, Duration::from_secs(2)).await, "a connection over the cap is closed");
    // The idle ones are dropped after the handshake timeout (1 s), well before 5 s.
    for s in &mut idle {
        assert!(eof_within(s, Duration::from_secs(5)).await, "an idle connection is dropped");
    }
    // A client that completes TLS but sends its headers a byte at a time is dropped too.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca.authority.root_der().to_vec())).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap();
    let request = b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let t = Instant::now();
    let mut cut = false;
    for b in request.iter() {
        if tls.write_all(&[*b]).await.is_err() || tls.flush().await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(100), tls.read(&mut buf)).await {
            // Nothing yet: the server is still waiting for the rest.
            Err(_elapsed) => {}
            // Closed or reset.
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            // An answer before the headers ended: it must be the timeout's 408, not a 200.
            Ok(Ok(n)) => {
                let head = String::from_utf8_lossy(&buf[..n]);
                assert!(head.starts_with("HTTP/1.1 408"), "a slow header sender got {head:?}");
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "a slow header sender must be cut off (took {:?})", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // And the server still serves an ordinary client.
    let c =
        iotpki_agent::est_client::EstClient::new(&srv.url(), None, &[ca.authority.root_der().to_vec()], None).unwrap();
    assert!(!c.cacerts().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_gets_408() {
    let ca = Ca::start().await;
    let srv = start(&ca, tight()).await;
    let (url, root) = (srv.url(), ca.root_file());
    let t = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        // Announce 100 bytes and send 4 (curl waits for the answer; the server gives up after 1 s).
        // To an endpoint that reads bodies from anyone (OCSP): an enrollment without
        // credentials is refused before its body is read (gate_*).
        let body = std::env::temp_dir().join(format!("iotpki-short-body-{}", std::process::id()));
        std::fs::write(&body, "MAAA").unwrap();
        let out = Command::new("curl")
            .args(["--silent", "--max-time", "10", "--output", "/dev/null", "--write-out", "%{http_code}", "--cacert"])
            .arg(root)
            .args(["-H", "Content-Type: application/ocsp-request", "-H", "Content-Length: 100", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .arg(format!("{url}/ocsp"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    })
    .await
    .unwrap();
    assert_eq!(status, "408");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
}

// ---- Issue 12: bodies, refusal floods, connections, the OCSP cache ----

/// A TLS client that trusts `root_der` and shows no certificate.
fn tls_connector(root_der: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(root_der.to_vec())).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn tls_connect(addr: SocketAddr, root_der: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tls_connector(root_der).connect(name, tcp).await.unwrap()
}

/// `field` (VmHWM, VmRSS) of process `pid`, in kB.
fn vm_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Send `head`, then stream `body_len` bytes of body while reading the
/// answer; returns the answer's status line (empty if none came).
async fn send_streaming<S>(s: S, head: String, body_len: usize) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(s);
    let writer = async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'{'; 64 * 1024];
        let mut sent = 0;
        while sent < body_len {
            let n = chunk.len().min(body_len - sent);
            if wr.write_all(&chunk[..n]).await.is_err() {
                return; // the server closed: what we wanted
            }
            sent += n;
        }
    };
    let reader = async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(60), rd.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&got).lines().next().unwrap_or_default().to_string()
    };
    let ((), status) = tokio::join!(writer, reader);
    status
}

/// Issue 12 item 4: six (then twelve) parallel 16 MiB uploads to
/// /factory/sync without a client certificate are answered 401 before their
/// bodies are read: the server (a child process) grows by a few MB at most
/// (before the fix: 76 MB for six), and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_16_mib_uploads_are_refused_unread_and_server_memory_stays_flat() {
    unread_uploads("/factory/sync?batch=B1", "application/x-ndjson", Some("refuse.sync")).await;
}

/// The console's forms that carry lists (a batch's allowlist, a births file,
/// up to 32 MiB) are read only for a signed-in admin: without a session or a
/// certificate, 16 MiB uploads to them are answered 401 unread (before the
/// fix the gate buffered each whole body before the console looked for a
/// session), the server's memory stays flat, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_console_uploads_are_refused_unread_and_server_memory_stays_flat() {
    unread_uploads("/console/batches", "application/x-www-form-urlencoded", None).await;
    unread_uploads("/console/claims", "application/x-www-form-urlencoded", None).await;
}

/// Six, then twelve, parallel 16 MiB POSTs to `target` from a client with
/// no certificate and no session: each answered 401, the server's peak
/// memory rising less than one body, nothing issued, and nothing audited
/// but `audited` refusals (when given).
async fn unread_uploads(target: &str, content_type: &str, audited: Option<&str>) {
    use crate::util::{bin, run_ok, serve, PASS};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = dir.to_str().unwrap().to_string();
    run_ok(bin().args(["init", "--dir", &d]).env("IOTPKI_PASSPHRASE", PASS));
    let store_before = {
        let cfg = iotpki_authority::Config::load(&dir).unwrap();
        let s = iotpki_authority::open_store(&dir, &cfg).unwrap();
        (s.count_certificates().unwrap(), s.verify_audit().unwrap().entries)
    };
    let (server, url) =
        serve(bin().args(["serve", "--dir", &d, "--listen", "127.0.0.1:0"]).env("IOTPKI_PASSPHRASE", PASS));
    let pid = server.0.id();
    let addr: SocketAddr = url.trim_start_matches("https://").parse().unwrap();
    let root = iotpki_core::pem::decode_one("CERTIFICATE", &std::fs::read_to_string(dir.join("ca/root.crt")).unwrap())
        .unwrap();
    // Warm up: a few ordinary requests, so that the high-water mark is the steady state.
    for _ in 0..3 {
        let s = tls_connect(addr, &root).await;
        let st = send_streaming(
            s,
            "GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
            0,
        )
        .await;
        assert!(st.contains(" 200"), "{st}");
    }
    let hwm_before = vm_kb(pid, "VmHWM");
    const BODY: usize = 16 * 1024 * 1024;
    for parallel in [6, 12] {
        let mut tasks = Vec::new();
        for _ in 0..parallel {
            let root = root.clone();
            let head = format!(
                "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {BODY}\r\n\r\n"
            );
            tasks.push(tokio::spawn(async move {
                let s = tls_connect(addr, &root).await;
                send_streaming(s, head, BODY).await
            }));
        }
        for t in tasks {
            let st = t.await.unwrap();
            assert!(st.contains(" 401"), "{target}: refused as unauthenticated: {st:?}");
        }
    }
    let hwm_after = vm_kb(pid, "VmHWM");
    let rise_mb = (hwm_after.saturating_sub(hwm_before)) / 1024;
    eprintln!(
        "server VmHWM {hwm_before} kB -> {hwm_after} kB (+{rise_mb} MB) for 18 unread 16 MiB uploads to {target}"
    );
    assert!(rise_mb < 16, "the server read the bodies to {target}: its peak memory rose by {rise_mb} MB");
    drop(server);
    let cfg = iotpki_authority::Config::load(&dir).unwrap();
    let s = iotpki_authority::open_store(&dir, &cfg).unwrap();
    assert_eq!(s.count_certificates().unwrap(), store_before.0, "nothing issued");
    let entries = s.audit_entries(store_before.1 + 1, u32::MAX).unwrap();
    assert!(
        entries.iter().all(|e| Some(e.event.action.as_str()) == audited),
        "only the refusals are audited: {entries:?}"
    );
    assert!(entries.len() <= 18, "{}", entries.len());
}

/// An authority whose config's `[limits]` are edited by `edit`, served on
/// loopback like [`Ca::start`] (the server with the config's limits).
async fn ca_with(edit: impl Fn(&mut iotpki_authority::config::LimitsConfig)) -> Ca {
    use iotpki_core::clock::{Clock as _, FixedClock, SystemClock};
    let tmp = tempfile::tempdir().unwrap();
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_url = format!("http://{}", http_listener.local_addr().unwrap());
    let opts = iotpki_authority::init::InitOptions { public_http_url: Some(http_url.clone()), ..Default::default() };
    let dir = tmp.path().join("ca");
    let pass = iotpki_authority::Passphrase::new(crate::util::PASS.into()).unwrap();
    iotpki_authority::init::init(&dir, &opts, &pass, &SystemClock).unwrap();
    let mut cfg = iotpki_authority::Config::load(&dir).unwrap();
    edit(&mut cfg.limits);
    std::fs::write(dir.join(iotpki_authority::config::CONFIG_FILE), cfg.to_toml().unwrap()).unwrap();
    let clock = Arc::new(FixedClock::new(SystemClock.now()));
    let authority = Arc::new(iotpki_authority::Authority::open(&dir, &pass, clock.clone()).unwrap());
    let server = Running::start(authority.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = server.url();
    let http = Running::start_http_on(authority.clone(), http_listener).unwrap();
    let root_pem = iotpki_core::pem::encode("CERTIFICATE", authority.root_der());
    std::fs::write(tmp.path().join("root.pem"), &root_pem).unwrap();
    Ca { tmp, dir, authority, clock, server, url, http, http_url, root_pem }
}

fn junk_basic(i: usize, len: usize) -> Option<String> {
    use base64::Engine as _;
    let user = format!("{i:08}{}", "u".repeat(len - 8));
    Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:nope"))))
}

/// Issue 12 item 5: 300 enrollments with distinct 8 KB Basic users from one
/// address get 429 once the address's refusal bucket is empty, whatever name
/// each claims; the audit log grows by at most the bucket's burst (plus its
/// refill over the run), and no entry keeps a claimed name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_username_flood_is_rate_limited_per_address_and_bounded_in_the_audit_log() {
    let ca = ca_with(|l| {
        l.refusal_burst = 20;
        l.refusal_rate_per_s = 0.5;
    })
    .await;
    let anchor = ca.authority.root_der().to_vec();
    let client = iotpki_agent::est_client::EstClient::new(&ca.url, None, &[anchor], None).unwrap();
    let (audit, certs) = (ca.audit_len(), ca.cert_count());
    let t = Instant::now();
    let mut codes = std::collections::BTreeMap::<u16, u32>::new();
    for i in 0..300 {
        let (status, _) = client
            .raw("POST", "simpleenroll", Some(iotpki_core::est::CT_PKCS10), b"MAA=".to_vec(), junk_basic(i, 8192))
            .await
            .unwrap();
        *codes.entry(status).or_default() += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    let bound = 20 + (0.5 * secs).ceil() as u64 + 1;
    let grew = ca.audit_len() - audit;
    eprintln!("300 junk users in {secs:.1} s: {codes:?}; audit +{grew} (bound {bound})");
    assert!(codes.get(&429).copied().unwrap_or(0) >= 250, "{codes:?}");
    assert!(grew <= bound, "the audit log grew by {grew}, over {bound}");
    assert!(grew >= 1, "an ordinary refusal is still audited");
    let entries = ca.authority.store().audit_entries(audit + 1, u32::MAX).unwrap();
    for e in &entries {
        assert!(e.event.actor.len() <= 64 && e.event.detail.len() <= 400, "a claimed name reached the log: {e:?}");
        assert!(!e.event.actor.contains("uuuu") && !e.event.detail.contains("uuuu"), "{e:?}");
    }
    assert_eq!(ca.cert_count(), certs);
}

/// Issue 12 item 5: refusals past the window's budget of single entries are
/// summed up (as from many addresses: per-address limiting off here): 300
/// refusals write `refusal_audit_individual` entries, then one summary per
/// kind at the flush, which says how many it stands for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_flood_from_many_addresses_is_summed_up_in_the_audit_log() {
    let ca = ca_with(|l| {
        l.refusal_rate_per_s = 0.0;
        l.client_rate_per_s = 0.0;
        l.refusal_audit_individual = 10;
        l.refusal_audit_window_secs = 3600;
    })
    .await;
    let anchor = ca.authority.root_der().to_vec();
    let client = iotpki_agent::est_client::EstClient::new(&ca.url, None, &[anchor], None).unwrap();
    let audit = ca.audit_len();
    for i in 0..300 {
        let (status, _) = client
            .raw("POST", "simpleenroll", Some(iotpki_core::est::CT_PKCS10), b"MAA=".to_vec(), junk_basic(i, 64))
            .await
            .unwrap();
        assert_eq!(status, 401);
    }
    assert_eq!(ca.audit_len(), audit + 10, "the first 10 of the window one by one, the rest counted");
    assert_eq!(ca.authority.flush_refusals(), 290);
    let grew = ca.audit_len() - audit;
    assert!(grew <= 10 + iotpki_authority::refusals::MAX_KINDS as u64, "{grew}");
    let last = ca.last_audit();
    assert_eq!(last.event.action, "refuse.enroll");
    assert!(last.event.detail.starts_with("290 refusals (HTTP 401)"), "{:?}", last.event);
    assert_eq!(ca.authority.flush_refusals(), 0, "flushed once");
}

/// Issue 12 item 5: a huge Basic user is refused by the HTTP layer (431,
/// headers over 64 KiB) before any handler, rate limiter or audit sees it.
/// 280 KB rather than the 350 KB: its header (373 KB of base64) fits
/// hyper's default 400 KB buffer, which the server used before, so this
/// request did reach the audit log then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_username_is_refused_at_the_headers_before_it_is_stored() {
    use base64::Engine as _;
    let ca = Ca::start().await;
    let audit = ca.audit_len();
    let user = "u".repeat(280 * 1024);
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:nope"));
    let s = tls_connect(ca.server.addr, ca.authority.root_der()).await;
    let head = format!(
        "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/pkcs10\r\n\
         Authorization: Basic {auth}\r\nContent-Length: 4\r\n\r\nMAA="
    );
    let st = send_streaming(s, head, 0).await;
    assert!(st.is_empty() || st.contains(" 431"), "{st:?}");
    assert_eq!(ca.audit_len(), audit, "nothing audited");
    let entries = ca.authority.store().audit_entries(1, u32::MAX).unwrap();
    assert!(entries.iter().all(|e| !e.event.actor.contains("uuuuuuuu")));
}

/// Limits with short connection bounds for the tests below.
fn short_connections() -> Limits {
    Limits {
        write_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        connection_lifetime: Duration::from_secs(8),
        client_rate: 0.0,
        ..Limits::default()
    }
}

/// Write pipelined copies of `request` and never read; true once the server
/// has closed the connection (a write fails), false if it is still open after 60 s.
async fn pipelining_without_reading_is_cut<S: tokio::io::AsyncWrite + Unpin>(s: &mut S, request: &[u8]) -> bool {
    let batch: Vec<u8> = request.iter().copied().cycle().take(request.len() * 64).collect();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        match tokio::time::timeout(Duration::from_secs(60), s.write_all(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("closed by the server after {:?}: {e}", t.elapsed());
                return true;
            }
            Err(_) => return false,
        }
    }
    false
}

/// Issue 12 item 7: a peer that pipelines requests and never reads its
/// answers is closed by the server (write timeout, else the lifetime cap) on
/// the TLS listener and on the plain-HTTP CRL/OCSP listener; so is a
/// kept-alive connection left idle; and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_closed_on_both_listeners() {
    let ca = Ca::start().await;
    let tls_srv = start(&ca, short_connections()).await;
    let http_srv = Running::start_http_with(
        ca.authority.clone(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        short_connections(),
    )
    .unwrap();
    let root = ca.authority.root_der().to_vec();
    let crl = "/crl/operational.crl";
    let mut tls = tls_connect(tls_srv.addr, &root).await;
    let req = b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\n\r\n";
    assert!(pipelining_without_reading_is_cut(&mut tls, req).await, "TLS: a peer that never reads was kept");
    let mut plain = tokio::net::TcpStream::connect(http_srv.addr).await.unwrap();
    let req = format!("GET {crl} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        pipelining_without_reading_is_cut(&mut plain, req.as_bytes()).await,
        "HTTP: a peer that never reads was kept"
    );
    // Idle after one answer: closed after the idle timeout (2 s), well within 30 s.
    let mut idle = tokio::net::TcpStream::connect(http_srv.addr).await.unwrap();
    idle.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(eof_within(&mut idle, Duration::from_secs(30)).await, "an idle kept-alive connection was kept");
    // Still serving.
    let c = iotpki_agent::est_client::EstClient::new(&tls_srv.url(), None, &[root], None).unwrap();
    assert!(!c.cacerts().await.unwrap().is_empty());
}

/// A client that keeps one connection for its calls (`EstClient::one_connection`,
/// the agent's flows) opens another when the server has closed the first: after
/// the idle timeout, and after the request cap's `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_the_server_closed_is_opened_again() {
    let ca = Ca::start().await;
    let srv = start(&ca, Limits { max_requests_per_connection: 3, ..short_connections() }).await;
    let accepted = || ca.authority.metrics().accepted_connections.get(&["tls"]);
    let root = ca.authority.root_der().to_vec();
    let c = iotpki_agent::est_client::EstClient::new(&srv.url(), None, &[root], None).unwrap().one_connection();
    let before = accepted();
    c.cacerts().await.unwrap();
    c.cacerts().await.unwrap();
    assert_eq!(accepted() - before, 1, "two calls, one connection");
    // Idle past the server's idle timeout (2 s): it has closed the connection.
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.cacerts().await.unwrap();
    assert_eq!(accepted() - before, 2, "opened again after the idle timeout");
    // Three requests a connection: the third answer closes it, the fourth call opens another.
    c.cacerts().await.unwrap();
    c.cacerts().await.unwrap();
    assert_eq!(accepted() - before, 2);
    c.cacerts().await.unwrap();
    assert_eq!(accepted() - before, 3, "opened again after the request cap");
}

/// A call on a kept connection given up halfway (its timeout) leaves no
/// connection behind: the next call opens another instead of reading the late
/// answer meant for the call given up. The server here answers each request with
/// its path, and holds back its first answer until the first call has given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_given_up_halfway_leaves_its_answer_to_no_other_call() {
    let ca = Ca::start().await;
    let acceptor = tokio_rustls::TlsAcceptor::from(iotpki_server::server_config(&ca.authority).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    let held = Arc::new(tokio::sync::Mutex::new(Some(held)));
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (acceptor, held) = (acceptor.clone(), held.clone());
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut buf = Vec::new();
                loop {
                    // One request head (no body), then its answer: the path.
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    let path = head.split(' ').nth(1).unwrap().to_string();
                    if let Some(h) = held.lock().await.take() {
                        let _ = h.await;
                    }
                    let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}", path.len());
                    if tls.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let root = ca.authority.root_der().to_vec();
    let c = iotpki_agent::est_client::EstClient::new(&url, None, &[root], None).unwrap().one_connection();
    let first = tokio::time::timeout(Duration::from_millis(500), c.get("/first")).await;
    assert!(first.is_err(), "the first call is given up: {first:?}");
    // The late answer to the first call reaches the first connection.
    release.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = c.get("/second").await.unwrap();
    assert_eq!((status, String::from_utf8_lossy(&body).to_string()), (200, "/second".to_string()));
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2, "the second call on a new connection");
    // And that one is kept.
    assert_eq!(c.get("/third").await.unwrap().1, b"/third");
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// Issue 12 item 7: at most `max_requests_per_connection` requests on one
/// connection: the last answer says `Connection: close` and the server closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_serves_at_most_its_request_cap() {
    let ca = Ca::start().await;
    let limits = Limits { max_requests_per_connection: 3, ..short_connections() };
    let srv = Running::start_http_with(
        ca.authority.clone(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        limits,
    )
    .unwrap();
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(10);
    s.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got)).await.unwrap();
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
}

/// Issue 12 item 9: OCSP requests about serials never issued, malformed ones
/// and ones with nonces leave the answer cache empty; a known certificate's
/// answer is cached once, keyed by its CertID; an oversized request is refused
/// (413) before it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_ocsp_requests_leave_the_cache_bounded() {
    use rand::RngCore as _;
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("OCC-1").await;
    let cert = iotpki_core::pem::decode_one("CERTIFICATE", &iotpki_agent::state::load(&dev).unwrap().cert_pem).unwrap();
    let issuer =
        iotpki_core::pem::decode_one("CERTIFICATE", &std::fs::read_to_string(ca.ca_file("operational")).unwrap())
            .unwrap();
    let good = iotpki_core::ocsp::request(&cert, &issuer).unwrap();
    let serial = iotpki_core::profile::cert_info(&cert).unwrap().serial;
    let serial = hex::decode(serial).unwrap();
    let at = good.windows(serial.len()).position(|w| w == serial.as_slice()).unwrap();
    let mut rng = rand::thread_rng();
    for _ in 0..2000 {
        // The same CertID but for another (never issued) serial.
        let mut junk = good.clone();
        rng.fill_bytes(&mut junk[at + 1..at + serial.len()]);
        let _ = ca.authority.ocsp(&junk);
        // And garbage.
        let mut garbage = vec![0u8; 4000];
        rng.fill_bytes(&mut garbage);
        let _ = ca.authority.ocsp(&garbage);
    }
    assert_eq!(ca.authority.ocsp_cache_size().0, 0, "nothing about unknown serials or garbage is kept");
    let a1 = ca.authority.ocsp(&good);
    let a2 = ca.authority.ocsp(&good);
    assert_eq!(a1, a2, "the second answer is the cached one");
    assert_eq!(ca.authority.ocsp_cache_size().0, 1);
    // Over the OCSP size limit: 413 with the limit, unread.
    let out = Command::new("curl")
        .args([
            "--silent",
            "--output",
            "-",
            "--write-out",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/ocsp-request",
        ])
        .args(["--data-binary", &"A".repeat(9000)])
        .arg(format!("{}/ocsp", ca.http_url))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.ends_with("413") && out.contains("at most 8192 bytes"), "{out}");
    assert_eq!(ca.authority.ocsp_cache_size().0, 1);
}

/// Issue 12 item 9 (local user): `agent enroll` takes its token from a file
/// or `$IOTPKI_TOKEN`, out of the process list; `--token` still works but
/// warns that other users can read it; a file and a flag together are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrollment_token_comes_from_a_file_or_the_environment_and_a_command_line_token_is_warned_about() {
    use crate::util::bin;
    let ca = Ca::start().await;
    let root = ca.root_file();
    let (url, tmp) = (ca.url.clone(), ca.tmp.path().to_path_buf());
    let tokens: Vec<String> = ["TF-1", "TF-2", "TF-3"].iter().map(|s| ca.token(s)).collect();
    let outs = tokio::task::spawn_blocking(move || {
        let enroll = |serial: &str| {
            let mut c = bin();
            c.args(["agent", "enroll", "--server", &url, "--serial", serial, "--ca-cert"]).arg(&root);
            c.arg("--state").arg(tmp.join(format!("dev-{serial}")));
            c.env_remove("IOTPKI_TOKEN");
            c
        };
        let file = tmp.join("token.txt");
        std::fs::write(&file, format!("{}\n", tokens[0])).unwrap();
        let by_file = enroll("TF-1").arg("--token-file").arg(&file).output().unwrap();
        let by_env = enroll("TF-2").env("IOTPKI_TOKEN", &tokens[1]).output().unwrap();
        let by_flag = enroll("TF-3").args(["--token", &tokens[2]]).output().unwrap();
        let both = enroll("TF-4").arg("--token-file").arg(&file).args(["--token", "x"]).output().unwrap();
        let none = enroll("TF-5").output().unwrap();
        [by_file, by_env, by_flag, both, none]
    })
    .await
    .unwrap();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    for (o, serial) in outs[..3].iter().zip(["TF-1", "TF-2", "TF-3"]) {
        assert!(o.status.success(), "{serial}: {}", err(o));
        let certs = ca
            .authority
            .store()
            .list_certificates(&iotpki_store::CertQuery { device_serial: Some(serial.into()), ..Default::default() })
            .unwrap();
        assert_eq!(certs.len(), 1, "{serial} enrolled");
    }
    assert!(!err(&outs[0]).contains("warning"), "{}", err(&outs[0]));
    assert!(!err(&outs[1]).contains("warning"), "{}", err(&outs[1]));
    assert!(err(&outs[2]).contains("process list"), "{}", err(&outs[2]));
    assert!(!outs[3].status.success() && err(&outs[3]).contains("--token"), "{}", err(&outs[3]));
    assert!(!outs[4].status.success() && err(&outs[4]).contains("--token-file"), "{}", err(&outs[4]));
}

/// Issue 12 item 9 (local user): `iotpki init` makes the authority's
/// directories 0700 and its store (with WAL and SHM once served) 0600.
#[test]
fn an_authority_directory_and_its_store_are_its_owners_only() {
    use crate::util::{bin, run_ok, PASS};
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    run_ok(bin().args(["init", "--dir", dir.to_str().unwrap()]).env("IOTPKI_PASSPHRASE", PASS));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for d in ["", "ca", "tls"] {
        assert_eq!(mode(&dir.join(d)), 0o700, "{d:?}");
    }
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let p = dir.join(f);
        if p.exists() || f == "store.db" {
            assert_eq!(mode(&p), 0o600, "{f}");
        }
    }
}

/// Issue 12 item 4: an authenticated station's upload is capped while it
/// streams: chunked (no Content-Length) past the sync limit gets 413 with the
/// limit; announced past it, 413 before anything is read; nothing is synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stations_upload_over_the_sync_limit_is_cut_off_while_streaming() {
    use iotpki_core::keys::Signer as _;
    let ca = Ca::start().await;
    crate::util::batch(&ca, "SL1", &["SL-1".to_string()], 1);
    let key = iotpki_core::keys::SoftKey::generate(iotpki_core::keys::KeyType::EcdsaP256).unwrap();
    let (cert, chain) = ca.authority.add_station("st-sl", &["SL1".to_string()], key.public_key_der(), "test").unwrap();
    let mut certs = vec![rustls::pki_types::CertificateDer::from(cert)];
    certs.extend(chain.into_iter().map(rustls::pki_types::CertificateDer::from));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca.authority.root_der().to_vec())).unwrap();
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(key.to_pkcs8().unwrap());
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, pkcs8.into())
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(ca.server.addr).await.unwrap();
        connector.connect(rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap()
    };
    let (certs_before, audit_before) = (ca.cert_count(), ca.audit_len());
    // Admitted (the station is who it says), then cut at 16 MiB of a chunked body.
    let (mut rd, mut wr) = tokio::io::split(connect().await);
    let writer = async move {
        let head = "POST /factory/sync?batch=SL1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = [b"10000\r\n".as_slice(), &[b'{'; 0x10000], b"\r\n"].concat();
        for _ in 0..(17 * 16) {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
    };
    let reader = async move {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut got)).await;
        String::from_utf8_lossy(&got).to_string()
    };
    let ((), answer) = tokio::join!(writer, reader);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.contains("at most 16777216 bytes"), "{answer:?}");
    // Announced over the limit: refused at the headers.
    let st = send_streaming(
        connect().await,
        "POST /factory/sync?batch=SL1 HTTP/1.1\r\nHost: x\r\nContent-Length: 16777217\r\n\r\n".into(),
        16 * 1024 * 1024 + 1,
    )
    .await;
    assert!(st.contains(" 413"), "{st:?}");
    let synced = ca.authority.store().sync_state("st-sl", "SL1").unwrap();
    assert_eq!(synced.0, 0, "nothing synced: {synced:?}");
    assert_eq!(ca.cert_count(), certs_before);
    assert_eq!(ca.audit_len(), audit_before, "a size refusal writes nothing");
}

/// Issue 12 item 5: the summed-up refusals are written by the server on its
/// schedule (every window), not only when another refusal or the shutdown comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summed_up_refusals_are_written_on_the_servers_schedule() {
    let ca = ca_with(|l| {
        l.refusal_audit_individual = 1;
        l.refusal_audit_window_secs = 1;
        l.client_rate_per_s = 0.0;
    })
    .await;
    let anchor = ca.authority.root_der().to_vec();
    let client = iotpki_agent::est_client::EstClient::new(&ca.url, None, &[anchor], None).unwrap();
    let audit = ca.audit_len();
    for i in 0..5 {
        let (status, _) = client
            .raw("POST", "simpleenroll", Some(iotpki_core::est::CT_PKCS10), b"MAA=".to_vec(), junk_basic(i, 16))
            .await
            .unwrap();
        assert_eq!(status, 401);
    }
    // The authority's clock stands still in tests: only the server's schedule writes the sum.
    let t = Instant::now();
    while ca.audit_len() < audit + 2 && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ca.audit_len(), audit + 2, "one single entry, then one sum");
    assert!(ca.last_audit().event.detail.starts_with("4 refusals (HTTP 401)"), "{:?}", ca.last_audit());
}
