//! ML-DSA (FIPS 204, RFC 9881), issue #19: every key type through the flows a
//! fleet runs, under CAs of each type: enroll and renew over TLS 1.3 (an
//! ML-DSA client certificate signs the CertificateVerify; an ML-DSA server
//! certificate, under an ML-DSA root, signs the server's), the chain the
//! device holds, revocation on the CRL and in OCSP answers the agent checks.

use iotpki_authority::init::InitOptions;
use iotpki_authority::revocation::{self, Target};
use iotpki_core::clock::Clock as _;
use iotpki_core::keys::KeyType;
use iotpki_core::{chain, pem, profile};

use crate::util::{bin, run_fail, run_ok, Ca};

/// id-kp-clientAuth.
const CLIENT_AUTH: iotpki_core::asn1::der::asn1::ObjectIdentifier =
    iotpki_core::asn1::der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

/// The device key types of the matrix.
const DEVICE_KEYS: [KeyType; 5] =
    [KeyType::EcdsaP256, KeyType::Ed25519, KeyType::MlDsa44, KeyType::MlDsa65, KeyType::MlDsa87];

fn pem_file(path: &std::path::Path) -> Vec<u8> {
    pem::decode_one("CERTIFICATE", &std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// One authority per CA key type (root, issuing CAs and the TLS server key);
/// under each, a device of every key type enrolls, renews twice (over mTLS
/// with its own key), checks its certificate in OCSP, and is revoked: the
/// CRL lists it, OCSP says so, renewal is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_key_type_enrolls_renews_and_is_revoked_under_p256_and_ml_dsa_cas() {
    for ca_kt in [KeyType::EcdsaP256, KeyType::MlDsa65, KeyType::MlDsa44] {
        let ca = Ca::start_with(InitOptions { key_type: ca_kt, ..Default::default() }).await;
        let root = ca.authority.root_der().to_vec();
        let root_info = profile::cert_info(&root).unwrap();
        assert_eq!(KeyType::of_spki(&root_info.cert.tbs_certificate.subject_public_key_info).unwrap(), ca_kt);
        let op = pem_file(&ca.ca_file("operational"));
        for (i, dev_kt) in DEVICE_KEYS.into_iter().enumerate() {
            let what = format!("CA {ca_kt}, device {dev_kt}");
            let sn = format!("PQ-{i}");
            let state = ca.tmp.path().join(&sn);
            let mut opts = ca.enroll_opts(&state, &sn, &ca.token(&sn));
            opts.key_type = dev_kt;
            let before = ca.cert_count();
            let id = iotpki_agent::enroll(&opts).await.unwrap_or_else(|e| panic!("{what}: enroll: {e}"));
            assert_eq!(ca.cert_count(), before + 1, "{what}");
            assert_eq!(iotpki_agent::status(&state).unwrap().key_type, dev_kt.to_string(), "{what}");
            let leaf = pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
            let info = profile::cert_info(&leaf).unwrap();
            assert_eq!(KeyType::of_spki(&info.cert.tbs_certificate.subject_public_key_info).unwrap(), dev_kt);
            // RFC 9881: the CA's own OID names the signature, no parameters.
            assert_eq!(info.cert.signature_algorithm, ca_kt.signature_algorithm().unwrap(), "{what}");
            let now = ca.clock.now();
            chain::verify(&leaf, std::slice::from_ref(&op), &root, now, CLIENT_AUTH)
                .unwrap_or_else(|e| panic!("{what}: chain: {e}"));

            // Renewal authenticates with the device's certificate: TLS 1.3 with its key.
            let renewed =
                iotpki_agent::renew(&state, None, None).await.unwrap_or_else(|e| panic!("{what}: renew: {e}"));
            let renewed_der = pem::decode_one("CERTIFICATE", &renewed.cert_pem).unwrap();
            let serial = profile::cert_info(&renewed_der).unwrap().serial;
            iotpki_agent::renew(&state, None, None).await.unwrap_or_else(|e| panic!("{what}: second renew: {e}"));
            let serial_now = iotpki_agent::status(&state).unwrap().cert_serial;
            assert_ne!(serial_now, serial, "{what}");

            // OCSP: the agent asks the responder its certificate names.
            let s = state.clone();
            let out = blocking(move || run_ok(bin().args(["agent", "ocsp", "--state"]).arg(&s))).await;
            assert!(out.contains(&format!("certificate {serial_now} is good")), "{what}: {out}");

            // Revoked: on the CRL (checked against the CA's key), in OCSP, and no renewal.
            let store = ca.authority.store().clone();
            revocation::revoke(store.as_ref(), ca.clock.as_ref(), Target::Serial(&serial_now), 1, "test").unwrap();
            let crl = ca.authority.crl("operational").unwrap();
            let checked = iotpki_core::crl::check(&crl, &op, ca.clock.now(), 0).unwrap();
            assert!(checked.revoked.contains(&serial_now), "{what}");
            let s = state.clone();
            let err = blocking(move || run_fail(bin().args(["agent", "ocsp", "--state"]).arg(&s))).await;
            assert!(err.contains("is REVOKED"), "{what}: {err}");
            let err = iotpki_agent::renew(&state, None, None).await.unwrap_err();
            assert!(err.to_string().contains("revoked"), "{what}: {err}");
        }
        ca.authority.store().verify_audit().unwrap();
    }
}

fn pyca(args: &[&std::path::Path]) -> (bool, String) {
    let dir = std::env::var_os("IOTPKI_PKILINT_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/iotpki/venv/bin")
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/pyca_check.py");
    let out = std::process::Command::new(dir.join("python")).arg(script).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// pyca/cryptography (>= 49, OpenSSL's ML-DSA) parses our RFC 9881
/// certificates and verifies every signature along the chains (device and
/// server), the CRL's and an OCSP answer's; a flipped signature octet fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyca_cryptography_verifies_ml_dsa_chains_crls_and_ocsp_answers() {
    for (ca_kt, dev_kt) in [
        (KeyType::MlDsa65, KeyType::MlDsa44),
        (KeyType::MlDsa87, KeyType::EcdsaP256),
        (KeyType::EcdsaP256, KeyType::MlDsa65),
    ] {
        let what = format!("CA {ca_kt}, device {dev_kt}");
        let ca = Ca::start_with(InitOptions { key_type: ca_kt, ..Default::default() }).await;
        let d = ca.tmp.path().join("pyca");
        std::fs::create_dir_all(&d).unwrap();
        let state = ca.tmp.path().join("dev");
        let mut opts = ca.enroll_opts(&state, "PY-1", &ca.token("PY-1"));
        opts.key_type = dev_kt;
        let id = iotpki_agent::enroll(&opts).await.unwrap();
        let leaf = d.join("leaf.pem");
        std::fs::write(&leaf, &id.cert_pem).unwrap();
        let server_chain = std::fs::read_to_string(ca.dir.join("tls/server.crt")).unwrap();
        let server = d.join("server.pem");
        let server_der = pem::decode_all("CERTIFICATE", &server_chain).unwrap()[0].clone();
        std::fs::write(&server, pem::encode("CERTIFICATE", &server_der)).unwrap();
        let (root, op) = (ca.ca_file("root"), ca.ca_file("operational"));
        let chain_arg = std::path::PathBuf::from("chain");
        for chain in [[&chain_arg, &root, &op, &leaf], [&chain_arg, &root, &op, &server]] {
            let (ok, text) = pyca(&chain.map(|p| p.as_path()));
            assert!(ok, "{what}: {text}");
            assert_eq!(text.lines().count(), 3, "{what}: {text}");
        }
        let (_, text) = pyca(&[std::path::Path::new("chain"), &root, &op, &leaf]);
        if let Some(level) = ca_kt.to_string().strip_prefix("ml-dsa-") {
            let want = format!("MLDSA{level}PublicKey 2.16.840.1.101.3.4.3.");
            assert!(text.lines().next().unwrap().starts_with(&want), "{what}: {text}");
        }

        // The CRL, with the device revoked; an OCSP answer about it.
        let serial = iotpki_agent::status(&state).unwrap().cert_serial;
        let store = ca.authority.store().clone();
        revocation::revoke(store.as_ref(), ca.clock.as_ref(), Target::Serial(&serial), 1, "test").unwrap();
        let crl = d.join("op.crl");
        std::fs::write(&crl, ca.authority.crl("operational").unwrap()).unwrap();
        let (ok, text) = pyca(&[std::path::Path::new("crl"), &crl, &op, std::path::Path::new(&serial)]);
        assert!(ok && text.contains(&serial), "{what}: {text}");
        let req = d.join("req.der");
        std::fs::write(
            &req,
            iotpki_core::ocsp::request(&pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap(), &pem_file(&op)).unwrap(),
        )
        .unwrap();
        let out = std::process::Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--fail",
                "-H",
                "Content-Type: application/ocsp-request",
                "--data-binary",
            ])
            .arg(format!("@{}", req.display()))
            .arg(format!("{}/ocsp", ca.http_url))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let resp = d.join("resp.der");
        std::fs::write(&resp, &out.stdout).unwrap();
        let (ok, text) = pyca(&[std::path::Path::new("ocsp"), &resp, &op]);
        assert!(ok && text.contains("REVOKED"), "{what}: {text}");

        // A flipped octet in the leaf's signature (its last octet): pyca refuses it.
        let mut bad = pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
        *bad.last_mut().unwrap() ^= 1;
        std::fs::write(&leaf, pem::encode("CERTIFICATE", &bad)).unwrap();
        let (ok, text) = pyca(&[std::path::Path::new("chain"), &root, &op, &leaf]);
        assert!(!ok && text.contains("InvalidSignature"), "{what}: {text}");
    }
}

/// The factory line and commissioning with ML-DSA: a station with an
/// ML-DSA-44 key gives birth to ML-DSA-44 devices under an ML-DSA-65
/// manufacturer; a P-256 owner commissions them over mutual TLS with their
/// ML-DSA birth certificates (an ML-DSA-44 operational key, the birth's type),
/// and the daemon renews one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_dsa_devices_are_born_on_the_line_and_commissioned_by_a_p256_owner() {
    let mfg = Ca::start_with(InitOptions { key_type: KeyType::MlDsa65, ..Default::default() }).await;
    let op = Ca::start().await;
    let serials: Vec<String> = ["PQB-1", "PQB-2"].iter().map(|s| s.to_string()).collect();
    let devs = crate::util::born_devices_kt(&mfg, "PQB", &serials, KeyType::MlDsa44).await;
    let birth = iotpki_agent::state::load(&devs[0]).unwrap();
    let birth_der = pem::decode_one("CERTIFICATE", &birth.cert_pem).unwrap();
    let info = profile::cert_info(&birth_der).unwrap();
    assert_eq!(KeyType::of_spki(&info.cert.tbs_certificate.subject_public_key_info).unwrap(), KeyType::MlDsa44);
    assert_eq!(info.cert.signature_algorithm, KeyType::MlDsa65.signature_algorithm().unwrap());

    crate::commission::trust(&op, &mfg);
    crate::commission::claim(&op, &mfg, &["PQB-1"]);
    let certs = op.cert_count();
    let id = iotpki_agent::flow::commission(&devs[0], Some(&op.url), Some(&op.root_pem), None).await.unwrap();
    assert_eq!(op.cert_count(), certs + 1);
    let opc = pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
    let opi = profile::cert_info(&opc).unwrap();
    assert_eq!(KeyType::of_spki(&opi.cert.tbs_certificate.subject_public_key_info).unwrap(), KeyType::MlDsa44);
    assert_eq!(opi.cert.signature_algorithm, KeyType::EcdsaP256.signature_algorithm().unwrap());
    // The unclaimed one is refused, nothing issued.
    let err = iotpki_agent::flow::commission(&devs[1], Some(&op.url), Some(&op.root_pem), None).await.unwrap_err();
    assert!(err.to_string().contains("not owned"), "{err}");
    assert_eq!(op.cert_count(), certs + 1);
    let renewed = iotpki_agent::renew(&devs[0], None, None).await.unwrap();
    assert_ne!(renewed.cert_pem, id.cert_pem);
    assert_eq!(op.last_audit().event.action, "reenroll");
}

/// Bytes each way through a TCP relay in front of the server.
#[derive(Clone, Default)]
struct Counted {
    up: std::sync::Arc<std::sync::atomic::AtomicU64>,
    down: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Counted {
    fn take(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.up.swap(0, SeqCst), self.down.swap(0, SeqCst))
    }
}

/// A relay on 127.0.0.1:0 to `upstream` (`https://127.0.0.1:PORT`), counting
/// payload bytes (TLS records) each way; returns its URL.
async fn counting_relay(upstream: &str, counted: Counted) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = upstream.trim_start_matches("https://").to_string();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let s = tokio::net::TcpStream::connect(&target).await.unwrap();
            let ((cr, cw), (sr, sw)) = (c.into_split(), s.into_split());
            for (mut r, mut w, n) in [
                (
                    Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    counted.up.clone(),
                ),
                (Box::new(sr), Box::new(cw), counted.down.clone()),
            ] {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    while let Ok(k) = r.read(&mut buf).await {
                        if k == 0 || w.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                        n.fetch_add(k as u64, std::sync::atomic::Ordering::SeqCst);
                    }
                    let _ = w.shutdown().await;
                });
            }
        }
    });
    url
}

/// Issue #19's measurements, for BENCHMARKS.md: per key type (CA and device
/// alike), the sizes of a device certificate and of the chains TLS sends, the
/// cost of a CRL and of each of its entries, the bytes on the wire of an
/// enrollment, a renewal and a bare mutual TLS 1.3 handshake, and how many
/// device certificates one core signs per second. Printed as a table
/// (`cargo test -p iotpki-cli --test it -- mldsa::sizes --nocapture`); the
/// assertions hold what the table says: ML-DSA costs more bytes, never fewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_and_issuance_rate_by_key_type() {
    use iotpki_agent::est_client::{ClientIdentity, EstClient};
    use iotpki_core::keys::{Signer, SoftKey};
    let mut rows = Vec::new();
    for kt in [KeyType::EcdsaP256, KeyType::MlDsa44, KeyType::MlDsa65] {
        let ca = Ca::start_with(InitOptions { key_type: kt, ..Default::default() }).await;
        let counted = Counted::default();
        let relay = counting_relay(&ca.url, counted.clone()).await;
        let state = ca.tmp.path().join("m");
        let mut opts = ca.enroll_opts(&state, "SZ-1", &ca.token("SZ-1"));
        opts.key_type = kt;
        opts.server = relay.clone();
        let settle = || tokio::time::sleep(std::time::Duration::from_millis(200));
        let id = iotpki_agent::enroll(&opts).await.unwrap();
        settle().await;
        let enroll = counted.take();
        iotpki_agent::renew(&state, None, None).await.unwrap();
        settle().await;
        let renew = counted.take();
        // A bare mutual TLS 1.3 handshake (and GET /healthz), no resumption.
        let id2 = iotpki_agent::state::load(&state).unwrap();
        let leaf = pem::decode_one("CERTIFICATE", &id2.cert_pem).unwrap();
        let chain = pem::decode_all("CERTIFICATE", &id2.chain_pem).unwrap();
        let key = iotpki_agent::keystore::Keystore::open(&state, None, None).unwrap().load(&id2.key_file).unwrap();
        let mut tls_chain = vec![leaf.clone()];
        tls_chain.extend(chain.iter().cloned());
        let identity = ClientIdentity { chain: tls_chain, key };
        let client = EstClient::new(&relay, None, &[ca.authority.root_der().to_vec()], Some(identity))
            .unwrap()
            .without_resumption();
        let (status, _) = client.get("/healthz").await.unwrap();
        assert_eq!(status, 200);
        settle().await;
        let handshake = counted.take();
        let op = pem_file(&ca.ca_file("operational"));
        let device_chain = leaf.len() + op.len();
        let server_chain = std::fs::read_to_string(ca.dir.join("tls/server.crt")).unwrap();
        let server_chain: usize = pem::decode_all("CERTIFICATE", &server_chain).unwrap().iter().map(|c| c.len()).sum();
        // CRLs signed by a key of this type: empty, and with 1000 entries.
        let crl_key = SoftKey::generate(kt).unwrap();
        let spki = iotpki_core::asn1::spki::SubjectPublicKeyInfoOwned::try_from(crl_key.public_key_der()).unwrap();
        let kid = iotpki_core::keys::key_identifier(&spki);
        let name = iotpki_core::name::NameBuilder::default().common_name("CRL CA").unwrap().build();
        let issuer = profile::Issuer { subject: &name, key_id: &kid, not_after: 2_000_000_000, signer: &crl_key };
        let entries: Vec<_> = (0..1000u32)
            .map(|i| iotpki_core::crl::Revoked {
                serial: format!("01{:030x}", u128::from(i) * 7919 + 1),
                at: 1_700_000_000,
                reason: 1,
            })
            .collect();
        let crl0 = iotpki_core::crl::build(&issuer, 1, 1_700_000_000, 1_700_086_400, &[]).unwrap().len();
        let crl1000 = iotpki_core::crl::build(&issuer, 2, 1_700_000_000, 1_700_086_400, &entries).unwrap().len();
        // Device certificates one core signs per second (the authority's signing step alone).
        let dev_spki = iotpki_core::asn1::spki::SubjectPublicKeyInfoOwned::try_from(
            SoftKey::generate(kt).unwrap().public_key_der(),
        )
        .unwrap();
        let n = 200;
        let t = std::time::Instant::now();
        for i in 0..n {
            let p = profile::CertParams {
                profile: profile::Profile::Device,
                serial: iotpki_core::serial::system_random_serial(1_700_000_000).unwrap().0,
                subject: iotpki_core::name::NameBuilder::default().common_name(&format!("d{i}")).unwrap().build(),
                spki: dev_spki.clone(),
                not_before: 1_700_000_000,
                not_after: 1_800_000_000,
                dns_names: vec![],
                ip_addrs: vec![],
                permitted_subtree: None,
            };
            profile::issue(&p, &issuer).unwrap();
        }
        let rate = f64::from(n) / t.elapsed().as_secs_f64();
        let _ = id;
        rows.push((
            kt,
            leaf.len(),
            device_chain,
            server_chain,
            crl0,
            (crl1000 - crl0) as f64 / 1000.0,
            enroll,
            renew,
            handshake,
            rate,
        ));
    }
    println!("| key type (CA and device) | device cert | device chain (leaf + CA) | server chain | empty CRL | per CRL entry | enrollment up / down | renewal up / down | mTLS handshake up / down | device certs signed / s (one core) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (kt, leaf, dc, sc, crl0, per, e, r, h, rate) in &rows {
        println!(
            "| {kt} | {leaf} | {dc} | {sc} | {crl0} | {per:.1} | {} / {} | {} / {} | {} / {} | {rate:.0} |",
            e.0, e.1, r.0, r.1, h.0, h.1
        );
    }
    let p256 = &rows[0];
    for r in &rows[1..] {
        assert!(r.1 > 3 * p256.1 && r.2 > 3 * p256.2 && r.7 .1 > 3 * p256.7 .1, "ML-DSA costs more bytes");
        assert!(r.8 .0 > 2 * p256.8 .0 && r.8 .1 > 2 * p256.8 .1, "and more handshake bytes each way");
        assert!((r.5 - p256.5).abs() < 1.0, "an entry is the same size whoever signs the CRL");
    }
    assert!(rows[2].1 > rows[1].1, "ML-DSA-65 is larger than ML-DSA-44");
}

/// DTLS has no ML-DSA: an authority whose server key is ML-DSA refuses to
/// serve EST over secure CoAP, saying why, before it binds a socket; and the
/// agent refuses to enroll an ML-DSA key over coaps before it sends anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_dsa_is_refused_over_coaps_before_anything_is_issued() {
    let ca = Ca::start_with(InitOptions { key_type: KeyType::MlDsa44, ..Default::default() }).await;
    let err = iotpki_server::Running::start_coaps(
        ca.authority.clone(),
        "127.0.0.1:0".parse().unwrap(),
        Default::default(),
        Default::default(),
    )
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("DTLS has no ml-dsa-44 signatures"), "{err}");
    let before = ca.cert_count();
    let state = ca.tmp.path().join("co");
    let mut opts = ca.enroll_opts(&state, "CO-1", &ca.token("CO-1"));
    opts.key_type = KeyType::MlDsa44;
    opts.server = "coaps://127.0.0.1:9".into();
    let err = iotpki_agent::enroll(&opts).await.unwrap_err();
    assert!(err.to_string().contains("ECDSA P-256 or P-384"), "{err}");
    assert_eq!(ca.cert_count(), before);
    assert!(!state.join("identity.json").exists());
}

/// Vouchers across algorithms: an ML-DSA-87 manufacturer hands an ML-DSA-44
/// device to an ML-DSA-65 owner by a COSE ML-DSA-signed voucher (`voucher
/// issue` signs with the root key); the owner claims by it, the device installs
/// it and commissions with that owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ml_dsa_manufacturer_hands_a_device_to_an_ml_dsa_owner_by_voucher() {
    let mfg = Ca::start_with(InitOptions { key_type: KeyType::MlDsa87, ..Default::default() }).await;
    let op = Ca::start_with(InitOptions { key_type: KeyType::MlDsa65, ..Default::default() }).await;
    let devs = crate::util::born_devices_kt(&mfg, "PQV", &["PQV-1".to_string()], KeyType::MlDsa44).await;
    let dev = devs[0].clone();
    let v = mfg.tmp.path().join("v.cbor");
    let (mdir, odir, oroot, mca, d2, v2) =
        (mfg.dir.clone(), op.dir.clone(), op.root_file(), mfg.ca_file("manufacturing"), dev.clone(), v.clone());
    tokio::task::spawn_blocking(move || {
        let pass = |c: &mut std::process::Command| {
            c.env("IOTPKI_PASSPHRASE", crate::util::PASS);
        };
        run_ok(bin().args(["trust", "add-manufacturer"]).arg("--dir").arg(&odir).arg(&mca));
        let mut c = bin();
        c.args(["voucher", "issue", "--device", "PQV-1", "--dir"])
            .arg(&mdir)
            .arg("--to")
            .arg(&oroot)
            .arg("--out")
            .arg(&v2);
        pass(&mut c);
        let out = run_ok(&mut c);
        assert!(out.contains("1 entries"), "{out}");
        let mut c = bin();
        c.args(["device", "claim", "--dir"]).arg(&odir).arg("--voucher").arg(&v2);
        pass(&mut c);
        assert!(run_ok(&mut c).contains("claimed PQV-1 by voucher"));
        let out = run_ok(bin().args(["agent", "apply", "--state"]).arg(&d2).arg(&v2));
        assert!(out.contains("ownership voucher installed (1 entries)"), "{out}");
    })
    .await
    .unwrap();
    // The voucher's signature is COSE ML-DSA-87: alg (1) => -50 (0x38 0x31) in its protected header.
    let voucher = std::fs::read(&v).unwrap();
    assert!(voucher.windows(3).any(|w| w == [0x01, 0x38, 0x31]), "ML-DSA-87 alg label");
    let id = iotpki_agent::flow::commission(&dev, Some(&op.url), Some(&op.root_pem), None).await.unwrap();
    let info = profile::cert_info(&pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap()).unwrap();
    assert_eq!(info.cert.signature_algorithm, KeyType::MlDsa65.signature_algorithm().unwrap());
    assert_eq!(op.last_audit().event.action, "commission");
}

/// pyca/cryptography, with the COSE structures decoded by cbor2, verifies every
/// signature of a trust bundle signed with COSE ML-DSA-44/65/87 and ES256 (the
/// kid of each is the SHA-256 of its signer's SPKI); one flipped octet fails it.
#[test]
fn pyca_cryptography_verifies_cose_ml_dsa_bundle_signatures() {
    use iotpki_core::bundle::{Bundle, BundleContent, UnsignedBundle};
    use iotpki_core::keys::{Signer, SoftKey};
    let tmp = tempfile::tempdir().unwrap();
    let keys: Vec<SoftKey> = [KeyType::MlDsa44, KeyType::MlDsa65, KeyType::MlDsa87, KeyType::EcdsaP256]
        .into_iter()
        .map(|k| SoftKey::generate(k).unwrap())
        .collect();
    let root = {
        let k = SoftKey::generate(KeyType::MlDsa65).unwrap();
        let spki = iotpki_core::asn1::spki::SubjectPublicKeyInfoOwned::try_from(k.public_key_der()).unwrap();
        let kid = iotpki_core::keys::key_identifier(&spki);
        let n = iotpki_core::name::NameBuilder::default().common_name("PQ Root").unwrap().build();
        let issuer = profile::Issuer { subject: &n, key_id: &kid, not_after: 2_000_000_000, signer: &k };
        let p = profile::CertParams {
            profile: profile::Profile::Root,
            serial: iotpki_core::serial::system_random_serial(1_700_000_000).unwrap().0,
            subject: n.clone(),
            spki,
            not_before: 1_700_000_000,
            not_after: 2_000_000_000,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        profile::issue(&p, &issuer).unwrap().der
    };
    let now = iotpki_authority::Clock::now(&iotpki_authority::SystemClock);
    let content = BundleContent {
        version: 1,
        issued_at: now,
        expires_at: now + 86_400,
        anchors: vec![root],
        servers: vec![],
        threshold: 4,
        signers: keys.iter().map(|k| k.public_key_der().to_vec()).collect(),
    };
    let mut b = Bundle::decode(&UnsignedBundle::new(content).unwrap().encode()).unwrap();
    for k in &keys {
        b.add_signature(k).unwrap();
    }
    let file = tmp.path().join("bundle.cbor");
    std::fs::write(&file, b.encode()).unwrap();
    let mut args = vec![std::path::PathBuf::from("bundle"), file.clone()];
    for (i, k) in keys.iter().enumerate() {
        let p = tmp.path().join(format!("k{i}.der"));
        std::fs::write(&p, k.public_key_der()).unwrap();
        args.push(p);
    }
    let refs: Vec<&std::path::Path> = args.iter().map(|p| p.as_path()).collect();
    let (ok, text) = pyca(&refs);
    assert!(ok, "{text}");
    for alg in ["alg -48 MLDSA44", "alg -49 MLDSA65", "alg -50 MLDSA87", "alg -7 "] {
        assert!(text.contains(alg), "{alg}: {text}");
    }
    let mut bad = b.encode();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&file, bad).unwrap();
    let (ok, text) = pyca(&refs);
    assert!(!ok && text.contains("InvalidSignature"), "{text}");
}

/// The command line as the issue names it: `iotpki init --key-type ml-dsa-65`,
/// `iotpki serve`, `iotpki agent enroll --key-type ml-dsa-44`, `agent renew`,
/// `agent status`; a misspelt type is refused with the list of names.
#[test]
fn the_cli_inits_an_ml_dsa_authority_and_enrolls_an_ml_dsa_device() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = dir.to_str().unwrap();
    let env = |c: &mut std::process::Command| {
        c.env("IOTPKI_PASSPHRASE", crate::util::PASS);
    };
    let mut c = bin();
    c.args(["init", "--dir", d, "--key-type", "ml-dsa-66", "--http-listen", "127.0.0.1:0"]);
    env(&mut c);
    let err = run_fail(&mut c);
    assert!(err.contains("ml-dsa-44, ml-dsa-65 or ml-dsa-87"), "{err}");
    assert!(!dir.exists(), "nothing made");
    let mut c = bin();
    c.args(["init", "--dir", d, "--key-type", "ml-dsa-65", "--http-listen", "127.0.0.1:0"]);
    env(&mut c);
    run_ok(&mut c);
    let root = pem_file(&dir.join("ca/root.crt"));
    let info = profile::cert_info(&root).unwrap();
    assert_eq!(KeyType::of_spki(&info.cert.tbs_certificate.subject_public_key_info).unwrap(), KeyType::MlDsa65);
    let mut c = bin();
    c.args(["serve", "--dir", d, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]);
    env(&mut c);
    let (_server, url) = crate::util::serve(&mut c);
    let token = run_ok(bin().args(["token", "create", "--dir", d, "--serial", "CLI-PQ"])).trim().to_string();
    let state = tmp.path().join("dev");
    let st = state.to_str().unwrap();
    let out = run_ok(bin().args(["agent", "enroll", "--state", st, "--server", &url, "--serial", "CLI-PQ"]).args([
        "--token",
        &token,
        "--ca-cert",
        dir.join("ca/root.crt").to_str().unwrap(),
        "--key-type",
        "ml-dsa-44",
    ]));
    assert!(out.contains("enrolled CLI-PQ"), "{out}");
    run_ok(bin().args(["agent", "renew", "--state", st]));
    let status = run_ok(bin().args(["agent", "status", "--state", st, "--json"]));
    assert!(status.contains("\"ml-dsa-44\""), "{status}");
    let audit = run_ok(bin().args(["audit", "verify", "--dir", d]));
    assert!(audit.contains("OK"), "{audit}");
}
