//! The authority's enrollment policy without a socket: one test per rule.
//!
//! Each test opens an authority in a temporary directory with a clock that
//! moves only when told, admits a caller as the server's gate does
//! ([`Authority::admit`]), hands [`Authority::enroll`] a verified request
//! and checks the answer: the refusal's family and status, and that a
//! refusal recorded no certificate.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use iotpki_authority::factory::{self, NewBatch};
use iotpki_authority::revocation::{self, Target};
use iotpki_authority::{
    Authority, AuthorityError, Caller, Config, Credential, EnrollRequest, Enrolled, Gate, KeyRefusal, Passphrase,
    Refusal, Started,
};
use iotpki_core::clock::{Clock, FixedClock, SystemClock};
use iotpki_core::csr::{self, VerifiedCsr};
use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::name::{DeviceSerial, NameBuilder};
use iotpki_store::StoreError;
use rustls_pki_types::CertificateDer;

const PASS: &str = "authority policy test passphrase";

struct Ca {
    _tmp: tempfile::TempDir,
    a: Authority,
    clock: Arc<FixedClock>,
}

/// A fresh authority; `adjust` may change its config before it opens.
fn ca_with(adjust: impl FnOnce(&mut Config)) -> Ca {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let pass = Passphrase::new(PASS.into()).unwrap();
    iotpki_authority::init::init(&dir, &Default::default(), &pass, &SystemClock).unwrap();
    let mut cfg = Config::load(&dir).unwrap();
    adjust(&mut cfg);
    let clock = Arc::new(FixedClock::new(SystemClock.now()));
    let a = Authority::open_with_config(&dir, cfg, &pass, clock.clone()).unwrap();
    Ca { _tmp: tmp, a, clock }
}

fn ca() -> Ca {
    ca_with(|_| {})
}

fn key() -> SoftKey {
    SoftKey::generate(KeyType::EcdsaP256).unwrap()
}

/// A verified request for device `serial` (a CN alone when `None`).
fn csr_for(serial: Option<&str>, key: &SoftKey) -> VerifiedCsr {
    let mut b = NameBuilder::default().common_name(serial.unwrap_or("device")).unwrap();
    if let Some(s) = serial {
        b = b.serial_number(&DeviceSerial::parse(s).unwrap()).unwrap();
    }
    csr::parse_and_verify(&csr::build(&b.build(), key, vec![]).unwrap()).unwrap()
}

const ENROLL: EnrollRequest<'static> = EnrollRequest::Enroll { batch: None, activation: None };

fn births(batch: &str) -> EnrollRequest<'_> {
    EnrollRequest::Enroll { batch: Some(batch), activation: None }
}

impl Ca {
    fn now(&self) -> i64 {
        self.clock.now()
    }

    fn certs(&self) -> u64 {
        self.a.store().count_certificates().unwrap()
    }

    fn token(&self, serial: &str, ttl: Option<u64>) -> String {
        self.a.create_token(&DeviceSerial::parse(serial).unwrap(), ttl, "test").unwrap()
    }

    fn token_caller(&self, serial: &str, token: &str) -> Result<Caller, AuthorityError> {
        self.a.admit(Gate::Enroll, None, Credential::Token { user: serial, password: token })
    }

    /// Enroll device `serial` with a new token and `key`.
    fn enrolled(&self, serial: &str, key: &SoftKey) -> Enrolled {
        let caller = self.token_caller(serial, &self.token(serial, None)).unwrap();
        self.a.enroll(None, &caller, ENROLL, &csr_for(Some(serial), key)).unwrap()
    }

    /// The chain a device presents with certificate `der` (operational CA).
    fn chain(&self, der: &[u8], ca: &str) -> Vec<CertificateDer<'static>> {
        let ca_der = iotpki_core::pem::decode_one(
            "CERTIFICATE",
            &std::fs::read_to_string(self.a.dir().join("ca").join(format!("{ca}.crt"))).unwrap(),
        )
        .unwrap();
        vec![CertificateDer::from(der.to_vec()), CertificateDer::from(ca_der)]
    }

    fn renewing(&self, der: &[u8]) -> Result<Caller, AuthorityError> {
        let chain = self.chain(der, "operational");
        self.a.admit(Gate::Certificate("refuse.reenroll"), None, Credential::ClientCert(&chain))
    }

    fn batch(&self, id: &str, serials: &[&str], quota: u64) {
        let nb = NewBatch::open(id, "widget", serials.join("\n"), quota, (self.now() - 60, self.now() + 86_400));
        factory::create_batch(self.a.store().as_ref(), self.clock.as_ref(), nb, "test").unwrap();
    }

    /// A station for `batches`, admitted as the gate admits a birth's caller.
    fn station(&self, name: &str, batches: &[&str]) -> Vec<CertificateDer<'static>> {
        let b: Vec<String> = batches.iter().map(|s| s.to_string()).collect();
        let (cert, chain) = self.a.add_station(name, &b, key().public_key_der(), "test").unwrap();
        std::iter::once(cert).chain(chain).map(CertificateDer::from).collect()
    }

    fn station_caller(&self, chain: &[CertificateDer<'_>]) -> Result<Caller, AuthorityError> {
        self.a.admit(Gate::Station("refuse.enroll"), None, Credential::ClientCert(chain))
    }

    fn birth(&self, st: &Caller, batch: &str, serial: &str) -> Result<Enrolled, AuthorityError> {
        self.a.enroll(Some("birth"), st, births(batch), &csr_for(Some(serial), &key()))
    }
}

/// The refusal in `r`, with its status.
fn refusal<T: std::fmt::Debug>(r: Result<T, AuthorityError>) -> (Refusal, u16) {
    match r {
        Err(AuthorityError::Refused(x)) => {
            let s = x.http_status();
            (x, s)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ---- tokens -------------------------------------------------------------

#[test]
fn a_token_enrolls_once_and_another_key_with_it_is_refused() {
    let ca = ca();
    let token = ca.token("T-1", None);
    let caller = ca.token_caller("T-1", &token).unwrap();
    ca.a.enroll(None, &caller, ENROLL, &csr_for(Some("T-1"), &key())).unwrap();
    let before = ca.certs();
    let again = ca.token_caller("T-1", &token).unwrap();
    let (r, status) = refusal(ca.a.enroll(None, &again, ENROLL, &csr_for(Some("T-1"), &key())));
    assert!(matches!(r, Refusal::Token(StoreError::TokenUsed { .. })), "{r:?}");
    assert_eq!(status, 401);
    assert_eq!(ca.certs(), before);
}

#[test]
fn a_retry_with_the_spent_token_and_the_same_key_gets_the_same_certificate() {
    let ca = ca();
    let (token, k) = (ca.token("T-2", None), key());
    let first = ca.a.enroll(None, &ca.token_caller("T-2", &token).unwrap(), ENROLL, &csr_for(Some("T-2"), &k));
    let first = first.unwrap();
    let before = ca.certs();
    let again = ca.a.enroll(None, &ca.token_caller("T-2", &token).unwrap(), ENROLL, &csr_for(Some("T-2"), &k));
    let again = again.unwrap();
    assert_eq!((again.serial.as_str(), again.cert_der.as_slice()), (first.serial.as_str(), first.cert_der.as_slice()));
    assert_eq!(ca.certs(), before, "nothing new is issued");
    let last = ca.a.store().audit_entries(ca.a.store().verify_audit().unwrap().entries, 1).unwrap().remove(0);
    assert_eq!(last.event.action, "enroll.replay");
}

#[test]
fn an_expired_token_is_refused_before_the_body() {
    let ca = ca();
    let token = ca.token("T-3", Some(60));
    ca.clock.advance(61);
    let (r, status) = refusal(ca.token_caller("T-3", &token));
    assert!(matches!(r, Refusal::Token(StoreError::TokenExpired { .. })), "{r:?}");
    assert_eq!(status, 401);
}

#[test]
fn a_token_for_another_serial_or_an_unknown_one_is_refused() {
    let ca = ca();
    let token = ca.token("T-4", None);
    let (r, _) = refusal(ca.token_caller("T-5", &token));
    assert!(matches!(r, Refusal::Token(StoreError::TokenWrongSerial)), "{r:?}");
    let (r, _) = refusal(ca.token_caller("T-4", "not-the-token"));
    assert!(matches!(r, Refusal::Token(StoreError::TokenUnknown)), "{r:?}");
    let (r, status) = refusal(ca.token_caller("", &token));
    assert!(matches!(r, Refusal::Unauthenticated(_)), "{r:?}");
    assert_eq!(status, 401);
}

#[test]
fn a_token_gets_no_birth_certificate_and_names_no_other_serial() {
    let ca = ca();
    let token = ca.token("T-6", None);
    let cred = Credential::Token { user: "T-6", password: &token };
    let (r, status) = refusal(ca.a.admit(Gate::Enroll, Some("birth"), cred));
    assert!(r.to_string().contains("issues birth certificates"), "{r}");
    assert_eq!(status, 403);
    // Admitted for its own label, the token still cannot sign under the birth label.
    let caller = ca.token_caller("T-6", &token).unwrap();
    let (r, _) = refusal(ca.a.enroll(Some("birth"), &caller, ENROLL, &csr_for(Some("T-6"), &key())));
    assert!(r.to_string().contains("issues birth certificates"), "{r}");
    let (r, status) = refusal(ca.a.enroll(None, &caller, ENROLL, &csr_for(Some("T-7"), &key())));
    assert!(r.to_string().contains("names serialNumber=T-7"), "{r}");
    assert_eq!(status, 403);
    // A CN alone is enough: the token binds the serial.
    ca.a.enroll(None, &caller, ENROLL, &csr_for(None, &key())).unwrap();
}

#[test]
fn a_key_type_the_label_does_not_allow_is_refused() {
    let ca = ca_with(|cfg| {
        for l in &mut cfg.label {
            l.allowed_keys = vec!["p384".into()];
        }
    });
    let before = ca.certs();
    let caller = ca.token_caller("K-1", &ca.token("K-1", None)).unwrap();
    let (r, status) = refusal(ca.a.enroll(None, &caller, ENROLL, &csr_for(Some("K-1"), &key())));
    assert!(matches!(r, Refusal::KeyPolicy(KeyRefusal::NotAllowed { .. })), "{r:?}");
    assert_eq!(status, 400);
    assert_eq!(ca.certs(), before);
    let p384 = SoftKey::generate(KeyType::EcdsaP384).unwrap();
    ca.a.enroll(None, &caller, ENROLL, &csr_for(Some("K-1"), &p384)).unwrap();
}

// ---- station births -------------------------------------------------------

#[test]
fn a_station_gives_birth_only_in_a_batch_it_holds() {
    let ca = ca();
    ca.batch("B1", &["S-1"], 1);
    ca.batch("B2", &["S-2"], 1);
    let st = ca.station_caller(&ca.station("line-1", &["B1"])).unwrap();
    let before = ca.certs();
    let (r, status) = refusal(ca.birth(&st, "B2", "S-2"));
    assert!(matches!(r, Refusal::Station(StoreError::StationNotAuthorized { .. })), "{r:?}");
    assert_eq!(status, 403);
    assert_eq!(ca.certs(), before);
    // Births go to a label of the station's CA.
    let (r, _) = refusal(ca.a.enroll(None, &st, births("B1"), &csr_for(Some("S-1"), &key())));
    assert!(r.to_string().contains("station enrollments go to a label of CA"), "{r}");
    ca.birth(&st, "B1", "S-1").unwrap();
    // A token holder cannot ask for a batch, and a birth goes to the birth label only.
    let t = ca.token_caller("S-1", &ca.token("S-1", None)).unwrap();
    let (r, status) = refusal(ca.a.enroll(Some("birth"), &t, births("B1"), &csr_for(Some("S-1"), &key())));
    assert!(r.to_string().contains("needs a factory station's certificate"), "{r}");
    assert_eq!(status, 401);
}

#[test]
fn a_batch_gives_no_more_births_than_its_quota() {
    let ca = ca();
    ca.batch("BQ", &["Q-1", "Q-2"], 1);
    let st = ca.station_caller(&ca.station("line-q", &["BQ"])).unwrap();
    ca.birth(&st, "BQ", "Q-1").unwrap();
    let before = ca.certs();
    let (r, _) = refusal(ca.birth(&st, "BQ", "Q-2"));
    assert!(matches!(r, Refusal::Batch(StoreError::QuotaExhausted { .. })), "{r:?}");
    assert_eq!(ca.certs(), before);
    // The authenticated station's refusal counts against its batch.
    assert_eq!(ca.a.store().batch("BQ").unwrap().unwrap().refused, 1);
}

#[test]
fn a_serial_off_the_allowlist_or_born_already_gets_no_birth() {
    let ca = ca();
    ca.batch("BS", &["A-1", "A-2"], 2);
    let st = ca.station_caller(&ca.station("line-s", &["BS"])).unwrap();
    let (r, _) = refusal(ca.birth(&st, "BS", "Z-9"));
    assert!(matches!(r, Refusal::Batch(StoreError::SerialNotAllowed { .. })), "{r:?}");
    ca.birth(&st, "BS", "A-1").unwrap();
    let before = ca.certs();
    let (r, status) = refusal(ca.birth(&st, "BS", "A-1"));
    assert!(matches!(r, Refusal::Batch(StoreError::AlreadyBorn { .. })), "{r:?}");
    assert_eq!(status, 403);
    assert_eq!(ca.certs(), before);
    // A device request that names no serial, or two, is malformed.
    let (r, status) = refusal(ca.a.enroll(Some("birth"), &st, births("BS"), &csr_for(None, &key())));
    assert!(r.to_string().contains("exactly one serialNumber"), "{r}");
    assert_eq!(status, 400);
}

#[test]
fn a_batch_that_requires_attestation_gives_no_birth_without_it() {
    let ca = ca();
    // Required with the batch, as `batch create --require-tpm-attestation` does.
    let now = ca.now();
    let nb =
        NewBatch { tpm_attestation: true, ..NewBatch::open("BT", "widget", "P-1".into(), 1, (now - 60, now + 86_400)) };
    factory::create_batch(ca.a.store().as_ref(), ca.clock.as_ref(), nb, "test").unwrap();
    let st = ca.station_caller(&ca.station("line-t", &["BT"])).unwrap();
    let before = ca.certs();
    let (r, status) = refusal(ca.birth(&st, "BT", "P-1"));
    assert!(r.to_string().contains("requires TPM attestation"), "{r}");
    assert_eq!(status, 403);
    let (r, _) = refusal(ca.a.enroll(
        Some("birth"),
        &st,
        EnrollRequest::Enroll { batch: Some("BT"), activation: Some(("no-such-challenge", b"secret")) },
        &csr_for(Some("P-1"), &key()),
    ));
    assert_eq!(r.http_status(), 403, "{r}");
    assert_eq!(ca.certs(), before);
    // Nor offline: a station cannot be delegated such a batch.
    let (r, _) = refusal(ca.a.delegate_station("line-t", "BT", key().public_key_der(), "test"));
    assert!(r.to_string().contains("requires TPM attestation"), "{r}");
}

#[test]
fn a_revoked_station_is_refused_before_the_body() {
    let ca = ca();
    ca.batch("BR", &["R-1"], 1);
    let chain = ca.station("line-r", &["BR"]);
    ca.station_caller(&chain).unwrap();
    factory::revoke_station(ca.a.store().as_ref(), ca.clock.as_ref(), "line-r", "test").unwrap();
    // Its certificate is revoked with it: refused at admission, audited.
    let (r, status) = refusal(ca.station_caller(&chain));
    assert!(r.to_string().contains("revoked"), "{r:?}");
    assert_eq!(status, 403);
    let last = ca.a.store().audit_entries(ca.a.store().verify_audit().unwrap().entries, 1).unwrap().remove(0);
    assert_eq!(last.event.action, "refuse.enroll");
}

/// A station let in whose certificate is then revoked alone, or whose key is
/// then blocked (without revoking anything), makes nothing more with what
/// it was let in with (a connection kept open, or a birth on its way): the
/// transaction that would record the birth refuses it, records nothing and
/// the refusal is audited. The next admission refuses it before the body.
#[test]
fn a_station_whose_certificate_is_revoked_or_its_key_blocked_after_admission_makes_nothing() {
    let ca = ca();
    ca.batch("BK", &["K-1", "K-2", "K-3"], 3);
    for (name, serial, revoke) in [("line-rk", "K-1", true), ("line-bk", "K-2", false)] {
        let chain = ca.station(name, &["BK"]);
        let st = ca.station_caller(&chain).unwrap();
        let info = iotpki_core::profile::cert_info(&chain[0]).unwrap();
        let store = ca.a.store();
        // The key's hash as the store recorded it with the certificate.
        let spki = store.certificate(&info.serial).unwrap().unwrap().spki_sha256;
        match revoke {
            true => {
                revocation::revoke(store.as_ref(), ca.clock.as_ref(), Target::Serial(&info.serial), 1, "test").unwrap();
            }
            false => {
                let keys = [(spki.clone(), "a firmware image".to_string())];
                let done = iotpki_authority::key_registry::block(
                    store.as_ref(),
                    ca.clock.as_ref(),
                    &keys,
                    &[],
                    "leaked",
                    false,
                    "test",
                )
                .unwrap();
                assert!(done.revoked.is_empty());
            }
        }
        let before = ca.certs();
        let (r, status) = refusal(ca.birth(&st, "BK", serial));
        assert!(matches!(r, Refusal::Station(StoreError::StationCertificate { .. })), "{r:?}");
        let why = if revoke { "it is revoked".to_string() } else { format!("its key {spki} is blocked: leaked") };
        assert_eq!(
            r.to_string(),
            format!("the certificate {} of station {name} authenticates nothing: {why}", info.serial)
        );
        assert_eq!(status, 403);
        assert_eq!(ca.certs(), before, "nothing recorded");
        assert_eq!(store.batch("BK").unwrap().unwrap().issued, 0);
        let last = store.audit_entries(store.verify_audit().unwrap().entries, 1).unwrap().remove(0);
        let actor = format!("cert:{}", info.serial);
        assert_eq!((last.event.action.as_str(), last.event.actor.as_str()), ("refuse.enroll", actor.as_str()));
        // Admitted again, it is refused before its body.
        let (r, status) = refusal(ca.station_caller(&chain));
        assert_eq!(status, 403, "{r}");
    }
}

/// A station's admission is taken again for its next births on the same
/// connection only while its certificate is within its validity, and only
/// for a batch it held when admitted; no other caller's admission is.
#[test]
fn a_stations_admission_is_kept_only_within_its_certificates_validity_and_batches() {
    let ca = ca();
    ca.batch("BV", &["V-1"], 1);
    ca.batch("BW", &["W-1"], 1);
    let chain = ca.station("line-v", &["BV"]);
    let st = ca.station_caller(&chain).unwrap();
    assert!(ca.a.still_admitted(&st, "BV"));
    assert!(!ca.a.still_admitted(&st, "BW"), "a batch it did not hold when admitted");
    let token = ca.token("D-1", None);
    assert!(!ca.a.still_admitted(&ca.token_caller("D-1", &token).unwrap(), "BV"), "a token is not a station");
    let info = iotpki_core::profile::cert_info(&chain[0]).unwrap();
    let not_after = iotpki_core::time::unix(&info.cert.tbs_certificate.validity.not_after);
    ca.clock.advance(not_after - ca.now());
    assert!(ca.a.still_admitted(&st, "BV"), "the certificate's last second");
    ca.clock.advance(1);
    assert!(!ca.a.still_admitted(&st, "BV"), "expired: admitted again, and refused");
    assert!(ca.station_caller(&chain).is_err());
}

#[test]
fn a_device_certificate_is_not_a_station() {
    let ca = ca();
    let e = ca.enrolled("D-1", &key());
    let chain = ca.chain(&e.cert_der, "operational");
    let (r, status) = refusal(ca.station_caller(&chain));
    assert!(matches!(r, Refusal::Client(_)) && r.to_string().contains("not a factory station's"), "{r:?}");
    assert_eq!(status, 403);
}

#[test]
fn a_delegation_names_only_unborn_serials_of_its_batch() {
    let ca = ca();
    ca.batch("BD", &["D-1", "D-2"], 2);
    ca.station("line-d", &["BD"]);
    let st = ca.station_caller(&ca.station("line-e", &["BD"])).unwrap();
    ca.birth(&st, "BD", "D-1").unwrap();
    let spki = key();
    let d = |serials: &[&str]| {
        let s: Vec<String> = serials.iter().map(|s| s.to_string()).collect();
        ca.a.delegate_station_serials("line-d", "BD", spki.public_key_der(), Some(&s), "test")
    };
    let (r, status) = refusal(d(&["X-1"]));
    assert!(r.to_string().contains("not a serial of batch BD still to be born"), "{r}");
    assert_eq!(status, 400);
    let (r, _) = refusal(d(&["D-1"]));
    assert!(r.to_string().contains("not a serial of batch BD still to be born"), "{r}");
    let (r, _) = refusal(d(&["D-2", "D-2"]));
    assert!(r.to_string().contains("listed twice"), "{r}");
    let ok = d(&["D-2"]).unwrap();
    assert_eq!(ok.allowlist, vec!["D-2".to_string()]);
}

// ---- renewal --------------------------------------------------------------

#[test]
fn a_renewal_supersedes_and_a_retry_with_the_same_key_gets_the_same_successor() {
    let ca = ca();
    let e = ca.enrolled("N-1", &key());
    let caller = ca.renewing(&e.cert_der).unwrap();
    let k = key();
    let next = ca.a.enroll(None, &caller, EnrollRequest::Reenroll, &csr_for(Some("N-1"), &k)).unwrap();
    let before = ca.certs();
    // The old certificate again (its answer was lost): the same successor, for the same key only.
    let old = ca.renewing(&e.cert_der).unwrap();
    let again = ca.a.enroll(None, &old, EnrollRequest::Reenroll, &csr_for(Some("N-1"), &k)).unwrap();
    assert_eq!(again.serial, next.serial);
    let (r, status) = refusal(ca.a.enroll(None, &old, EnrollRequest::Reenroll, &csr_for(Some("N-1"), &key())));
    assert!(matches!(r, Refusal::Renewal(_)) && r.to_string().contains("was renewed already"), "{r:?}");
    assert_eq!(status, 403);
    assert_eq!(ca.certs(), before);
}

#[test]
fn a_revoked_certificate_renews_nothing() {
    let ca = ca();
    let e = ca.enrolled("N-2", &key());
    revocation::revoke(ca.a.store().as_ref(), ca.clock.as_ref(), Target::Serial(&e.serial), 1, "test").unwrap();
    let (r, status) = refusal(ca.renewing(&e.cert_der));
    assert!(matches!(r, Refusal::Client(_)) && r.to_string().contains("is revoked"), "{r:?}");
    assert_eq!(status, 403);
}

#[test]
fn a_superseded_certificate_whose_successor_is_revoked_renews_nothing() {
    let ca = ca();
    let e = ca.enrolled("N-3", &key());
    let k = key();
    let caller = ca.renewing(&e.cert_der).unwrap();
    let next = ca.a.enroll(None, &caller, EnrollRequest::Reenroll, &csr_for(Some("N-3"), &k)).unwrap();
    revocation::revoke(ca.a.store().as_ref(), ca.clock.as_ref(), Target::Serial(&next.serial), 1, "test").unwrap();
    let old = ca.renewing(&e.cert_der).unwrap();
    let (r, _) = refusal(ca.a.enroll(None, &old, EnrollRequest::Reenroll, &csr_for(Some("N-3"), &k)));
    assert!(r.to_string().contains("its successor") && r.to_string().contains("is revoked"), "{r}");
}

/// A key blocked after its certificate was issued (found in a firmware
/// image, blocked without revoking anything) is not sent that certificate
/// again: neither by the spent token's replay nor by a renewal's. Both are
/// refused as the key's block (403), and nothing is issued or sent again.
#[test]
fn a_blocked_key_is_not_sent_its_certificate_again() {
    let ca = ca();
    let block = |spki: String| {
        let store = ca.a.store();
        let keys = [(spki, "a firmware image".to_string())];
        iotpki_authority::key_registry::block(store.as_ref(), ca.clock.as_ref(), &keys, &[], "leaked", false, "test")
            .unwrap();
    };
    let spki_of = |serial: &str| ca.a.store().certificate(serial).unwrap().unwrap().spki_sha256;
    // The token's replay.
    let (token, k) = (ca.token("K-1", None), key());
    let first = ca.a.enroll(None, &ca.token_caller("K-1", &token).unwrap(), ENROLL, &csr_for(Some("K-1"), &k));
    block(spki_of(&first.unwrap().serial));
    let r = ca.a.enroll(None, &ca.token_caller("K-1", &token).unwrap(), ENROLL, &csr_for(Some("K-1"), &k));
    let (r, status) = refusal(r);
    assert!(r.to_string().contains("blocked"), "{r}");
    assert_eq!(status, 403);
    // The renewal's replay: the old certificate (its key not blocked) renewed
    // into a key blocked since, then presented again with that key.
    let e = ca.enrolled("K-2", &key());
    let k2 = key();
    let renew =
        || ca.a.enroll(None, &ca.renewing(&e.cert_der).unwrap(), EnrollRequest::Reenroll, &csr_for(Some("K-2"), &k2));
    block(spki_of(&renew().unwrap().serial));
    let certs = ca.certs();
    let (r, status) = refusal(renew());
    assert!(r.to_string().contains("blocked"), "{r}");
    assert_eq!(status, 403);
    assert_eq!(ca.certs(), certs, "nothing issued");
    let store = ca.a.store();
    let actions: Vec<String> = store.audit_entries(1, u32::MAX).unwrap().into_iter().map(|e| e.event.action).collect();
    assert!(!actions.iter().any(|a| a.ends_with(".replay")), "nothing sent again: {actions:?}");
}

/// A config with templates `short` (P-256 only, 10 days) and `long` (P-256
/// and P-384, 20 days), the operational label naming `long`.
fn with_templates(c: &mut Config) {
    let t = |name: &str, keys: &[&str], days: u32| iotpki_core::template::TemplateSpec {
        name: name.into(),
        subject: vec!["O={organization}".into(), "CN={serial}".into(), "serialNumber={serial}".into()],
        keys: keys.iter().map(|k| k.to_string()).collect(),
        lifetime_days: Some(days),
        ..Default::default()
    };
    c.template = vec![t("short", &["p256"], 10), t("long", &["p256", "p384"], 20)];
    for l in c.label.iter_mut().filter(|l| l.name == "operational") {
        l.template = Some("long".into());
        l.allowed_keys = vec!["p256".into(), "p384".into()];
    }
}

impl Ca {
    /// Device `serial` enrolled with a token naming `template`.
    fn enrolled_under(&self, serial: &str, template: Option<&str>, key: &SoftKey) -> Enrolled {
        let d = DeviceSerial::parse(serial).unwrap();
        let token = self.a.create_token_with_template(&d, None, template, "test").unwrap();
        self.a.enroll(None, &self.token_caller(serial, &token).unwrap(), ENROLL, &csr_for(Some(serial), key)).unwrap()
    }

    fn renew(&self, der: &[u8], serial: &str, k: &SoftKey) -> Result<Enrolled, AuthorityError> {
        self.a.enroll(None, &self.renewing(der)?, EnrollRequest::Reenroll, &csr_for(Some(serial), k))
    }

    fn lifetime_days(&self, e: &Enrolled) -> i64 {
        let info = iotpki_core::profile::cert_info(&e.cert_der).unwrap();
        (info.not_after - info.not_before - 60) / 86_400
    }

    fn template_of(&self, e: &Enrolled) -> Option<String> {
        self.a.store().certificate(&e.serial).unwrap().unwrap().template
    }
}

#[test]
fn a_renewal_follows_the_template_its_certificate_was_issued_under_not_the_labels() {
    let ca = ca_with(with_templates);
    // A token naming `short`: 10 days, recorded; its renewal is `short` again
    // (10 days, P-256 only), though the label names `long` (20 days, P-384 too).
    let first = ca.enrolled_under("TR-1", Some("short"), &key());
    assert_eq!((ca.lifetime_days(&first), ca.template_of(&first).as_deref()), (10, Some("short")));
    let next = ca.renew(&first.cert_der, "TR-1", &key()).unwrap();
    assert_eq!((ca.lifetime_days(&next), ca.template_of(&next).as_deref()), (10, Some("short")));
    let before = ca.certs();
    let p384 = SoftKey::generate(KeyType::EcdsaP384).unwrap();
    let (r, status) = refusal(ca.renew(&next.cert_der, "TR-1", &p384));
    assert!(r.to_string().contains("template short"), "{r}");
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(ca.certs(), before, "the refusal stored nothing");
    // Without a named template: the label's `long`, and its renewal too (P-384 allowed).
    let plain = ca.enrolled_under("TR-2", None, &key());
    assert_eq!((ca.lifetime_days(&plain), ca.template_of(&plain).as_deref()), (20, Some("long")));
    let next = ca.renew(&plain.cert_der, "TR-2", &p384).unwrap();
    assert_eq!((ca.lifetime_days(&next), ca.template_of(&next).as_deref()), (20, Some("long")));
    // Without any template: the built-in `device` one, recorded by name.
    let bare = self::ca();
    let e = bare.enrolled("TR-3", &key());
    assert_eq!(bare.template_of(&e).as_deref(), Some("device"));
}

#[test]
fn a_renewal_whose_template_left_the_config_is_refused_and_stores_nothing() {
    let Ca { _tmp, a, clock } = ca_with(with_templates);
    let pass = Passphrase::new(PASS.into()).unwrap();
    let dir = a.dir().to_path_buf();
    let d = DeviceSerial::parse("TR-4").unwrap();
    let token = a.create_token_with_template(&d, None, Some("short"), "test").unwrap();
    let caller = a.admit(Gate::Enroll, None, Credential::Token { user: "TR-4", password: &token }).unwrap();
    let e = a.enroll(None, &caller, ENROLL, &csr_for(Some("TR-4"), &key())).unwrap();
    drop(a);
    // The config on disk has no templates: `short` is gone.
    let a = Authority::open_with_config(&dir, Config::load(&dir).unwrap(), &pass, clock.clone()).unwrap();
    let ca = Ca { _tmp, a, clock };
    let before = ca.certs();
    let (r, status) = refusal(ca.renew(&e.cert_der, "TR-4", &key()));
    assert!(r.to_string().contains("issued under certificate template short"), "{r}");
    assert_eq!(status, 403);
    assert_eq!(ca.certs(), before, "nothing issued from a template that was not checked");
}

#[test]
fn a_certificate_that_differs_from_the_record_in_its_signature_alone_authenticates_nothing() {
    // The record vouches for the signature of the very certificate it holds
    // (crate::sigcheck); one octet off in the signature, and it is checked.
    let ca = ca();
    let e = ca.enrolled("N-9", &key());
    let mut forged = e.cert_der.clone();
    *forged.last_mut().unwrap() ^= 1;
    let (r, status) = refusal(ca.renewing(&forged));
    assert!(r.to_string().contains("not issued by this authority"), "{r}");
    assert_eq!(status, 403);
    ca.renewing(&e.cert_der).unwrap();
    // And the other way round: checked once and found wrong, it stays wrong.
    let (r, _) = refusal(ca.renewing(&forged));
    assert!(r.to_string().contains("not issued by this authority"), "{r}");
}

#[test]
fn an_expired_certificate_renews_nothing() {
    let ca = ca();
    let e = ca.enrolled("N-4", &key());
    ca.clock.advance(91 * 86_400);
    let (r, status) = refusal(ca.renewing(&e.cert_der));
    assert!(r.to_string().contains("expired at"), "{r}");
    assert_eq!(status, 403);
}

#[test]
fn a_renewal_keeps_its_serial_and_a_birth_certificate_never_renews() {
    let ca = ca();
    let e = ca.enrolled("N-5", &key());
    let caller = ca.renewing(&e.cert_der).unwrap();
    let (r, _) = refusal(ca.a.enroll(None, &caller, EnrollRequest::Reenroll, &csr_for(Some("N-6"), &key())));
    assert!(r.to_string().contains("names serialNumber=N-6"), "{r}");
    let (r, _) = refusal(ca.a.enroll(Some("birth"), &caller, EnrollRequest::Reenroll, &csr_for(Some("N-5"), &key())));
    assert!(matches!(r, Refusal::Renewal(_)) && r.to_string().contains("never renewed"), "{r:?}");
    // A birth certificate presented for renewal.
    ca.batch("BN", &["N-7"], 1);
    let st = ca.station_caller(&ca.station("line-n", &["BN"])).unwrap();
    let birth = ca.birth(&st, "BN", "N-7").unwrap();
    let chain = ca.chain(&birth.cert_der, "manufacturing");
    let b = ca.a.admit(Gate::Certificate("refuse.reenroll"), None, Credential::ClientCert(&chain)).unwrap();
    let (r, _) = refusal(ca.a.enroll(None, &b, EnrollRequest::Reenroll, &csr_for(Some("N-7"), &key())));
    assert!(r.to_string().contains("never renewed"), "{r}");
    // A token holder cannot re-enroll.
    let t = ca.token_caller("N-8", &ca.token("N-8", None)).unwrap();
    let (r, status) = refusal(ca.a.enroll(None, &t, EnrollRequest::Reenroll, &csr_for(Some("N-8"), &key())));
    assert!(matches!(r, Refusal::Unauthenticated(_)), "{r:?}");
    assert_eq!(status, 401);
}

#[test]
fn a_refusal_after_admission_is_audited_as_the_callers() {
    let ca = ca();
    let e = ca.enrolled("U-1", &key());
    let caller = ca.renewing(&e.cert_der).unwrap();
    let r = ca.a.enroll(None, &caller, EnrollRequest::Reenroll, &csr_for(Some("U-2"), &key()));
    assert!(r.is_err());
    let last = ca.a.store().audit_entries(ca.a.store().verify_audit().unwrap().entries, 1).unwrap().remove(0);
    assert_eq!(last.event.action, "refuse.reenroll");
    assert_eq!(last.event.actor, format!("cert:{}", e.serial));
    // A body that is no PKCS#10 request, refused by the server's parse, is audited too.
    let bad = iotpki_core::csr::parse_and_verify(b"not a request").unwrap_err();
    let e2 = ca.a.refuse(&caller, EnrollRequest::Reenroll, bad.into());
    assert_eq!(e2.http_status(), 400);
    let last = ca.a.store().audit_entries(ca.a.store().verify_audit().unwrap().entries, 1).unwrap().remove(0);
    assert_eq!(last.event.action, "refuse.reenroll");
}

// ---- queued records (a server whose threads are scarce) -----------------

/// [`Authority::enroll_queued`] to its answer, as the server runs it (the
/// record waited for here rather than awaited); also, whether it was queued.
fn queued(
    a: &Authority,
    label: Option<&str>,
    caller: &Caller,
    req: EnrollRequest<'_>,
    csr: &VerifiedCsr,
) -> (Result<Enrolled, AuthorityError>, bool) {
    match a.enroll_queued(label, caller, req, csr) {
        Started::Answered(r) => (r, false),
        Started::Queued(mut q) => {
            let outcome = q.recording().wait();
            (a.enroll_recorded(q, outcome).or_else(|u| a.enroll_unrecorded(u, caller, req, csr)), true)
        }
    }
}

#[test]
fn a_queued_birth_over_the_quota_is_refused_and_counted_as_one_waited_for() {
    let ca = ca();
    ca.batch("BQQ", &["QQ-1", "QQ-2"], 1);
    let st = ca.station_caller(&ca.station("line-qq", &["BQQ"])).unwrap();
    let (first, was_queued) = queued(&ca.a, Some("birth"), &st, births("BQQ"), &csr_for(Some("QQ-1"), &key()));
    let first = first.unwrap();
    assert!(was_queued);
    assert!(ca.a.store().certificate(&first.serial).unwrap().is_some(), "recorded when answered");
    let before = ca.certs();
    // Signed and queued (the quota is the store's to check), then refused by the store.
    let (r, was_queued) = queued(&ca.a, Some("birth"), &st, births("BQQ"), &csr_for(Some("QQ-2"), &key()));
    assert!(was_queued);
    let (r, status) = refusal(r);
    assert!(matches!(r, Refusal::Batch(StoreError::QuotaExhausted { .. })), "{r:?}");
    assert_eq!(status, 403);
    assert_eq!(ca.certs(), before);
    assert_eq!(ca.a.store().batch("BQQ").unwrap().unwrap().refused, 1, "counted against the batch");
    let last = ca.a.store().audit_entries(ca.a.store().verify_audit().unwrap().entries, 1).unwrap().remove(0);
    assert_eq!(last.event.action, "refuse.enroll");
}

#[test]
fn a_queued_enrollment_that_lost_its_token_to_its_own_retry_gets_the_retrys_certificate() {
    let ca = ca();
    let (token, k) = (ca.token("QT-1", None), key());
    // Both admitted while the token is unspent: the second learns of the
    // first only from the store's refusal of its record.
    let (first_caller, retry) = (ca.token_caller("QT-1", &token).unwrap(), ca.token_caller("QT-1", &token).unwrap());
    let thief = ca.token_caller("QT-1", &token).unwrap();
    let first = queued(&ca.a, None, &first_caller, ENROLL, &csr_for(Some("QT-1"), &k)).0.unwrap();
    let before = ca.certs();
    let (again, was_queued) = queued(&ca.a, None, &retry, ENROLL, &csr_for(Some("QT-1"), &k));
    assert!(was_queued, "signed and queued before the store refused the spent token");
    let again = again.unwrap();
    assert_eq!((again.serial.as_str(), again.cert_der.as_slice()), (first.serial.as_str(), first.cert_der.as_slice()));
    assert_eq!(ca.certs(), before, "nothing new is recorded");
    // Another key with the same token, raced the same way, is refused.
    let (r, status) = refusal(queued(&ca.a, None, &thief, ENROLL, &csr_for(Some("QT-1"), &key())).0);
    assert!(matches!(r, Refusal::Token(StoreError::TokenUsed { .. })), "{r:?}");
    assert_eq!(status, 401);
    assert_eq!(ca.certs(), before);
}

/// The audit's last entry: (actor, action, target).
fn last_audit(ca: &Ca) -> (String, String, String) {
    let store = ca.a.store();
    let e = store.audit_entries(store.verify_audit().unwrap().entries, 1).unwrap().remove(0).event;
    (e.actor, e.action, e.target)
}

/// A station's birth whose answer was lost (its connection cut after the
/// commit, a database failing over before it acknowledged it, the station
/// restarted) is asked again with the key the device kept: the same birth
/// certificate comes back, audited `birth.replay`, nothing issued or counted;
/// on its thread and queued, by another station of the batch, once that birth
/// spent the batch's quota and once the batch is closed. Another key, another
/// batch listing the serial, a revoked birth certificate or a blocked key keep
/// the refusal.
#[test]
fn a_birth_whose_answer_was_lost_is_sent_again_to_the_same_key_only() {
    let ca = ca();
    ca.batch("BL", &["L-1", "L-2", "L-3"], 2);
    ca.batch("BM", &["L-1"], 1);
    let st = ca.station_caller(&ca.station("line-l", &["BL", "BM"])).unwrap();
    let other = ca.station_caller(&ca.station("line-o", &["BL"])).unwrap();
    let k = key();
    let first = ca.a.enroll(Some("birth"), &st, births("BL"), &csr_for(Some("L-1"), &k)).unwrap();
    let certs = ca.certs();
    let same = |e: &Enrolled| (e.serial.clone(), e.cert_der.clone(), e.pkcs7.clone());
    let again = ca.a.enroll(Some("birth"), &st, births("BL"), &csr_for(Some("L-1"), &k)).unwrap();
    assert_eq!(same(&again), same(&first));
    assert_eq!(last_audit(&ca), ("station:line-l".into(), "birth.replay".into(), first.serial.clone()));
    let (queued_again, was_queued) = queued(&ca.a, Some("birth"), &st, births("BL"), &csr_for(Some("L-1"), &k));
    assert!(was_queued, "signed and queued, then refused by the store and answered from the birth");
    assert_eq!(same(&queued_again.unwrap()), same(&first));
    let by_other = ca.a.enroll(Some("birth"), &other, births("BL"), &csr_for(Some("L-1"), &k)).unwrap();
    assert_eq!(same(&by_other), same(&first));
    assert_eq!(last_audit(&ca).0, "station:line-o");
    let batch = |id: &str| ca.a.store().batch(id).unwrap().unwrap();
    assert_eq!((ca.certs(), batch("BL").issued, batch("BL").refused), (certs, 1, 0), "nothing issued or counted");

    // Another key for the serial, or the same key in another batch listing it: refused, counted.
    let (r, status) = refusal(ca.a.enroll(Some("birth"), &st, births("BL"), &csr_for(Some("L-1"), &key())));
    assert!(matches!(r, Refusal::Batch(StoreError::AlreadyBorn { .. })), "{r:?}");
    assert_eq!(status, 403);
    let (r, _) = refusal(ca.a.enroll(Some("birth"), &st, births("BM"), &csr_for(Some("L-1"), &k)));
    assert!(matches!(r, Refusal::Batch(StoreError::AlreadyBorn { .. })), "{r:?}");
    assert_eq!((ca.certs(), batch("BL").refused, batch("BM").refused), (certs, 1, 1));

    // The quota spent by another birth, then the batch closed: the store
    // refuses for those reasons first, and the birth is still sent again.
    ca.birth(&st, "BL", "L-2").unwrap();
    let (r, _) = refusal(ca.birth(&st, "BL", "L-3"));
    assert!(matches!(r, Refusal::Batch(StoreError::QuotaExhausted { .. })), "{r:?}");
    let again = ca.a.enroll(Some("birth"), &st, births("BL"), &csr_for(Some("L-1"), &k)).unwrap();
    assert_eq!(same(&again), same(&first));
    factory::close_batch(ca.a.store().as_ref(), ca.clock.as_ref(), "BL", "test").unwrap();
    let again = ca.a.enroll(Some("birth"), &st, births("BL"), &csr_for(Some("L-1"), &k)).unwrap();
    assert_eq!(same(&again), same(&first));

    // Its key blocked (without revoking anything), then the certificate revoked: refused.
    let store = ca.a.store();
    let spki = store.certificate(&first.serial).unwrap().unwrap().spki_sha256;
    let keys = [(spki, "a firmware image".to_string())];
    iotpki_authority::key_registry::block(store.as_ref(), ca.clock.as_ref(), &keys, &[], "leaked", false, "test")
        .unwrap();
    let (r, _) = refusal(ca.a.enroll(Some("birth"), &st, births("BL"), &csr_for(Some("L-1"), &k)));
    assert!(matches!(r, Refusal::Batch(StoreError::BatchClosed { .. })), "{r:?}");
    ca.batch("BN", &["N-1"], 1);
    let st_n = ca.station_caller(&ca.station("line-n", &["BN"])).unwrap();
    let kn = key();
    let born = ca.a.enroll(Some("birth"), &st_n, births("BN"), &csr_for(Some("N-1"), &kn)).unwrap();
    revocation::revoke(store.as_ref(), ca.clock.as_ref(), Target::Serial(&born.serial), 1, "test").unwrap();
    let (r, _) = refusal(ca.a.enroll(Some("birth"), &st_n, births("BN"), &csr_for(Some("N-1"), &kn)));
    assert!(matches!(r, Refusal::Batch(StoreError::QuotaExhausted { .. } | StoreError::AlreadyBorn { .. })), "{r:?}");
    assert_eq!(last_audit(&ca).1, "refuse.enroll");
}
