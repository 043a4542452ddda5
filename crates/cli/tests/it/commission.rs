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
use iotpki_core::{csr, est, pem, profile};

use crate::util::{bin, born_devices, openssl, run_fail, run_ok, Ca};

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

/// `op` claims `serials` with the births file `mfg` exports for them.
pub(crate) fn claim(op: &Ca, mfg: &Ca, serials: &[&str]) -> String {
    let f = op.tmp.path().join("births.csv");
    let list: Vec<String> = serials.iter().map(|s| s.to_string()).collect();
    std::fs::write(&f, mfg.authority.export_births(Some(&list)).unwrap()).unwrap();
    run_ok(bin().args(["device", "claim"]).arg("--dir").arg(&op.dir).arg("--births").arg(&f))
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

    let out = claim(&op, &mfg, &["CM-1"]);
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
    claim(&op, &mfg, &["RC-1"]);

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

/// Anyone holding the birth key and certificate (a copy of the device's
/// storage, a birth key leaked and not blocked yet) commissions with a fresh
/// key: the device's earlier operational certificate is revoked (superseded)
/// in the transaction that records the new one, so one serial never has two
/// good operational identities; the birth certificate stays good, and the
/// commissioning's audit entry names the birth certificate used and what it
/// revoked. A commissioning whose answer was lost (the same key asks again)
/// gets its certificate again and revokes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commissioning_again_leaves_one_good_operational_certificate() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let devs = born_devices(&mfg, "OGB", &["OG-1".to_string()]).await;
    let dev = &devs[0];
    trust(&op, &mfg);
    claim(&op, &mfg, &["OG-1"]);
    let copy = op.tmp.path().join("og-1-copy");
    crate::factory::copy_dir(dev, &copy);

    let first = commission(dev, &op).await.unwrap();
    let first_serial = iotpki_agent::status(dev).unwrap().cert_serial;
    let second = commission(&copy, &op).await.unwrap();
    let second_serial = iotpki_agent::status(&copy).unwrap().cert_serial;
    assert_ne!(first_serial, second_serial);
    assert_ne!(first.cert_pem, second.cert_pem, "a fresh key, a second certificate");

    let store = op.authority.store();
    let status = |serial: &str| store.certificate(serial).unwrap().expect("recorded").status;
    match status(&first_serial) {
        iotpki_store::CertStatus::Revoked { reason, .. } => assert_eq!(reason, 4, "superseded"),
        other => panic!("the first operational certificate must be revoked, is {other:?}"),
    }
    assert_eq!(status(&second_serial), iotpki_store::CertStatus::Good);
    let good: Vec<_> = store
        .list_certificates(&iotpki_store::CertQuery { device_serial: Some("OG-1".into()), ..Default::default() })
        .unwrap()
        .into_iter()
        .filter(|c| c.status == iotpki_store::CertStatus::Good)
        .map(|c| c.serial)
        .collect();
    assert_eq!(good, vec![second_serial.clone()], "one good certificate of the device at its owner");

    // The birth certificate (at its manufacturer) is still good.
    let birth = first.birth.clone().expect("born");
    let birth_der = pem::decode_one("CERTIFICATE", &birth.cert_pem).unwrap();
    let birth_sha = iotpki_core::keys::sha256_hex(&birth_der);
    let info = profile::cert_info(&birth_der).unwrap();
    let born = mfg.authority.store().certificate(&info.serial).unwrap().expect("the birth is recorded");
    assert_eq!(born.status, iotpki_store::CertStatus::Good, "the birth certificate stays good");

    // The audit: the commissioning names the birth certificate and what it revoked.
    let entry = op.last_audit().event;
    assert_eq!((entry.action.as_str(), entry.target.as_str()), ("commission", second_serial.as_str()));
    assert!(entry.detail.contains(&format!("birth={}", info.serial)), "{}", entry.detail);
    assert!(entry.detail.contains(&format!("birth_sha256={birth_sha}")), "{}", entry.detail);
    assert!(entry.detail.contains(&format!("superseded={first_serial}")), "{}", entry.detail);
    let n = op.audit_len();
    let before = store.audit_entries(n - 1, 1).unwrap().remove(0).event;
    assert_eq!((before.action.as_str(), before.target.as_str()), ("revoke", first_serial.as_str()));

    // The device that was superseded learns it from OCSP and commissions again:
    // the copy's certificate is revoked in turn, still one good.
    let mut seen = Vec::new();
    daemon::run(&daemon_once(dev), |e| seen.push(format!("{e:?}"))).await.unwrap();
    assert!(seen.iter().any(|s| s.contains("Recommissioned")), "{seen:?}");
    assert!(matches!(status(&second_serial), iotpki_store::CertStatus::Revoked { reason: 4, .. }));
    let third_serial = iotpki_agent::status(dev).unwrap().cert_serial;
    assert_eq!(status(&third_serial), iotpki_store::CertStatus::Good);

    // A lost answer: the same key asks again and gets the same certificate; nothing revoked or issued.
    let id = iotpki_agent::state::load(dev).unwrap();
    let key = iotpki_agent::state::load_key_file(dev, &id.key_file).unwrap();
    let birth_key = iotpki_agent::state::load_key_file(dev, &birth.key_file).unwrap();
    let mut chain = vec![birth_der.clone()];
    chain.extend(pem::decode_all("CERTIFICATE", &birth.chain_pem).unwrap());
    let roots = [op.authority.root_der().to_vec()];
    let client =
        EstClient::new(&op.url, None, &roots, Some(ClientIdentity { chain, key: Arc::new(birth_key) })).unwrap();
    let serial = DeviceSerial::parse("OG-1").unwrap();
    let subject = NameBuilder::default().common_name("OG-1").unwrap().serial_number(&serial).unwrap().build();
    let csr_der = csr::build(&subject, &key, vec![]).unwrap();
    let certs = op.cert_count();
    let again = client.simple_enroll_mtls(&csr_der).await.unwrap();
    assert_eq!(again, pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap(), "the recorded certificate again");
    assert_eq!(op.cert_count(), certs, "nothing issued");
    assert_eq!(status(&third_serial), iotpki_store::CertStatus::Good, "nothing revoked");
    let entry = op.last_audit().event;
    assert_eq!((entry.action.as_str(), entry.target.as_str()), ("commission.replay", third_serial.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commissioning_requests_that_lie_are_refused() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let devs = born_devices(&mfg, "LB", &["LI-1".to_string(), "LI-2".to_string()]).await;
    trust(&op, &mfg);
    claim(&op, &mfg, &["LI-1", "LI-2"]);
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
    // (Both serials are born at the maker, so the owner can claim their births.)
    born_devices(&mfg, "OPB", &["OPC-1".to_string(), "OPC-2".to_string()]).await;
    trust(&op, &mfg);
    claim(&op, &mfg, &["OPC-1", "OPC-2"]);
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
    crate::util::batch(&mfg, "B", &["OPC-9".to_string()], 1);
    let skey = iotpki_station::factory::new_station_key(&dir, iotpki_core::keys::KeyType::EcdsaP256).unwrap();
    let (scert, schain) =
        mfg.authority.add_station("OPC-2", &["B".to_string()], skey.public_key_der(), "test").unwrap();
    let mut chain = vec![scert];
    chain.extend(schain);
    refused(present_as_birth(&op, chain, Arc::new(skey), "OPC-2").await, 403, "is not a birth certificate");

    assert_eq!(op.cert_count(), certs, "nothing issued");
    assert_eq!(op.last_audit().event.action, "refuse.enroll");
}

fn curl_enroll(url: &str, root: &Path, chain: &Path, key: &Path, csr_b64: &Path) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--tlsv1.3", "-w", "\n%{http_code}", "--cacert"])
        .arg(root)
        .arg("--cert")
        .arg(chain)
        .arg("--key")
        .arg(key)
        .args(["-H", "Content-Type: application/pkcs10", "-H", "Content-Transfer-Encoding: base64", "--data-binary"])
        .arg(format!("@{}", csr_b64.display()))
        .arg(format!("{url}/.well-known/est/simpleenroll"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Issue 12 item 2, end to end as the attacker does it: a station delegated
/// for two serials of batch B1 has its delegated CA key stolen; openssl signs
/// with it a birth for V-1 (another batch's serial), for S-3 (batch B1, never
/// delegated) and for S-1 (delegated, but not the birth the owner claimed);
/// curl presents each chain with the attacker's key to the owner's
/// `simpleenroll`. openssl verify refuses the first two (the allowlist is
/// signed into the delegation as name constraints), the owner refuses all
/// three with the reason, nothing is stored and no ownership changes; the
/// genuine births still commission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_delegated_ca_key_mints_no_birth_an_owner_commissions() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let v1 = born_devices(&mfg, "B2", &["V-1".to_string()]).await;
    crate::util::batch(&mfg, "B1", &["S-1".into(), "S-2".into(), "S-3".into()], 3);
    let st_dir = crate::util::station(&mfg, "line-1", &["B1"]);
    let key = iotpki_station::offline::new_delegate_key(&st_dir, "B1", iotpki_core::keys::KeyType::EcdsaP256).unwrap();
    let slice = vec!["S-1".to_string(), "S-2".to_string()];
    let d = mfg.authority.delegate_station_serials("line-1", "B1", key.public_key_der(), Some(&slice), "test").unwrap();
    assert_eq!(d.allowlist, slice);
    let delegation = iotpki_core::wire::Delegation {
        batch: "B1".into(),
        organization: "iotpki".into(),
        quota: 2,
        valid_from: d.batch.valid_from,
        valid_until: d.batch.valid_until,
        allowlist: d.allowlist.clone(),
        cert_pem: pem::encode("CERTIFICATE", &d.cert),
        chain_pem: d.chain.iter().map(|c| pem::encode("CERTIFICATE", c)).collect(),
        crl_url: d.crl_url.clone(),
    };
    iotpki_station::offline::store_delegation(&st_dir, &delegation).unwrap();
    // The genuine offline birth of S-1, synced to the manufacturer.
    let st = iotpki_station::factory::Station::open_offline(&st_dir, "B1").unwrap();
    let s1 = mfg.tmp.path().join("born-S-1");
    st.birth("B1", &s1, "S-1", iotpki_core::keys::KeyType::EcdsaP256).await.unwrap();
    // The station itself refuses a serial its delegation does not name (defence in depth).
    let e = st.birth("B1", &mfg.tmp.path().join("born-S-3"), "S-3", iotpki_core::keys::KeyType::EcdsaP256).await;
    assert!(format!("{e:?}").contains("not on the allowlist"), "{e:?}");
    st.sync(&st_dir, "B1").await.unwrap();
    trust(&op, &mfg);
    claim(&op, &mfg, &["V-1", "S-1"]);

    let d_dir = op.tmp.path().join("attack");
    std::fs::create_dir_all(&d_dir).unwrap();
    let p = |n: &str| d_dir.join(n);
    let sp = |n: &str| p(n).to_str().unwrap().to_string();
    std::fs::write(p("delegated.pem"), &delegation.cert_pem).unwrap();
    std::fs::write(p("untrusted.pem"), format!("{}{}", delegation.cert_pem, delegation.chain_pem)).unwrap();
    let stolen = st_dir.join("offline/B1/key-0.pem");
    assert!(stolen.exists());
    std::fs::write(
        p("ext.cnf"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &sp("attacker.pem")]);
    let mfg_root = mfg.root_file();
    let op_root = op.root_file();
    let ownership = |s: &str| op.authority.store().ownership(s).unwrap();
    let before = (ownership("V-1"), ownership("S-1"), ownership("S-3"));
    // openssl's certificates start at the wall clock's now: the owner's test clock catches up with it.
    let catch_up = || {
        use iotpki_authority::Clock as _;
        op.clock.advance(iotpki_authority::SystemClock.now() - op.clock.now() + 1)
    };

    // (serial, openssl verify refuses it, the owner's reason)
    let cases = [
        ("V-1", true, "outside the permitted names"),
        ("S-3", true, "outside the permitted names"),
        ("S-1", false, "is not it"),
    ];
    for (serial, nc_refuses, reason) in cases {
        let subj = format!("/O=iotpki/OU=B1/CN={serial}/serialNumber={serial}");
        let csr = sp(&format!("{serial}.csr"));
        let cert = sp(&format!("{serial}.pem"));
        openssl(&["req", "-new", "-key", &sp("attacker.pem"), "-subj", &subj, "-out", &csr]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &sp("delegated.pem"),
            "-CAkey",
            stolen.to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "30",
            "-sha256",
            "-extfile",
            &sp("ext.cnf"),
            "-out",
            &cert,
        ]);
        // An independent RFC 5280 validator.
        let v = std::process::Command::new("openssl")
            .args(["verify", "-purpose", "sslclient", "-CAfile"])
            .arg(&mfg_root)
            .args(["-untrusted", &sp("untrusted.pem"), &cert])
            .output()
            .unwrap();
        let vtext = format!("{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
        assert_eq!(!v.status.success(), nc_refuses, "{serial}: openssl verify said {vtext}");
        if nc_refuses {
            assert!(vtext.contains("permitted subtree violation"), "{serial}: {vtext}");
        }
        // The CSR the device would send to its owner: base64 DER.
        let der = p(&format!("{serial}.der"));
        openssl(&["req", "-in", &csr, "-outform", "DER", "-out", der.to_str().unwrap()]);
        std::fs::write(p(&format!("{serial}.b64")), est::encode_body(&std::fs::read(&der).unwrap())).unwrap();
        std::fs::write(
            p(&format!("{serial}-chain.pem")),
            format!(
                "{}{}",
                std::fs::read_to_string(&cert).unwrap(),
                std::fs::read_to_string(p("untrusted.pem")).unwrap()
            ),
        )
        .unwrap();
        let (certs, audit) = (op.cert_count(), op.audit_len());
        catch_up();
        let (url, root, chain, key, body) = (
            op.url.clone(),
            op_root.clone(),
            p(&format!("{serial}-chain.pem")),
            p("attacker.pem"),
            p(&format!("{serial}.b64")),
        );
        let (code, text) =
            tokio::task::spawn_blocking(move || curl_enroll(&url, &root, &chain, &key, &body)).await.unwrap();
        assert_eq!(code, 403, "{serial}: {text}");
        assert!(text.contains(reason), "{serial}: {text:?} lacks {reason:?}");
        assert_eq!(op.cert_count(), certs, "{serial}: nothing issued");
        assert_eq!(op.audit_len(), audit + 1, "{serial}: the refusal is audited");
        assert_eq!((ownership("V-1"), ownership("S-1"), ownership("S-3")), before, "{serial}: no ownership changed");
    }
    // The genuine births commission.
    commission(&v1[0], &op).await.unwrap();
    commission(&s1, &op).await.unwrap();
    // And the genuine S-1 birth passes openssl verify too.
    let s1_pem = p("s1-birth.pem");
    std::fs::write(&s1_pem, iotpki_agent::state::load(&s1).unwrap().birth.unwrap().cert_pem).unwrap();
    let out = openssl(&[
        "verify",
        "-CAfile",
        mfg_root.to_str().unwrap(),
        "-untrusted",
        &sp("untrusted.pem"),
        s1_pem.to_str().unwrap(),
    ]);
    assert!(out.contains("OK"), "{out}");
}

/// A claim binds the birth, not a bare serial: `--serials` is refused with
/// what to use instead; the births file comes from `device export-births` at
/// the manufacturer; a births file naming an untrusted manufacturing CA, or a
/// second, different birth for a claimed serial, is refused whole and
/// changes nothing; a device claimed for one birth does not commission with
/// another genuine birth of the same serial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_binds_the_birth_certificate_not_a_bare_serial() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let devs = born_devices(&mfg, "BB", &["BB-1".to_string(), "BB-2".to_string()]).await;
    let births = op.tmp.path().join("births.csv");
    let pass = |c: &mut std::process::Command| {
        c.env("IOTPKI_PASSPHRASE", crate::util::PASS);
    };
    let mut export = bin();
    export.args(["device", "export-births", "--dir"]).arg(&mfg.dir).arg("--out").arg(&births);
    pass(&mut export);
    run_ok(&mut export);
    let text = std::fs::read_to_string(&births).unwrap();
    assert!(text.starts_with("# iotpki births v1\nserial,birth_sha256,manufacturer_ca_sha256\n"), "{text}");
    for (dev, sn) in devs.iter().zip(["BB-1", "BB-2"]) {
        let der = pem::decode_one("CERTIFICATE", &iotpki_agent::state::load(dev).unwrap().cert_pem).unwrap();
        let h = iotpki_core::keys::sha256_hex(&der);
        assert!(text.contains(&format!("{sn},{h},")), "{text} lacks {sn}");
    }
    let claim_file = |f: &Path| run_fail(bin().args(["device", "claim", "--dir"]).arg(&op.dir).arg("--births").arg(f));
    let audit = op.audit_len();
    // Not trusted yet: refused whole.
    let e = claim_file(&births);
    assert!(e.contains("does not trust"), "{e}");
    let plain = op.tmp.path().join("serials.txt");
    std::fs::write(&plain, "BB-1\n").unwrap();
    let e = run_fail(bin().args(["device", "claim", "--dir"]).arg(&op.dir).arg("--serials").arg(&plain));
    assert!(e.contains("a bare serial binds no birth certificate") && e.contains("--births"), "{e}");
    let e = claim_file(&plain);
    assert!(e.contains("export-births"), "{e}");
    assert_eq!(op.audit_len(), audit, "refused claims write nothing");
    assert_eq!(op.authority.store().ownership("BB-1").unwrap(), None);
    trust(&op, &mfg);
    let out = run_ok(bin().args(["device", "claim", "--dir"]).arg(&op.dir).arg("--births").arg(&births));
    assert!(out.contains("claimed 2 new device(s) of 2 listed"), "{out}");
    // The same serial again with another birth: refused, nothing changes.
    let owned = op.authority.store().ownership("BB-1").unwrap();
    let other = text.replace(&text.lines().nth(2).unwrap()[5..69], &"0".repeat(64));
    let forged = op.tmp.path().join("other.csv");
    std::fs::write(&forged, other).unwrap();
    let audit = op.audit_len();
    let e = claim_file(&forged);
    assert!(e.contains("cannot bind it to another birth"), "{e}");
    assert_eq!(op.authority.store().ownership("BB-1").unwrap(), owned);
    assert_eq!(op.audit_len(), audit);
    // The claimed births commission.
    commission(&devs[0], &op).await.unwrap();
    commission(&devs[1], &op).await.unwrap();
}

/// A claim made by bare serial before claims named the birth (a row as the
/// version-6 store left it, written here with the sqlite3 tool) binds no
/// birth: commissioning is refused with what to do and issues nothing;
/// claiming again with the births file binds it and the device commissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_serial_claim_from_an_older_store_commissions_nothing_until_claimed_with_the_birth() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let devs = born_devices(&mfg, "LGB", &["LG-1".to_string()]).await;
    trust(&op, &mfg);
    let db = op.dir.join(&op.authority.config().store.sqlite);
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("INSERT INTO owned_devices (device_serial, via, since) VALUES ('LG-1', 'claim', 1)")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let certs = op.cert_count();
    refused(commission(&devs[0], &op).await, 403, "claimed by bare serial");
    assert_eq!(op.cert_count(), certs, "nothing issued");
    let out = claim(&op, &mfg, &["LG-1"]);
    assert!(out.contains("claimed 0 new device(s) of 1 listed"), "{out}");
    let o = op.authority.store().ownership("LG-1").unwrap().unwrap();
    assert_eq!(o.since, 1, "the claim is the same, now bound to the birth");
    assert!(o.birth_sha256.is_some());
    commission(&devs[0], &op).await.unwrap();
}

/// The largest delegation (256 serials signed into the delegated CA, about
/// 18 KB) still fits a device's TLS chain: a birth it signed commissions over
/// mutual TLS 1.3 at its owner's, and openssl verifies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_birth_under_the_largest_delegation_commissions_over_tls() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let list: Vec<String> =
        (0..iotpki_authority::factory::MAX_DELEGATED_SERIALS).map(|i| format!("BIG-{i:04}")).collect();
    crate::util::batch(&mfg, "BIG", &list, list.len() as u64);
    let st_dir = crate::util::station(&mfg, "line-big", &["BIG"]);
    let key = iotpki_station::offline::new_delegate_key(&st_dir, "BIG", iotpki_core::keys::KeyType::EcdsaP256).unwrap();
    let d = mfg.authority.delegate_station("line-big", "BIG", key.public_key_der(), "test").unwrap();
    assert_eq!(d.allowlist.len(), list.len());
    assert!(d.cert.len() > 16_000, "{}", d.cert.len());
    let delegation = iotpki_core::wire::Delegation {
        batch: "BIG".into(),
        organization: "iotpki".into(),
        quota: 1,
        valid_from: d.batch.valid_from,
        valid_until: d.batch.valid_until,
        allowlist: d.allowlist.clone(),
        cert_pem: pem::encode("CERTIFICATE", &d.cert),
        chain_pem: d.chain.iter().map(|c| pem::encode("CERTIFICATE", c)).collect(),
        crl_url: d.crl_url.clone(),
    };
    iotpki_station::offline::store_delegation(&st_dir, &delegation).unwrap();
    let st = iotpki_station::factory::Station::open_offline(&st_dir, "BIG").unwrap();
    let dev = mfg.tmp.path().join("big-last");
    st.birth("BIG", &dev, &list[255], iotpki_core::keys::KeyType::EcdsaP256).await.unwrap();
    st.sync(&st_dir, "BIG").await.unwrap();
    let id = iotpki_agent::state::load(&dev).unwrap();
    let (leaf, chain) = (mfg.tmp.path().join("big.pem"), mfg.tmp.path().join("big-chain.pem"));
    std::fs::write(&leaf, &id.cert_pem).unwrap();
    std::fs::write(&chain, &id.chain_pem).unwrap();
    let out = openssl(&[
        "verify",
        "-CAfile",
        mfg.root_file().to_str().unwrap(),
        "-untrusted",
        chain.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    assert!(out.contains(": OK"), "{out}");
    trust(&op, &mfg);
    claim(&op, &mfg, &[list[255].as_str()]);
    commission(&dev, &op).await.unwrap();
}

/// A birth key found in a firmware image (blocked at the owner, who never
/// certified it), or the manufacturer's CA key blocked: the birth certificate
/// commissions nothing, and the refusal says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_birth_key_or_manufacturer_key_commissions_nothing() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let serials: Vec<String> = ["BK-1", "BK-2"].iter().map(|s| s.to_string()).collect();
    let devs = born_devices(&mfg, "BKB", &serials).await;
    trust(&op, &mfg);
    claim(&op, &mfg, &["BK-1", "BK-2"]);
    let birth_key = iotpki_agent::state::load(&devs[0]).unwrap().key_file;
    let certs = op.cert_count();
    run_ok(
        bin()
            .args(["key", "block", "--reason", "found in fw.bin", "--dir"])
            .arg(&op.dir)
            .arg("--key")
            .arg(devs[0].join(&birth_key)),
    );
    let before = state_bytes(&devs[0]);
    refused(commission(&devs[0], &op).await, 403, "is blocked as compromised (found in fw.bin)");
    assert_eq!(state_bytes(&devs[0]), before);
    assert_eq!(op.cert_count(), certs);
    // The other device commissions, until the manufacturer's CA key is blocked.
    commission(&devs[1], &op).await.unwrap();
    run_ok(bin().args(["key", "block", "--dir"]).arg(&op.dir).arg("--cert").arg(mfg.ca_file("manufacturing")));
    let born = iotpki_agent::state::load(&devs[1]).unwrap().birth.expect("the birth is kept");
    assert!(devs[1].join(&born.key_file).exists());
    // Re-commissioning with the birth certificate (a lost operational certificate) is refused now.
    let id = iotpki_agent::state::load(&devs[1]).unwrap();
    std::fs::remove_file(devs[1].join(&id.key_file)).ok();
    refused(commission(&devs[1], &op).await, 403, "is blocked as compromised");
}
