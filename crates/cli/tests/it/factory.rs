//! The factory line, online: batches, stations, births over EST with the
//! station's certificate; quotas and one birth per serial under concurrency.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use iotpki_agent::est_client::{ClientIdentity, EstClient};
use iotpki_authority::factory;
use iotpki_core::asn1::der::Decode as _;
use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::name::{DeviceSerial, NameBuilder};
use iotpki_core::{csr, est, pem};
use iotpki_station::api::FactoryApi;
use iotpki_station::factory::{Dut, Produced, RunOptions, Station};

use crate::util::{batch, openssl, station, Ca};

fn serials(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:03}")).collect()
}

struct Run {
    opts: RunOptions,
    devices_dir: PathBuf,
}

fn run_opts(ca: &Ca, batch: &str, parallel: usize, tag: &str) -> Run {
    Run {
        opts: RunOptions {
            batch: batch.into(),
            parallel,
            log: ca.tmp.path().join(format!("{tag}.jsonl")),
            key_type: KeyType::EcdsaP256,
        },
        devices_dir: ca.tmp.path().join("dut").join(tag),
    }
}

async fn run_sim(st: Arc<Station>, run: &Run, n: usize) -> Vec<Produced> {
    let duts = iotpki_station::factory::simulated(&st, &run.opts.batch, n, &run.devices_dir).await.unwrap();
    iotpki_station::factory::run(st, &run.opts, duts, |_| {}).await.unwrap()
}

fn issued(ca: &Ca, batch: &str) -> (u64, u64) {
    let b = ca.authority.store().batch(batch).unwrap().unwrap();
    (b.issued, b.refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_gives_birth_within_its_quota() {
    let ca = Ca::start().await;
    let list = serials("W", 10);
    batch(&ca, "B1", &list, 6);
    let st = Arc::new(Station::open(&station(&ca, "line-1", &["B1"]), None).unwrap());
    let run = run_opts(&ca, "B1", 4, "run1");
    let out = run_sim(st, &run, 10).await;
    let born: Vec<_> = out.iter().filter(|p| p.result == "born").collect();
    assert_eq!(born.len(), 6, "{out:?}");
    assert!(out.iter().filter(|p| p.result == "refused").all(|p| p
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("used up its quota")));
    assert_eq!(issued(&ca, "B1"), (6, 4));
    assert_eq!(std::fs::read_to_string(&run.opts.log).unwrap().lines().count(), 10, "a log line per device");

    // Each born device holds a birth certificate for its own key and serial, from the
    // manufacturing CA, that openssl verifies; the store knows it.
    let p = &born[0];
    let dir = run.devices_dir.join(&p.serial);
    let st = iotpki_agent::status(&dir).unwrap();
    assert_eq!(st.device_serial, p.serial);
    assert!(st.issuer.contains("Manufacturing CA"), "{}", st.issuer);
    let rec = ca.authority.store().certificate(p.cert_serial.as_deref().unwrap()).unwrap().unwrap();
    assert_eq!(rec.device_serial.as_deref(), Some(p.serial.as_str()));
    let cert_file = ca.tmp.path().join("born.pem");
    std::fs::write(&cert_file, iotpki_agent::state::load(&dir).unwrap().cert_pem).unwrap();
    let (root, mfg) = (ca.ca_file("root"), ca.ca_file("manufacturing"));
    let v = tokio::task::spawn_blocking(move || {
        openssl(&[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            mfg.to_str().unwrap(),
            cert_file.to_str().unwrap(),
        ])
    })
    .await
    .unwrap();
    assert!(v.contains(": OK"), "{v}");
    ca.authority.store().verify_audit().unwrap();
}

/// A production run's births keep their connections to the authority: 12
/// births, 4 at a time, open at most 4 (a mutual-TLS handshake each, the
/// station admitted once per connection), not 12. The station's certificate
/// then revoked alone mid-line (the station and its connections kept): no
/// birth more, on those connections or new ones, and nothing recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stations_births_share_its_connections_and_a_revocation_mid_line_stops_them() {
    let ca = Ca::start().await;
    let list = serials("K", 20);
    batch(&ca, "BK", &list, 20);
    let st = Arc::new(Station::open(&station(&ca, "line-k", &["BK"]), None).unwrap());
    let run = run_opts(&ca, "BK", 4, "kept");
    let mut duts = iotpki_station::factory::simulated(&st, "BK", 20, &run.devices_dir).await.unwrap();
    let later = duts.split_off(12);
    let accepted = || ca.authority.metrics().accepted_connections.get(&["tls"]);
    let before = accepted();
    let out = iotpki_station::factory::run(st.clone(), &run.opts, duts, |_| {}).await.unwrap();
    assert!(out.iter().all(|p| p.result == "born"), "{out:?}");
    let opened = accepted() - before;
    assert!((1..=4).contains(&opened), "12 births on {opened} connections");

    let store = ca.authority.store();
    let cert = store.station("line-k").unwrap().unwrap().cert_serial;
    iotpki_authority::revocation::revoke(
        store.as_ref(),
        &iotpki_core::clock::SystemClock,
        iotpki_authority::revocation::Target::Serial(&cert),
        1,
        "test",
    )
    .unwrap();
    let certs = store.count_certificates().unwrap();
    let out = iotpki_station::factory::run(st, &run.opts, later, |_| {}).await.unwrap();
    assert_eq!(out.len(), 8);
    for p in &out {
        let reason = p.reason.as_deref().unwrap_or_default();
        assert_eq!(p.result, "refused", "{out:?}");
        assert!(reason.starts_with("HTTP 403") && reason.contains("revoked"), "{reason}");
    }
    assert!(out.iter().any(|p| p.reason.as_deref().unwrap_or_default().contains("authenticates nothing")), "{out:?}");
    assert_eq!(store.count_certificates().unwrap(), certs, "nothing recorded");
    assert_eq!(issued(&ca, "BK").0, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stations_racing_for_one_batch_mint_exactly_the_quota() {
    let ca = Ca::start().await;
    let list = serials("R", 30);
    batch(&ca, "RACE", &list, 10);
    let a = Arc::new(Station::open(&station(&ca, "line-a", &["RACE"]), None).unwrap());
    let b = Arc::new(Station::open(&station(&ca, "line-b", &["RACE"]), None).unwrap());
    // Both stations fetch the same unborn serials and race for them, and for the quota.
    let (oa, ob) = (run_opts(&ca, "RACE", 8, "a"), run_opts(&ca, "RACE", 8, "b"));
    let (ra, rb) = tokio::join!(run_sim(a, &oa, 30), run_sim(b, &ob, 30));
    let all: Vec<_> = ra.into_iter().chain(rb).collect();
    let born: Vec<_> = all.iter().filter(|p| p.result == "born").collect();
    assert_eq!(born.len(), 10, "exactly the quota");
    let mut serials: Vec<&str> = born.iter().map(|p| p.serial.as_str()).collect();
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 10, "no serial born twice");
    assert!(all.iter().all(|p| p.result != "failed"), "{all:?}");
    assert_eq!(issued(&ca, "RACE").0, 10);
    assert_eq!(
        ca.authority
            .store()
            .list_certificates(&Default::default())
            .unwrap()
            .iter()
            .filter(|c| c.ca == "manufacturing" && c.profile == "device")
            .count(),
        10
    );
}

pub(crate) fn identity(dir: &Path) -> ClientIdentity {
    let id = iotpki_agent::state::load(dir).unwrap();
    let key: Arc<dyn Signer> = Arc::new(iotpki_agent::state::load_key(dir, &id).unwrap());
    let mut chain = vec![pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap()];
    chain.extend(pem::decode_all("CERTIFICATE", &id.chain_pem).unwrap());
    ClientIdentity { chain, key }
}

fn device_csr(serial: Option<&str>) -> Vec<u8> {
    let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let mut n = NameBuilder::default().common_name(serial.unwrap_or("none")).unwrap();
    if let Some(s) = serial {
        n = n.serial_number(&DeviceSerial::parse(s).unwrap()).unwrap();
    }
    csr::build(&n.build(), &key, vec![]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_or_mistaken_station_requests_are_refused_and_change_nothing() {
    let ca = Ca::start().await;
    let list = serials("H", 5);
    batch(&ca, "B1", &list, 5);
    batch(&ca, "B2", &serials("O", 2), 2);
    batch(&ca, "SHUT", &serials("S", 2), 2);
    let st_dir = station(&ca, "line-1", &["B1", "SHUT"]);
    let gone_dir = station(&ca, "line-gone", &["B1"]);
    let anchor = pem::decode_one("CERTIFICATE", &ca.root_pem).unwrap();
    let birth = |dir: &Path| {
        EstClient::new(&ca.url, Some("birth"), std::slice::from_ref(&anchor), Some(identity(dir))).unwrap()
    };
    let st = birth(&st_dir);
    let st_operational = EstClient::new(&ca.url, None, std::slice::from_ref(&anchor), Some(identity(&st_dir))).unwrap();
    let device = ca.enrolled_device("FIELD-1").await;
    let as_device = birth(&device);
    let anonymous = EstClient::new(&ca.url, Some("birth"), std::slice::from_ref(&anchor), None).unwrap();
    // One device born for real first, to try to clone it.
    let first = Station::open(&st_dir, None).unwrap();
    first.birth("B1", &ca.tmp.path().join("dut-H-000"), "H-000", KeyType::EcdsaP256).await.unwrap();
    factory::close_batch(ca.authority.store().as_ref(), ca.clock.as_ref(), "SHUT", "test").unwrap();
    factory::revoke_station(ca.authority.store().as_ref(), ca.clock.as_ref(), "line-gone", "test").unwrap();
    let gone = birth(&gone_dir);

    let ct = Some(est::CT_PKCS10);
    let b64 = |d: Vec<u8>| est::encode_body(&d).into_bytes();
    // (name, client, batch, csr serial, status, reason, counted against B1)
    type Case<'a> = (&'a str, &'a EstClient, &'a str, Option<&'a str>, u16, &'a str, bool);
    let cases: Vec<Case<'_>> = vec![
        ("not authorised for the batch", &st, "B2", Some("O-000"), 403, "not authorised for batch B2", false),
        ("unknown batch", &st, "NOPE", Some("H-001"), 404, "batch NOPE does not exist", false),
        ("serial not on the allowlist", &st, "B1", Some("X-999"), 403, "not on the allowlist of batch B1", true),
        ("serial born already (clone)", &st, "B1", Some("H-000"), 403, "already has a birth certificate", true),
        ("no serialNumber in the request", &st, "B1", None, 400, "exactly one serialNumber", true),
        ("closed batch", &st, "SHUT", Some("S-000"), 403, "batch SHUT is closed", false),
        ("revoked station", &gone, "B1", Some("H-001"), 403, "revoked", false),
        (
            "a device certificate, not a station's",
            &as_device,
            "B1",
            Some("H-001"),
            403,
            "not a factory station's",
            false,
        ),
        ("no certificate at all", &anonymous, "B1", Some("H-001"), 401, "factory station's certificate", false),
        (
            "station at the operational label",
            &st_operational,
            "B1",
            Some("H-001"),
            403,
            "station enrollments go to a label of CA manufacturing",
            true,
        ),
    ];
    for (name, client, batch, serial, status, reason, counted) in cases {
        let (certs, b1, audit) = (ca.cert_count(), issued(&ca, "B1"), ca.audit_len());
        let (s, body) = client
            .raw("POST", &format!("simpleenroll?batch={batch}"), ct, b64(device_csr(serial)), None)
            .await
            .unwrap();
        assert_eq!(s, status, "{name}: {body}");
        assert!(body.contains(reason), "{name}: {body:?} lacks {reason:?}");
        assert_eq!(ca.cert_count(), certs, "{name}: nothing issued");
        assert_eq!(issued(&ca, "B1").0, b1.0, "{name}: quota untouched");
        assert_eq!(
            issued(&ca, "B1").1,
            b1.1 + u64::from(counted),
            "{name}: refusal counted only for an authenticated station"
        );
        assert_eq!(ca.audit_len(), audit + 1, "{name}: audited");
    }

    // Outside the window: the authority's clock moves past it.
    ca.clock.advance(2 * 86_400);
    let (s, body) = st.raw("POST", "simpleenroll?batch=B1", ct, b64(device_csr(Some("H-001"))), None).await.unwrap();
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("issues only from"), "{body}");
    assert_eq!(issued(&ca, "B1").0, 1);
}

/// A device under test on a line link, in this process: the real protocol on loopback.
async fn line_device(dir: PathBuf, serial: &str) -> (String, tokio::task::JoinHandle<Option<String>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let serial = serial.to_string();
    let h = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let keystore = iotpki_agent::keystore::Keystore::open(&dir, None, None).unwrap();
        iotpki_agent::line::serve_device(&mut tcp, &dir, &serial, &keystore).await.unwrap()
    });
    (addr, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_a_line_link_are_born_through_the_station() {
    let ca = Ca::start().await;
    batch(&ca, "LB", &serials("L", 4), 4);
    let st = Arc::new(Station::open(&station(&ca, "line-1", &["LB"]), None).unwrap());
    let mut duts = Vec::new();
    let mut devices = Vec::new();
    for serial in ["L-000", "L-001", "L-002", "NOT-LISTED"] {
        let dir = ca.tmp.path().join("line-dut").join(serial);
        let (addr, h) = line_device(dir.clone(), serial).await;
        duts.push(Dut::Line { addr });
        devices.push((serial, dir, h));
    }
    duts.push(Dut::Line { addr: "127.0.0.1:1".into() }); // nothing there
    let run = run_opts(&ca, "LB", 2, "line");
    let out = iotpki_station::factory::run(st, &run.opts, duts, |_| {}).await.unwrap();
    let by = |s: &str| out.iter().find(|p| p.serial == s).unwrap_or_else(|| panic!("{s} missing: {out:?}"));
    for serial in ["L-000", "L-001", "L-002"] {
        assert_eq!(by(serial).result, "born", "{:?}", by(serial));
    }
    assert_eq!(by("NOT-LISTED").result, "refused");
    assert!(by("NOT-LISTED").reason.as_deref().unwrap().contains("not on the allowlist"));
    assert_eq!(by("line:127.0.0.1:1").result, "failed");
    assert_eq!(issued(&ca, "LB").0, 3);
    for (serial, dir, h) in devices {
        if serial == "NOT-LISTED" {
            // The station hung up after the refusal: the device holds no identity, only its pending key.
            assert_eq!(h.await.unwrap(), None);
            assert!(!dir.join("identity.json").exists());
            continue;
        }
        let cert = h.await.unwrap().expect("installed");
        let status = iotpki_agent::status(&dir).unwrap();
        assert_eq!((status.device_serial.as_str(), status.cert_serial.as_str()), (serial, cert.as_str()));
    }
}

fn delegate(ca: &Ca, st_dir: &Path, name: &str, batch_id: &str) {
    let key = iotpki_station::offline::new_delegate_key(st_dir, batch_id, KeyType::EcdsaP256).unwrap();
    let iotpki_authority::Delegated { cert, chain, batch: rec, allowlist, crl_url } =
        ca.authority.delegate_station(name, batch_id, key.public_key_der(), "test").unwrap();
    let d = iotpki_core::wire::Delegation {
        batch: batch_id.into(),
        organization: ca.authority.config().organization.clone(),
        quota: rec.quota - rec.issued,
        valid_from: rec.valid_from,
        valid_until: rec.valid_until,
        allowlist,
        cert_pem: pem::encode("CERTIFICATE", &cert),
        chain_pem: chain.iter().map(|c| pem::encode("CERTIFICATE", c)).collect(),
        crl_url,
    };
    iotpki_station::offline::store_delegation(st_dir, &d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_station_issues_within_its_terms_and_syncs() {
    let ca = Ca::start().await;
    batch(&ca, "OB", &serials("OF", 5), 3);
    let st_dir = station(&ca, "line-1", &["OB"]);
    delegate(&ca, &st_dir, "line-1", "OB");
    let st = Arc::new(Station::open_offline(&st_dir, "OB").unwrap());
    let run = run_opts(&ca, "OB", 2, "offline");
    let out = run_sim(st.clone(), &run, 5).await;
    assert_eq!(out.iter().filter(|p| p.result == "born").count(), 3, "{out:?}");
    assert_eq!(issued(&ca, "OB").0, 0, "nothing reached the authority yet");

    // openssl enforces the delegated CA's name constraint: the device verifies...
    let dev = run.devices_dir.join("OF-000");
    let id = iotpki_agent::state::load(&dev).unwrap();
    let d = ca.tmp.path().join("nc");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("dev.pem"), &id.cert_pem).unwrap();
    std::fs::write(d.join("chain.pem"), &id.chain_pem).unwrap();
    // ...and a certificate the delegated CA signs outside its batch's namespace does not.
    let dir = iotpki_station::offline::batch_dir(&st_dir, "OB");
    let (_, dkey) = iotpki_agent::state::pending_key(&dir).unwrap().unwrap();
    let delegation: iotpki_core::wire::Delegation =
        serde_json::from_str(&std::fs::read_to_string(dir.join("delegation.json")).unwrap()).unwrap();
    let dcert = pem::decode_one("CERTIFICATE", &delegation.cert_pem).unwrap();
    let outside = forge_cert(&dcert, &dkey, "OTHER-BATCH", "OF-004");
    std::fs::write(d.join("outside.pem"), pem::encode("CERTIFICATE", &outside)).unwrap();
    let root = ca.ca_file("root");
    let dd = d.clone();
    tokio::task::spawn_blocking(move || {
        let v = openssl(&[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            dd.join("chain.pem").to_str().unwrap(),
            dd.join("dev.pem").to_str().unwrap(),
        ]);
        assert!(v.contains(": OK"), "{v}");
        let out = std::process::Command::new("openssl")
            .args([
                "verify",
                "-CAfile",
                root.to_str().unwrap(),
                "-untrusted",
                dd.join("chain.pem").to_str().unwrap(),
                dd.join("outside.pem").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success() && text.contains("permitted subtree violation"), "{text}");
    })
    .await
    .unwrap();

    // Back online: the record is uploaded, the births counted, nothing flagged; a second sync sends nothing.
    let online = Station::open(&st_dir, None).unwrap();
    let (born, flagged) = online.sync(&st_dir, "OB").await.unwrap();
    assert_eq!((born, flagged.len()), (3, 0));
    assert_eq!(issued(&ca, "OB"), (3, 0));
    assert_eq!(online.sync(&st_dir, "OB").await.unwrap(), (0, vec![]));
    let rec = ca
        .authority
        .store()
        .certificate(&out.iter().find(|p| p.serial == "OF-000").unwrap().cert_serial.clone().unwrap())
        .unwrap();
    assert_eq!(rec.unwrap().device_serial.as_deref(), Some("OF-000"));
}

/// A device certificate signed by `ca_key` (whose certificate is `ca_der`) for `serial` in `batch`'s namespace.
fn forge_cert(ca_der: &[u8], ca_key: &SoftKey, batch_id: &str, serial: &str) -> Vec<u8> {
    let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    forge_cert_for(ca_der, ca_key, batch_id, serial, key.public_key_der())
}

/// [`forge_cert`] for the key `spki_der`, encoded as given.
fn forge_cert_for(ca_der: &[u8], ca_key: &SoftKey, batch_id: &str, serial: &str, spki_der: &[u8]) -> Vec<u8> {
    use iotpki_core::profile::{self, CertParams, Issuer, Profile};
    let info = profile::cert_info(ca_der).unwrap();
    let sn = DeviceSerial::parse(serial).unwrap();
    let params = CertParams {
        profile: Profile::Device,
        serial: iotpki_core::serial::system_random_serial(iotpki_authority::Clock::now(&iotpki_authority::SystemClock))
            .unwrap()
            .0,
        subject: iotpki_core::name::batch_device_subject("iotpki", batch_id, &sn).unwrap(),
        spki: iotpki_core::asn1::spki::SubjectPublicKeyInfoOwned::from_der(spki_der).unwrap(),
        not_before: info.not_before,
        not_after: info.not_after,
        dns_names: vec![],
        ip_addrs: vec![],
        permitted_subtree: None,
    };
    let subject = info.cert.tbs_certificate.subject.clone();
    let kid = info.ski.clone().unwrap();
    profile::issue(&params, &Issuer { subject: &subject, key_id: &kid, not_after: info.not_after, signer: ca_key })
        .unwrap()
        .der
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dishonest_station_is_caught_at_sync_and_forged_records_are_refused() {
    use iotpki_core::record::Entry;
    let ca = Ca::start().await;
    let list = serials("DX", 4);
    batch(&ca, "DB", &list, 2);
    let st_dir = station(&ca, "line-x", &["DB"]);
    delegate(&ca, &st_dir, "line-x", "DB");
    let dir = iotpki_station::offline::batch_dir(&st_dir, "DB");
    let (_, dkey) = iotpki_agent::state::pending_key(&dir).unwrap().unwrap();
    let d: iotpki_core::wire::Delegation =
        serde_json::from_str(&std::fs::read_to_string(dir.join("delegation.json")).unwrap()).unwrap();
    let dcert = pem::decode_one("CERTIFICATE", &d.cert_pem).unwrap();
    let sid = iotpki_agent::state::load(&st_dir).unwrap();
    let skey = iotpki_agent::state::load_key(&st_dir, &sid).unwrap();
    // The station ignores its terms: two births, then a third (overbuild), a clone, one off the allowlist.
    let mut entries: Vec<Entry> = Vec::new();
    for serial in [&list[0], &list[1], &list[2], &list[0], &"INTRUDER".to_string()] {
        let cert = forge_cert(&dcert, &dkey, "DB", serial);
        entries.push(Entry::next(entries.last(), 1_000, "DB", serial, &cert, &skey).unwrap());
    }
    let text = |es: &[Entry]| es.iter().map(|e| e.to_line() + "\n").collect::<String>();
    let anchor = pem::decode_one("CERTIFICATE", &ca.root_pem).unwrap();
    let client =
        FactoryApi::new(EstClient::new(&ca.url, None, std::slice::from_ref(&anchor), Some(identity(&st_dir))).unwrap());
    fn refused<T: std::fmt::Debug>(r: Result<T, iotpki_agent::AgentError>) -> (u16, String) {
        match r {
            Err(iotpki_agent::AgentError::Refused { status, reason }) => (status, reason),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    // Forgeries first: each refused, nothing recorded.
    let certs = ca.cert_count();
    let mut edited = entries.clone();
    edited[1].serial = list[3].clone();
    let (s, r) = refused(client.sync("DB", text(&edited)).await);
    assert!(s == 403 && r.contains("edited"), "{s} {r}");
    let other_key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let mut resigned: Vec<Entry> = Vec::new();
    for e in &entries {
        resigned.push(Entry::next(resigned.last(), e.at, "DB", &e.serial, &e.cert_der().unwrap(), &other_key).unwrap());
    }
    let (s, r) = refused(client.sync("DB", text(&resigned)).await);
    assert!(s == 403 && r.contains("signature"), "{s} {r}");
    let (s, r) = refused(client.sync("DB", text(&entries[1..])).await);
    assert!(s == 403 && r.contains("replayed or out of order"), "{s} {r}");
    let stranger = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let not_delegate =
        vec![Entry::next(None, 1_000, "DB", &list[0], &forge_cert(&dcert, &stranger, "DB", &list[0]), &skey).unwrap()];
    let (s, r) = refused(client.sync("DB", text(&not_delegate)).await);
    assert!(s == 403 && r.contains("not issued by the station's delegated CA"), "{s} {r}");
    let wrong_ns =
        vec![
            Entry::next(None, 1_000, "DB", &list[0], &forge_cert(&dcert, &dkey, "ELSEWHERE", &list[0]), &skey).unwrap()
        ];
    let (s, r) = refused(client.sync("DB", text(&wrong_ns)).await);
    assert!(s == 403 && r.contains("inside batch DB"), "{s} {r}");
    let (s, r) = refused(client.sync("DB", String::new()).await);
    assert!(s == 400 && r.contains("empty"), "{s} {r}");
    let mut elsewhere = entries[..1].to_vec();
    elsewhere[0] = Entry::next(None, 1_000, "OTHER", &list[0], &entries[0].cert_der().unwrap(), &skey).unwrap();
    let (s, r) = refused(client.sync("DB", text(&elsewhere)).await);
    assert!(s == 403 && r.contains("names batch OTHER"), "{s} {r}");
    // Without a station's certificate there is nothing to ask or upload.
    let anonymous = FactoryApi::new(EstClient::new(&ca.url, None, std::slice::from_ref(&anchor), None).unwrap());
    let (s, r) = refused(anonymous.sync_state("DB").await);
    assert!(s == 401 && r.contains("station's certificate"), "{s} {r}");
    assert_eq!(ca.cert_count(), certs, "no forgery recorded anything");

    // The genuine (if dishonest) record: every certificate recorded, the excess flagged and revoked.
    let out = client.sync("DB", text(&entries)).await.unwrap();
    assert_eq!(out.born, 2);
    let reasons: Vec<&str> = out.flagged.iter().map(|f| f.reason.as_str()).collect();
    assert_eq!(reasons, vec!["overbuild", "clone", "off-allowlist"]);
    let b = ca.authority.store().batch("DB").unwrap().unwrap();
    assert_eq!((b.issued, b.flagged), (2, 3));
    assert_eq!(ca.cert_count(), certs + 5);
    for f in &out.flagged {
        let rec = ca.authority.store().certificate(&f.cert_serial).unwrap().unwrap();
        assert!(matches!(rec.status, iotpki_store::CertStatus::Revoked { .. }));
    }
    // Uploading it again is a replay.
    let (s, r) = refused(client.sync("DB", text(&entries)).await);
    assert!(s == 403 && r.contains("replayed"), "{s} {r}");
    ca.authority.store().verify_audit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_asking_for_another_serial_is_refused_by_the_station() {
    use iotpki_agent::line::{kind, read_frame, write_frame};
    let ca = Ca::start().await;
    batch(&ca, "LB", &serials("L", 2), 2);
    let st = Arc::new(Station::open(&station(&ca, "line-1", &["LB"]), None).unwrap());
    // A device that introduces itself as L-000 and asks for L-001.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let liar = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let _ = read_frame(&mut tcp).await.unwrap();
        write_frame(&mut tcp, kind::SERIAL, b"L-000").await.unwrap();
        let _ = read_frame(&mut tcp).await.unwrap();
        write_frame(&mut tcp, kind::CSR, &device_csr(Some("L-001"))).await.unwrap();
        read_frame(&mut tcp).await.is_err() // the station hangs up: no INSTALL
    });
    let run = run_opts(&ca, "LB", 1, "liar");
    let out = iotpki_station::factory::run(st, &run.opts, vec![Dut::Line { addr }], |_| {}).await.unwrap();
    assert_eq!(out[0].result, "refused", "{out:?}");
    assert!(
        out[0].reason.as_deref().unwrap().contains("announced serial L-000 but its request names L-001"),
        "{out:?}"
    );
    assert!(liar.await.unwrap());
    assert_eq!(issued(&ca, "LB").0, 0, "nothing issued");
}

/// Issue 12 item 3: a device cannot clone itself a new birth certificate.
/// The exact attack (its birth certificate over mutual TLS, `simplereenroll`
/// under `birth`, a CSR for a fresh key with the birth's own subject) and every
/// other way into the birth CA that skips the station and its batch: enroll
/// with the birth certificate under `birth`, a one-time token under `birth`,
/// renewal of a birth certificate under the operational label. Each is refused
/// with the reason; no certificate, no batch count and no status changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_birth_certificate_is_never_renewed_or_cloned_by_the_device() {
    let ca = Ca::start().await;
    let devs = crate::util::born_devices(&ca, "CLB", &["CL-1".to_string()]).await;
    let birth_id = iotpki_agent::state::load(&devs[0]).unwrap();
    let birth_der = pem::decode_one("CERTIFICATE", &birth_id.cert_pem).unwrap();
    let birth_serial = iotpki_core::profile::cert_info(&birth_der).unwrap().serial;
    let subject = iotpki_core::profile::cert_info(&birth_der).unwrap().cert.tbs_certificate.subject;
    let anchor = pem::decode_one("CERTIFICATE", &ca.root_pem).unwrap();
    let under = |label: Option<&str>, id: Option<ClientIdentity>| {
        EstClient::new(&ca.url, label, std::slice::from_ref(&anchor), id).unwrap()
    };
    let fresh = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let clone_csr = est::encode_body(&csr::build(&subject, &fresh, vec![]).unwrap()).into_bytes();
    let token = ca.token("CL-2");
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("CL-2:{token}"))
    );
    let ct = Some(est::CT_PKCS10);
    // (what, label, with the birth certificate, op, HTTP Basic, reason)
    type Case<'a> = (&'a str, Option<&'a str>, bool, &'a str, Option<String>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "simplereenroll under birth with the birth certificate (the clone)",
            Some("birth"),
            true,
            "simplereenroll",
            None,
            "a birth certificate is never renewed",
        ),
        (
            "simplereenroll under the operational label with the birth certificate",
            None,
            true,
            "simplereenroll",
            None,
            "a birth certificate is never renewed",
        ),
        (
            "simpleenroll under birth with the birth certificate",
            Some("birth"),
            true,
            "simpleenroll",
            None,
            "label birth issues birth certificates",
        ),
        (
            "simpleenroll under birth with a one-time token",
            Some("birth"),
            false,
            "simpleenroll",
            Some(basic),
            "label birth issues birth certificates",
        ),
    ];
    for (what, label, mtls, op, auth, reason) in cases {
        let (certs, batch, audit) = (ca.cert_count(), issued(&ca, "CLB"), ca.audit_len());
        let client = under(label, mtls.then(|| identity(&devs[0])));
        let body = if auth.is_some() {
            let n = NameBuilder::default()
                .common_name("CL-2")
                .unwrap()
                .serial_number(&DeviceSerial::parse("CL-2").unwrap())
                .unwrap()
                .build();
            est::encode_body(&csr::build(&n, &fresh, vec![]).unwrap()).into_bytes()
        } else {
            clone_csr.clone()
        };
        let (s, text) = client.raw("POST", op, ct, body, auth).await.unwrap();
        assert_eq!(s, 403, "{what}: {text}");
        assert!(text.contains(reason), "{what}: {text:?} lacks {reason:?}");
        assert!(text.contains("only to a factory station"), "{what}: {text:?} names no way forward");
        assert_eq!(ca.cert_count(), certs, "{what}: nothing issued");
        assert_eq!(issued(&ca, "CLB"), batch, "{what}: the batch's counts are untouched");
        assert_eq!(ca.audit_len(), audit + 1, "{what}: the refusal is audited");
        let rec = ca.authority.store().certificate(&birth_serial).unwrap().unwrap();
        assert_eq!(rec.status, iotpki_store::CertStatus::Good, "{what}: the birth certificate is unchanged");
        assert_eq!(rec.der, birth_der, "{what}");
    }
    // The token was not spent by the refusal.
    assert!(ca.authority.store().token(&iotpki_authority::tokens::hash(&token)).unwrap().unwrap().used_at.is_none());
    assert_eq!(iotpki_agent::state::load(&devs[0]).unwrap().cert_pem, birth_id.cert_pem);
}

/// The allowlist signed into a delegation has a cap: a delegated CA names at
/// most `MAX_DELEGATED_SERIALS` serials and takes at most
/// `MAX_DELEGATED_CERT_BYTES`; above either the delegation is refused with
/// the reason and nothing is recorded. And a station whose `delegation.json`
/// allowlist was tampered with still signs only the serials its delegated
/// certificate names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegation_is_capped_and_a_tampered_allowlist_signs_nothing_more() {
    let ca = Ca::start().await;
    let short = serials("D", factory::MAX_DELEGATED_SERIALS + 1);
    batch(&ca, "DB", &short, short.len() as u64);
    let long: Vec<String> = (0..factory::MAX_DELEGATED_SERIALS).map(|i| format!("{i:0>64}")).collect();
    batch(&ca, "DL", &long, long.len() as u64);
    station(&ca, "line-d", &["DB", "DL"]);
    let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let certs = ca.cert_count();
    let e = ca.authority.delegate_station("line-d", "DB", key.public_key_der(), "test").unwrap_err().to_string();
    assert!(e.contains("at most 256 serials") && e.contains("--serials"), "{e}");
    let e = ca.authority.delegate_station("line-d", "DL", key.public_key_der(), "test").unwrap_err().to_string();
    assert!(e.contains("bytes, above the 32768"), "{e}");
    eprintln!("256 serials of 64 characters: {e}");
    assert_eq!(ca.cert_count(), certs, "a refused delegation records nothing");
    // The largest slice of short serials fits.
    let slice = &short[..factory::MAX_DELEGATED_SERIALS];
    let d = ca.authority.delegate_station_serials("line-d", "DB", key.public_key_der(), Some(slice), "test").unwrap();
    eprintln!("a delegated CA naming {} serials like {:?}: {} bytes", slice.len(), slice[0], d.cert.len());
    assert!(d.cert.len() <= factory::MAX_DELEGATED_CERT_BYTES);

    // Tampered allowlist: the station's own check of its certificate refuses.
    let t_dir = station(&ca, "line-t", &["DB"]);
    let k = iotpki_station::offline::new_delegate_key(&t_dir, "DB", KeyType::EcdsaP256).unwrap();
    let one = vec![short[256].clone()];
    let d = ca.authority.delegate_station_serials("line-t", "DB", k.public_key_der(), Some(&one), "test").unwrap();
    let mut allow = d.allowlist.clone();
    allow.push(short[0].clone());
    let delegation = iotpki_core::wire::Delegation {
        batch: "DB".into(),
        organization: "iotpki".into(),
        quota: 2,
        valid_from: d.batch.valid_from,
        valid_until: d.batch.valid_until,
        allowlist: allow,
        cert_pem: pem::encode("CERTIFICATE", &d.cert),
        chain_pem: d.chain.iter().map(|c| pem::encode("CERTIFICATE", c)).collect(),
        crl_url: d.crl_url.clone(),
    };
    iotpki_station::offline::store_delegation(&t_dir, &delegation).unwrap();
    let st = Station::open_offline(&t_dir, "DB").unwrap();
    let e = st.birth("DB", &ca.tmp.path().join("t-dev"), &short[0], KeyType::EcdsaP256).await.unwrap_err();
    assert!(e.to_string().contains("outside the names the delegated CA"), "{e}");
    assert!(!iotpki_station::offline::record_path(&t_dir, "DB").exists(), "nothing recorded");
    st.birth("DB", &ca.tmp.path().join("t-ok"), &short[256], KeyType::EcdsaP256).await.unwrap();
}

fn curl_get(url: &str, out: &Path) -> u16 {
    let o = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "-w", "%{http_code}", "-o"])
        .arg(out)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0)
}

/// A station's delegated CA publishes a CRL: births it signs name
/// `/crl/delegated/STATION/BATCH.crl`; at each sync the station signs a CRL
/// with the authority's revocations under its CA and uploads it. openssl
/// verify -crl_check with that CRL: a good birth is OK; after the authority
/// revokes it and the station syncs, it is revoked. A CRL that leaves the
/// revoked birth off is refused and the served CRL stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_ca_publishes_a_crl_that_openssl_checks_births_against() {
    let ca = Ca::start().await;
    // A window of 30 days: longer than the week an open batch's CRL lasts.
    let now = iotpki_authority::Clock::now(ca.clock.as_ref());
    let nb = factory::NewBatch::open("CB", "widget", "C-1\nC-2".into(), 2, (now - 60, now + 30 * 86_400));
    factory::create_batch(ca.authority.store().as_ref(), ca.clock.as_ref(), nb, "test").unwrap();
    let st_dir = station(&ca, "line-c", &["CB"]);
    delegate(&ca, &st_dir, "line-c", "CB");
    let st = Station::open_offline(&st_dir, "CB").unwrap();
    let dev = ca.tmp.path().join("c1");
    st.birth("CB", &dev, "C-1", KeyType::EcdsaP256).await.unwrap();
    st.sync(&st_dir, "CB").await.unwrap();

    let d = ca.tmp.path().join("crlcheck");
    std::fs::create_dir_all(&d).unwrap();
    let id = iotpki_agent::state::load(&dev).unwrap();
    std::fs::write(d.join("birth.pem"), &id.cert_pem).unwrap();
    std::fs::write(d.join("chain.pem"), &id.chain_pem).unwrap();
    let birth = pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
    let text =
        openssl(&["x509", "-noout", "-ext", "crlDistributionPoints", "-in", d.join("birth.pem").to_str().unwrap()]);
    let url = format!("{}/crl/delegated/line-c/CB.crl", ca.http_url);
    assert!(text.contains(&url), "the birth names its CA's CRL: {text}");
    let (root, crl_der, crl_pem) = (ca.root_file(), d.join("crl.der"), d.join("crl.pem"));
    let verify = || {
        assert_eq!(curl_get(&url, &crl_der), 200);
        openssl(&["crl", "-inform", "DER", "-in", crl_der.to_str().unwrap(), "-out", crl_pem.to_str().unwrap()]);
        let o = std::process::Command::new("openssl")
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(&root)
            .args(["-untrusted", d.join("chain.pem").to_str().unwrap(), "-CRLfile", crl_pem.to_str().unwrap()])
            .arg(d.join("birth.pem"))
            .output()
            .unwrap();
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    let out = verify();
    assert!(out.contains(": OK"), "{out}");

    // The authority revokes the birth; until the station syncs, the served CRL is the old one.
    let serial = iotpki_core::profile::cert_info(&birth).unwrap().serial;
    iotpki_authority::revocation::revoke(
        ca.authority.store().as_ref(),
        ca.clock.as_ref(),
        iotpki_authority::revocation::Target::Serial(&serial),
        1,
        "test",
    )
    .unwrap();
    // A station that leaves the revoked birth off its CRL: refused, nothing served changes.
    let before = std::fs::read(&crl_der).unwrap();
    let (_, sub_key) =
        iotpki_agent::state::pending_key(&iotpki_station::offline::batch_dir(&st_dir, "CB")).unwrap().unwrap();
    let sub = iotpki_core::profile::cert_info(&pem::decode_all("CERTIFICATE", &id.chain_pem).unwrap()[0]).unwrap();
    let kid = sub.ski.clone().unwrap();
    let issuer = iotpki_core::profile::Issuer {
        subject: &sub.cert.tbs_certificate.subject,
        key_id: &kid,
        not_after: sub.not_after,
        signer: &sub_key,
    };
    let now = iotpki_authority::Clock::now(ca.clock.as_ref());
    let liar = iotpki_core::crl::build(&issuer, 2, now - 10, now + 3600, &[]).unwrap();
    let anchor = pem::decode_one("CERTIFICATE", &ca.root_pem).unwrap();
    let client =
        FactoryApi::new(EstClient::new(&ca.url, None, std::slice::from_ref(&anchor), Some(identity(&st_dir))).unwrap());
    match client.crl_upload("CB", liar).await {
        Err(iotpki_agent::AgentError::Refused { status, reason }) => {
            assert_eq!(status, 403, "{reason}");
            assert!(reason.contains("exactly those must be listed"), "{reason}");
        }
        other => panic!("a CRL without the revoked birth was accepted: {other:?}"),
    }
    assert_eq!(curl_get(&url, &crl_der), 200);
    assert_eq!(std::fs::read(&crl_der).unwrap(), before, "the served CRL is unchanged");

    st.sync(&st_dir, "CB").await.unwrap();
    let out = verify();
    assert!(out.contains("certificate revoked"), "{out}");
    let next = |f: &Path| openssl(&["crl", "-noout", "-nextupdate", "-in", f.to_str().unwrap()]);
    let ca_end = openssl(&["x509", "-noout", "-enddate", "-in", d.join("chain.pem").to_str().unwrap()]);
    let end = |t: &str| t.trim().split_once('=').map(|(_, v)| v.to_string()).unwrap();
    assert_ne!(end(&next(&crl_pem)), end(&ca_end), "while the batch is open a CRL lasts a week, not the CA's life");

    // The batch closes: the station's last CRL lasts as long as its delegated CA (and every birth it signed).
    factory::close_batch(ca.authority.store().as_ref(), ca.clock.as_ref(), "CB", "test").unwrap();
    st.sync(&st_dir, "CB").await.unwrap();
    assert!(verify().contains("certificate revoked"));
    assert_eq!(end(&next(&crl_pem)), end(&ca_end));
}

/// A station delegated a slice of its batch signs a birth for a serial on the
/// batch's allowlist but outside its slice (outside the names signed into its
/// delegated CA): the sync records it, flags it off-allowlist and revokes it;
/// it never counts as a birth (nor shows in the births file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_birth_outside_the_delegated_slice_is_flagged_at_sync() {
    use iotpki_core::record::Entry;
    let ca = Ca::start().await;
    let list = serials("SL", 3);
    batch(&ca, "SLB", &list, 3);
    let st_dir = station(&ca, "line-s", &["SLB"]);
    let dkey = iotpki_station::offline::new_delegate_key(&st_dir, "SLB", KeyType::EcdsaP256).unwrap();
    let d = ca
        .authority
        .delegate_station_serials("line-s", "SLB", dkey.public_key_der(), Some(&list[..1]), "test")
        .unwrap();
    let sid = iotpki_agent::state::load(&st_dir).unwrap();
    let skey = iotpki_agent::state::load_key(&st_dir, &sid).unwrap();
    let mut entries: Vec<Entry> = Vec::new();
    for serial in [&list[0], &list[1]] {
        let cert = forge_cert(&d.cert, &dkey, "SLB", serial);
        entries.push(Entry::next(entries.last(), 1_000, "SLB", serial, &cert, &skey).unwrap());
    }
    let anchor = pem::decode_one("CERTIFICATE", &ca.root_pem).unwrap();
    let client =
        FactoryApi::new(EstClient::new(&ca.url, None, std::slice::from_ref(&anchor), Some(identity(&st_dir))).unwrap());
    let text: String = entries.iter().map(|e| e.to_line() + "\n").collect();
    let out = client.sync("SLB", text).await.unwrap();
    assert_eq!(out.born, 1, "{out:?}");
    assert_eq!(out.flagged.len(), 1, "{out:?}");
    assert_eq!(out.flagged[0].reason, "off-allowlist");
    let rec = ca.authority.store().certificate(&out.flagged[0].cert_serial).unwrap().unwrap();
    assert!(matches!(rec.status, iotpki_store::CertStatus::Revoked { .. }));
    let births = ca.authority.export_births(None).unwrap();
    assert!(births.contains(&format!("\n{},", list[0])) && !births.contains(&format!("\n{},", list[1])), "{births}");
}

/// The same P-256 key with its point compressed (`02/03 || x`): another
/// encoding, another SHA-256.
fn compressed(spki_der: &[u8]) -> Vec<u8> {
    use iotpki_core::asn1::der::{asn1::BitString, Encode as _};
    let mut spki = iotpki_core::asn1::spki::SubjectPublicKeyInfoOwned::from_der(spki_der).unwrap();
    let p = spki.subject_public_key.raw_bytes().to_vec();
    assert_eq!((p.len(), p[0]), (65, 4), "an uncompressed P-256 point");
    let mut c = vec![2 | (p[64] & 1)];
    c.extend_from_slice(&p[1..33]);
    spki.subject_public_key = BitString::from_bytes(&c).unwrap();
    spki.to_der().unwrap()
}

/// A rogue station signs offline births whose key is the compressed point
/// (`02/03 || x`) of another device's key and of a blocked key: another
/// encoding, another hash, so the shared-key and blocked-key checks would
/// compare nothing. The sync records both, flags them non-canonical-key and
/// revokes them (keyCompromise); they are no births (not in export-births),
/// and such a birth certificate commissions nothing at an owner (403, nothing
/// stored, the refusal says why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_birth_with_a_compressed_point_of_a_blocked_or_shared_key_is_flagged_at_sync() {
    use iotpki_core::record::Entry;
    let ca = Ca::start().await;
    let list = serials("CK", 3);
    batch(&ca, "CKB", &list, 3);
    let st_dir = station(&ca, "line-c", &["CKB"]);
    delegate(&ca, &st_dir, "line-c", "CKB");
    // One honest offline birth: a device and its key.
    let st = Arc::new(Station::open_offline(&st_dir, "CKB").unwrap());
    let run = run_opts(&ca, "CKB", 1, "compressed");
    let out = run_sim(st, &run, 1).await;
    assert_eq!(out.iter().map(|p| p.result).collect::<Vec<_>>(), vec!["born"], "{out:?}");
    let dev = run.devices_dir.join(&out[0].serial);
    let id = iotpki_agent::state::load(&dev).unwrap();
    let born = pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
    let device_spki = {
        use iotpki_core::asn1::der::Encode as _;
        let info = iotpki_core::profile::cert_info(&born).unwrap();
        info.cert.tbs_certificate.subject_public_key_info.to_der().unwrap()
    };
    // A key found in a firmware image, blocked.
    let leaked = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let leaked_hash = iotpki_core::keys::canonical_fingerprint(leaked.public_key_der()).unwrap();
    iotpki_authority::key_registry::block(
        ca.authority.store().as_ref(),
        ca.clock.as_ref(),
        &[(leaked_hash, "test".into())],
        &[],
        "found in fw.bin",
        false,
        "test",
    )
    .unwrap();

    // The rogue station signs, with its delegated CA's key, a birth for each other serial:
    // the device's key compressed, the blocked key compressed.
    let dir = iotpki_station::offline::batch_dir(&st_dir, "CKB");
    let (_, dkey) = iotpki_agent::state::pending_key(&dir).unwrap().unwrap();
    let d: iotpki_core::wire::Delegation =
        serde_json::from_str(&std::fs::read_to_string(dir.join("delegation.json")).unwrap()).unwrap();
    let dcert = pem::decode_one("CERTIFICATE", &d.cert_pem).unwrap();
    let others: Vec<&String> = list.iter().filter(|s| **s != out[0].serial).collect();
    let twin = forge_cert_for(&dcert, &dkey, "CKB", others[0], &compressed(&device_spki));
    let blocked = forge_cert_for(&dcert, &dkey, "CKB", others[1], &compressed(leaked.public_key_der()));
    let sid = iotpki_agent::state::load(&st_dir).unwrap();
    let skey = iotpki_agent::state::load_key(&st_dir, &sid).unwrap();
    let mut entries: Vec<Entry> = Vec::new();
    for (serial, cert) in [(&out[0].serial, &born), (others[0], &twin), (others[1], &blocked)] {
        entries.push(Entry::next(entries.last(), 1_000, "CKB", serial, cert, &skey).unwrap());
    }
    let anchor = pem::decode_one("CERTIFICATE", &ca.root_pem).unwrap();
    let client =
        FactoryApi::new(EstClient::new(&ca.url, None, std::slice::from_ref(&anchor), Some(identity(&st_dir))).unwrap());
    let certs = ca.cert_count();
    let synced = client.sync("CKB", entries.iter().map(|e| e.to_line() + "\n").collect()).await.unwrap();

    // Recorded, flagged and revoked (keyCompromise): the honest birth alone counts.
    assert_eq!(synced.born, 1, "{synced:?}");
    let reasons: Vec<&str> = synced.flagged.iter().map(|f| f.reason.as_str()).collect();
    assert_eq!(reasons, vec!["non-canonical-key", "non-canonical-key"], "{synced:?}");
    assert_eq!(ca.cert_count(), certs + 3, "every certificate is recorded");
    let b = ca.authority.store().batch("CKB").unwrap().unwrap();
    assert_eq!((b.issued, b.flagged), (1, 2));
    for (f, der) in synced.flagged.iter().zip([&twin, &blocked]) {
        let rec = ca.authority.store().certificate(&f.cert_serial).unwrap().unwrap();
        assert_eq!(&rec.der, der);
        assert!(matches!(rec.status, iotpki_store::CertStatus::Revoked { reason: 1, .. }), "{:?}", rec.status);
    }
    let births = ca.authority.export_births(None).unwrap();
    assert!(births.contains(&format!("\n{},", out[0].serial)), "{births}");
    for s in &others {
        assert!(!births.contains(&format!("\n{s},")), "{births}");
    }

    // The device's twin, presenting the compressed birth certificate with the device's key:
    // refused at an owner before anything else, nothing stored.
    let op = Ca::start().await;
    let mfg_pem = std::fs::read_to_string(ca.ca_file("manufacturing")).unwrap();
    let store = op.authority.store();
    iotpki_authority::commission::add_manufacturer(store.as_ref(), op.clock.as_ref(), None, &mfg_pem, "test").unwrap();
    let rogue = ca.tmp.path().join("rogue").join(others[0]);
    copy_dir(&dev, &rogue);
    let state = rogue.join("identity.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let twin_pem = pem::encode("CERTIFICATE", &twin);
    v["device_serial"] = others[0].as_str().into();
    v["cert_pem"] = twin_pem.as_str().into();
    v["birth"]["cert_pem"] = twin_pem.as_str().into();
    std::fs::write(&state, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let before = std::fs::read(&state).unwrap();
    let op_certs = op.cert_count();
    match iotpki_agent::flow::commission(&rogue, Some(&op.url), Some(&op.root_pem), None).await {
        Err(iotpki_agent::AgentError::Refused { status, reason }) => {
            assert_eq!(status, 403, "{reason}");
            assert!(reason.contains("compressed"), "{reason}");
        }
        other => panic!("expected a 403 refusal, got {other:?}"),
    }
    assert_eq!(std::fs::read(&state).unwrap(), before, "the device's state is as it was");
    assert_eq!(op.cert_count(), op_certs, "the owner stored nothing");
    assert_eq!(op.last_audit().event.action, "refuse.enroll");
    ca.authority.store().verify_audit().unwrap();
}

/// `station delegate` on a batch with more unborn serials than a delegated
/// CA may name is refused with what to do, leaves no key behind, and a
/// retry with `--serials` (a slice) delegates exactly that slice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_delegate_above_the_cap_is_refused_and_a_slice_is_delegated() {
    let ca = Ca::start().await;
    let list = serials("CAP", factory::MAX_DELEGATED_SERIALS + 4);
    batch(&ca, "CAPB", &list, list.len() as u64);
    let st_dir = station(&ca, "line-cap", &["CAPB"]);
    let delegate_cmd = |extra: &[&str]| {
        let mut c = crate::util::bin();
        c.env("IOTPKI_PASSPHRASE", crate::util::PASS)
            .args(["station", "delegate", "line-cap", "--batch", "CAPB", "--dir"])
            .arg(&ca.dir)
            .arg("--station-dir")
            .arg(&st_dir)
            .args(extra);
        c
    };
    let certs = ca.cert_count();
    let e = crate::util::run_fail(&mut delegate_cmd(&[]));
    assert!(e.contains("at most 256 serials") && e.contains("--serials"), "{e}");
    assert!(!iotpki_station::offline::batch_dir(&st_dir, "CAPB").exists(), "no key left behind");
    assert_eq!(ca.cert_count(), certs);
    let slice = ca.tmp.path().join("slice.txt");
    std::fs::write(&slice, list[..3].join("\n")).unwrap();
    let out = crate::util::run_ok(&mut delegate_cmd(&["--serials", slice.to_str().unwrap()]));
    assert!(out.contains("3 births of 3 serials"), "{out}");
    let st = Station::open_offline(&st_dir, "CAPB").unwrap();
    assert_eq!(st_unborn(&st_dir), list[..3].to_vec());
    st.birth("CAPB", &ca.tmp.path().join("cap-0"), &list[0], KeyType::EcdsaP256).await.unwrap();
}

fn st_unborn(st_dir: &Path) -> Vec<String> {
    let d: iotpki_core::wire::Delegation = serde_json::from_str(
        &std::fs::read_to_string(iotpki_station::offline::batch_dir(st_dir, "CAPB").join("delegation.json")).unwrap(),
    )
    .unwrap();
    d.allowlist
}

/// A server whose answer to "where does your copy of my record end?" has no
/// `last_seq`: the station refuses the answer with an error that names the
/// field, and uploads nothing (a missing field is never read as 0, which
/// would re-send the whole record).
#[tokio::test]
async fn a_sync_state_without_last_seq_is_refused_not_read_as_zero() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let ca = Ca::start().await;
    batch(&ca, "WB", &serials("WB", 1), 1);
    let st_dir = station(&ca, "st-wire", &["WB"]);
    let record = iotpki_station::offline::record_path(&st_dir, "WB");
    std::fs::create_dir_all(record.parent().unwrap()).unwrap();
    std::fs::write(&record, "").unwrap();

    // A server the station trusts (its certificate chains to the authority's root), saying too little.
    let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let issued = ca.authority.issue_server(&["127.0.0.1".into()], key.public_key_der(), None, "test").unwrap();
    let mut chain = vec![CertificateDer::from(issued.cert.clone())];
    chain.extend(issued.chain.iter().cloned().map(CertificateDer::from));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_pkcs8().unwrap())))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let asked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = asked.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut s) = acceptor.accept(tcp).await else { continue };
            let (mut head, mut buf) = (Vec::new(), [0u8; 4096]);
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            log.lock().unwrap().push(String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string());
            let body = r#"{"head":"00"}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(answer.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });

    let st = Station::open(&st_dir, Some(&url)).unwrap();
    let err = st.sync(&st_dir, "WB").await.unwrap_err().to_string();
    assert!(err.contains("sync state") && err.contains("missing field `last_seq`"), "{err}");
    assert_eq!(*asked.lock().unwrap(), ["GET /factory/sync?batch=WB HTTP/1.1"], "nothing uploaded");
}

/// `from` copied into `to`, recursively (a device's state directory, kept aside).
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The audit's last entry: (actor, action, target).
fn last_audit(ca: &Ca) -> (String, String, String) {
    let store = ca.authority.store();
    let e = store.audit_entries(store.verify_audit().unwrap().entries, 1).unwrap().remove(0).event;
    (e.actor, e.action, e.target)
}

/// A device whose birth's answer never reached it (its station restarted,
/// the connection cut after the commit) still holds the key it made; born
/// again through a station of the batch (the same line or another), it gets
/// the very birth certificate recorded for it, and the batch counts one birth
/// and no refusal. Another device claiming that serial with its own key is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_birth_answer_was_lost_gets_the_same_certificate_again() {
    let ca = Ca::start().await;
    batch(&ca, "BLA", &serials("LA", 2), 2);
    let st = Arc::new(Station::open(&station(&ca, "line-la", &["BLA"]), None).unwrap());
    let other = Arc::new(Station::open(&station(&ca, "line-lb", &["BLA"]), None).unwrap());
    let serial = "LA-000";
    let dir = ca.tmp.path().join("dut-la");
    // The device makes its key and request; the device as it is then, when
    // the answer never comes, is kept aside.
    let keystore = iotpki_agent::keystore::Keystore::open(&dir, None, None).unwrap();
    iotpki_agent::flow::begin_birth(&dir, serial, KeyType::EcdsaP256, &keystore).unwrap();
    drop(keystore);
    let lost = ca.tmp.path().join("dut-la-lost");
    copy_dir(&dir, &lost);
    let first = st.birth("BLA", &dir, serial, KeyType::EcdsaP256).await.unwrap();
    let again = other.birth("BLA", &lost, serial, KeyType::EcdsaP256).await.unwrap();
    assert_eq!(again, first, "the same birth certificate");
    let status = iotpki_agent::status(&lost).unwrap();
    assert_eq!((status.device_serial.as_str(), status.cert_serial.as_str()), (serial, first.as_str()));
    assert_eq!(issued(&ca, "BLA"), (1, 0));
    assert_eq!(last_audit(&ca), ("station:line-lb".into(), "birth.replay".into(), first.clone()));

    let err = st.birth("BLA", &ca.tmp.path().join("dut-la-other"), serial, KeyType::EcdsaP256).await.unwrap_err();
    assert!(err.to_string().contains("already has a birth certificate"), "{err}");
    assert_eq!(issued(&ca, "BLA"), (1, 1));
}

/// The same, offline: a device whose birth by a station's delegated CA never
/// reached it gets that birth certificate again from the station (restarted
/// or not) with the key it kept, and the record gains no entry; another key
/// is refused. Born offline, the serial asked again online is refused, not
/// answered with a certificate the station's online chain does not verify
/// (the authority's replay checks the CA). A birth by an earlier delegation's
/// CA is not sent again under a new delegation's chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_offline_birth_answer_was_lost_gets_it_again_from_its_station_only() {
    let ca = Ca::start().await;
    batch(&ca, "BLO", &serials("LO", 2), 2);
    batch(&ca, "BLR", &serials("LR", 2), 2);
    let st_dir = station(&ca, "line-lo", &["BLO", "BLR"]);
    delegate(&ca, &st_dir, "line-lo", "BLO");
    let serial = "LO-000";
    let dir = ca.tmp.path().join("dut-lo");
    let keystore = iotpki_agent::keystore::Keystore::open(&dir, None, None).unwrap();
    iotpki_agent::flow::begin_birth(&dir, serial, KeyType::EcdsaP256, &keystore).unwrap();
    drop(keystore);
    let lost: Vec<PathBuf> = (0..3).map(|i| ca.tmp.path().join(format!("dut-lo-lost-{i}"))).collect();
    for l in &lost {
        copy_dir(&dir, l);
    }
    let off = Station::open_offline(&st_dir, "BLO").unwrap();
    let first = off.birth("BLO", &dir, serial, KeyType::EcdsaP256).await.unwrap();
    assert_eq!(off.birth("BLO", &lost[0], serial, KeyType::EcdsaP256).await.unwrap(), first);
    drop(off);
    let off = Station::open_offline(&st_dir, "BLO").unwrap();
    assert_eq!(off.birth("BLO", &lost[1], serial, KeyType::EcdsaP256).await.unwrap(), first, "after a restart");
    let status = iotpki_agent::status(&lost[1]).unwrap();
    assert_eq!((status.device_serial.as_str(), status.cert_serial.as_str()), (serial, first.as_str()));
    let err = off.birth("BLO", &ca.tmp.path().join("dut-lo-other"), serial, KeyType::EcdsaP256).await.unwrap_err();
    assert!(err.to_string().contains("already has a birth certificate"), "{err}");
    let record = std::fs::read_to_string(iotpki_station::offline::record_path(&st_dir, "BLO")).unwrap();
    assert_eq!(record.lines().count(), 1, "one birth recorded, whatever was sent again");

    let online = Station::open(&st_dir, None).unwrap();
    assert_eq!(online.sync(&st_dir, "BLO").await.unwrap(), (1, vec![]));
    assert_eq!(issued(&ca, "BLO"), (1, 0));
    let err = online.birth("BLO", &lost[2], serial, KeyType::EcdsaP256).await.unwrap_err();
    assert!(err.to_string().contains("already has a birth certificate"), "{err}");
    assert_eq!(issued(&ca, "BLO"), (1, 1));
    assert_eq!(last_audit(&ca).1, "refuse.enroll");
    assert!(iotpki_agent::status(&lost[2]).is_err(), "the device holds no identity from that");

    // Born by the station's delegated CA, whose key and delegation are then
    // replaced by another delegated CA's (a backup of another station's,
    // restored over it): the station no longer holds that birth's chain.
    use iotpki_station::offline;
    delegate(&ca, &st_dir, "line-lo", "BLR");
    let other = station(&ca, "line-lr", &["BLR"]);
    delegate(&ca, &other, "line-lr", "BLR");
    let d = ca.tmp.path().join("dut-lr");
    let keystore = iotpki_agent::keystore::Keystore::open(&d, None, None).unwrap();
    iotpki_agent::flow::begin_birth(&d, "LR-000", KeyType::EcdsaP256, &keystore).unwrap();
    drop(keystore);
    let d_lost = ca.tmp.path().join("dut-lr-lost");
    copy_dir(&d, &d_lost);
    Station::open_offline(&st_dir, "BLR").unwrap().birth("BLR", &d, "LR-000", KeyType::EcdsaP256).await.unwrap();
    let (mine, theirs) = (offline::batch_dir(&st_dir, "BLR"), offline::batch_dir(&other, "BLR"));
    for e in std::fs::read_dir(&mine).unwrap() {
        let p = e.unwrap().path();
        if p != offline::record_path(&st_dir, "BLR") {
            std::fs::remove_file(p).unwrap();
        }
    }
    for e in std::fs::read_dir(&theirs).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), mine.join(e.file_name())).unwrap();
    }
    let off = Station::open_offline(&st_dir, "BLR").unwrap();
    let err = off.birth("BLR", &d_lost, "LR-000", KeyType::EcdsaP256).await.unwrap_err();
    assert!(err.to_string().contains("already has a birth certificate"), "{err}");
}
