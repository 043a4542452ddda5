//! Matter device attestation: a PAA and a PAI made with the CLI, a batch with
//! `--profile matter-dac`, real station births over EST, and every DAC, PAI
//! and PAA checked by our checker (written from the Matter core
//! specification's rules), openssl (-x509_strict) and pkilint. And the
//! refusals: nothing a Matter batch's rules forbid is signed or stored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use iotpki_authority::init::InitOptions;
use iotpki_authority::{Authority, Passphrase};
use iotpki_core::clock::{Clock, FixedClock, SystemClock};
use iotpki_core::keys::{KeyType, Signer as _, SoftKey};
use iotpki_core::matter::{self, Kind};
use iotpki_core::pem;
use iotpki_server::Running;
use iotpki_station::factory::Station;
use iotpki_store::BatchProfile;

use crate::util::{bin, openssl, run_fail, run_ok, station, Ca, PASS};

/// An authority with a Matter PAA and a PAI for vendor FFF1, both made by
/// `iotpki matter paa|pai` before the server starts, and its server.
async fn matter_ca() -> Ca {
    let tmp = tempfile::tempdir().unwrap();
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_url = format!("http://{}", http_listener.local_addr().unwrap());
    let opts = InitOptions { public_http_url: Some(http_url.clone()), ..Default::default() };
    let dir = tmp.path().join("ca");
    let pass = Passphrase::new(PASS.into()).unwrap();
    iotpki_authority::init::init(&dir, &opts, &pass, &SystemClock).unwrap();
    let d = dir.to_str().unwrap();
    // A PAI before the PAA: refused, nothing made.
    let e = run_fail(bin().env("IOTPKI_PASSPHRASE", PASS).args(["matter", "pai", "--dir", d, "--vendor-id", "FFF1"]));
    assert!(e.contains("no Matter PAA yet"), "{e}");
    let paa = run_ok(bin().env("IOTPKI_PASSPHRASE", PASS).args(["matter", "paa", "--dir", d]));
    assert!(paa.trim().ends_with("matter-paa.crt"), "{paa}");
    let e = run_fail(bin().env("IOTPKI_PASSPHRASE", PASS).args(["matter", "paa", "--dir", d]));
    assert!(e.contains("has a Matter PAA already"), "{e}");
    for bad in ["0000", "FFF5", "FFF", "XYZW"] {
        let e = run_fail(bin().env("IOTPKI_PASSPHRASE", PASS).args(["matter", "pai", "--dir", d, "--vendor-id", bad]));
        assert!(e.contains("vendor id"), "{bad}: {e}");
    }
    run_ok(bin().env("IOTPKI_PASSPHRASE", PASS).args(["matter", "pai", "--dir", d, "--vendor-id", "FFF1"]));
    let e = run_fail(bin().env("IOTPKI_PASSPHRASE", PASS).args(["matter", "pai", "--dir", d, "--vendor-id", "fff1"]));
    assert!(e.contains("exists already"), "{e}");
    let clock = Arc::new(FixedClock::new(SystemClock.now()));
    let authority = Arc::new(Authority::open(&dir, &pass, clock.clone()).unwrap());
    let server = Running::start(authority.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = server.url();
    let http = Running::start_http_on(authority.clone(), http_listener).unwrap();
    let root_pem = pem::encode("CERTIFICATE", authority.root_der());
    std::fs::write(tmp.path().join("root.pem"), &root_pem).unwrap();
    Ca { tmp, dir, authority, clock, server, url, http, http_url, root_pem }
}

/// A batch window around the test's fixed clock (the CLI reads the system's).
const FROM: &str = "2020-01-01T00:00:00Z";
const UNTIL: &str = "2099-01-01T00:00:00Z";

/// `iotpki batch create --profile matter-dac` in `dir`: the batch's id, as printed.
fn matter_batch(dir: &str, id: &str, product: &str, list: &Path, quota: u32, vendor: &str, product_id: &str) -> String {
    let quota = quota.to_string();
    let list = list.to_str().unwrap();
    run_ok(bin().args(["batch", "create", "--dir", dir, "--id", id, "--product", product, "--serials", list]).args([
        "--quota",
        &quota,
        "--from",
        FROM,
        "--until",
        UNTIL,
        "--profile",
        "matter-dac",
        "--vendor-id",
        vendor,
        "--product-id",
        product_id,
    ]))
}

fn serials_file(ca: &Ca, name: &str, serials: &[&str]) -> PathBuf {
    let p = ca.tmp.path().join(name);
    std::fs::write(&p, serials.join("\n")).unwrap();
    p
}

fn pem_file(dir: &Path, name: &str, der: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem::encode("CERTIFICATE", der)).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matter_batch_gives_birth_to_dacs_that_the_spec_checker_openssl_and_pkilint_accept() {
    let ca = matter_ca().await;
    let d = ca.dir.to_str().unwrap().to_string();
    let list = serials_file(&ca, "m.csv", &["M-001", "M-002"]);
    let out = matter_batch(&d, "M1", "light", &list, 2, "FFF1", "8000");
    assert_eq!(out.trim(), "M1");
    let b = ca.authority.store().batch("M1").unwrap().unwrap();
    assert_eq!(b.profile, BatchProfile::MatterDac { vendor_id: 0xFFF1, product_id: 0x8000 });
    let shown = run_ok(bin().args(["batch", "show", "--dir", &d, "M1", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        (v["profile"].as_str(), v["vendor_id"].as_str(), v["product_id"].as_str()),
        (Some("matter-dac"), Some("FFF1"), Some("8000"))
    );
    assert!(run_ok(bin().args(["batch", "list", "--dir", &d])).contains("matter-dac FFF1/8000"));
    let audit = ca.last_audit();
    assert_eq!(audit.event.action, "batch.create");
    assert!(audit.event.detail.contains("profile=matter-dac vendor_id=FFF1 product_id=8000"), "{}", audit.event.detail);

    // A real station birth over EST: the simulated device makes its P-256 key and request,
    // the station enrolls it for batch M1, the device checks the DAC against the PAI and PAA.
    let st = Station::open(&station(&ca, "m-line", &["M1"]), None).unwrap();
    let dev = ca.tmp.path().join("dut-M-001");
    let cert_serial = st.birth("M1", &dev, "M-001", KeyType::EcdsaP256).await.unwrap();
    let state = iotpki_agent::state::load(&dev).unwrap();
    let dac = pem::decode_one("CERTIFICATE", &state.cert_pem).unwrap();
    let pai = pem::decode_one("CERTIFICATE", &state.chain_pem).unwrap();
    let paa = pem::decode_one("CERTIFICATE", &state.anchor_pem).unwrap();
    let rec = ca.authority.store().certificate(&cert_serial).unwrap().unwrap();
    assert_eq!((rec.profile.as_str(), rec.ca.as_str()), ("matter-dac", "matter-pai-FFF1"));
    assert_eq!(rec.der, dac);
    assert_eq!(ca.authority.store().batch("M1").unwrap().unwrap().issued, 1);
    let birth = ca.last_audit();
    assert_eq!(birth.event.action, "birth");
    assert!(birth.event.detail.contains("profile=matter-dac issuer=matter-pai-FFF1"), "{}", birth.event.detail);
    // The subject carries CN, the VID and the PID as the spec says.
    let subject = iotpki_core::profile::cert_info(&dac).unwrap().cert.tbs_certificate.subject;
    assert_eq!(matter::ids_of(&subject), (Some("FFF1".into()), Some("8000".into())));

    // `iotpki matter show` exports what the device holds: the PAA first, then the PAI.
    let shown = run_ok(bin().args(["matter", "show", "--dir", &d]));
    assert_eq!(pem::decode_all("CERTIFICATE", &shown).unwrap(), vec![paa.clone(), pai.clone()]);
    let paa_only = run_ok(bin().args(["matter", "show", "--dir", &d, "--paa-only"]));
    assert_eq!(pem::decode_all("CERTIFICATE", &paa_only).unwrap(), vec![paa.clone()]);

    // Our checker, from the spec's rules: each certificate and the chain.
    assert_eq!(matter::check(&dac, Kind::Dac), vec![]);
    assert_eq!(matter::check(&pai, Kind::Pai), vec![]);
    assert_eq!(matter::check(&paa, Kind::Paa), vec![]);
    assert_eq!(matter::check_chain(&dac, &pai, &paa, Some(ca.clock.now())), vec![]);
    let w = ca.tmp.path().join("matter");
    std::fs::create_dir_all(&w).unwrap();
    let (dac_f, pai_f, paa_f) =
        (pem_file(&w, "dac.pem", &dac), pem_file(&w, "pai.pem", &pai), pem_file(&w, "paa.pem", &paa));
    let (df, pf, af) = (dac_f.to_str().unwrap(), pai_f.to_str().unwrap(), paa_f.to_str().unwrap());
    let checked = run_ok(bin().args(["matter", "check", df, pf, af]));
    assert!(checked.contains("chain DAC -> PAI -> PAA: conforms"), "{checked}");
    // The CLI checker fails on certificates that break a rule: the manufacturing CA
    // (a CA, so checked as a PAI) has path length 1 and no Vendor ID.
    let mfg = ca.ca_file("manufacturing");
    let bad = run_ok_or_fail(bin().args(["matter", "check", mfg.to_str().unwrap()]));
    assert!(bad.contains("[path-length, Matter 6.2.2.4]") && bad.contains("[vid-missing"), "{bad}");
    assert!(bad.contains("Pai BROKEN"), "{bad}");

    // openssl, strict X.509: the DAC chains to the PAA through the PAI.
    let (df2, pf2, af2) = (df.to_string(), pf.to_string(), af.to_string());
    let v = tokio::task::spawn_blocking(move || {
        openssl(&["verify", "-x509_strict", "-CAfile", &af2, "-untrusted", &pf2, &df2])
    })
    .await
    .unwrap();
    assert!(v.contains(": OK"), "{v}");

    // pkilint (RFC 5280): each certificate, and each signer/signee pair.
    for f in [&dac_f, &pai_f, &paa_f] {
        crate::pkilint::lint(&[f], "lint_pkix_cert");
    }
    crate::pkilint::lint(&[&pai_f, &dac_f], "lint_pkix_signer_signee_cert_chain");
    crate::pkilint::lint(&[&paa_f, &pai_f], "lint_pkix_signer_signee_cert_chain");

    // An admin sees the profile in the console's batch list, and creates a Matter batch
    // through the admin API with the same fields as the CLI.
    let admin = ca.tmp.path().join("admin-ops");
    run_ok(bin().env("IOTPKI_PASSPHRASE", PASS).args(["admin", "add", "ops", "--dir", &d, "--out"]).arg(&admin));
    let (crt, key) = (admin.join("admin.crt"), admin.join("admin.key"));
    let curl = |method: &str, path: &str, body: Option<&str>| {
        let mut c = std::process::Command::new("curl");
        c.args(["--silent", "--show-error", "--tlsv1.3", "--fail-with-body", "-X", method, "--cacert"])
            .arg(ca.root_file())
            .arg("--cert")
            .arg(&crt)
            .arg("--key")
            .arg(&key);
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        run_ok(c.arg(format!("{}{path}", ca.url)))
    };
    let page = curl("GET", "/console/batches", None);
    assert!(page.contains("matter-dac (VID FFF1, PID 8000)"), "{page}");
    let made = curl(
        "POST",
        "/admin/v1/batches",
        Some(
            r#"{"id":"M2","product":"plug","serials":["M-101"],"quota":1,"profile":"matter-dac","vendor_id":"FFF1","product_id":"8001"}"#,
        ),
    );
    let v: serde_json::Value = serde_json::from_str(&made).unwrap();
    assert_eq!((v["profile"].as_str(), v["product_id"].as_str()), (Some("matter-dac"), Some("8001")), "{made}");
    assert_eq!(
        ca.authority.store().batch("M2").unwrap().unwrap().profile,
        BatchProfile::MatterDac { vendor_id: 0xFFF1, product_id: 0x8001 }
    );

    // A PAI is not revoked by `iotpki revoke` (no CRL is published for it): refused, unchanged.
    let pai_serial = iotpki_core::profile::cert_info(&pai).unwrap().serial;
    let e = run_fail(bin().args(["revoke", "--dir", &d, "--serial", &pai_serial]));
    assert!(e.contains("revoking a PAA or a PAI is not supported"), "{e}");
    let rec = ca.authority.store().certificate(&pai_serial).unwrap().unwrap();
    assert_eq!(rec.status, iotpki_store::CertStatus::Good);
    ca.authority.store().verify_audit().unwrap();
}

/// `cmd`'s stdout and stderr, whether it failed or not (it must not crash).
fn run_ok_or_fail(c: &mut std::process::Command) -> String {
    let out = c.output().unwrap();
    assert!(!out.status.success(), "a certificate that is no Matter certificate passed the checker");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// An authority with a PAI for FFF1, batch MX (matter-dac, FFF1/8000, serials
/// N-001..3, created with the CLI), batch PLAIN (a device batch, P-001), and a
/// station for each: `mx-line` and `plain-line`.
async fn two_batches() -> (Ca, Station, Station) {
    let ca = matter_ca().await;
    let d = ca.dir.to_str().unwrap().to_string();
    let list = serials_file(&ca, "m.csv", &["N-001", "N-002", "N-003"]);
    matter_batch(&d, "MX", "light", &list, 3, "FFF1", "8000");
    crate::util::batch(&ca, "PLAIN", &["P-001".to_string()], 1);
    let plain = Station::open(&station(&ca, "plain-line", &["PLAIN"]), None).unwrap();
    let mx = Station::open(&station(&ca, "mx-line", &["MX"]), None).unwrap();
    (ca, plain, mx)
}

/// Certificates stored, and births counted in MX.
fn state(ca: &Ca) -> (u64, u64) {
    (ca.cert_count(), ca.authority.store().batch("MX").unwrap().unwrap().issued)
}

fn no_cert_for(ca: &Ca, serial: &str) -> bool {
    let q = iotpki_store::CertQuery { device_serial: Some(serial.into()), ..Default::default() };
    ca.authority.store().list_certificates(&q).unwrap().is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_matter_ids_are_refused_and_no_batch_is_stored() {
    let ca = matter_ca().await;
    let d = ca.dir.to_str().unwrap().to_string();
    let list = serials_file(&ca, "m.csv", &["N-001"]);
    let l = list.to_str().unwrap().to_string();
    let create = |extra: &[&str]| {
        let mut c = bin();
        c.args(["batch", "create", "--dir", &d, "--id", "MX", "--product", "light", "--serials", &l, "--quota", "1"]);
        c.args(extra);
        c
    };
    let (certs, audit) = (ca.cert_count(), ca.audit_len());
    // Invalid vendor or product ids, ids without the profile, the profile without ids,
    // a vendor this authority has no PAI for: each refused, no batch stored.
    for (extra, says) in [
        (&["--profile", "matter-dac", "--vendor-id", "0000", "--product-id", "8000"][..], "vendor id"),
        (&["--profile", "matter-dac", "--vendor-id", "FFFF", "--product-id", "8000"], "vendor id"),
        (&["--profile", "matter-dac", "--vendor-id", "FF1", "--product-id", "8000"], "four hex digits"),
        (&["--profile", "matter-dac", "--vendor-id", "FFF1", "--product-id", "0000"], "product id"),
        (&["--profile", "matter-dac", "--vendor-id", "FFF1", "--product-id", "80001"], "four hex digits"),
        (&["--vendor-id", "FFF1", "--product-id", "8000"], "--profile matter-dac"),
        (&["--profile", "matter-dac", "--vendor-id", "FFF1"], "needs --vendor-id and --product-id"),
        (&["--profile", "matter-dac", "--vendor-id", "FFF2", "--product-id", "8000"], "no PAI for vendor id FFF2"),
        (&["--profile", "matter-pai"], "invalid value"),
    ] {
        let e = run_fail(&mut create(extra));
        assert!(e.contains(says), "{extra:?}: {e}");
        assert!(ca.authority.store().batch("MX").unwrap().is_none(), "{extra:?}");
    }
    assert_eq!((ca.cert_count(), ca.audit_len()), (certs, audit), "nothing stored");
    // Lowercase is accepted on input, written uppercase.
    run_ok(&mut create(&["--profile", "matter-dac", "--vendor-id", "fff1", "--product-id", "800a"]));
    let b = ca.authority.store().batch("MX").unwrap().unwrap();
    assert_eq!(b.profile, BatchProfile::MatterDac { vendor_id: 0xFFF1, product_id: 0x800A });
}

/// A station authorised for a device batch only asks a birth under the Matter
/// batch: refused (not its batch), no DAC, nothing stored; its own batch's
/// births stay birth certificates under the manufacturing CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_of_a_normal_batch_cannot_get_a_dac() {
    let (ca, plain, _) = two_batches().await;
    let start = state(&ca);
    let e = plain.birth("MX", &ca.tmp.path().join("dut-X1"), "N-002", KeyType::EcdsaP256).await.unwrap_err();
    match &e {
        iotpki_agent::AgentError::Refused { status, reason } => assert_eq!(*status, 403, "{reason}"),
        other => panic!("{other}"),
    }
    assert_eq!(state(&ca), start);
    assert!(no_cert_for(&ca, "N-002"));
    let serial = plain.birth("PLAIN", &ca.tmp.path().join("dut-P"), "P-001", KeyType::EcdsaP256).await.unwrap();
    let rec = ca.authority.store().certificate(&serial).unwrap().unwrap();
    assert_eq!((rec.profile.as_str(), rec.ca.as_str()), ("device", "manufacturing"));
    let subject = iotpki_core::profile::cert_info(&rec.der).unwrap().cert.tbs_certificate.subject;
    assert_eq!(matter::ids_of(&subject), (None, None));
}

/// The Matter batch's own station sends a P-384 and an Ed25519 device key:
/// refused with a 4xx that names P-256 (Matter 6.2.2.3), nothing stored; then
/// a P-256 key is certified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matter_station_cannot_get_a_non_p256_key_certified() {
    let (ca, _, mx) = two_batches().await;
    let start = state(&ca);
    for kt in [KeyType::EcdsaP384, KeyType::Ed25519] {
        let e = mx.birth("MX", &ca.tmp.path().join(format!("dut-{kt}")), "N-003", kt).await.unwrap_err();
        match &e {
            iotpki_agent::AgentError::Refused { status, reason } => {
                assert!((400..500).contains(status), "{kt}: {status} {reason}");
                assert!(reason.contains("P-256"), "{kt}: {reason}");
            }
            other => panic!("{kt}: {other}"),
        }
        assert_eq!(state(&ca), start, "{kt}");
        assert!(no_cert_for(&ca, "N-003"));
    }
    mx.birth("MX", &ca.tmp.path().join("dut-N3"), "N-003", KeyType::EcdsaP256).await.unwrap();
    assert_eq!(state(&ca).1, 1);
}

/// An offline station's delegated CA cannot sit under a PAI (pathLen 0): the
/// delegation of a Matter batch is refused, nothing signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matter_batch_cannot_be_delegated_to_an_offline_station() {
    let (ca, _, _) = two_batches().await;
    let start = state(&ca);
    let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let e = ca.authority.delegate_station("mx-line", "MX", key.public_key_der(), "test").unwrap_err();
    assert!(e.to_string().contains("online only"), "{e}");
    assert_eq!(e.http_status(), 403);
    assert_eq!(state(&ca), start);
    assert!(ca.authority.store().delegation("mx-line", "MX").unwrap().is_none());
}

/// A PAI made while the server runs is in the store (a batch for its vendor can
/// be created) but its key is not loaded: births are refused with what to do,
/// nothing is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pai_made_after_the_server_started_signs_nothing_until_a_restart() {
    let ca = matter_ca().await;
    let d = ca.dir.to_str().unwrap().to_string();
    run_ok(bin().env("IOTPKI_PASSPHRASE", PASS).args(["matter", "pai", "--dir", &d, "--vendor-id", "FFF2"]));
    let list = serials_file(&ca, "late.csv", &["L-001"]);
    matter_batch(&d, "LATE", "light", &list, 1, "FFF2", "8000");
    let st = Station::open(&station(&ca, "late-line", &["LATE"]), None).unwrap();
    let certs = ca.cert_count();
    let e = st.birth("LATE", &ca.tmp.path().join("dut-L"), "L-001", KeyType::EcdsaP256).await.unwrap_err();
    match &e {
        iotpki_agent::AgentError::Refused { status, reason } => {
            assert_eq!(*status, 403, "{reason}");
            assert!(reason.contains("no PAI for it loaded") && reason.contains("restart"), "{reason}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(ca.cert_count(), certs);
    assert_eq!(ca.authority.store().batch("LATE").unwrap().unwrap().issued, 0);
}
