//! The fleet console's reads (issue #18) as an authenticated admin, on what
//! the authority itself recorded: enrollments, a renewal, births, refusals,
//! revocations and CRLs. The reads write nothing to the audit log; their
//! refusals do.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use iotpki_authority::admin::Admin;
use iotpki_authority::factory::{self, NewBatch};
use iotpki_authority::revocation::{self, Target};
use iotpki_authority::{
    Authority, AuthorityError, Caller, Config, Credential, EnrollRequest, Gate, Passphrase, Refusal,
};
use iotpki_core::clock::{Clock, FixedClock, SystemClock};
use iotpki_core::csr::{self, VerifiedCsr};
use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::name::{DeviceSerial, NameBuilder};
use iotpki_store::AuditFilter;
use rustls_pki_types::CertificateDer;

const PASS: &str = "authority console test passphrase";
const DAY: i64 = 86_400;

struct Ca {
    _tmp: tempfile::TempDir,
    a: Authority,
    clock: Arc<FixedClock>,
    admin_chain: Vec<CertificateDer<'static>>,
}

fn ca_with(adjust: impl FnOnce(&mut Config)) -> Ca {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let pass = Passphrase::new(PASS.into()).unwrap();
    iotpki_authority::init::init(&dir, &Default::default(), &pass, &SystemClock).unwrap();
    let mut cfg = Config::load(&dir).unwrap();
    adjust(&mut cfg);
    let clock = Arc::new(FixedClock::new(SystemClock.now()));
    let a = Authority::open_with_config(&dir, cfg, &pass, clock.clone()).unwrap();
    let (der, chain) = a.add_admin("console", key().public_key_der(), None, "test").unwrap();
    let admin_chain = std::iter::once(der).chain(chain).map(CertificateDer::from).collect();
    Ca { _tmp: tmp, a, clock, admin_chain }
}

fn key() -> SoftKey {
    SoftKey::generate(KeyType::EcdsaP256).unwrap()
}

fn csr_for(serial: &str, key: &SoftKey) -> VerifiedCsr {
    let b = NameBuilder::default().common_name(serial).unwrap().serial_number(&DeviceSerial::parse(serial).unwrap());
    csr::parse_and_verify(&csr::build(&b.unwrap().build(), key, vec![]).unwrap()).unwrap()
}

const ENROLL: EnrollRequest<'static> = EnrollRequest::Enroll { batch: None, activation: None };

impl Ca {
    fn admin(&self) -> Admin<'_> {
        self.a.admin(&self.admin_chain).unwrap()
    }

    fn audit_len(&self) -> u64 {
        self.a.store().verify_audit().unwrap().entries
    }

    /// Enroll `serial` with a token; answers its certificate (DER).
    fn enroll(&self, serial: &str, key: &SoftKey) -> Vec<u8> {
        let t = self.a.create_token(&DeviceSerial::parse(serial).unwrap(), None, "test").unwrap();
        let caller = self.a.admit(Gate::Enroll, None, Credential::Token { user: serial, password: &t }).unwrap();
        self.a.enroll(None, &caller, ENROLL, &csr_for(serial, key)).unwrap().cert_der
    }

    fn renew(&self, der: &[u8], key: &SoftKey, serial: &str) -> Vec<u8> {
        let ca_der = iotpki_core::pem::decode_one(
            "CERTIFICATE",
            &std::fs::read_to_string(self.a.dir().join("ca").join("operational.crt")).unwrap(),
        )
        .unwrap();
        let chain = vec![CertificateDer::from(der.to_vec()), CertificateDer::from(ca_der)];
        let caller: Caller =
            self.a.admit(Gate::Certificate("refuse.reenroll"), None, Credential::ClientCert(&chain)).unwrap();
        self.a.enroll(None, &caller, EnrollRequest::Reenroll, &csr_for(serial, key)).unwrap().cert_der
    }

    fn birth(&self, batch: &str, station: &str, serial: &str) {
        let (cert, chain) = self.a.add_station(station, &[batch.to_string()], key().public_key_der(), "test").unwrap();
        let chain: Vec<CertificateDer<'static>> =
            std::iter::once(cert).chain(chain).map(CertificateDer::from).collect();
        let st = self.a.admit(Gate::Station("refuse.enroll"), None, Credential::ClientCert(&chain)).unwrap();
        let req = EnrollRequest::Enroll { batch: Some(batch), activation: None };
        self.a.enroll(Some("birth"), &st, req, &csr_for(serial, &key())).unwrap();
    }

    fn batch(&self, id: &str, serials: &[&str], quota: u64) {
        let now = self.clock.now();
        let nb = NewBatch::open(id, "widget", serials.join("\n"), quota, (now - 60, now + DAY));
        factory::create_batch(self.a.store().as_ref(), self.clock.as_ref(), nb, "test").unwrap();
    }
}

/// What the authority did, counted by the overview; the clock alone moves
/// active to expiring to expired; the console's reads add no audit entry.
#[test]
fn the_overview_counts_what_the_authority_recorded_and_reading_it_audits_nothing() {
    let ca = ca_with(|_| {});
    let (k1, k2, k3) = (key(), key(), key());
    let c1 = ca.enroll("SN-ACTIVE", &k1);
    ca.enroll("SN-REVOKED", &k2);
    let c3 = ca.enroll("SN-RENEWED", &k3);
    ca.renew(&c3, &k3, "SN-RENEWED");
    ca.batch("B1", &["SN-BORN", "SN-UNUSED"], 2);
    ca.birth("B1", "line-1", "SN-BORN");
    revocation::revoke(
        ca.a.store().as_ref(),
        ca.clock.as_ref(),
        Target::Device(&DeviceSerial::parse("SN-REVOKED").unwrap()),
        1,
        "test",
    )
    .unwrap();
    // A refused enrollment (a token of another serial): one refusal today.
    let t = ca.a.create_token(&DeviceSerial::parse("SN-X").unwrap(), None, "test").unwrap();
    let refused = ca.a.admit(Gate::Enroll, None, Credential::Token { user: "SN-Y", password: &t });
    assert!(refused.is_err());

    let admin = ca.admin();
    let before = ca.audit_len();
    let o = admin.fleet_overview().unwrap();
    let s = &o.states;
    assert_eq!((s.born, s.commissioned, s.active, s.expiring, s.expired, s.revoked, s.total), (1, 0, 2, 0, 0, 1, 4));
    assert_eq!(o.expiring_per_day.len(), 365);
    assert_eq!(o.expiring_per_day.iter().sum::<u64>(), 2, "both good certificates expire within the year");
    assert_eq!(o.issued_per_day[29].count, 4, "three enrollments and a renewal today");
    assert_eq!(o.renewed_per_day[29].count, 1);
    assert!(o.refused_per_day[29].count >= 1, "{:?}", o.refused_per_day[29]);
    let progress = admin.batch_progress().unwrap();
    assert_eq!((progress[0].batch.id.as_str(), progress[0].born, progress[0].batch.quota), ("B1", 1, 2));
    let stations = admin.stations_activity().unwrap();
    assert_eq!((stations[0].name.as_str(), stations[0].births), ("line-1", 1));
    assert_eq!(stations[0].last_activity, Some(ca.clock.now()));
    assert_eq!(ca.audit_len(), before, "the console's reads are not audited");

    // 70 days on, the 90-day certificates expire within 30 days; 91 days on, they have expired.
    ca.clock.advance(70 * DAY);
    let s = ca.admin().fleet_overview().unwrap().states;
    assert_eq!((s.active, s.expiring, s.expired), (0, 2, 0));
    ca.clock.advance(21 * DAY);
    let s = ca.admin().fleet_overview().unwrap().states;
    assert_eq!((s.active, s.expiring, s.expired, s.total), (0, 0, 2, 4));
    drop(c1);
}

/// A device's page: every certificate, its audit entries (its own requests
/// and those about its certificates); an unknown or malformed serial is
/// refused, and the refusal audited.
#[test]
fn a_device_page_shows_its_certificates_and_audit_and_refuses_unknown_serials() {
    let ca = ca_with(|_| {});
    let k = key();
    let c = ca.enroll("SN-PAGE", &k);
    ca.clock.advance(60);
    let c2 = ca.renew(&c, &k, "SN-PAGE");
    ca.enroll("SN-OTHER", &key());
    let admin = ca.admin();
    let v = admin.device_view("SN-PAGE").unwrap();
    assert_eq!(v.certificates.len(), 2);
    assert_eq!(v.certificates[0].der, c2, "newest first");
    assert_eq!(v.ownership, None);
    let actions: Vec<&str> = v.audit.iter().map(|e| e.event.action.as_str()).collect();
    assert!(
        actions.contains(&"enroll") && actions.contains(&"reenroll") && actions.contains(&"token.create"),
        "{actions:?}"
    );
    assert!(v.audit.windows(2).all(|w| w[0].seq > w[1].seq), "newest first, once each");
    assert!(v.audit.iter().all(|e| !e.event.actor.contains("SN-OTHER") && !e.event.target.contains("SN-OTHER")));
    let before = ca.audit_len();
    assert!(matches!(admin.device_view("SN-NOBODY"), Err(AuthorityError::Refused(Refusal::NotFound(_)))));
    assert!(admin.device_view("bad serial\n").is_err());
    let refusals = admin
        .audit_search(&AuditFilter { action_prefix: Some("refuse.admin".into()), limit: 10, ..Default::default() })
        .unwrap();
    assert_eq!(ca.audit_len(), before + 2, "each refusal audited");
    assert_eq!(refusals.len(), 2);
    assert!(refusals[0].event.detail.starts_with("device.show"), "{:?}", refusals[0]);
    // The search pages backwards.
    let page = admin.audit_search(&AuditFilter { limit: 3, ..Default::default() }).unwrap();
    let next =
        admin.audit_search(&AuditFilter { limit: 3, before_seq: Some(page[2].seq), ..Default::default() }).unwrap();
    assert_eq!(next[0].seq, page[2].seq - 1);
}

/// Per CA: the CRL number, the CRL this node serves, revocations and the
/// entries of each shard; reading makes no CRL.
#[test]
fn ca_status_reports_crls_and_shards_without_making_one() {
    let ca = ca_with(|cfg| {
        cfg.server.public_http_url = Some("http://127.0.0.1:1".into());
        for c in cfg.ca.iter_mut().filter(|c| c.name == "operational") {
            c.crl_shards = Some(4);
        }
    });
    for i in 0..6 {
        ca.enroll(&format!("SN-{i}"), &key());
        revocation::revoke(
            ca.a.store().as_ref(),
            ca.clock.as_ref(),
            Target::Device(&DeviceSerial::parse(&format!("SN-{i}")).unwrap()),
            1,
            "test",
        )
        .unwrap();
    }
    let admin = ca.admin();
    let st = admin.ca_status().unwrap();
    let op = st.iter().find(|c| c.ca == "operational").unwrap();
    assert_eq!((op.revoked, op.crl_number, op.this_update), (6, 0, None), "no CRL made to answer");
    assert_eq!(op.shards.len(), 4);
    assert_eq!(op.shards.iter().map(|s| s.1).sum::<u64>(), 6);
    assert!(op.shards.iter().enumerate().all(|(i, s)| s.0 == i as u32));
    let root = st.iter().find(|c| c.ca == "root").unwrap();
    assert!(root.next_update.is_some() && root.crl_number >= 1, "init signs the first ARL: {root:?}");
    ca.a.crl("operational").unwrap();
    let op = admin.ca_status().unwrap().into_iter().find(|c| c.ca == "operational").unwrap();
    assert_eq!((op.crl_number, op.this_update), (1, Some(ca.clock.now())));
    assert_eq!(op.next_update, Some(ca.clock.now() + revocation::CRL_VALIDITY_SECS));
}
