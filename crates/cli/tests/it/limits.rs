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
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(100), tls.read(&mut buf)).await {
            // Closed, or an error answer (408) instead of waiting for the rest.
            if matches!(r, Ok(_) | Err(_)) {
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
