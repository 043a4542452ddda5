//! pkilint (a linter we did not write) reports nothing at WARNING or above on
//! every profile we issue, nor on any signer/signee pair.

use std::path::{Path, PathBuf};
use std::process::Command;

use iotpki_core::keys::KeyType;
use iotpki_core::pem;

use crate::util::Ca;

pub(crate) fn pkilint_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("IOTPKI_PKILINT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/iotpki/venv/bin"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: run ./scripts/test, which installs pkilint (or set IOTPKI_PKILINT_DIR)",
        p.display()
    );
    p
}

pub(crate) fn lint(args: &[&Path], tool: &str) {
    // Python's own warnings (a dependency's deprecation notice) are not findings.
    let out = Command::new(pkilint_bin(tool))
        .args(["lint", "-s", "WARNING", "--document-format", "PEM"])
        .args(args)
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "{tool} {args:?}:\n{text}");
}

async fn lint_all(kt: KeyType, server_names: &[&str]) {
    let ca = Ca::start_with(iotpki_authority::init::InitOptions {
        key_type: kt,
        server_names: server_names.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await;
    let op_dev = ca.enrolled_device("LINT-1").await;
    // A birth certificate, born on the line through a station (the only way to one).
    let birth_state = ca.tmp.path().join("birth");
    crate::util::batch(&ca, "LINTB", &["LINT-2".to_string()], 1);
    let line = crate::util::station(&ca, "lint-line", &["LINTB"]);
    iotpki_station::factory::Station::open(&line, None)
        .unwrap()
        .birth("LINTB", &birth_state, "LINT-2", kt)
        .await
        .unwrap();

    let d = ca.tmp.path().join("lint");
    std::fs::create_dir_all(&d).unwrap();
    let dev_pem = |state: &Path, name: &str| {
        let p = d.join(name);
        std::fs::write(&p, iotpki_agent::state::load(state).unwrap().cert_pem).unwrap();
        p
    };
    let device = dev_pem(&op_dev, "device.pem");
    let birth = dev_pem(&birth_state, "birth.pem");
    let server_chain = std::fs::read_to_string(ca.dir.join("tls/server.crt")).unwrap();
    let server = d.join("server.pem");
    std::fs::write(&server, pem::encode("CERTIFICATE", &pem::decode_all("CERTIFICATE", &server_chain).unwrap()[0]))
        .unwrap();
    let (root, mfg, op) = (ca.ca_file("root"), ca.ca_file("manufacturing"), ca.ca_file("operational"));
    // A factory station's certificate too.
    let now = iotpki_authority::Clock::now(ca.clock.as_ref());
    let nb = iotpki_authority::factory::NewBatch::open("LINT", "p", "S-1".into(), 1, (now, now + 3600));
    iotpki_authority::factory::create_batch(ca.authority.store().as_ref(), ca.clock.as_ref(), nb, "test").unwrap();
    let station_key = iotpki_core::keys::SoftKey::generate(kt).unwrap();
    let (station_der, _) = ca
        .authority
        .add_station("lint-station", &["LINT".into()], iotpki_core::keys::Signer::public_key_der(&station_key), "test")
        .unwrap();
    let station = d.join("station.pem");
    std::fs::write(&station, pem::encode("CERTIFICATE", &station_der)).unwrap();
    // A station's delegated CA for the batch, and a device it gives birth to offline.
    let sub_key = iotpki_core::keys::SoftKey::generate(kt).unwrap();
    let sub_der = ca
        .authority
        .delegate_station("lint-station", "LINT", iotpki_core::keys::Signer::public_key_der(&sub_key), "test")
        .unwrap()
        .cert;
    let delegated = d.join("delegated.pem");
    std::fs::write(&delegated, pem::encode("CERTIFICATE", &sub_der)).unwrap();
    let sub = iotpki_core::profile::cert_info(&sub_der).unwrap();
    let dev_key = iotpki_core::keys::SoftKey::generate(kt).unwrap();
    let sn = iotpki_core::name::DeviceSerial::parse("S-1").unwrap();
    let params = iotpki_core::profile::CertParams {
        profile: iotpki_core::profile::Profile::Device,
        serial: iotpki_core::serial::system_random_serial(now).unwrap().0,
        subject: iotpki_core::name::batch_device_subject("iotpki", "LINT", &sn).unwrap(),
        spki: iotpki_core::asn1::spki::SubjectPublicKeyInfoOwned::try_from(iotpki_core::keys::Signer::public_key_der(
            &dev_key,
        ))
        .unwrap(),
        not_before: now - 60,
        not_after: sub.not_after,
        dns_names: vec![],
        ip_addrs: vec![],
        permitted_subtree: None,
    };
    let kid = sub.ski.clone().unwrap();
    let issuer = iotpki_core::profile::Issuer {
        subject: &sub.cert.tbs_certificate.subject,
        key_id: &kid,
        not_after: sub.not_after,
        signer: &sub_key,
    };
    let offline_der = iotpki_core::profile::issue(&params, &issuer).unwrap().der;
    let offline = d.join("offline.pem");
    std::fs::write(&offline, pem::encode("CERTIFICATE", &offline_der)).unwrap();
    // An admin of the admin API.
    let admin_key = iotpki_core::keys::SoftKey::generate(kt).unwrap();
    let (admin_der, _) = ca
        .authority
        .add_admin("lint-admin", iotpki_core::keys::Signer::public_key_der(&admin_key), None, "test")
        .unwrap();
    let admin = d.join("admin.pem");
    std::fs::write(&admin, pem::encode("CERTIFICATE", &admin_der)).unwrap();

    tokio::task::spawn_blocking(move || {
        for c in [&root, &mfg, &op, &device, &birth, &server, &station, &delegated, &offline, &admin] {
            lint(&[c], "lint_pkix_cert");
        }
        for (issuer, subject) in [
            (&root, &root),
            (&root, &mfg),
            (&root, &op),
            (&op, &device),
            (&op, &server),
            (&mfg, &birth),
            (&mfg, &station),
            (&op, &admin),
        ] {
            lint(&[issuer, subject], "lint_pkix_signer_signee_cert_chain");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_is_clean_p256() {
    lint_all(KeyType::EcdsaP256, &["est.iotpki.example", "127.0.0.1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_is_clean_p384() {
    lint_all(KeyType::EcdsaP384, &["127.0.0.1", "::1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_is_clean_ed25519() {
    lint_all(KeyType::Ed25519, &["127.0.0.1"]).await;
}

/// RFC 9881 certificates: every profile with ML-DSA-44 keys and signatures
/// (the station's line birth and offline sub-CA included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_is_clean_ml_dsa_44() {
    lint_all(KeyType::MlDsa44, &["127.0.0.1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_is_clean_ml_dsa_65() {
    lint_all(KeyType::MlDsa65, &["est.iotpki.example", "127.0.0.1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_is_clean_ml_dsa_87() {
    lint_all(KeyType::MlDsa87, &["127.0.0.1"]).await;
}
