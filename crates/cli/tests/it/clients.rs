//! What third-party EST clients meet on the wire: the raw bytes of our
//! answers (header names in canonical case) and base64 bodies that strict and
//! lenient decoders alike accept.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use iotpki_core::keys::{KeyType, Signer as _, SoftKey};
use iotpki_core::name::{DeviceSerial, NameBuilder};
use iotpki_core::{csr, est, pkcs7};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::util::{run_ok, Ca};

/// One request on a fresh TLS 1.3 connection (optionally with a client
/// certificate), read to the end: the response head as sent, and the body.
async fn raw(ca: &Ca, client: Option<(&[u8], &SoftKey)>, request: &[u8]) -> (String, Vec<u8>) {
    raw_at(&ca.url, ca, client, request).await
}

/// [`raw`] to the server at `url` (another listener of the same authority).
async fn raw_at(url: &str, ca: &Ca, client: Option<(&[u8], &SoftKey)>, request: &[u8]) -> (String, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca.authority.root_der().to_vec())).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![rustls::pki_types::CertificateDer::from(cert.to_vec())],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.to_pkcs8().unwrap().into()),
            )
            .unwrap(),
    };
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("https://")).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap();
    tls.write_all(request).await.unwrap();
    tls.flush().await.unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    (String::from_utf8(all[..at + 2].to_vec()).unwrap(), all[at + 4..].to_vec())
}

fn post(path: &str, auth: Option<(&str, &str)>, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /.well-known/est/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/pkcs10\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some((u, p)) = auth {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        r.push_str(&format!("Authorization: Basic {b}\r\n"));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

/// The header names of a response head, exactly as sent.
fn names(head: &str) -> Vec<&str> {
    head.split("\r\n").skip(1).filter(|l| !l.is_empty()).map(|l| l.split(':').next().unwrap()).collect()
}

/// Every name in canonical case: each dash-separated word capitalised, except
/// the names whose canonical form is spelled otherwise (WWW-Authenticate).
fn assert_canonical(head: &str, must: &[&str]) {
    for n in names(head) {
        let ok = if n.eq_ignore_ascii_case("www-authenticate") {
            n == "WWW-Authenticate"
        } else {
            n.split('-')
                .all(|w| w.starts_with(|c: char| c.is_ascii_uppercase()) && !w[1..].contains(char::is_uppercase))
        };
        assert!(ok, "header name {n:?} is not in canonical case:\n{head}");
    }
    for m in must {
        assert!(names(head).contains(m), "{m} missing (or in another case):\n{head}");
    }
}

/// Decode `body` with GNU base64, openssl, Python and the est-ca crate's
/// decoder; all four must succeed and agree. Returns the DER.
fn decode_four_ways(dir: &Path, what: &str, body: &[u8]) -> Vec<u8> {
    let f = dir.join(format!("{what}.b64"));
    std::fs::write(&f, body).unwrap();
    let f = f.to_str().unwrap();
    let bytes = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{what}: {c:?}: {}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let gnu = bytes(Command::new("base64").args(["-d", f]));
    // -A: the input is one line (OpenSSL's line reader stops at about 1 KB otherwise).
    let ossl = bytes(Command::new("openssl").args(["base64", "-d", "-A", "-in", f]));
    let py = bytes(Command::new("python3").args([
        "-c",
        "import base64, sys; sys.stdout.buffer.write(base64.b64decode(open(sys.argv[1], 'rb').read(), validate=True))",
        f,
    ]));
    // est-ca 0.2's client (src/est/client.rs, unpack_pkcs7): base64's STANDARD
    // engine (padding required, no whitespace allowed) over the trimmed body.
    let text = String::from_utf8(body.to_vec()).unwrap();
    let est_ca = base64::engine::general_purpose::STANDARD.decode(text.trim().as_bytes()).unwrap();
    // ... and strict even without the trim: no final newline either.
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(body).unwrap(), est_ca, "{what}: untrimmed");
    assert_eq!(gnu, est_ca, "{what}: GNU base64");
    assert_eq!(ossl, est_ca, "{what}: openssl base64 -d -A");
    assert_eq!(py, est_ca, "{what}: Python b64decode(validate=True)");
    let certs = pkcs7::parse_certs_only(&est_ca).unwrap();
    assert!(!certs.is_empty(), "{what}");
    let der = dir.join(format!("{what}.p7"));
    std::fs::write(&der, &est_ca).unwrap();
    let text =
        run_ok(Command::new("openssl").args(["pkcs7", "-inform", "DER", "-print_certs", "-in", der.to_str().unwrap()]));
    assert!(text.contains("BEGIN CERTIFICATE"), "{what}: {text}");
    est_ca
}

fn leaf_for(certs: &[Vec<u8>], key: &SoftKey) -> Vec<u8> {
    certs
        .iter()
        .find(|c| {
            iotpki_core::profile::cert_info(c).unwrap().spki_sha256
                == iotpki_core::keys::spki_fingerprint(key.public_key_der())
        })
        .expect("the certificate for our key")
        .clone()
}

/// cacerts, simpleenroll and simplereenroll answers are one unbroken line of
/// RFC 4648 base64 that GNU `base64 -d`, `openssl base64 -d -A`, Python's
/// `base64.b64decode(validate=True)` and the est-ca crate's strict decoder all
/// read to the same PKCS#7; each answer's header names are in canonical case
/// on the wire, and a 401 names `WWW-Authenticate` exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_decode_with_gnu_openssl_python_and_est_ca_and_headers_are_canonical() {
    let ca = Ca::start().await;
    let dir = ca.tmp.path().to_path_buf();

    let (head, body) =
        raw(&ca, None, b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_canonical(&head, &["Content-Type", "Content-Length"]);
    decode_four_ways(&dir, "cacerts", &body);

    // simpleenroll with a token.
    let serial = DeviceSerial::parse("CLIENT-1").unwrap();
    let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let subject = iotpki_core::name::device_subject("iotpki", &serial).unwrap();
    let req = est::encode_body(&csr::build(&subject, &key, vec![]).unwrap());
    let token = ca.token("CLIENT-1");
    let (head, body) = raw(&ca, None, &post("simpleenroll", Some(("CLIENT-1", &token)), req.as_bytes())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_canonical(&head, &["Content-Type", "Content-Length"]);
    let p7 = decode_four_ways(&dir, "simpleenroll", &body);
    let cert = leaf_for(&pkcs7::parse_certs_only(&p7).unwrap(), &key);

    // simplereenroll over mutual TLS with that certificate.
    let key2 = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let req2 = est::encode_body(&csr::build(&subject, &key2, vec![]).unwrap());
    let (head, body) = raw(&ca, Some((&cert, &key)), &post("simplereenroll", None, req2.as_bytes())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_canonical(&head, &["Content-Type", "Content-Length"]);
    let p7 = decode_four_ways(&dir, "simplereenroll", &body);
    leaf_for(&pkcs7::parse_certs_only(&p7).unwrap(), &key2);

    // A request without credentials: 401 with WWW-Authenticate, spelled so.
    let (head, _) = raw(&ca, None, &post("simpleenroll", None, req.as_bytes())).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert_canonical(&head, &["WWW-Authenticate", "Content-Type", "Content-Length"]);
    assert!(head.contains("\r\nWWW-Authenticate: Basic realm="), "{head}");
}

fn cert_subject(p7: &[u8], key: &SoftKey) -> String {
    let cert = leaf_for(&pkcs7::parse_certs_only(p7).unwrap(), key);
    iotpki_core::name::to_rfc4514(&iotpki_core::profile::cert_info(&cert).unwrap().cert.tbs_certificate.subject)
}

/// A client that puts only a CN (or nothing) in its request is enrolled when
/// the token or its client certificate binds the serial: the authority writes
/// the subject. A request naming another serial is refused, with nothing
/// stored and the token still good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_with_only_a_cn_or_no_subject_enrolls_and_one_naming_another_serial_is_refused() {
    let ca = Ca::start().await;
    let b64 = |subject: &iotpki_core::asn1::x509_cert::name::Name, key: &SoftKey| {
        est::encode_body(&csr::build(subject, key, vec![]).unwrap()).into_bytes()
    };
    let body = |b: &[u8]| -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(std::str::from_utf8(b).unwrap().trim()).unwrap()
    };

    // CN only.
    let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let cn_only = NameBuilder::default().common_name("CN-ONLY-1").unwrap().build();
    let t = ca.token("CN-ONLY-1");
    let (head, p7) = raw(&ca, None, &post("simpleenroll", Some(("CN-ONLY-1", &t)), &b64(&cn_only, &key))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let p7 = body(&p7);
    assert_eq!(cert_subject(&p7, &key), "SERIALNUMBER=CN-ONLY-1,CN=CN-ONLY-1,O=iotpki");
    let cert = leaf_for(&pkcs7::parse_certs_only(&p7).unwrap(), &key);

    // No subject at all.
    let key2 = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let t = ca.token("NO-SUBJECT-1");
    let empty = NameBuilder::default().build();
    let (head, p7) = raw(&ca, None, &post("simpleenroll", Some(("NO-SUBJECT-1", &t)), &b64(&empty, &key2))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(cert_subject(&body(&p7), &key2), "SERIALNUMBER=NO-SUBJECT-1,CN=NO-SUBJECT-1,O=iotpki");

    // Another serial named: refused, nothing stored, the token still good.
    let before = ca.cert_count();
    let other = iotpki_core::name::device_subject("iotpki", &DeviceSerial::parse("SOMEONE-ELSE").unwrap()).unwrap();
    let key3 = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let t = ca.token("OTHER-1");
    let (head, text) = raw(&ca, None, &post("simpleenroll", Some(("OTHER-1", &t)), &b64(&other, &key3))).await;
    let text = String::from_utf8_lossy(&text);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(text.contains("names serialNumber=SOMEONE-ELSE, but the token is for serial OTHER-1"), "{text}");
    assert_eq!(ca.cert_count(), before, "nothing issued");
    let (head, _) = raw(&ca, None, &post("simpleenroll", Some(("OTHER-1", &t)), &b64(&cn_only, &key3))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "the token was not spent: {head}");

    // Re-enrollment naming another serial is refused, nothing stored.
    let before = ca.cert_count();
    let key5 = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let (head, text) = raw(&ca, Some((&cert, &key)), &post("simplereenroll", None, &b64(&other, &key5))).await;
    let text = String::from_utf8_lossy(&text);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(text.contains("but the current certificate is for serial CN-ONLY-1"), "{text}");
    assert_eq!(ca.cert_count(), before, "nothing issued");
    // ... and one with a CN-only request keeps the current subject.
    let key4 = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let (head, p7) = raw(&ca, Some((&cert, &key)), &post("simplereenroll", None, &b64(&cn_only, &key4))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(cert_subject(&body(&p7), &key4), "SERIALNUMBER=CN-ONLY-1,CN=CN-ONLY-1,O=iotpki");
}

/// An authority whose `operational` label also allows RSA-2048 and RSA-3072
/// device keys (the operator's edit of iotpki.toml), served on loopback.
async fn rsa_ca() -> Ca {
    use iotpki_core::clock::{Clock as _, FixedClock, SystemClock};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let pass = iotpki_authority::Passphrase::new(crate::util::PASS.into()).unwrap();
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_url = format!("http://{}", http_listener.local_addr().unwrap());
    let opts = iotpki_authority::init::InitOptions { public_http_url: Some(http_url.clone()), ..Default::default() };
    iotpki_authority::init::init(&dir, &opts, &pass, &SystemClock).unwrap();
    let cfg_path = dir.join("iotpki.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let old = "allowed_keys = [\n    \"p256\",\n    \"p384\",\n    \"ed25519\",\n";
    assert!(cfg.contains(old), "{cfg}");
    let new = format!("{old}    \"rsa-2048\",\n    \"rsa-3072\",\n");
    std::fs::write(&cfg_path, cfg.replacen(old, &new, 1)).unwrap();
    let clock = Arc::new(FixedClock::new(SystemClock.now()));
    let authority = Arc::new(iotpki_authority::Authority::open(&dir, &pass, clock.clone()).unwrap());
    let server = iotpki_server::Running::start(authority.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = server.url();
    let http = iotpki_server::Running::start_http_on(authority.clone(), http_listener).unwrap();
    let root_pem = iotpki_core::pem::encode("CERTIFICATE", authority.root_der());
    Ca { tmp, dir, authority, clock, server, url, http, http_url, root_pem }
}

/// An openssl-made RSA key of `bits` and a CSR for `cn` (CN only), base64 DER; and the key's SPKI fingerprint.
fn openssl_rsa_csr(dir: &Path, bits: u32, cn: &str) -> (Vec<u8>, String) {
    let key = dir.join(format!("rsa{bits}.pem"));
    let k = key.to_str().unwrap();
    run_ok(Command::new("openssl").args(["genrsa", "-out", k, &bits.to_string()]));
    let csr = dir.join(format!("rsa{bits}.csr"));
    let subj = format!("/CN={cn}");
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-sha256", "-key", k, "-subj", &subj, "-outform", "DER"])
            .args(["-out", csr.to_str().unwrap()]),
    );
    let spki = Command::new("openssl").args(["pkey", "-in", k, "-pubout", "-outform", "DER"]).output().unwrap().stdout;
    (est::encode_body(&std::fs::read(&csr).unwrap()).into_bytes(), iotpki_core::keys::spki_fingerprint(&spki))
}

/// RSA device keys are a label's option, off by default: an openssl-made
/// RSA-2048 request is refused by the default label and enrolled where the
/// label allows rsa-2048; RSA-1024 and RSA-4104 are refused with a reason
/// that names the size, nothing is issued and the token stays good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_device_keys_enroll_where_a_label_allows_them_and_other_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa2048, fp2048) = openssl_rsa_csr(dir.path(), 2048, "RSA-1");

    // Default configuration: not allowed.
    let plain = Ca::start().await;
    let t = plain.token("RSA-1");
    let before = plain.cert_count();
    let (head, text) = raw(&plain, None, &post("simpleenroll", Some(("RSA-1", &t)), &rsa2048)).await;
    let text = String::from_utf8_lossy(&text);
    assert!(!head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(text.contains("key type rsa-2048 is not allowed by this profile (allowed: p256, p384, ed25519, ml-dsa-44, ml-dsa-65, ml-dsa-87)"), "{text}");
    assert_eq!(plain.cert_count(), before);

    // A label that allows RSA: enrolled, for openssl's key, with our subject.
    let ca = rsa_ca().await;
    let t = ca.token("RSA-1");
    let (head, p7) = raw(&ca, None, &post("simpleenroll", Some(("RSA-1", &t)), &rsa2048)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head} {}", String::from_utf8_lossy(&p7));
    let p7 = base64::engine::general_purpose::STANDARD.decode(&p7).unwrap();
    let certs = pkcs7::parse_certs_only(&p7).unwrap();
    let info = certs.iter().map(|c| iotpki_core::profile::cert_info(c).unwrap()).find(|i| !i.is_ca).unwrap();
    assert_eq!(info.spki_sha256, fp2048);
    assert_eq!(
        iotpki_core::name::to_rfc4514(&info.cert.tbs_certificate.subject),
        "SERIALNUMBER=RSA-1,CN=RSA-1,O=iotpki"
    );

    // Too small and too large: refused, saying the size; nothing issued; the token still good.
    let t = ca.token("RSA-2");
    let before = ca.cert_count();
    for (bits, needle) in [
        (1024, "an RSA key of 1024 bits (RSA device keys are 2048 or 3072 bits"),
        (4104, "key type rsa-4104 is not allowed by this profile (allowed: p256, p384, ed25519, rsa-2048, rsa-3072, ml-dsa-44, ml-dsa-65, ml-dsa-87)"),
    ] {
        let (csr, _) = openssl_rsa_csr(dir.path(), bits, "RSA-2");
        let (head, text) = raw(&ca, None, &post("simpleenroll", Some(("RSA-2", &t)), &csr)).await;
        let text = String::from_utf8_lossy(&text);
        assert!(!head.starts_with("HTTP/1.1 200"), "{bits}: {head}");
        assert!(text.contains(needle), "{bits}: {text}");
        assert_eq!(ca.cert_count(), before, "{bits}: nothing issued");
    }
    let (rsa3072, fp3072) = openssl_rsa_csr(dir.path(), 3072, "RSA-2");
    let (head, p7) = raw(&ca, None, &post("simpleenroll", Some(("RSA-2", &t)), &rsa3072)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "the token was not spent: {head}");
    let p7 = base64::engine::general_purpose::STANDARD.decode(&p7).unwrap();
    let certs = pkcs7::parse_certs_only(&p7).unwrap();
    assert!(certs.iter().any(|c| iotpki_core::profile::cert_info(c).unwrap().spki_sha256 == fp3072));
}

/// A client over its rate gets 429 with `Retry-After` spelled so on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_names_retry_after_in_canonical_case_on_the_wire() {
    let ca = Ca::start().await;
    let limits = iotpki_server::Limits { client_rate: 0.2, client_burst: 1, ..iotpki_server::Limits::default() };
    let srv =
        iotpki_server::Running::start_with(ca.authority.clone(), "127.0.0.1:0".parse().unwrap(), limits).await.unwrap();
    let url = srv.url();
    let mut heads = Vec::new();
    for _ in 0..3 {
        heads.push(raw_at(&url, &ca, None, &post("simpleenroll", Some(("RATE-1", "nope")), b"MAA=")).await.0);
    }
    let limited = heads.iter().find(|h| h.starts_with("HTTP/1.1 429")).unwrap_or_else(|| panic!("{heads:?}"));
    assert_canonical(limited, &["Retry-After", "Content-Type", "Content-Length"]);
}
