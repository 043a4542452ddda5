//! The authorisation matrix (issue #7): who may do what, one row per cell,
//! each role tried where it is allowed and where it is refused. A refusal has
//! its status and a one-line reason, and changes nothing in either store
//! (certificates, revocations, batches, ownership, and every audit entry but
//! the refusal's own). An allowed call has the effect it should, and an
//! admin's is in the audit chain under its name. Then the admin API with curl
//! (a client we did not write) and with `iotpki admin call`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use iotpki_agent::est_client::{ClientIdentity, EstClient};
use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::name::{DeviceSerial, NameBuilder};
use iotpki_core::{csr, est, pem, profile};
use iotpki_store::{CertQuery, CertStatus};
use serde_json::Value;

use crate::commission::{claim, trust};
use crate::factory::identity;
use crate::util::{batch, bin, born_devices, run_fail, run_ok, signed_bundle, station, Ca, PASS};

/// What the stores hold, but for refusals' own audit entries.
#[derive(Debug, PartialEq)]
struct Snapshot {
    certs: Vec<(String, CertStatus)>,
    batches: Vec<(String, bool, u64, u64)>,
    owned: Vec<Option<String>>,
    audit: Vec<(u64, String, String, String)>,
    audit_len: u64,
}

const WATCHED_DEVICES: [&str; 6] = ["AZ-DEV-1", "AZ-DEV-2", "AZ-DEV-3", "AZ-DEV-4", "AZ-OWN-1", "AZ-OWN-2"];

fn snapshot(ca: &Ca) -> Snapshot {
    let store = ca.authority.store();
    let mut certs: Vec<_> =
        store.list_certificates(&CertQuery::default()).unwrap().into_iter().map(|c| (c.serial, c.status)).collect();
    certs.sort_by(|a, b| a.0.cmp(&b.0));
    let batches = store
        .list_batches()
        .unwrap()
        .into_iter()
        .map(|b| (b.id, b.status == iotpki_store::BatchStatus::Open, b.issued, b.quota))
        .collect();
    let owned =
        WATCHED_DEVICES.iter().map(|d| store.ownership(d).unwrap().map(|o| o.status.as_str().to_string())).collect();
    let entries = store.audit_entries(1, u32::MAX).unwrap();
    let audit_len = entries.len() as u64;
    let audit = entries
        .into_iter()
        .filter(|e| !e.event.action.starts_with("refuse."))
        .map(|e| (e.seq, e.event.actor, e.event.action, e.event.target))
        .collect();
    Snapshot { certs, batches, owned, audit, audit_len }
}

/// Which server a cell talks to.
#[derive(Clone, Copy, Debug)]
enum On {
    /// The authority with devices, stations and admins.
    Main,
    /// The operator's authority, which owns AZ-OWN-1 and not AZ-OWN-2.
    Operator,
}

/// Who calls: a TLS client with (or without) a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Who {
    Anonymous,
    Device1,
    Station1,
    Alice,
    /// An admin whose certificate was revoked (`iotpki admin revoke`).
    RevokedAdmin,
    /// An admin whose certificate has expired.
    ExpiredAdmin,
    /// An admin of the operator's authority, at the main one.
    ForeignAdmin,
    /// A device with its birth certificate, owned by the operator.
    OwnedDevice,
    /// A device with its birth certificate, not owned by the operator.
    NotOwnedDevice,
}

type Check = Box<dyn Fn(&World, &[u8])>;

enum Expect {
    /// 200, then this check of the answer and the stores.
    Allowed(Check),
    /// This status, a reason containing this, nothing changed.
    Refused(u16, &'static str),
}

struct Cell {
    role: &'static str,
    what: &'static str,
    on: On,
    who: Who,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    expect: Expect,
}

struct World {
    main: Ca,
    op: Ca,
    clients: std::collections::HashMap<(Who, bool), EstClient>,
}

fn json_body(b: impl AsRef<[u8]>) -> Value {
    let b = b.as_ref();
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

fn csr_for(serial: &str, key: &dyn Signer) -> Vec<u8> {
    let sn = DeviceSerial::parse(serial).unwrap();
    let subject = NameBuilder::default().common_name(serial).unwrap().serial_number(&sn).unwrap().build();
    est::encode_body(&csr::build(&subject, key, vec![]).unwrap()).into_bytes()
}

/// A renewal request for the device in `state` (its subject, a fresh key).
fn reenroll_csr(state: &Path) -> Vec<u8> {
    let id = iotpki_agent::state::load(state).unwrap();
    let der = pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
    let subject = profile::cert_info(&der).unwrap().cert.tbs_certificate.subject;
    let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    est::encode_body(&csr::build(&subject, &key, vec![]).unwrap()).into_bytes()
}

pub(crate) fn cert_serial(state: &Path) -> String {
    iotpki_agent::status(state).unwrap().cert_serial
}

/// An admin directory made with `iotpki admin add`.
pub(crate) fn add_admin(ca: &Ca, name: &str, extra: &[&str]) -> PathBuf {
    let out = ca.tmp.path().join("admins").join(name);
    let o = run_ok(
        bin()
            .env("IOTPKI_PASSPHRASE", PASS)
            .args(["admin", "add", name, "--dir"])
            .arg(&ca.dir)
            .arg("--out")
            .arg(&out)
            .args(extra),
    );
    assert!(o.contains(&format!("admin {name} certified")), "{o}");
    out
}

fn admin_identity(dir: &Path) -> ClientIdentity {
    let key_der = pem::decode_one("PRIVATE KEY", &std::fs::read_to_string(dir.join("admin.key")).unwrap()).unwrap();
    let key: Arc<dyn Signer> = Arc::new(SoftKey::from_pkcs8(&key_der).unwrap());
    let chain = pem::decode_all("CERTIFICATE", &std::fs::read_to_string(dir.join("admin.crt")).unwrap()).unwrap();
    ClientIdentity { chain, key }
}

/// Bring the test's clock to the system's: certificates made by a CLI process
/// (on the system clock) are valid from then, however long the setup took.
pub(crate) fn sync_clock(ca: &Ca) {
    use iotpki_authority::Clock as _;
    let behind = iotpki_authority::SystemClock.now() - ca.clock.now();
    ca.clock.advance(behind.max(0));
}

impl World {
    fn ca(&self, on: On) -> &Ca {
        match on {
            On::Main => &self.main,
            On::Operator => &self.op,
        }
    }

    fn last_non_refusal(&self, on: On) -> iotpki_store::AuditEntry {
        let all = self.ca(on).authority.store().audit_entries(1, u32::MAX).unwrap();
        all.into_iter().rev().find(|e| !e.event.action.starts_with("refuse.")).unwrap()
    }

    /// The last entry is the admin alice's `action` on `target`.
    fn audited_by_alice(&self, action: &str, target: &str) {
        let e = self.main.last_audit();
        assert_eq!(
            (e.event.actor.as_str(), e.event.action.as_str(), e.event.target.as_str()),
            ("admin:alice", action, target),
            "{e:?}"
        );
    }
}

async fn run(w: &World, cells: Vec<Cell>) {
    for c in cells {
        let name = format!("{} / {}", c.role, c.what);
        let client = &w.clients[&(c.who, matches!(c.on, On::Operator))];
        let before = (snapshot(&w.main), snapshot(&w.op));
        if c.who == Who::ExpiredAdmin {
            w.main.clock.advance(3600);
        }
        let (status, body) = client.request(c.method, &c.path, c.content_type, c.body.clone()).await.unwrap();
        if c.who == Who::ExpiredAdmin {
            w.main.clock.advance(-3600);
        }
        let raw = body;
        let body = String::from_utf8_lossy(&raw).into_owned();
        match &c.expect {
            Expect::Allowed(check) => {
                assert_eq!(status, 200, "{name}: allowed, but {status}: {body}");
                check(w, &raw);
            }
            Expect::Refused(want, reason) => {
                assert_eq!(status, *want, "{name}: {body}");
                assert!(body.contains(reason), "{name}: reason {body:?} lacks {reason:?}");
                assert_eq!(body.trim_end().lines().count(), 1, "{name}: one line: {body:?}");
                let after = (snapshot(&w.main), snapshot(&w.op));
                for (b, a, which) in [(&before.0, &after.0, "main"), (&before.1, &after.1, "operator")] {
                    assert_eq!(b.certs, a.certs, "{name}: {which}'s certificates changed");
                    assert_eq!(b.batches, a.batches, "{name}: {which}'s batches changed");
                    assert_eq!(b.owned, a.owned, "{name}: {which}'s ownership changed");
                    assert_eq!(b.audit, a.audit, "{name}: {which}'s audit chain changed beyond a refusal");
                    assert!(a.audit_len <= b.audit_len + 1, "{name}: at most the refusal is audited");
                }
                let on = w.ca(c.on);
                let grew = match c.on {
                    On::Main => after.0.audit_len > before.0.audit_len,
                    On::Operator => after.1.audit_len > before.1.audit_len,
                };
                if grew {
                    let e = on.last_audit();
                    assert!(e.event.action.starts_with("refuse."), "{name}: {e:?}");
                    assert!(e.event.detail.contains(reason), "{name}: audited reason {e:?}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_matrix_every_role_allowed_and_refused() {
    let main = Ca::start().await;
    let op = Ca::start().await;
    // Devices with operational certificates.
    let dev1 = main.enrolled_device("AZ-DEV-1").await;
    let dev2 = main.enrolled_device("AZ-DEV-2").await;
    let dev3 = main.enrolled_device("AZ-DEV-3").await;
    main.enrolled_device("AZ-DEV-4").await;
    // Two batches, a station for each.
    let b1: Vec<String> = ["AZ-B1-1", "AZ-B1-2"].iter().map(|s| s.to_string()).collect();
    let b2: Vec<String> = ["AZ-B2-1"].iter().map(|s| s.to_string()).collect();
    batch(&main, "AZB1", &b1, 2);
    batch(&main, "AZB2", &b2, 1);
    let st1 = station(&main, "az-st-1", &["AZB1"]);
    station(&main, "az-st-2", &["AZB2"]);
    // Devices born here, one of them owned by the operator.
    let born = born_devices(&main, "AZO", &["AZ-OWN-1".to_string(), "AZ-OWN-2".to_string()]).await;
    trust(&op, &main);
    claim(&op, &main, &["AZ-OWN-1"]);
    // Admins: alice; bob, revoked; carol, whose certificate lives a minute; oscar, the operator's.
    let alice = add_admin(&main, "alice", &[]);
    let bob = add_admin(&main, "bob", &[]);
    let carol = add_admin(&main, "carol", &["--validity", "60s"]);
    let oscar = add_admin(&op, "oscar", &[]);
    let out = run_ok(bin().args(["admin", "revoke", "bob", "--dir"]).arg(&main.dir));
    assert!(out.contains("revoked admin bob's certificate"), "{out}");
    sync_clock(&main);
    sync_clock(&op);
    let listed = run_ok(bin().args(["admin", "list", "--dir"]).arg(&main.dir));
    assert!(listed.contains("alice") && listed.contains("active"), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with("bob") && l.contains("revoked")), "{listed}");
    // A trust bundle to serve.
    let keys: Vec<SoftKey> = (0..2).map(|_| SoftKey::generate(KeyType::EcdsaP256).unwrap()).collect();
    iotpki_authority::trust::publish_bundle(
        main.authority.store().as_ref(),
        main.clock.as_ref(),
        &signed_bundle(&main, &keys, 1),
        "test",
    )
    .unwrap();

    let mut clients = std::collections::HashMap::new();
    for (on_op, ca) in [(false, &main), (true, &op)] {
        let anchor = [ca.authority.root_der().to_vec()];
        let mk = |id: Option<ClientIdentity>| EstClient::new(&ca.url, None, &anchor, id).unwrap();
        clients.insert((Who::Anonymous, on_op), mk(None));
        clients.insert((Who::Device1, on_op), mk(Some(identity(&dev1))));
        clients.insert((Who::Station1, on_op), mk(Some(identity(&st1))));
        clients.insert((Who::Alice, on_op), mk(Some(admin_identity(&alice))));
        clients.insert((Who::RevokedAdmin, on_op), mk(Some(admin_identity(&bob))));
        clients.insert((Who::ExpiredAdmin, on_op), mk(Some(admin_identity(&carol))));
        clients.insert((Who::ForeignAdmin, on_op), mk(Some(admin_identity(&oscar))));
        clients.insert((Who::OwnedDevice, on_op), mk(Some(identity(&born[0]))));
        clients.insert((Who::NotOwnedDevice, on_op), mk(Some(identity(&born[1]))));
    }
    let w = World { main, op, clients };
    let dev1_serial = cert_serial(&dev1);
    let dev2_serial = cert_serial(&dev2);
    let dev3_serial = cert_serial(&dev3);
    let fresh = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let pkcs10 = Some(est::CT_PKCS10);
    let json_ct = Some("application/json");
    let (ocsp_req, crl_path) = ocsp_request(&w.main, &dev1);

    let cell = |role, what, on, who, method, path: &str, expect| Cell {
        role,
        what,
        on,
        who,
        method,
        path: path.to_string(),
        content_type: None,
        body: vec![],
        expect,
    };
    let post = |role, what, on, who, path: &str, ct, body: Vec<u8>, expect| Cell {
        content_type: ct,
        body,
        ..cell(role, what, on, who, "POST", path, expect)
    };
    use Expect::{Allowed, Refused};
    use On::{Main, Operator};
    let new_cert_for = |device: &'static str| -> Check {
        Box::new(move |w: &World, _b: &[u8]| {
            let on = if device.starts_with("AZ-OWN") { On::Operator } else { On::Main };
            let e = w.last_non_refusal(on);
            let rec = w.ca(on).authority.store().certificate(&e.event.target).unwrap().unwrap();
            assert_eq!(rec.device_serial.as_deref(), Some(device), "{e:?}");
            assert_eq!(rec.status, CertStatus::Good);
        })
    };

    let cells = vec![
        // device: only its own identity.
        post(
            "device",
            "re-enroll as another device",
            Main,
            Who::Device1,
            "/.well-known/est/simplereenroll",
            pkcs10,
            reenroll_csr(&dev2),
            Refused(403, "but the current certificate is for serial AZ-DEV-1"),
        ),
        post(
            "device",
            "revoke another device",
            Main,
            Who::Device1,
            "/admin/v1/devices/AZ-DEV-2/revoke",
            json_ct,
            b"{}".to_vec(),
            Refused(403, "a device certificate is not an admin's"),
        ),
        cell(
            "device",
            "list certificates (admin)",
            Main,
            Who::Device1,
            "GET",
            "/admin/v1/certificates",
            Refused(403, "not an admin's"),
        ),
        post(
            "device",
            "birth in a batch",
            Main,
            Who::Device1,
            "/.well-known/est/birth/simpleenroll?batch=AZB1",
            pkcs10,
            csr_for("AZ-B1-2", &fresh),
            Refused(403, "not a factory station's"),
        ),
        post(
            "device",
            "enroll again without a token",
            Main,
            Who::Device1,
            "/.well-known/est/simpleenroll",
            pkcs10,
            csr_for("AZ-DEV-1", &fresh),
            Refused(403, "trusts no manufacturer"),
        ),
        // Last of the device's cells: the renewal supersedes the certificate the others present.
        post(
            "device",
            "re-enroll itself",
            Main,
            Who::Device1,
            "/.well-known/est/simplereenroll",
            pkcs10,
            reenroll_csr(&dev1),
            Allowed(new_cert_for("AZ-DEV-1")),
        ),
        // station: only its batches.
        post(
            "station",
            "birth in its batch",
            Main,
            Who::Station1,
            "/.well-known/est/birth/simpleenroll?batch=AZB1",
            pkcs10,
            csr_for("AZ-B1-1", &fresh),
            Allowed(new_cert_for("AZ-B1-1")),
        ),
        post(
            "station",
            "birth in another batch",
            Main,
            Who::Station1,
            "/.well-known/est/birth/simpleenroll?batch=AZB2",
            pkcs10,
            csr_for("AZ-B2-1", &fresh),
            Refused(403, "not authorised for batch AZB2"),
        ),
        cell(
            "station",
            "its batch's terms",
            Main,
            Who::Station1,
            "GET",
            "/factory/batches/AZB1",
            Allowed(Box::new(|_, b| assert_eq!(json_body(b)["id"], "AZB1"))),
        ),
        cell(
            "station",
            "another batch's terms",
            Main,
            Who::Station1,
            "GET",
            "/factory/batches/AZB2",
            Refused(403, "not authorised for batch AZB2"),
        ),
        post(
            "station",
            "re-enroll",
            Main,
            Who::Station1,
            "/.well-known/est/simplereenroll",
            pkcs10,
            csr_for("AZ-B1-2", &fresh),
            Refused(403, "a station certificate cannot re-enroll"),
        ),
        cell(
            "station",
            "admin API",
            Main,
            Who::Station1,
            "GET",
            "/admin/v1/audit/verify",
            Refused(403, "a station certificate is not an admin's"),
        ),
        // operator: only devices it owns.
        post(
            "operator",
            "commission an owned device",
            Operator,
            Who::OwnedDevice,
            "/.well-known/est/simpleenroll",
            pkcs10,
            csr_for("AZ-OWN-1", &fresh),
            Allowed(new_cert_for("AZ-OWN-1")),
        ),
        post(
            "operator",
            "commission a device it does not own",
            Operator,
            Who::NotOwnedDevice,
            "/.well-known/est/simpleenroll",
            pkcs10,
            csr_for("AZ-OWN-2", &fresh),
            Refused(403, "not owned by this authority"),
        ),
        cell(
            "operator",
            "its devices at its admin API",
            Operator,
            Who::OwnedDevice,
            "GET",
            "/admin/v1/certificates",
            Refused(403, "not issued by this authority"),
        ),
        // admin: everything, authenticated.
        cell(
            "admin",
            "whoami",
            Main,
            Who::Alice,
            "GET",
            "/admin/v1/whoami",
            Allowed(Box::new(|w, b| {
                assert_eq!(json_body(b)["admin"], "alice");
                w.audited_by_alice("admin.whoami", "");
            })),
        ),
        cell(
            "admin",
            "list certificates",
            Main,
            Who::Alice,
            "GET",
            "/admin/v1/certificates?device=AZ-DEV-1",
            Allowed(Box::new(|w, b| {
                let v = json_body(b);
                assert_eq!(v.as_array().unwrap().len(), 2, "issued and renewed: {v}");
                // The registry says which one is current: the renewal; the first names it.
                let current: Vec<_> = v.as_array().unwrap().iter().filter(|c| c["current"] == true).collect();
                assert_eq!(current.len(), 1, "{v}");
                let first = v.as_array().unwrap().iter().find(|c| c["current"] == false).unwrap();
                assert_eq!(first["replaced_by"], current[0]["serial"], "{v}");
                assert!(first["status"].as_str().unwrap().contains("superseded"), "{v}");
                w.audited_by_alice("admin.cert.list", "device:AZ-DEV-1");
            })),
        ),
        cell(
            "admin",
            "show a certificate",
            Main,
            Who::Alice,
            "GET",
            &format!("/admin/v1/certificates/{dev2_serial}"),
            Allowed({
                let s = dev2_serial.clone();
                Box::new(move |w, b| {
                    let v = json_body(b);
                    assert_eq!(v["serial"], s.as_str());
                    assert!(v["pem"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
                    w.audited_by_alice("admin.cert.show", &s);
                })
            }),
        ),
        post(
            "admin",
            "revoke a certificate",
            Main,
            Who::Alice,
            &format!("/admin/v1/certificates/{dev3_serial}/revoke"),
            json_ct,
            br#"{"reason":"keyCompromise"}"#.to_vec(),
            Allowed({
                let s = dev3_serial.clone();
                Box::new(move |w, b| {
                    assert_eq!(json_body(b)["revoked"][0], s.as_str());
                    let rec = w.main.authority.store().certificate(&s).unwrap().unwrap();
                    assert!(matches!(rec.status, CertStatus::Revoked { reason: 1, .. }), "{rec:?}");
                    w.audited_by_alice("revoke", &s);
                })
            }),
        ),
        post(
            "admin",
            "revoke a device",
            Main,
            Who::Alice,
            "/admin/v1/devices/AZ-DEV-4/revoke",
            None,
            vec![],
            Allowed(Box::new(|w, _| {
                let certs = w
                    .main
                    .authority
                    .store()
                    .list_certificates(&CertQuery { device_serial: Some("AZ-DEV-4".into()), ..Default::default() })
                    .unwrap();
                assert!(certs.iter().all(|c| matches!(c.status, CertStatus::Revoked { .. })), "{certs:?}");
                assert_eq!(w.main.last_audit().event.actor, "admin:alice");
            })),
        ),
        post(
            "admin",
            "create a batch",
            Main,
            Who::Alice,
            "/admin/v1/batches",
            json_ct,
            br#"{"id":"AZB3","product":"gadget","serials":["AZ-B3-1","AZ-B3-2"],"quota":2,"require_tpm_attestation":true}"#.to_vec(),
            Allowed(Box::new(|w, b| {
                assert_eq!(json_body(b)["id"], "AZB3");
                assert_eq!(json_body(b)["profile"], "device", "a batch without a profile is a device batch");
                assert_eq!(json_body(b)["tpm_attestation"], "required");
                let rec = w.main.authority.store().batch("AZB3").unwrap().unwrap();
                assert_eq!((rec.quota, rec.allowlist, rec.tpm_attestation), (2, 2, true));
                assert_eq!(w.main.last_audit().event.actor, "admin:alice");
            })),
        ),
        post(
            "admin",
            "create a Matter batch for a vendor without a PAI (docs/matter.md)",
            Main,
            Who::Alice,
            "/admin/v1/batches",
            json_ct,
            br#"{"id":"AZB4","product":"light","serials":["AZ-B4-1"],"quota":1,"profile":"matter-dac","vendor_id":"FFF1","product_id":"8000"}"#.to_vec(),
            Refused(400, "no PAI for vendor id FFF1"),
        ),
        post(
            "admin",
            "create a Matter batch with a reserved vendor id",
            Main,
            Who::Alice,
            "/admin/v1/batches",
            json_ct,
            br#"{"id":"AZB4","product":"light","serials":["AZ-B4-1"],"quota":1,"profile":"matter-dac","vendor_id":"0000","product_id":"8000"}"#.to_vec(),
            Refused(400, "vendor id 0000"),
        ),
        post(
            "admin",
            "close a batch",
            Main,
            Who::Alice,
            "/admin/v1/batches/AZB3/close",
            None,
            vec![],
            Allowed(Box::new(|w, _| {
                let rec = w.main.authority.store().batch("AZB3").unwrap().unwrap();
                assert_eq!(rec.status, iotpki_store::BatchStatus::Closed);
                assert_eq!(w.main.last_audit().event.actor, "admin:alice");
            })),
        ),
        cell(
            "admin",
            "show a batch",
            Main,
            Who::Alice,
            "GET",
            "/admin/v1/batches/AZB1",
            Allowed(Box::new(|w, b| {
                let v = json_body(b);
                assert_eq!(
                    (v["id"].as_str(), v["issued"].as_u64(), v["status"].as_str()),
                    (Some("AZB1"), Some(1), Some("open"))
                );
                w.audited_by_alice("admin.batch.show", "batch:AZB1");
            })),
        ),
        cell(
            "admin",
            "list batches",
            Main,
            Who::Alice,
            "GET",
            "/admin/v1/batches",
            Allowed(Box::new(|w, b| {
                assert!(json_body(b).as_array().unwrap().iter().any(|x| x["id"] == "AZB3" && x["status"] == "closed"));
                w.audited_by_alice("admin.batch.list", "");
            })),
        ),
        cell(
            "admin",
            "list the audit log",
            Main,
            Who::Alice,
            "GET",
            "/admin/v1/audit?from=1&limit=5",
            Allowed(Box::new(|w, b| {
                let v = json_body(b);
                assert_eq!(v.as_array().unwrap().len(), 5);
                assert_eq!(v[0]["seq"], 1);
                w.audited_by_alice("admin.audit.list", "");
            })),
        ),
        cell(
            "admin",
            "verify the audit chain",
            Main,
            Who::Alice,
            "GET",
            "/admin/v1/audit/verify",
            Allowed(Box::new(|w, b| {
                let v = json_body(b);
                assert_eq!(v["ok"], true, "{v}");
                assert_eq!(v["entries"].as_u64().unwrap() + 1, w.main.audit_len());
                w.audited_by_alice("admin.audit.verify", "");
            })),
        ),
        post(
            "admin",
            "create a token",
            Main,
            Who::Alice,
            "/admin/v1/tokens",
            json_ct,
            br#"{"serial":"AZ-DEV-9","ttl_secs":600}"#.to_vec(),
            Allowed(Box::new(|w, b| {
                let token = json_body(b)["token"].as_str().unwrap().to_string();
                let t = w.main.authority.store().token(&iotpki_authority::tokens::hash(&token)).unwrap().unwrap();
                assert_eq!(t.device_serial, "AZ-DEV-9");
                assert!(t.used_at.is_none());
                w.audited_by_alice("token.create", "AZ-DEV-9");
            })),
        ),
        post(
            "admin",
            "create a token naming a certificate template (docs/templates.md)",
            Main,
            Who::Alice,
            "/admin/v1/tokens",
            json_ct,
            br#"{"serial":"AZ-DEV-10","template":"device"}"#.to_vec(),
            Allowed(Box::new(|w, b| {
                let token = json_body(b)["token"].as_str().unwrap().to_string();
                let t = w.main.authority.store().token(&iotpki_authority::tokens::hash(&token)).unwrap().unwrap();
                assert_eq!(t.template.as_deref(), Some("device"));
                w.audited_by_alice("token.create", "AZ-DEV-10");
            })),
        ),
        post(
            "admin",
            "create a token naming a template the config does not have",
            Main,
            Who::Alice,
            "/admin/v1/tokens",
            json_ct,
            br#"{"serial":"AZ-DEV-11","template":"nope"}"#.to_vec(),
            Refused(400, "no certificate template named \"nope\""),
        ),
        post(
            "admin",
            "create a batch naming a template the config does not have",
            Main,
            Who::Alice,
            "/admin/v1/batches",
            json_ct,
            br#"{"id":"AZB5","product":"gadget","serials":["AZ-B5-1"],"quota":1,"template":"nope"}"#.to_vec(),
            Refused(400, "no certificate template named \"nope\""),
        ),
        post(
            "admin",
            "revoke a certificate that does not exist",
            Main,
            Who::Alice,
            "/admin/v1/certificates/0badc0ffee/revoke",
            json_ct,
            vec![],
            Refused(404, "no certificate with serial 0badc0ffee"),
        ),
        post(
            "admin",
            "revoke with a reason that is none",
            Main,
            Who::Alice,
            &format!("/admin/v1/certificates/{dev1_serial}/revoke"),
            json_ct,
            br#"{"reason":"boredom"}"#.to_vec(),
            Refused(400, "boredom"),
        ),
        post(
            "admin",
            "a batch without a product",
            Main,
            Who::Alice,
            "/admin/v1/batches",
            json_ct,
            br#"{"serials":["X-1"],"quota":1}"#.to_vec(),
            Refused(400, "product"),
        ),
        post(
            "admin",
            "re-enroll with an admin certificate",
            Main,
            Who::Alice,
            "/.well-known/est/simplereenroll",
            pkcs10,
            csr_for("AZ-DEV-1", &fresh),
            Refused(403, "admin certificate cannot re-enroll"),
        ),
        post(
            "admin",
            "birth with an admin certificate",
            Main,
            Who::Alice,
            "/.well-known/est/birth/simpleenroll?batch=AZB1",
            pkcs10,
            csr_for("AZ-B1-2", &fresh),
            Refused(403, "not a factory station's"),
        ),
        post(
            "admin",
            "enroll with an admin certificate",
            Main,
            Who::Alice,
            "/.well-known/est/simpleenroll",
            pkcs10,
            csr_for("AZ-DEV-9", &fresh),
            Refused(403, "trusts no manufacturer"),
        ),
        cell("admin", "revoked admin", Main, Who::RevokedAdmin, "GET", "/admin/v1/whoami", Refused(403, "is revoked")),
        post(
            "admin",
            "revoked admin revokes",
            Main,
            Who::RevokedAdmin,
            &format!("/admin/v1/certificates/{dev1_serial}/revoke"),
            json_ct,
            vec![],
            Refused(403, "is revoked"),
        ),
        cell(
            "admin",
            "expired admin",
            Main,
            Who::ExpiredAdmin,
            "GET",
            "/admin/v1/certificates",
            Refused(403, "expired at "),
        ),
        post(
            "admin",
            "another authority's admin",
            Main,
            Who::ForeignAdmin,
            "/admin/v1/tokens",
            json_ct,
            br#"{"serial":"AZ-DEV-9"}"#.to_vec(),
            Refused(403, "not issued by this authority"),
        ),
        // anonymous: cacerts, CRL, OCSP, bundles only.
        cell(
            "anonymous",
            "cacerts",
            Main,
            Who::Anonymous,
            "GET",
            "/.well-known/est/cacerts",
            Allowed(Box::new(|_, b| assert!(!b.is_empty()))),
        ),
        cell(
            "anonymous",
            "CRL",
            Main,
            Who::Anonymous,
            "GET",
            &crl_path,
            Allowed(Box::new(|w, _| {
                assert_eq!(w.main.last_audit().event.action, "crl.issue");
            })),
        ),
        post(
            "anonymous",
            "OCSP",
            Main,
            Who::Anonymous,
            "/ocsp",
            Some("application/ocsp-request"),
            ocsp_req,
            Allowed(Box::new(|_, b| {
                // OCSPResponse { responseStatus successful (0) ... }: after the outer SEQUENCE header.
                let at = b.windows(3).position(|x| x == [0x0a, 0x01, 0x00]);
                assert!(b[0] == 0x30 && at.is_some_and(|i| i <= 4), "{b:?}");
            })),
        ),
        cell(
            "anonymous",
            "trust bundle",
            Main,
            Who::Anonymous,
            "GET",
            "/.well-known/iotpki/bundle",
            Allowed(Box::new(|w, b| {
                let published = w.main.authority.published(iotpki_authority::trust::BUNDLE).unwrap();
                assert_eq!(b, published.as_slice());
            })),
        ),
        post(
            "anonymous",
            "enroll without a token",
            Main,
            Who::Anonymous,
            "/.well-known/est/simpleenroll",
            pkcs10,
            csr_for("AZ-DEV-9", &fresh),
            Refused(401, "one-time token"),
        ),
        post(
            "anonymous",
            "birth",
            Main,
            Who::Anonymous,
            "/.well-known/est/birth/simpleenroll?batch=AZB1",
            pkcs10,
            csr_for("AZ-B1-2", &fresh),
            Refused(401, "factory station's certificate"),
        ),
        cell(
            "anonymous",
            "batch terms",
            Main,
            Who::Anonymous,
            "GET",
            "/factory/batches/AZB1",
            Refused(401, "factory station's certificate"),
        ),
        post(
            "anonymous",
            "re-enroll",
            Main,
            Who::Anonymous,
            "/.well-known/est/simplereenroll",
            pkcs10,
            reenroll_csr(&dev1),
            Refused(401, "current certificate"),
        ),
        cell(
            "anonymous",
            "admin API",
            Main,
            Who::Anonymous,
            "GET",
            "/admin/v1/whoami",
            Refused(401, "needs an admin certificate"),
        ),
        post(
            "anonymous",
            "admin revoke",
            Main,
            Who::Anonymous,
            &format!("/admin/v1/certificates/{dev1_serial}/revoke"),
            json_ct,
            vec![],
            Refused(401, "needs an admin certificate"),
        ),
    ];
    let n = cells.len();
    let roles: std::collections::HashSet<&str> = cells.iter().map(|c| c.role).collect();
    for r in &roles {
        let allowed = cells.iter().filter(|c| c.role == *r && matches!(c.expect, Allowed(_))).count();
        let refused = cells.iter().filter(|c| c.role == *r && matches!(c.expect, Refused(..))).count();
        assert!(allowed > 0 && refused > 0, "{r}: each role is tried allowed and refused");
    }
    run(&w, cells).await;
    assert_eq!(roles.len(), 5, "{n} cells over {roles:?}");
    // The device cell refused to revoke AZ-DEV-2: it is still good; the revoked ones are exactly those the admin revoked.
    let st = w.main.authority.store();
    assert_eq!(st.certificate(&dev2_serial).unwrap().unwrap().status, CertStatus::Good);
    // AZ-DEV-1's first certificate was renewed: superseded (reason 4), naming its successor.
    let dev1 = st.certificate(&dev1_serial).unwrap().unwrap();
    assert!(matches!(dev1.status, CertStatus::Revoked { reason: 4, .. }) && dev1.replaced_by.is_some(), "{dev1:?}");
    // The chain holds after all of it.
    st.verify_audit().unwrap();
    w.op.authority.store().verify_audit().unwrap();
}

/// A DER OCSP request (by openssl) for the device in `state`, and the CRL path of its CA.
fn ocsp_request(ca: &Ca, state: &Path) -> (Vec<u8>, String) {
    let d = ca.tmp.path().join("authz-ocsp");
    std::fs::create_dir_all(&d).unwrap();
    let dev = d.join("dev.pem");
    std::fs::write(&dev, iotpki_agent::state::load(state).unwrap().cert_pem).unwrap();
    let req = d.join("req.der");
    run_ok(
        Command::new("openssl")
            .args(["ocsp", "-no_nonce", "-issuer"])
            .arg(ca.ca_file("operational"))
            .arg("-cert")
            .arg(&dev)
            .arg("-reqout")
            .arg(&req),
    );
    (std::fs::read(&req).unwrap(), "/crl/operational.crl".to_string())
}

pub(crate) fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--tlsv1.3", "--write-out", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or_else(|_| panic!("curl: {text} {}", String::from_utf8_lossy(&out.stderr))),
        body.to_string(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The admin API with curl and the admin's files from `iotpki admin add`, and
/// with `iotpki admin call`; the plain-HTTP listener has no admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_with_curl_and_admin_call() {
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("AC-1").await;
    let serial = cert_serial(&dev);
    let d = add_admin(&ca, "root-ops", &[]);
    sync_clock(&ca);
    let err = run_fail(
        bin()
            .env("IOTPKI_PASSPHRASE", PASS)
            .args(["admin", "add", "root-ops", "--dir"])
            .arg(&ca.dir)
            .arg("--out")
            .arg(ca.tmp.path().join("again")),
    );
    assert!(err.contains("admin root-ops exists already"), "{err}");
    let cert_pem = std::fs::read_to_string(d.join("admin.crt")).unwrap();
    let text = crate::util::openssl(&["x509", "-noout", "-text", "-in", s(&d.join("admin.crt"))]);
    assert!(text.contains("TLS Web Client Authentication") && text.contains("CMC Registration Authority"), "{text}");
    assert!(text.contains("OU=Administrators") || text.contains("OU = Administrators"), "{text}");
    assert_eq!(pem::decode_all("CERTIFICATE", &cert_pem).unwrap().len(), 2, "leaf and the operational CA");
    let before = ca.cert_count();
    let (whoami, nocert, revoke, plain) = tokio::task::spawn_blocking({
        let (url, http_url, d, serial) = (ca.url.clone(), ca.http_url.clone(), d.clone(), serial.clone());
        move || {
            let revoke = format!("/admin/v1/certificates/{serial}/revoke");
            let json = ["-H", "Content-Type: application/json", "--data", r#"{"reason":"superseded"}"#];
            (
                curl_admin(&url, &d, true, "/admin/v1/whoami", &[]),
                curl_admin(&url, &d, false, &revoke, &json),
                curl_admin(&url, &d, true, &revoke, &json),
                curl(&[&format!("{http_url}/admin/v1/whoami")]),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(whoami.0, 200, "{whoami:?}");
    assert_eq!(json_body(&whoami.1)["admin"], "root-ops");
    assert_eq!(nocert.0, 401, "{nocert:?}");
    assert!(nocert.1.contains("needs an admin certificate"), "{nocert:?}");
    assert_eq!(revoke.0, 200, "{revoke:?}");
    assert_eq!(json_body(&revoke.1)["reason"], "superseded");
    let status = ca.authority.store().certificate(&serial).unwrap().unwrap().status;
    assert!(matches!(status, CertStatus::Revoked { reason: 4, .. }), "{status:?}");
    assert_eq!(ca.last_audit().event.actor, "admin:root-ops");
    assert_eq!(plain.0, 404, "no admin API over plain HTTP: {plain:?}");
    assert_eq!(ca.cert_count(), before);

    // The same with iotpki's own client.
    let call = |args: &[&str]| {
        let mut c = bin();
        c.args(["admin", "call", "--admin-dir"]).arg(&d).args(["--server", &ca.url]).args(args);
        c
    };
    let (mut c1, mut c2) = (
        call(&["POST", "/admin/v1/tokens", "--data", r#"{"serial":"AC-2"}"#]),
        call(&["GET", "/admin/v1/nothing-here"]),
    );
    let (out, err) = tokio::task::spawn_blocking(move || (run_ok(&mut c1), run_fail(&mut c2))).await.unwrap();
    let token = json_body(&out)["token"].as_str().unwrap().to_string();
    assert_eq!(ca.last_audit().event.action, "token.create");
    assert!(err.contains("HTTP 404"), "{err}");
    iotpki_agent::enroll(&ca.enroll_opts(&ca.tmp.path().join("ac2"), "AC-2", &token)).await.unwrap();

    // Revoked by `iotpki admin revoke`: curl is refused from then on.
    run_ok(bin().args(["admin", "revoke", "root-ops", "--dir"]).arg(&ca.dir));
    let after = tokio::task::spawn_blocking({
        let (url, d) = (ca.url.clone(), d.clone());
        move || curl_admin(&url, &d, true, "/admin/v1/whoami", &[])
    })
    .await
    .unwrap();
    assert_eq!(after.0, 403, "{after:?}");
    assert!(after.1.contains("is revoked"), "{after:?}");
    assert_eq!(ca.last_audit().event.action, "refuse.admin");
    let certs = run_ok(bin().args(["cert", "list", "--profile", "admin", "--json", "--dir"]).arg(&ca.dir));
    assert_eq!(certs.lines().count(), 1, "{certs}");
    assert_eq!(json_body(certs.lines().next().unwrap())["profile"], "admin");
    let listed = run_ok(bin().args(["admin", "list", "--json", "--dir"]).arg(&ca.dir));
    assert!(json_body(listed.lines().next().unwrap())["status"].as_str().unwrap().starts_with("revoked"), "{listed}");
}

/// curl at the admin API, trusting the admin directory's ca.crt, with its certificate when `with_cert`.
fn curl_admin(url: &str, dir: &Path, with_cert: bool, path: &str, extra: &[&str]) -> (u16, String) {
    let (ca, cert, key) = (dir.join("ca.crt"), dir.join("admin.crt"), dir.join("admin.key"));
    let mut a = vec!["--cacert", s(&ca)];
    if with_cert {
        a.extend_from_slice(&["--cert", s(&cert), "--key", s(&key)]);
    }
    a.extend_from_slice(extra);
    let u = format!("{url}{path}");
    a.push(&u);
    curl(&a)
}

/// The key registry over the admin API: block a device's key by hash (and revoke),
/// see whose it is and the list; a bad hash is refused with the reason and audited.
#[tokio::test(flavor = "multi_thread")]
async fn admin_api_blocks_keys_and_names_their_holders() {
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("AK-1").await;
    let serial = cert_serial(&dev);
    let spki = ca.authority.store().certificate(&serial).unwrap().unwrap().spki_sha256;
    let d = add_admin(&ca, "key-ops", &[]);
    sync_clock(&ca);
    let call = |args: &[&str]| {
        let mut c = bin();
        c.args(["admin", "call", "--admin-dir"]).arg(&d).args(["--server", &ca.url]).args(args);
        c
    };
    let block = format!(r#"{{"spki_sha256":["{spki}"],"reason":"found in fw-3.bin","revoke":true}}"#);
    let (mut c1, mut c2, mut c3, mut c4) = (
        call(&["POST", "/admin/v1/keys/block", "--data", &block]),
        call(&["GET", &format!("/admin/v1/keys/{spki}")]),
        call(&["GET", "/admin/v1/keys/blocked"]),
        call(&["POST", "/admin/v1/keys/block", "--data", r#"{"spki_sha256":["abc"]}"#]),
    );
    let (blocked, shown, listed, bad) =
        tokio::task::spawn_blocking(move || (run_ok(&mut c1), run_ok(&mut c2), run_ok(&mut c3), run_fail(&mut c4)))
            .await
            .unwrap();
    let blocked = json_body(&blocked);
    assert_eq!(
        (blocked["blocked"][0].as_str(), blocked["revoked"][0].as_str()),
        (Some(spki.as_str()), Some(serial.as_str()))
    );
    let status = ca.authority.store().certificate(&serial).unwrap().unwrap().status;
    assert!(matches!(status, CertStatus::Revoked { reason: 1, .. }), "{status:?}");
    let shown = json_body(&shown);
    assert_eq!((shown["role"].as_str(), shown["name"].as_str()), (Some("device"), Some("AK-1")));
    assert_eq!(shown["blocked"]["reason"], "found in fw-3.bin");
    assert_eq!(shown["blocked"]["blocked_by"], "admin:key-ops");
    assert_eq!(shown["certificates"][0]["serial"], serial.as_str());
    assert_eq!(json_body(&listed).as_array().unwrap().len(), 1);
    assert!(bad.contains("HTTP 400") && bad.contains("64 hex digits"), "{bad}");
    let last = ca.last_audit().event;
    assert_eq!((last.action.as_str(), last.actor.as_str()), ("refuse.admin", "admin:key-ops"));
    assert!(last.detail.starts_with("key.block: "), "{last:?}");
}
