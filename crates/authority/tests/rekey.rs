//! `ca rotate --new-issuing-keys` (issue #19): the issuing CAs move to keys
//! of the new root's type (ML-DSA) in place. Each gets a successor that
//! issues from then on; what the old ones issued still renews, commissions
//! and is born into the successors, and their revocations still reach the
//! old CAs' CRLs, signed by the old keys.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use iotpki_authority::commission;
use iotpki_authority::factory::{self, NewBatch};
use iotpki_authority::revocation::{self, Target};
use iotpki_authority::rotation::{self, RotateOptions};
use iotpki_authority::{Authority, Caller, Config, Credential, EnrollRequest, Enrolled, Gate, Passphrase};
use iotpki_core::clock::{Clock, FixedClock, SystemClock};
use iotpki_core::csr::{self, VerifiedCsr};
use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::name::{DeviceSerial, NameBuilder};
use iotpki_core::pem;
use rustls_pki_types::CertificateDer;

const PASS: &str = "authority rekey test passphrase";

fn pass() -> Passphrase {
    Passphrase::new(PASS.into()).unwrap()
}

fn open(dir: &Path, clock: &Arc<FixedClock>) -> Authority {
    Authority::open_with_config(dir, Config::load(dir).unwrap(), &pass(), clock.clone()).unwrap()
}

fn key() -> SoftKey {
    SoftKey::generate(KeyType::EcdsaP256).unwrap()
}

fn csr_for(serial: &str, key: &SoftKey) -> VerifiedCsr {
    let n = NameBuilder::default().common_name(serial).unwrap().serial_number(&DeviceSerial::parse(serial).unwrap());
    csr::parse_and_verify(&csr::build(&n.unwrap().build(), key, vec![]).unwrap()).unwrap()
}

fn ca_file(dir: &Path, name: &str) -> Vec<u8> {
    let cfg = Config::load(dir).unwrap();
    let c = cfg.ca.iter().find(|c| c.name == name).unwrap();
    pem::decode_one("CERTIFICATE", &std::fs::read_to_string(dir.join(&c.cert)).unwrap()).unwrap()
}

fn key_type_of(der: &[u8]) -> KeyType {
    let info = iotpki_core::profile::cert_info(der).unwrap();
    KeyType::of_spki(&info.cert.tbs_certificate.subject_public_key_info).unwrap()
}

fn enrolled(a: &Authority, serial: &str) -> Enrolled {
    let token = a.create_token(&DeviceSerial::parse(serial).unwrap(), None, "test").unwrap();
    let caller = a.admit(Gate::Enroll, None, Credential::Token { user: serial, password: &token }).unwrap();
    a.enroll(None, &caller, EnrollRequest::Enroll { batch: None, activation: None }, &csr_for(serial, &key())).unwrap()
}

fn chain(leaf: &[u8], ca: &[u8]) -> Vec<CertificateDer<'static>> {
    vec![CertificateDer::from(leaf.to_vec()), CertificateDer::from(ca.to_vec())]
}

fn station(a: &Authority, name: &str, batch: &str) -> Caller {
    let (cert, rest) = a.add_station(name, &[batch.to_string()], key().public_key_der(), "test").unwrap();
    let chain: Vec<CertificateDer<'static>> = std::iter::once(cert).chain(rest).map(CertificateDer::from).collect();
    a.admit(Gate::Station("refuse.enroll"), None, Credential::ClientCert(&chain)).unwrap()
}

fn birth(a: &Authority, st: &Caller, batch: &str, serial: &str) -> Enrolled {
    let req = EnrollRequest::Enroll { batch: Some(batch), activation: None };
    a.enroll(Some("birth"), st, req, &csr_for(serial, &key())).unwrap()
}

#[test]
fn issuing_cas_move_to_ml_dsa_keys_in_place_and_what_the_old_ones_issued_renews_commissions_and_is_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    iotpki_authority::init::init(&dir, &Default::default(), &pass(), &SystemClock).unwrap();
    let clock = Arc::new(FixedClock::new(SystemClock.now()));
    let a = open(&dir, &clock);
    // Before: a device, another to revoke later, a birth on the line (its
    // station certified by the P-256 manufacturing CA), claimed for commissioning.
    let old_op = ca_file(&dir, "operational");
    let old_mfg = ca_file(&dir, "manufacturing");
    let dev = enrolled(&a, "RK-1");
    let doomed = enrolled(&a, "RK-4");
    let nb = NewBatch::open("RKB", "widget", "RK-2\nRK-3\n".into(), 2, (clock.now() - 60, clock.now() + 86_400));
    factory::create_batch(a.store().as_ref(), clock.as_ref(), nb, "test").unwrap();
    let st = station(&a, "line-rk", "RKB");
    let born = birth(&a, &st, "RKB", "RK-2");
    let mfg_pem = pem::encode("CERTIFICATE", &old_mfg);
    commission::add_manufacturer(a.store().as_ref(), clock.as_ref(), Some("own line"), &mfg_pem, "test").unwrap();
    let births = a.export_births(Some(&["RK-2".to_string()])).unwrap();
    commission::claim_devices(a.store().as_ref(), clock.as_ref(), &births, "test").unwrap();
    drop(a);

    let opts = RotateOptions { key_type: Some(KeyType::MlDsa65), new_issuing_keys: true };
    // Refused, changing nothing, while the server has a coaps listener (DTLS has no ML-DSA).
    let config = std::fs::read_to_string(dir.join("iotpki.toml")).unwrap();
    let mut cfg = Config::load(&dir).unwrap();
    cfg.server.coaps_listen = Some("127.0.0.1:0".into());
    std::fs::write(dir.join("iotpki.toml"), cfg.to_toml().unwrap()).unwrap();
    let e = rotation::rotate_with(&dir, &pass(), clock.as_ref(), "test", &opts).unwrap_err().to_string();
    assert!(e.contains("DTLS has no ML-DSA"), "{e}");
    assert!(!dir.join("ca/root-2.crt").exists());
    std::fs::write(dir.join("iotpki.toml"), config).unwrap();
    let r = rotation::rotate_with(&dir, &pass(), clock.as_ref(), "test", &opts).unwrap();
    let mut succ = r.successors.clone();
    succ.sort();
    let want = [("manufacturing", "manufacturing-2"), ("operational", "operational-2")];
    assert_eq!(succ, want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec());
    let cfg = Config::load(&dir).unwrap();
    let label_cas: Vec<(&str, &str)> = cfg.label.iter().map(|l| (l.name.as_str(), l.ca.as_str())).collect();
    assert!(label_cas.contains(&("operational", "operational-2")) && label_cas.contains(&("birth", "manufacturing-2")));
    let (op2, mfg2, root2) =
        (ca_file(&dir, "operational-2"), ca_file(&dir, "manufacturing-2"), ca_file(&dir, "root-2"));
    for der in [&op2, &mfg2, &root2] {
        assert_eq!(key_type_of(der), KeyType::MlDsa65);
    }
    // The old operational CA, certified again under the new root, is trusted only as
    // long as what it issued lives (the server's old certificate, a year), not 20 years.
    let recert = ca_file(&dir, "operational");
    let info = iotpki_core::profile::cert_info(&recert).unwrap();
    assert_eq!(
        info.cert.tbs_certificate.issuer,
        iotpki_core::profile::cert_info(&root2).unwrap().cert.tbs_certificate.subject
    );
    assert!(info.not_after <= clock.now() + 366 * 86_400, "{}", info.not_after - clock.now());
    // The server's TLS key moved too, its certificate from the operational CA's successor.
    let server = pem::decode_all("CERTIFICATE", &std::fs::read_to_string(dir.join(&cfg.server.cert)).unwrap()).unwrap();
    assert_eq!((key_type_of(&server[0]), server[1].clone()), (KeyType::MlDsa65, op2.clone()));

    let a = open(&dir, &clock);
    let now = clock.now();
    let client_auth = iotpki_core::asn1::der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");
    // The device's P-256 certificate from the old CA renews into the successor's.
    let caller =
        a.admit(Gate::Certificate("refuse.reenroll"), None, Credential::ClientCert(&chain(&dev.cert_der, &old_op)));
    let next = a.enroll(None, &caller.unwrap(), EnrollRequest::Reenroll, &csr_for("RK-1", &key())).unwrap();
    assert_eq!(a.store().certificate(&next.serial).unwrap().unwrap().ca, "operational-2");
    iotpki_core::chain::verify(&next.cert_der, std::slice::from_ref(&op2), &root2, now, client_auth)
        .expect("an ML-DSA chain");
    // A station certified by the old manufacturing CA gives birth under its successor.
    let b3 = birth(&a, &st, "RKB", "RK-3");
    assert_eq!(a.store().certificate(&b3.serial).unwrap().unwrap().ca, "manufacturing-2");
    // The birth under the old manufacturing CA commissions, into the successor's certificate.
    let caller = a.admit(Gate::Enroll, None, Credential::ClientCert(&chain(&born.cert_der, &old_mfg))).unwrap();
    let op = a
        .enroll(None, &caller, EnrollRequest::Enroll { batch: None, activation: None }, &csr_for("RK-2", &key()))
        .unwrap();
    assert_eq!(a.store().certificate(&op.serial).unwrap().unwrap().ca, "operational-2");
    // A births file names each birth's own manufacturing CA key; the successor is trusted too.
    let births = a.export_births(None).unwrap();
    let spki = |der: &[u8]| iotpki_core::profile::cert_info(der).unwrap().spki_sha256;
    assert!(births.lines().any(|l| l.starts_with("RK-2,") && l.ends_with(&spki(&old_mfg))), "{births}");
    assert!(births.lines().any(|l| l.starts_with("RK-3,") && l.ends_with(&spki(&mfg2))), "{births}");
    let trusted: Vec<String> = a.store().manufacturers().unwrap().into_iter().map(|m| m.spki_sha256).collect();
    assert!(trusted.contains(&spki(&mfg2)), "{trusted:?}");
    // A revocation of what the old CA issued is on its CRL, signed by its old key.
    revocation::revoke(a.store().as_ref(), clock.as_ref(), Target::Serial(&doomed.serial), 1, "test").unwrap();
    let crl = a.crl("operational").unwrap();
    let checked = iotpki_core::crl::check(&crl, &old_op, now, 60).unwrap();
    assert!(checked.revoked.contains(&doomed.serial), "{checked:?}");
    // A voucher for the device born under the old manufacturing CA is signed by
    // that CA's key: the one its birth chain ends in, which the device checks.
    let next_owner = key();
    let v = a
        .issue_voucher(&DeviceSerial::parse("RK-2").unwrap(), next_owner.public_key_der(), now + 3600, None, "test")
        .unwrap();
    let old_mfg_spki = iotpki_authority::trust::spki_of(&old_mfg).unwrap();
    let sn = DeviceSerial::parse("RK-2").unwrap();
    iotpki_core::voucher::verify(&v.bytes, &old_mfg_spki, &sn, &born.cert_der, now).unwrap();
    // The hand-over ends the operational certificate (the successor's), and
    // keeps the birth certificate, though the CA that signed it was succeeded.
    assert_eq!(v.revoked, vec![op.serial.clone()]);
    let status = |serial: &str| a.store().certificate(serial).unwrap().unwrap().status;
    assert!(matches!(status(&op.serial), iotpki_store::CertStatus::Revoked { reason: 3, .. }), "affiliationChanged");
    assert_eq!(status(&born.serial), iotpki_store::CertStatus::Good);
    // A label cannot go on issuing from a CA that was succeeded.
    let cfg_text = std::fs::read_to_string(dir.join("iotpki.toml")).unwrap();
    let mut cfg = Config::load(&dir).unwrap();
    cfg.label.iter_mut().find(|l| l.name == "operational").unwrap().ca = "operational".into();
    std::fs::write(dir.join("iotpki.toml"), cfg.to_toml().unwrap()).unwrap();
    let e = Config::load(&dir).unwrap_err().to_string();
    assert!(e.contains("was succeeded by CA operational-2"), "{e}");
    // Successors that lead nowhere, or in a circle, are refused when the config loads.
    let refused = |edit: &dyn Fn(&mut Config), want: &str| {
        let mut cfg: Config = toml::from_str(&cfg_text).unwrap();
        edit(&mut cfg);
        std::fs::write(dir.join("iotpki.toml"), cfg.to_toml().unwrap()).unwrap();
        let e = Config::load(&dir).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    };
    let ca = |c: &mut Config, name: &str| c.ca.iter_mut().position(|x| x.name == name).unwrap();
    refused(
        &|c| {
            let i = ca(c, "operational-2");
            c.ca[i].successor = Some("nowhere".into());
        },
        "its successor nowhere must be an issuing CA",
    );
    refused(
        &|c| {
            let i = ca(c, "operational-2");
            c.ca[i].successor = Some("operational".into());
        },
        "its successors run in a circle",
    );
}

#[test]
fn new_issuing_keys_are_refused_without_a_trace_when_a_successors_name_is_taken() {
    // An operator's config already names a CA `operational-2` (say, by hand):
    // the successor of `operational` would take that name. The rotation is
    // refused before it writes anything: no new root, no key, the same config.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    iotpki_authority::init::init(&dir, &Default::default(), &pass(), &SystemClock).unwrap();
    let clock = Arc::new(FixedClock::new(SystemClock.now()));
    let mut cfg = Config::load(&dir).unwrap();
    let mut taken = cfg.ca.iter().find(|c| c.name == "operational").unwrap().clone();
    taken.name = "operational-2".into();
    cfg.ca.push(taken);
    std::fs::write(dir.join("iotpki.toml"), cfg.to_toml().unwrap()).unwrap();
    let listing = |d: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d.join("ca"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect();
        v.push(("iotpki.toml".into(), std::fs::read(d.join("iotpki.toml")).unwrap()));
        v.sort();
        v
    };
    let recorded = || {
        let store = iotpki_authority::open_store(&dir, &Config::load(&dir).unwrap()).unwrap();
        (store.count_certificates().unwrap(), store.verify_audit().unwrap().entries)
    };
    let (before, in_store) = (listing(&dir), recorded());
    let opts = RotateOptions { key_type: Some(KeyType::MlDsa65), new_issuing_keys: true };
    let e = rotation::rotate_with(&dir, &pass(), clock.as_ref(), "test", &opts).unwrap_err().to_string();
    assert!(e.contains("its successor would be named operational-2, which the config has already"), "{e}");
    assert_eq!(listing(&dir), before, "nothing written");
    assert_eq!(recorded(), in_store, "nothing recorded");
    // Without new issuing keys there is no successor to name: the same config rotates.
    let r = rotation::rotate_with(&dir, &pass(), clock.as_ref(), "test", &RotateOptions::default()).unwrap();
    assert!(r.successors.is_empty());
    assert!(dir.join("ca/root-2.crt").exists());
}
