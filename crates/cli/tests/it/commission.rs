//! Commissioning in the field: a device born at a manufacturer gets its
//! operational certificate from its owner's authority, keeps it renewed with
//! `agent run`, and comes back with its birth certificate when it loses it.

use std::path::Path;
use std::sync::Arc;

use iotpki_agent::daemon::{self, RunOptions};
use iotpki_agent::est_client::{ClientIdentity, EstClient};
use iotpki_agent::AgentError;
use iotpki_authority::revocation::{self, Target};
use iotpki_core::keys::{Signer, SoftKey};
use iotpki_core::name::{DeviceSerial, NameBuilder};
use iotpki_core::{csr, pem, profile};

use crate::util::{bin, born_devices, run_fail, run_ok, Ca};

fn state_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("identity.json")).unwrap()
}

fn issuer_of(dir: &Path) -> String {
    let id = iotpki_agent::state::load(dir).unwrap();
    let der = pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
    profile::cert_info(&der).unwrap().cert.tbs_certificate.issuer.to_string()
}

async fn commission(dev: &Path, op: &Ca) -> Result<iotpki_agent::Identity, AgentError> {
    iotpki_agent::flow::commission(dev, Some(&op.url), Some(&op.root_pem), None).await
}

fn refused(r: Result<impl std::fmt::Debug, AgentError>, status: u16, needle: &str) {
    match r {
        Err(AgentError::Refused { status: s, reason }) => {
            assert_eq!(s, status, "{reason}");
            assert!(reason.contains(needle), "reason {reason:?} should mention {needle:?}");
        }
        other => panic!("expected HTTP {status} ({needle}), got {other:?}"),
    }
}

pub(crate) fn trust(op: &Ca, mfg: &Ca) {
    let out = run_ok(
        bin()
            .args(["trust", "add-manufacturer", "--name", "acme"])
            .arg("--dir")
            .arg(&op.dir)
            .arg(mfg.ca_file("manufacturing")),
    );
    assert!(out.contains("trusted manufacturer acme"), "{out}");
}

pub(crate) fn claim(op: &Ca, serials: &[&str]) -> String {
    let f = op.tmp.path().join("claims.txt");
    std::fs::write(&f, format!("# claim list\n{}\n\n", serials.join("\n"))).unwrap();
    run_ok(bin().args(["device", "claim"]).arg("--dir").arg(&op.dir).arg("--serials").arg(&f))
}

fn daemon_once(dev: &Path) -> RunOptions {
    let mut o = RunOptions::new(dev.to_path_buf());
    // Due one second or so after notBefore (which is backdated a minute): due now.
    o.renew_share = 1e-7;
    o.jitter_share = 0.0;
    o.once = true;
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_commissions_devices_born_elsewhere_and_only_those() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let serials: Vec<String> = ["CM-1", "CM-2"].iter().map(|s| s.to_string()).collect();
    let devs = born_devices(&mfg, "CMB", &serials).await;
    let dev = &devs[0];
    let before = state_bytes(dev);
    let certs = op.cert_count();

    // Nothing trusted yet, then trusted but not owned: refused, nothing changes anywhere.
    refused(commission(dev, &op).await, 403, "trusts no manufacturer");
    trust(&op, &mfg);
    let err =
        run_fail(bin().args(["trust", "add-manufacturer"]).arg("--dir").arg(&op.dir).arg(mfg.ca_file("manufacturing")));
    assert!(err.contains("trusted already"), "{err}");
    refused(commission(dev, &op).await, 403, "not owned by this authority");
    assert_eq!(state_bytes(dev), before, "a refusal leaves the device's state as it was");
    assert_eq!(op.cert_count(), certs, "and the authority's store");
    assert_eq!(op.last_audit().event.action, "refuse.enroll");

    let out = claim(&op, &["CM-1"]);
    assert!(out.contains("claimed 1 new device(s) of 1 listed"), "{out}");
    let id = commission(dev, &op).await.unwrap();
    assert_eq!(id.server, op.url);
    assert!(issuer_of(dev).contains("Operational CA"), "{}", issuer_of(dev));
    let birth = id.birth.clone().expect("the birth credential is kept");
    assert!(dev.join(&birth.key_file).exists(), "the birth key is kept for re-commissioning");
    assert_ne!(birth.key_file, id.key_file, "a fresh key");
    assert_eq!(op.cert_count(), certs + 1);
    assert_eq!(op.last_audit().event.action, "commission");

    // The other device is not claimed; a device of an untrusted manufacturer is refused.
    refused(commission(&devs[1], &op).await, 403, "not owned");
    let stranger = Ca::start().await;
    let other = born_devices(&stranger, "XB", &["CM-1".to_string()]).await;
    refused(commission(&other[0], &op).await, 403, "does not chain to a trusted manufacturer");

    // The daemon renews over mutual TLS with the operational certificate.
    let n = daemon::run(&daemon_once(dev), |_| {}).await.unwrap();
    assert_eq!(n, 1);
    let after = iotpki_agent::state::load(dev).unwrap();
    assert_eq!(after.renewals, 1);
    assert_eq!(after.birth, id.birth);
    assert_eq!(op.last_audit().event.action, "reenroll");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_certificate_is_recovered_with_the_birth_certificate_unless_the_device_is_revoked() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let devs = born_devices(&mfg, "RCB", &["RC-1".to_string()]).await;
    let dev = &devs[0];
    trust(&op, &mfg);
    claim(&op, &["RC-1"]);

    commission(dev, &op).await.unwrap();
    let first = iotpki_agent::state::load(dev).unwrap();

    // The operational certificate is revoked (say, suspected key compromise): the
    // renewal is refused, and the daemon comes back through its birth certificate.
    let serial = iotpki_agent::status(dev).unwrap().cert_serial;
    revocation::revoke(op.authority.store().as_ref(), op.clock.as_ref(), Target::Serial(&serial), 1, "test").unwrap();
    let mut seen = Vec::new();
    daemon::run(&daemon_once(dev), |e| seen.push(format!("{e:?}"))).await.unwrap();
    assert!(seen.iter().any(|s| s.contains("Recommissioned")), "{seen:?}");
    let second = iotpki_agent::state::load(dev).unwrap();
    assert_ne!(second.cert_pem, first.cert_pem);
    assert_eq!(op.last_audit().event.action, "commission");

    // Revoked as a device: renewal and re-commissioning are both refused; nothing changes.
    let out = run_ok(bin().args(["revoke", "--device", "RC-1", "--reason", "keyCompromise"]).arg("--dir").arg(&op.dir));
    assert!(out.contains("revoked"), "{out}");
    let before = state_bytes(dev);
    let certs = op.cert_count();
    refused(daemon::step(&daemon_once(dev)).await, 403, "device RC-1 is revoked by this authority");
    assert_eq!(state_bytes(dev), before);
    assert_eq!(op.cert_count(), certs);
    let shown = run_ok(bin().args(["device", "show", "RC-1"]).arg("--dir").arg(&op.dir));
    assert!(shown.starts_with("ownership: revoked"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commissioning_requests_that_lie_are_refused() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let devs = born_devices(&mfg, "LB", &["LI-1".to_string(), "LI-2".to_string()]).await;
    trust(&op, &mfg);
    claim(&op, &["LI-1", "LI-2"]);
    let id = iotpki_agent::state::load(&devs[0]).unwrap();
    let birth = id.birth.clone().unwrap();
    let key: Arc<dyn Signer> = Arc::new(iotpki_agent::state::load_key_file(&devs[0], &birth.key_file).unwrap());
    let mut chain = vec![pem::decode_one("CERTIFICATE", &birth.cert_pem).unwrap()];
    chain.extend(pem::decode_all("CERTIFICATE", &birth.chain_pem).unwrap());
    let client = EstClient::new(
        &op.url,
        None,
        &[op.authority.root_der().to_vec()],
        Some(ClientIdentity { chain, key: key.clone() }),
    )
    .unwrap();
    let certs = op.cert_count();
    let csr_for = |serial: &str, k: &dyn Signer| {
        let sn = DeviceSerial::parse(serial).unwrap();
        let subject = NameBuilder::default().common_name(serial).unwrap().serial_number(&sn).unwrap().build();
        csr::build(&subject, k, vec![]).unwrap()
    };
    // Another device's serial (LI-2 is owned too), and the birth key itself.
    let fresh = SoftKey::generate(iotpki_core::keys::KeyType::EcdsaP256).unwrap();
    refused(client.simple_enroll_mtls(&csr_for("LI-2", &fresh)).await, 403, "the birth certificate is for serial LI-1");
    refused(client.simple_enroll_mtls(&csr_for("LI-1", key.as_ref())).await, 403, "fresh key");
    assert_eq!(op.cert_count(), certs, "nothing issued");
    // The right request works.
    client.simple_enroll_mtls(&csr_for("LI-1", &fresh)).await.unwrap();
    assert_eq!(op.cert_count(), certs + 1);
}

/// Present `chain` (leaf first) with `key` to `op`'s `simpleenroll` as a birth
/// certificate, asking for an operational certificate for `serial`.
async fn present_as_birth(
    op: &Ca,
    chain: Vec<Vec<u8>>,
    key: Arc<dyn Signer>,
    serial: &str,
) -> Result<Vec<u8>, AgentError> {
    let client =
        EstClient::new(&op.url, None, &[op.authority.root_der().to_vec()], Some(ClientIdentity { chain, key }))
            .unwrap();
    let sn = DeviceSerial::parse(serial).unwrap();
    let subject = NameBuilder::default().common_name(serial).unwrap().serial_number(&sn).unwrap().build();
    let fresh = SoftKey::generate(iotpki_core::keys::KeyType::EcdsaP256).unwrap();
    client.simple_enroll_mtls(&csr::build(&subject, &fresh, vec![]).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_makers_root_or_operational_ca_is_no_manufacturer_and_its_other_certificates_are_no_births() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let audit = op.audit_len();
    // The maker's root would make every certificate of the maker a birth; its operational
    // CA issues operational certificates. Both refused, with the reason; nothing stored.
    for (file, needle) in [(mfg.root_file(), "self-issued"), (mfg.ca_file("operational"), "pathLenConstraint 0")] {
        let err =
            run_fail(bin().args(["trust", "add-manufacturer", "--name", "acme"]).arg("--dir").arg(&op.dir).arg(&file));
        assert!(err.contains("not a manufacturing CA") && err.contains(needle), "{err}");
    }
    assert!(op.authority.store().manufacturers().unwrap().is_empty(), "no manufacturer stored");
    assert_eq!(op.audit_len(), audit, "nothing audited as added");

    // With the manufacturing CA trusted and the serials claimed: an operational
    // certificate the maker issued (token enrollment at the maker) is not a birth.
    trust(&op, &mfg);
    claim(&op, &["OPC-1", "OPC-2"]);
    let certs = op.cert_count();
    let dev = mfg.enrolled_device("OPC-1").await;
    let id = iotpki_agent::state::load(&dev).unwrap();
    let key: Arc<dyn Signer> = Arc::new(iotpki_agent::state::load_key_file(&dev, &id.key_file).unwrap());
    let mut chain = vec![pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap()];
    chain.extend(pem::decode_all("CERTIFICATE", &id.chain_pem).unwrap());
    refused(present_as_birth(&op, chain, key, "OPC-1").await, 403, "does not chain to a trusted manufacturer");

    // A station certificate the manufacturing CA itself signed chains to the trusted
    // CA, and is still not a birth.
    let dir = op.tmp.path().join("maker-station");
    crate::util::batch(&mfg, "B", &["OPC-2".to_string()], 1);
    let skey = iotpki_agent::factory::new_station_key(&dir, iotpki_core::keys::KeyType::EcdsaP256).unwrap();
    let (scert, schain) =
        mfg.authority.add_station("OPC-2", &["B".to_string()], skey.public_key_der(), "test").unwrap();
    let mut chain = vec![scert];
    chain.extend(schain);
    refused(present_as_birth(&op, chain, Arc::new(skey), "OPC-2").await, 403, "is not a birth certificate");

    assert_eq!(op.cert_count(), certs, "nothing issued");
    assert_eq!(op.last_audit().event.action, "refuse.enroll");
}
