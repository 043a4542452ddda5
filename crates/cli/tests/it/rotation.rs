//! A full root rotation: a new root is introduced by trust bundle, the server
//! switches to it, devices renew under it, and the old root is retired; the
//! devices that followed the bundles never lose contact.

use std::path::{Path, PathBuf};

use iotpki_agent::trust::{self, Applied};
use iotpki_core::bundle::{Bundle, BundleContent, UnsignedBundle};
use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::pem;

use crate::util::{bin, run_ok, serve, Server, PASS};

fn root_of(dir: &Path, file: &str) -> Vec<u8> {
    pem::decode_one("CERTIFICATE", &std::fs::read_to_string(dir.join("ca").join(file)).unwrap()).unwrap()
}

fn bundle(keys: &[SoftKey], version: u64, anchors: Vec<Vec<u8>>) -> Vec<u8> {
    let now = iotpki_authority::Clock::now(&iotpki_authority::SystemClock);
    let content = BundleContent {
        version,
        issued_at: now,
        expires_at: now + 30 * 86_400,
        anchors,
        servers: vec!["127.0.0.1".into()],
        threshold: 2,
        signers: keys.iter().map(|k| k.public_key_der().to_vec()).collect(),
    };
    let mut b = Bundle::decode(&UnsignedBundle::new(content).unwrap().encode()).unwrap();
    b.add_signature(&keys[0]).unwrap();
    b.add_signature(&keys[2]).unwrap();
    b.encode()
}

fn publish(dir: &Path, bytes: &[u8]) {
    let f = dir.join(format!("publish-{}.cbor", rand_suffix()));
    std::fs::write(&f, bytes).unwrap();
    run_ok(bin().args(["bundle", "publish", "--dir"]).arg(dir).arg(&f));
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

struct Node {
    dir: PathBuf,
    listen: String,
}

impl Node {
    fn start(&self) -> (Server, String) {
        serve(
            bin()
                .args(["serve", "--listen", &self.listen, "--http-listen", "127.0.0.1:0", "--dir"])
                .arg(&self.dir)
                .env("IOTPKI_PASSPHRASE", PASS),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_by_bundle_keeps_every_following_device_in_contact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    run_ok(bin().args(["init", "--http-listen", "127.0.0.1:0", "--dir"]).arg(&dir).env("IOTPKI_PASSPHRASE", PASS));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let node = Node { dir: dir.clone(), listen: format!("127.0.0.1:{port}") };
    let (server, url) = node.start();
    let r1 = root_of(&dir, "root.crt");
    let root_file = dir.join("ca/root.crt");
    let enroll = |serial: &str| {
        let token = run_ok(bin().args(["token", "create", "--serial", serial, "--dir"]).arg(&dir)).trim().to_string();
        iotpki_agent::EnrollOptions {
            state_dir: tmp.path().join("devices").join(serial),
            server: url.clone(),
            serial: serial.into(),
            token,
            anchor_pem: std::fs::read_to_string(&root_file).unwrap(),
            label: None,
            key_type: KeyType::EcdsaP256,
            keystore: None,
            pin_file: None,
        }
    };
    let (a, b, laggard, ahead) = (enroll("RO-A"), enroll("RO-B"), enroll("RO-LAG"), enroll("RO-AHEAD"));
    let revoked = enroll("RO-REV");
    for o in [&a, &b, &laggard, &ahead, &revoked] {
        iotpki_agent::enroll(o).await.unwrap();
    }
    let devices = [a.state_dir.clone(), b.state_dir.clone()];
    let keys: Vec<SoftKey> = (0..3).map(|_| SoftKey::generate(KeyType::EcdsaP256).unwrap()).collect();
    let b1 = bundle(&keys, 1, vec![r1.clone()]);
    publish(&dir, &b1);
    for d in devices.iter().chain(std::iter::once(&laggard.state_dir)) {
        trust::apply(d, &b1, true).unwrap();
    }

    // 1. A new root; every issuing CA certified again under it (same keys).
    let out = run_ok(bin().args(["ca", "rotate", "--dir"]).arg(&dir).env("IOTPKI_PASSPHRASE", PASS));
    assert!(out.contains("new root root-2") && out.contains("operational"), "{out}");
    let r2 = root_of(&dir, "root-2.crt");
    // 2. Devices learn it by bundle while the server still presents the old root.
    publish(&dir, &bundle(&keys, 2, vec![r1.clone(), r2.clone()]));
    for d in &devices {
        let r = trust::fetch_and_apply(d, &url).await.unwrap();
        assert!(r.iter().any(|(_, x)| matches!(x, Ok(Applied::Bundle { version: 2 }))), "{r:?}");
    }
    // A device given the bundle that retires the old root ahead of time (v3
    // drops it): its identity's anchor is the old root, but a root a bundle
    // update dropped is retired, so a server presenting it is not trusted (as
    // a leaked root's holder would present it), and it renews once the server
    // presents the new one.
    let b3 = bundle(&keys, 3, vec![r2.clone()]);
    for v in [&b1, &bundle(&keys, 2, vec![r1.clone(), r2.clone()]), &b3] {
        trust::apply(&ahead.state_dir, v, v == &b1).unwrap();
    }
    let err = iotpki_agent::renew(&ahead.state_dir, None, None).await.unwrap_err();
    assert!(err.to_string().contains("TLS") || err.to_string().contains("certificate"), "{err}");
    // The operational CA's CRL a device holds now, then a newer one (a revocation since).
    let operational_crl = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("crl-"))
            .map(|e| std::fs::read(e.path()).unwrap())
            .find(|der| iotpki_core::crl::issuer(der).unwrap().to_string().contains("Operational"))
            .expect("the operational CA's CRL is installed")
    };
    let older_crl = operational_crl(&devices[0]);
    run_ok(bin().args(["revoke", "--device", "RO-REV", "--reason", "keyCompromise", "--dir"]).arg(&dir));
    trust::fetch_and_apply(&devices[0], &url).await.unwrap();
    let newer = iotpki_core::crl::number(&operational_crl(&devices[0])).unwrap();
    assert!(newer > iotpki_core::crl::number(&older_crl).unwrap(), "a newer CRL is installed");
    // 3. The server switches to the new root (same address).
    drop(server);
    let (server, url2) = node.start();
    assert_eq!(url2, url);
    // 4. Devices renew: still in contact, and now anchored at the new root.
    for d in &devices {
        let id = iotpki_agent::renew(d, None, None).await.unwrap();
        assert_eq!(pem::decode_one("CERTIFICATE", &id.anchor_pem).unwrap(), r2, "the device follows the new root");
        let chain = pem::decode_all("CERTIFICATE", &id.chain_pem).unwrap();
        let cert = pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
        iotpki_core::chain::verify(&cert, &chain, &r2, iotpki_authority::Clock::now(&iotpki_authority::SystemClock), {
            iotpki_core::asn1::der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2")
        })
        .expect("the renewed certificate chains to the new root");
    }
    let id = iotpki_agent::renew(&ahead.state_dir, None, None).await.unwrap();
    assert_eq!(pem::decode_one("CERTIFICATE", &id.anchor_pem).unwrap(), r2, "it follows the new root");
    // Its issuing CA now certified again (new octets, same name and key), the
    // device still refuses the older CRL as a rollback.
    let err = trust::apply(&devices[0], &older_crl, false).unwrap_err();
    assert!(err.to_string().contains("rollback"), "{err}");
    // A device that missed the bundle trusts only the old root: the new server chain is foreign to it.
    let err = iotpki_agent::renew(&laggard.state_dir, None, None).await.unwrap_err();
    assert!(err.to_string().contains("TLS") || err.to_string().contains("certificate"), "{err}");

    // 5. The old root leaves the bundle, then the authority: devices keep renewing.
    publish(&dir, &b3);
    for d in &devices {
        trust::fetch_and_apply(d, &url).await.unwrap();
        let installed = Bundle::decode(&std::fs::read(d.join("bundle.cbor")).unwrap()).unwrap();
        assert_eq!(installed.content().anchors, vec![r2.clone()]);
    }
    let out = run_ok(bin().args(["ca", "retire", "--dir"]).arg(&dir));
    assert!(out.contains("retired root"), "{out}");
    drop(server);
    let (_server, _) = node.start();
    for d in &devices {
        iotpki_agent::renew(d, None, None).await.unwrap();
    }
    let audit = run_ok(bin().args(["audit", "verify", "--dir"]).arg(&dir));
    assert!(audit.contains("OK"), "{audit}");
}

/// Issue #19: the fleet moves from P-256 to ML-DSA without downtime, by the
/// same steps: `ca rotate --key-type ml-dsa-65` makes an ML-DSA root (the
/// issuing CAs certified again under it, by ML-DSA signatures), a bundle
/// announces it, the devices renew into it and into ML-DSA-44 keys of their
/// own (`agent renew --key-type`), the old P-256 root retires, and they renew again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p256_fleet_moves_to_an_ml_dsa_root_and_ml_dsa_keys_without_losing_contact() {
    moves_to_ml_dsa(false).await;
}

/// The same move with `ca rotate --new-issuing-keys`: the issuing CAs and the
/// server's TLS key move to ML-DSA-65 too (successors `operational-2` and
/// `manufacturing-2`), so that no P-256 key signs anything the fleet relies
/// on once the old root retires; the devices renew from the old CA's
/// certificates into the successor's without losing contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p256_fleet_moves_its_issuing_cas_and_server_to_ml_dsa_keys_without_losing_contact() {
    moves_to_ml_dsa(true).await;
}

async fn moves_to_ml_dsa(new_issuing_keys: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    run_ok(bin().args(["init", "--http-listen", "127.0.0.1:0", "--dir"]).arg(&dir).env("IOTPKI_PASSPHRASE", PASS));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let node = Node { dir: dir.clone(), listen: format!("127.0.0.1:{port}") };
    let (server, url) = node.start();
    let r1 = root_of(&dir, "root.crt");
    let mut devices = Vec::new();
    for serial in ["PQ-A", "PQ-B"] {
        let token = run_ok(bin().args(["token", "create", "--serial", serial, "--dir"]).arg(&dir)).trim().to_string();
        let opts = iotpki_agent::EnrollOptions {
            state_dir: tmp.path().join("devices").join(serial),
            server: url.clone(),
            serial: serial.into(),
            token,
            anchor_pem: pem::encode("CERTIFICATE", &r1),
            label: None,
            key_type: KeyType::EcdsaP256,
            keystore: None,
            pin_file: None,
        };
        iotpki_agent::enroll(&opts).await.unwrap();
        devices.push(opts.state_dir);
    }
    // The bundle signers move too: two P-256 keys and one ML-DSA-65 key, two of three.
    let keys: Vec<SoftKey> = [KeyType::MlDsa65, KeyType::EcdsaP256, KeyType::EcdsaP256]
        .into_iter()
        .map(|k| SoftKey::generate(k).unwrap())
        .collect();
    let b1 = bundle(&keys, 1, vec![r1.clone()]);
    publish(&dir, &b1);
    for d in &devices {
        trust::apply(d, &b1, true).unwrap();
    }

    let mut rotate = bin();
    rotate.args(["ca", "rotate", "--key-type", "ml-dsa-65", "--dir"]).arg(&dir).env("IOTPKI_PASSPHRASE", PASS);
    if new_issuing_keys {
        rotate.arg("--new-issuing-keys");
    }
    let out = run_ok(&mut rotate);
    assert!(out.contains("new root root-2"), "{out}");
    assert_eq!(out.contains("issuing CA operational succeeded by operational-2"), new_issuing_keys, "{out}");
    let r2 = root_of(&dir, "root-2.crt");
    let r2_info = iotpki_core::profile::cert_info(&r2).unwrap();
    assert_eq!(KeyType::of_spki(&r2_info.cert.tbs_certificate.subject_public_key_info).unwrap(), KeyType::MlDsa65);
    publish(&dir, &bundle(&keys, 2, vec![r1.clone(), r2.clone()]));
    for d in &devices {
        let r = trust::fetch_and_apply(d, &url).await.unwrap();
        assert!(r.iter().any(|(_, x)| matches!(x, Ok(Applied::Bundle { version: 2 }))), "{r:?}");
    }
    drop(server);
    let (server, _) = node.start();
    let client_auth = iotpki_core::asn1::der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");
    for d in &devices {
        let id = iotpki_agent::renew_into(d, None, None, KeyType::MlDsa44).await.unwrap();
        assert_eq!(pem::decode_one("CERTIFICATE", &id.anchor_pem).unwrap(), r2, "the device follows the ML-DSA root");
        let cert = pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
        let info = iotpki_core::profile::cert_info(&cert).unwrap();
        assert_eq!(KeyType::of_spki(&info.cert.tbs_certificate.subject_public_key_info).unwrap(), KeyType::MlDsa44);
        assert_eq!(iotpki_agent::status(d).unwrap().key_type, "ml-dsa-44");
        let chain = pem::decode_all("CERTIFICATE", &id.chain_pem).unwrap();
        let now = iotpki_authority::Clock::now(&iotpki_authority::SystemClock);
        iotpki_core::chain::verify(&cert, &chain, &r2, now, client_auth).expect("chains to the ML-DSA root");
        // Its issuer: the same P-256 operational CA certified again, or its ML-DSA-65 successor.
        let issuer = iotpki_core::profile::cert_info(&chain[0]).unwrap();
        let issuer_kt = KeyType::of_spki(&issuer.cert.tbs_certificate.subject_public_key_info).unwrap();
        let want = if new_issuing_keys { KeyType::MlDsa65 } else { KeyType::EcdsaP256 };
        assert_eq!(issuer_kt, want);
    }
    if new_issuing_keys {
        // The server's TLS key moved too: the device saw an ML-DSA-65 leaf.
        let cfg = iotpki_authority::Config::load(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(&cfg.server.cert)).unwrap();
        let leaf = iotpki_core::profile::cert_info(&pem::decode_all("CERTIFICATE", &text).unwrap()[0]).unwrap();
        assert_eq!(KeyType::of_spki(&leaf.cert.tbs_certificate.subject_public_key_info).unwrap(), KeyType::MlDsa65);
    }
    publish(&dir, &bundle(&keys, 3, vec![r2.clone()]));
    for d in &devices {
        trust::fetch_and_apply(d, &url).await.unwrap();
    }
    let out = run_ok(bin().args(["ca", "retire", "--dir"]).arg(&dir));
    assert!(out.contains("retired root"), "{out}");
    drop(server);
    let (_server, _) = node.start();
    for d in &devices {
        // Authenticated by the ML-DSA-44 key now; still ML-DSA-44 afterwards.
        let id = iotpki_agent::renew(d, None, None).await.unwrap();
        let cert = pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
        let info = iotpki_core::profile::cert_info(&cert).unwrap();
        assert_eq!(KeyType::of_spki(&info.cert.tbs_certificate.subject_public_key_info).unwrap(), KeyType::MlDsa44);
    }
    let audit = run_ok(bin().args(["audit", "verify", "--dir"]).arg(&dir));
    assert!(audit.contains("OK"), "{audit}");
}
