//! EST with `curl` and `openssl` alone, as a plain client would do it
//! (RFC 7030 with the RFC 8951 base64 rules); results checked by openssl.

use std::path::Path;
use std::process::Command;

use crate::util::{openssl, run_ok, Ca};

fn curl(args: &[&str]) -> String {
    run_ok(Command::new("curl").args(["--silent", "--show-error", "--fail-with-body", "--tlsv1.3"]).args(args))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The steps as a shell user would type them; blocking, so run off the async workers.
fn curl_openssl_session(
    url: String,
    root: std::path::PathBuf,
    op_ca: std::path::PathBuf,
    d: std::path::PathBuf,
    token: String,
) {
    let est = format!("{url}/.well-known/est");
    // cacerts: base64 PKCS#7 -> PEM certificates.
    curl(&["--cacert", s(&root), "-o", s(&d.join("cacerts.b64")), &format!("{est}/cacerts")]);
    openssl(&["base64", "-d", "-A", "-in", s(&d.join("cacerts.b64")), "-out", s(&d.join("cacerts.p7"))]);
    let text = openssl(&["pkcs7", "-inform", "DER", "-in", s(&d.join("cacerts.p7")), "-print_certs"]);
    assert!(text.contains("Operational CA") && text.contains("Root CA"), "{text}");

    // simpleenroll: key and CSR by openssl, body base64 WITHOUT line breaks (RFC 8951 allows both).
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", s(&d.join("key.pem"))]);
    openssl(&[
        "req",
        "-new",
        "-key",
        s(&d.join("key.pem")),
        "-subj",
        "/CN=OSSL-1/serialNumber=OSSL-1",
        "-outform",
        "DER",
        "-out",
        s(&d.join("csr.der")),
    ]);
    openssl(&["base64", "-A", "-in", s(&d.join("csr.der")), "-out", s(&d.join("csr.b64"))]);
    curl(&[
        "--cacert",
        s(&root),
        "-u",
        &format!("OSSL-1:{token}"),
        "-H",
        "Content-Type: application/pkcs10",
        "-H",
        "Content-Transfer-Encoding: base64",
        "--data-binary",
        &format!("@{}", s(&d.join("csr.b64"))),
        "-o",
        s(&d.join("cert.b64")),
        &format!("{est}/simpleenroll"),
    ]);
    openssl(&["base64", "-d", "-A", "-in", s(&d.join("cert.b64")), "-out", s(&d.join("cert.p7"))]);
    openssl(&["pkcs7", "-inform", "DER", "-in", s(&d.join("cert.p7")), "-print_certs", "-out", s(&d.join("cert.pem"))]);
    let v = openssl(&[
        "verify",
        "-CAfile",
        s(&root),
        "-untrusted",
        s(&op_ca),
        "-purpose",
        "sslclient",
        s(&d.join("cert.pem")),
    ]);
    assert!(v.contains(": OK"), "{v}");
    // The certificate is for openssl's key.
    let a = openssl(&["x509", "-in", s(&d.join("cert.pem")), "-noout", "-pubkey"]);
    let b = openssl(&["pkey", "-in", s(&d.join("key.pem")), "-pubout"]);
    assert_eq!(a, b);
    let t = openssl(&["x509", "-in", s(&d.join("cert.pem")), "-noout", "-text"]);
    assert!(t.contains("TLS Web Client Authentication"), "{t}");
    assert!(t.contains("serialNumber"), "{t}");

    // simplereenroll over mutual TLS with curl; the new CSR names the same subject,
    // encoded the way openssl encodes it; body wrapped at 64 columns this time.
    let subj = openssl(&["x509", "-in", s(&d.join("cert.pem")), "-noout", "-subject", "-nameopt", "compat"]);
    let subj = subj.trim().trim_start_matches("subject=").trim().to_string();
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", s(&d.join("key2.pem"))]);
    openssl(&[
        "req",
        "-new",
        "-key",
        s(&d.join("key2.pem")),
        "-subj",
        &subj,
        "-outform",
        "DER",
        "-out",
        s(&d.join("csr2.der")),
    ]);
    openssl(&["base64", "-in", s(&d.join("csr2.der")), "-out", s(&d.join("csr2.b64"))]);
    curl(&[
        "--cacert",
        s(&root),
        "--cert",
        s(&d.join("cert.pem")),
        "--key",
        s(&d.join("key.pem")),
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        &format!("@{}", s(&d.join("csr2.b64"))),
        "-o",
        s(&d.join("cert2.b64")),
        &format!("{est}/simplereenroll"),
    ]);
    openssl(&["base64", "-d", "-A", "-in", s(&d.join("cert2.b64")), "-out", s(&d.join("cert2.p7"))]);
    openssl(&[
        "pkcs7",
        "-inform",
        "DER",
        "-in",
        s(&d.join("cert2.p7")),
        "-print_certs",
        "-out",
        s(&d.join("cert2.pem")),
    ]);
    let v = openssl(&["verify", "-CAfile", s(&root), "-untrusted", s(&op_ca), s(&d.join("cert2.pem"))]);
    assert!(v.contains(": OK"), "{v}");
    let a = openssl(&["x509", "-in", s(&d.join("cert2.pem")), "-noout", "-pubkey"]);
    let b = openssl(&["pkey", "-in", s(&d.join("key2.pem")), "-pubout"]);
    assert_eq!(a, b);

    // openssl s_client speaks TLS 1.3 with the authority and verifies its
    // certificate; it prefers AES-256, the server chooses AES-128 (SHA-256).
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            url.trim_start_matches("https://"),
            "-tls1_3",
            "-ciphersuites",
            "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
            "-CAfile",
            s(&root),
            "-verify_return_error",
            "-brief",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLSv1.3") && err.contains("Verification: OK"), "{err}");
    assert!(err.contains("Ciphersuite: TLS_AES_128_GCM_SHA256"), "{err}");
    // And refuses TLS 1.2.
    let out = Command::new("openssl")
        .args(["s_client", "-connect", url.trim_start_matches("https://"), "-tls1_2", "-CAfile", s(&root)])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "TLS 1.2 must be refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_enroll_and_reenroll() {
    let ca = Ca::start().await;
    let d = ca.tmp.path().join("ossl");
    std::fs::create_dir_all(&d).unwrap();
    let token = ca.token("OSSL-1");
    let (url, root, op) = (ca.url.clone(), ca.root_file(), ca.ca_file("operational"));
    tokio::task::spawn_blocking(move || curl_openssl_session(url, root, op, d, token)).await.unwrap();
    let certs = ca
        .authority
        .store()
        .list_certificates(&iotpki_store::CertQuery { device_serial: Some("OSSL-1".into()), ..Default::default() });
    assert_eq!(certs.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_keys_are_encrypted_pkcs8_that_openssl_reads() {
    let ca = Ca::start().await;
    let key = ca.dir.join("ca/operational.key");
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let dir = ca.dir.clone();
    tokio::task::spawn_blocking(move || {
        // Without the passphrase openssl cannot read it; with it, the key matches the CA certificate.
        let out = Command::new("openssl")
            .args(["pkey", "-in", s(&dir.join("ca/operational.key")), "-passin", "pass:wrong-passphrase", "-pubout"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let a = openssl(&[
            "pkey",
            "-in",
            s(&dir.join("ca/operational.key")),
            "-passin",
            &format!("pass:{}", crate::util::PASS),
            "-pubout",
        ]);
        let b = openssl(&["x509", "-in", s(&dir.join("ca/operational.crt")), "-noout", "-pubkey"]);
        assert_eq!(a, b);
        let v = openssl(&["verify", "-CAfile", s(&dir.join("ca/root.crt")), s(&dir.join("ca/manufacturing.crt"))]);
        assert!(v.contains(": OK"));
    })
    .await
    .unwrap();
}

/// The server sends no TLS 1.3 session tickets, so a client that keeps what
/// it is given (rustls's default cache) makes a full handshake on its next
/// connection: a renewal is one connection, and the agent's other flows keep
/// theirs for all their calls (`it::metrics::an_agents_flow_makes_one_tls_connection_and_the_server_counts_each`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sends_no_session_tickets_and_a_second_connection_makes_a_full_handshake() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ca = Ca::start().await;
    let addr = ca.url.trim_start_matches("https://").to_string();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca.authority.root_der().to_vec())).unwrap();
    let cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ); // Resumption as rustls has it by default: a cache of 256 sessions.
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp).await.unwrap();
        kinds.push(tls.get_ref().1.handshake_kind());
        // A whole answer read: any ticket, sent before it, has reached the client's cache.
        let req = "GET /.well-known/est/cacerts HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    }
    let full = Some(rustls::HandshakeKind::Full);
    assert_eq!(kinds, vec![full, full], "no ticket to resume with");
}

/// Devices live 15 years: what they say over TLS today must stay secret from a
/// future quantum computer. Our client (the agent's rustls configuration) and
/// our server agree on the hybrid X25519MLKEM768; a peer without it gets X25519.
/// The server picks TLS_AES_128_GCM_SHA256 whatever the client prefers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_key_exchange_is_hybrid_post_quantum_with_our_devices() {
    use std::sync::Arc;
    let ca = Ca::start().await;
    let addr = ca.url.trim_start_matches("https://").to_string();
    // A handshake of a rustls client with `provider`: the key exchange group and
    // the cipher suite the server chose.
    let handshake = |provider: rustls::crypto::CryptoProvider| {
        let (addr, root) = (addr.clone(), ca.authority.root_der().to_vec());
        async move {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(rustls::pki_types::CertificateDer::from(root)).unwrap();
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap();
            let c = tls.get_ref().1;
            (c.negotiated_key_exchange_group().map(|g| g.name()), c.negotiated_cipher_suite().map(|s| s.suite()))
        }
    };
    // The cipher suite is the server's choice: SHA-256's key schedule first.
    let suites = |cipher_suites| rustls::crypto::CryptoProvider {
        cipher_suites,
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    use rustls::crypto::aws_lc_rs::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
    assert_eq!(
        handshake(suites(vec![TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256])).await.1,
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
        "the server's order, not the client's"
    );
    assert_eq!(
        handshake(suites(vec![TLS13_AES_256_GCM_SHA384])).await.1,
        Some(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384),
        "a client without AES-128 still connects"
    );
    // What the agent uses: rustls's aws-lc-rs provider as our build configures it.
    let ours = rustls::crypto::aws_lc_rs::default_provider();
    assert_eq!(ours.kx_groups[0].name(), rustls::NamedGroup::X25519MLKEM768, "preferred by our devices");
    assert_eq!(handshake(ours).await.0, Some(rustls::NamedGroup::X25519MLKEM768));
    // The device's small build (ring): the agent's own X25519MLKEM768 (ML-KEM from
    // RustCrypto) against the server's (aws-lc's), and nothing else to fall back on.
    let device = rustls::crypto::CryptoProvider {
        kx_groups: vec![iotpki_agent::hybrid_kx::X25519MLKEM768],
        ..rustls::crypto::ring::default_provider()
    };
    assert_eq!(handshake(device).await.0, Some(rustls::NamedGroup::X25519MLKEM768));
    let classic = rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    assert_eq!(handshake(classic).await.0, Some(rustls::NamedGroup::X25519), "an older peer still connects");
}
