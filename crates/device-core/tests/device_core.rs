//! iotpki-device-core against the real thing: requests it builds go through
//! the authority's checks and issuing path; the authority's EST answers,
//! CRLs, and the core's bundles and vouchers (what the authority publishes)
//! are read and verified; and every refusal the agent makes is made here too,
//! checked side by side with the core's verdict on the same octets.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use iotpki_authority::revocation::{self, Target};
use iotpki_authority::{Authority, Caller, Config, Credential, EnrollRequest, Enrolled, Gate, Passphrase};
use iotpki_core::bundle::{Bundle as CoreBundle, BundleContent, UnsignedBundle};
use iotpki_core::clock::{Clock, FixedClock, SystemClock};
use iotpki_core::keys::{KeyType as CoreKeyType, Signer, SoftKey};
use iotpki_core::name::DeviceSerial;
use iotpki_core::voucher::Voucher;
use iotpki_device_core::bundle::{self, Bundle, BundleError, Update, Whose};
use iotpki_device_core::chain::ChainError;
use iotpki_device_core::crl::{self, CrlError, Verdict};
use iotpki_device_core::csr::{self, Signature, Subject};
use iotpki_device_core::est;
use iotpki_device_core::voucher::{self, Extension, VoucherError};
use iotpki_device_core::Error;
use rustls_pki_types::CertificateDer;

const PASS: &str = "device-core test passphrase";

struct Ca {
    _tmp: tempfile::TempDir,
    a: Authority,
    clock: Arc<FixedClock>,
}

fn ca() -> Ca {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let pass = Passphrase::new(PASS.into()).unwrap();
    iotpki_authority::init::init(&dir, &Default::default(), &pass, &SystemClock).unwrap();
    let cfg = Config::load(&dir).unwrap();
    let clock = Arc::new(FixedClock::new(SystemClock.now()));
    let a = Authority::open_with_config(&dir, cfg, &pass, clock.clone()).unwrap();
    Ca { _tmp: tmp, a, clock }
}

impl Ca {
    fn now(&self) -> u64 {
        self.clock.now() as u64
    }

    fn ca_cert(&self, name: &str) -> Vec<u8> {
        let pem = std::fs::read_to_string(self.a.dir().join("ca").join(format!("{name}.crt"))).unwrap();
        iotpki_core::pem::decode_one("CERTIFICATE", &pem).unwrap()
    }

    /// `/cacerts`, as the server sends it: base64 of the PKCS#7.
    fn cacerts_body(&self) -> Vec<u8> {
        iotpki_core::est::encode_body(self.a.cacerts(None).unwrap()).into_bytes()
    }

    /// The authority's path for a first enrollment: the server parses and
    /// verifies the request (`csr::parse_and_verify`), the token admits the
    /// caller, the authority checks and issues.
    fn enroll(&self, serial: &str, request: &[u8]) -> Result<Enrolled, String> {
        let verified = iotpki_core::csr::parse_and_verify(request).map_err(|e| e.to_string())?;
        let token = self.a.create_token(&DeviceSerial::parse(serial).unwrap(), None, "test").unwrap();
        let caller = self.a.admit(Gate::Enroll, None, Credential::Token { user: serial, password: &token }).unwrap();
        let e = EnrollRequest::Enroll { batch: None, activation: None };
        self.a.enroll(None, &caller, e, &verified).map_err(|e| e.to_string())
    }

    fn renew(&self, current: &[u8], request: &[u8]) -> Result<Enrolled, String> {
        let verified = iotpki_core::csr::parse_and_verify(request).map_err(|e| e.to_string())?;
        let chain = vec![CertificateDer::from(current.to_vec()), CertificateDer::from(self.ca_cert("operational"))];
        let caller: Caller =
            self.a.admit(Gate::Certificate("refuse.reenroll"), None, Credential::ClientCert(&chain)).unwrap();
        self.a.enroll(None, &caller, EnrollRequest::Reenroll, &verified).map_err(|e| e.to_string())
    }
}

/// The signing callback of a device whose key is `key` (a secure element
/// would sit here): ECDSA in DER or fixed form, Ed25519 as is.
fn sign_with(key: &SoftKey, fixed: bool) -> impl FnMut(&[u8]) -> Result<Signature, &'static str> + '_ {
    move |tbs| {
        let s = key.sign(tbs).map_err(|_| "soft key")?;
        Ok(match (key.key_type(), fixed) {
            (CoreKeyType::Ed25519, _) => Signature::Fixed(s),
            (CoreKeyType::EcdsaP256, true) => {
                Signature::Fixed(p256::ecdsa::Signature::from_der(&s).unwrap().to_bytes().to_vec())
            }
            (CoreKeyType::EcdsaP384, true) => {
                Signature::Fixed(p384::ecdsa::Signature::from_der(&s).unwrap().to_bytes().to_vec())
            }
            _ => Signature::Der(s),
        })
    }
}

/// A body with 64-column CRLF lines, as older EST servers send.
fn wrapped(body: &[u8]) -> Vec<u8> {
    body.chunks(64).collect::<Vec<_>>().join(&b"\r\n"[..])
}

#[test]
fn requests_pass_the_authority_and_answers_chain_for_each_key_type() {
    let ca = ca();
    let root = ca.a.root_der().to_vec();
    let chain = est::ca_chain(&ca.cacerts_body(), &root).unwrap();
    assert!(!chain.is_empty() && !chain.contains(&root));
    for (i, kt) in CoreKeyType::SIGNING.into_iter().enumerate() {
        for fixed in [false, true] {
            let serial = format!("SN-{i}-{fixed}");
            let key = SoftKey::generate(kt).unwrap();
            let spki = key.public_key_der();
            let req = csr::build(&Subject::Serial(&serial), spki, sign_with(&key, fixed)).unwrap();
            // The same request the agent builds, octet for octet apart from the signature.
            let subject = iotpki_core::name::NameBuilder::default()
                .common_name(&serial)
                .unwrap()
                .serial_number(&DeviceSerial::parse(&serial).unwrap())
                .unwrap()
                .build();
            let agents = iotpki_core::csr::build(&subject, &key, vec![]).unwrap();
            let info = |d: &[u8]| {
                use iotpki_core::asn1::der::{Decode, Encode};
                iotpki_core::asn1::x509_cert::request::CertReq::from_der(d).unwrap().info.to_der().unwrap()
            };
            assert_eq!(info(&req), info(&agents), "{kt:?}");
            let issued = ca.enroll(&serial, &req).unwrap_or_else(|e| panic!("{kt:?}: {e}"));
            let body = iotpki_core::est::encode_body(&issued.pkcs7).into_bytes();
            for b in [body.clone(), wrapped(&body), [&body[..], b"\n"].concat()] {
                assert_eq!(est::enroll_answer(&b).unwrap(), issued.cert_der);
            }
            let got = est::check_issued(&issued.cert_der, spki, &Subject::Serial(&serial), &chain, &root, ca.now())
                .unwrap_or_else(|e| panic!("{kt:?}: {e}"));
            // Renewal: a new key, the current subject, over the current certificate.
            let next = SoftKey::generate(kt).unwrap();
            let req2 =
                csr::build(&Subject::Name(&got.subject), next.public_key_der(), sign_with(&next, fixed)).unwrap();
            let renewed = ca.renew(&issued.cert_der, &req2).unwrap_or_else(|e| panic!("{kt:?}: {e}"));
            let cert2 = est::enroll_answer(&iotpki_core::est::encode_body(&renewed.pkcs7).into_bytes()).unwrap();
            est::check_issued(&cert2, next.public_key_der(), &Subject::Name(&got.subject), &chain, &root, ca.now())
                .unwrap();
            // The agent's refusals of an answer.
            let e = est::check_issued(&cert2, spki, &Subject::Name(&got.subject), &chain, &root, ca.now());
            assert_eq!(e.unwrap_err(), Error::WrongKey);
            let e =
                est::check_issued(&cert2, next.public_key_der(), &Subject::Serial("SN-other"), &chain, &root, ca.now());
            assert_eq!(e.unwrap_err(), Error::WrongSubject);
        }
    }
}

#[test]
fn a_first_enrollment_over_coaps_carries_the_token_as_the_agent_puts_it() {
    for kt in CoreKeyType::SIGNING {
        let key = SoftKey::generate(kt).unwrap();
        let req = csr::build_with_challenge(
            &Subject::Serial("SN1"),
            key.public_key_der(),
            Some("SN1:s3cr3t"),
            sign_with(&key, true),
        )
        .unwrap();
        iotpki_core::csr::parse_and_verify(&req).unwrap();
        let got = iotpki_core::csr::challenge_password(&req).unwrap();
        assert_eq!(got.as_deref().map(String::as_str), Some("SN1:s3cr3t"));
        let subject = iotpki_core::name::NameBuilder::default()
            .common_name("SN1")
            .unwrap()
            .serial_number(&DeviceSerial::parse("SN1").unwrap())
            .unwrap()
            .build();
        let agents = iotpki_core::csr::build_with_challenge(&subject, &key, vec![], Some("SN1:s3cr3t")).unwrap();
        let info = |d: &[u8]| {
            use iotpki_core::asn1::der::{Decode, Encode};
            iotpki_core::asn1::x509_cert::request::CertReq::from_der(d).unwrap().info.to_der().unwrap()
        };
        assert_eq!(info(&req), info(&agents), "{kt:?}");
    }
}

#[test]
fn a_signer_that_signs_badly_or_with_another_key_is_caught_on_the_device() {
    let key = SoftKey::generate(CoreKeyType::EcdsaP256).unwrap();
    let other = SoftKey::generate(CoreKeyType::EcdsaP256).unwrap();
    let e = csr::build(&Subject::Serial("SN1"), key.public_key_der(), sign_with(&other, false)).unwrap_err();
    assert!(matches!(e, Error::Signer(_)), "{e}");
    let e =
        csr::build(&Subject::Serial("SN1"), key.public_key_der(), |_| Ok(Signature::Fixed(vec![1; 63]))).unwrap_err();
    assert!(matches!(e, Error::Signer(_)), "{e}");
    let e = csr::build(&Subject::Serial("SN1"), key.public_key_der(), |_| Err("secure element busy")).unwrap_err();
    assert_eq!(e.to_string(), "the signer failed: secure element busy");
    let e = csr::build(&Subject::Serial(" SN1"), key.public_key_der(), sign_with(&key, false)).unwrap_err();
    assert!(matches!(e, Error::BadSerial(_)));
    // A compressed point is refused: keys are named by the hash of one encoding.
    let mut compressed = key.public_key_der().to_vec();
    compressed.truncate(compressed.len() - 32);
    assert!(csr::build(&Subject::Serial("SN1"), &compressed, sign_with(&key, false)).is_err());
}

#[test]
fn answers_from_elsewhere_or_out_of_time_are_refused() {
    let (ca, other) = (ca(), ca());
    let root = ca.a.root_der().to_vec();
    let chain = est::ca_chain(&ca.cacerts_body(), &root).unwrap();
    let key = SoftKey::generate(CoreKeyType::EcdsaP256).unwrap();
    let req = csr::build(&Subject::Serial("SN-9"), key.public_key_der(), sign_with(&key, false)).unwrap();
    let cert = ca.enroll("SN-9", &req).unwrap().cert_der;
    let spki = key.public_key_der();
    let check = |chain: &[Vec<u8>], anchor: &[u8], now| {
        est::check_issued(&cert, spki, &Subject::Serial("SN-9"), chain, anchor, now)
    };
    check(&chain, &root, ca.now()).unwrap();
    // Another authority's /cacerts does not carry our anchor.
    assert_eq!(est::ca_chain(&other.cacerts_body(), &root).unwrap_err(), Error::AnchorNotOffered);
    // Our certificate against another anchor, or without its issuing CA.
    let e = check(&chain, other.a.root_der(), ca.now()).unwrap_err();
    assert!(matches!(e, Error::Chain(ChainError::NoIssuer(_))), "{e}");
    let e = check(&[], &root, ca.now()).unwrap_err();
    assert!(matches!(e, Error::Chain(ChainError::NoIssuer(_))), "{e}");
    // Expired, and not yet valid.
    let e = check(&chain, &root, ca.now() + 20 * 365 * 86_400).unwrap_err();
    assert!(matches!(e, Error::Chain(ChainError::NotValidNow { .. })), "{e}");
    let e = check(&chain, &root, ca.now() - 86_400).unwrap_err();
    assert!(matches!(e, Error::Chain(ChainError::NotValidNow { .. })), "{e}");
    // A CA certificate is no device certificate; the root is not its own issuing CA.
    let op = ca.ca_cert("operational");
    let e = est::check_issued(
        &op,
        &iotpki_authority::trust::spki_of(&op).unwrap(),
        &Subject::Name(&[]),
        &[],
        &root,
        ca.now(),
    );
    assert_eq!(e.unwrap_err(), Error::Chain(ChainError::CaAsEndEntity));
    // A tampered certificate: its signature no longer verifies, so no issuer is found.
    let mut bad = cert.clone();
    let n = bad.len();
    bad[n - 5] ^= 1;
    let e = est::check_issued(&bad, spki, &Subject::Serial("SN-9"), &chain, &root, ca.now()).unwrap_err();
    assert!(matches!(e, Error::Chain(ChainError::NoIssuer(_))), "{e}");
    // Two certificates in an enrollment answer, garbage, and no certificate.
    let two = iotpki_core::pkcs7::certs_only(&[&cert, &op]).unwrap();
    let body = iotpki_core::est::encode_body(&two).into_bytes();
    assert_eq!(est::enroll_answer(&body).unwrap_err(), Error::CertificateCount { found: 2 });
    assert!(matches!(est::enroll_answer(b"not*base64"), Err(Error::Malformed { .. })));
    assert!(matches!(est::enroll_answer(b" \r\n"), Err(Error::Malformed { .. })));
    assert!(matches!(est::enroll_answer(b"MAMCAQA="), Err(Error::Malformed { .. })));
    // Padding as the core takes it: whole, short or absent; never too much.
    for (body, ok) in [
        (&b"QQ=="[..], true),
        (b"QQ=", true),
        (b"QQ", true),
        (b"QUJD", true),
        (b"QUJD=", false),
        (b"QQ===", false),
        (b"Q", false),
    ] {
        assert_eq!(est::decode_body(body).is_ok(), ok, "{body:?}");
        assert_eq!(iotpki_core::est::decode_body(body).is_ok(), ok, "the core, {body:?}");
    }
}

// ---- trust bundles ----

fn keys(n: usize) -> Vec<SoftKey> {
    let kts = [CoreKeyType::EcdsaP256, CoreKeyType::EcdsaP384, CoreKeyType::Ed25519];
    (0..n).map(|i| SoftKey::generate(kts[i % 3]).unwrap()).collect()
}

fn refused<T: std::fmt::Debug>(r: Result<T, Error>) -> BundleError {
    match r {
        Err(Error::Bundle(e)) => e,
        other => panic!("expected a bundle refusal, got {other:?}"),
    }
}

fn bundle_bytes(
    anchor: &[u8],
    version: u64,
    now: i64,
    signers: &[&SoftKey],
    threshold: u8,
    by: &[&SoftKey],
) -> Vec<u8> {
    let content = BundleContent {
        version,
        issued_at: now - 10,
        expires_at: now + 86_400,
        anchors: vec![anchor.to_vec()],
        servers: vec!["est.example.com".into()],
        threshold,
        signers: signers.iter().map(|k| k.public_key_der().to_vec()).collect(),
    };
    let mut b = CoreBundle::decode(&UnsignedBundle::new(content).unwrap().encode()).unwrap();
    for k in by {
        b.add_signature(*k).unwrap();
    }
    b.encode()
}

/// Ours and the core's verdicts on an initial bundle agree (accept, or refuse).
fn initial_both(bytes: &[u8], now: u64) -> Result<Bundle, Error> {
    let ours = bundle::verify_initial(bytes, now);
    let core = iotpki_core::bundle::verify_initial(bytes, now as i64);
    assert_eq!(ours.is_ok(), core.is_ok(), "ours {ours:?}, core {core:?}");
    ours
}

fn update_both(current: &[u8], bytes: &[u8], now: u64) -> Result<Update, Error> {
    let ours = bundle::verify_update(&Bundle::decode(current).unwrap(), bytes, now);
    let cur = CoreBundle::decode(current).unwrap();
    let core = iotpki_core::bundle::verify_update(&cur, bytes, now as i64);
    match &ours {
        Ok(Update::Unchanged) => assert_eq!(current, bytes, "the agent says unchanged only for the same octets"),
        _ => assert_eq!(ours.is_ok(), core.is_ok(), "ours {ours:?}, core {core:?}"),
    }
    ours
}

#[test]
fn bundles_verify_and_are_refused_as_the_agent_refuses_them() {
    let ca = ca();
    let root = ca.a.root_der().to_vec();
    let now = ca.now();
    let t = now as i64;
    let k = keys(5);
    let (a, b, c, d, e) = (&k[0], &k[1], &k[2], &k[3], &k[4]);
    let v1 = bundle_bytes(&root, 1, t, &[a, b, c], 2, &[a, c]);
    // The factory's first bundle; published by the authority as devices take it.
    let got = initial_both(&v1, now).unwrap();
    assert_eq!(got.content().anchors, vec![root.clone()]);
    assert!(got.allows_server("EST.example.com", "est.example.com:443") && !got.allows_server("evil", "evil:1"));
    iotpki_authority::trust::publish_bundle(ca.a.store().as_ref(), ca.clock.as_ref(), &v1, "test").unwrap();
    let published = ca.a.published(iotpki_authority::trust::BUNDLE).unwrap();
    initial_both(&published, now).unwrap();

    // Below its own threshold; signed by a key no bundle names.
    let one = bundle_bytes(&root, 1, t, &[a, b, c], 2, &[a]);
    assert_eq!(refused(initial_both(&one, now)), BundleError::BelowThreshold { have: 1, need: 2, whose: Whose::Own });
    let stranger = bundle_bytes(&root, 1, t, &[a, b, c], 2, &[a, d]);
    assert!(matches!(refused(initial_both(&stranger, now)), BundleError::UnknownSigner { have: 1, .. }));
    // Expired; issued in the future.
    assert!(matches!(refused(initial_both(&v1, now + 86_400)), BundleError::Expired { .. }));
    assert!(matches!(refused(initial_both(&v1, now - 1_000)), BundleError::IssuedInFuture { .. }));
    // Tampered: a signature octet, a payload octet.
    let sig_at = v1.len() - 3;
    let mut bad = v1.clone();
    bad[sig_at] ^= 1;
    assert!(matches!(refused(initial_both(&bad, now)), BundleError::BadSignature { .. }));
    let ser = b"est.example.com";
    let at = v1.windows(ser.len()).position(|w| w == ser).unwrap();
    let mut bad = v1.clone();
    bad[at] = b'f';
    assert!(matches!(refused(initial_both(&bad, now)), BundleError::BadSignature { .. }));
    // Not deterministic CBOR, trailing octets, garbage.
    let mut trailing = v1.clone();
    trailing.push(0);
    assert!(matches!(refused(initial_both(&trailing, now)), BundleError::Malformed(_)));
    assert!(matches!(refused(initial_both(b"\xd8\x62\x80", now)), BundleError::Malformed(_)));

    // Updates: the held bundle's threshold of its keys and the new one's own.
    let v2 = bundle_bytes(&root, 2, t, &[c, d, e], 2, &[a, b, d, e]);
    assert!(matches!(update_both(&v1, &v2, now).unwrap(), Update::New(n) if n.content().version == 2));
    assert!(matches!(update_both(&v1, &v1, now).unwrap(), Update::Unchanged));
    let only_new = bundle_bytes(&root, 2, t, &[c, d, e], 2, &[d, e]);
    let r = refused(update_both(&v1, &only_new, now));
    assert_eq!(r, BundleError::BelowThreshold { have: 0, need: 2, whose: Whose::Current });
    let rollback = bundle_bytes(&root, 1, t, &[c, d, e], 2, &[c, d]);
    assert_eq!(refused(update_both(&v2, &rollback, now)), BundleError::Rollback { stored: 2, offered: 1 });
    let replay = bundle_bytes(&root, 1, t, &[a, b, c], 2, &[b, c]);
    assert_eq!(refused(update_both(&v1, &replay, now)), BundleError::Rollback { stored: 1, offered: 1 });
    // A device offline past its bundle's expiry still takes the approved successor.
    let later = bundle_bytes(&root, 3, t + 200_000, &[c, d, e], 2, &[c, d]);
    assert!(matches!(update_both(&v2, &later, now + 200_000), Ok(Update::New(_))));
    let msg = refused(update_both(&v2, &rollback, now)).to_string();
    assert!(msg.contains("rollback or replay refused"), "{msg}");
}

fn owned_both(bytes: &[u8], owner: &[u8], since: u64, now: u64) -> Result<Bundle, Error> {
    let ours = bundle::verify_owned(bytes, owner, since, now);
    let core = iotpki_core::bundle::verify_owned(bytes, owner, since as i64, now as i64);
    assert_eq!(ours.is_ok(), core.is_ok(), "ours {ours:?}, core {core:?}");
    if let (Err(Error::Bundle(o)), Err(c)) = (&ours, &core) {
        // The same refusal: the same variant and fields, but for the detail texts.
        let (o, c) = (format!("{o:?}"), format!("{c:?}"));
        let kind = |d: &str| d.split([' ', '(', '{']).next().unwrap_or_default().to_string();
        if ["Malformed", "BadSignature"].contains(&kind(&o).as_str()) {
            assert_eq!(kind(&o), kind(&c));
        } else {
            assert_eq!(o, c);
        }
    }
    ours
}

#[test]
fn an_owners_first_bundle_is_judged_as_the_agent_judges_it() {
    let ca = ca();
    let root = ca.a.root_der().to_vec();
    let now = ca.now();
    let t = now as i64;
    let since = now - 100;
    let k = keys(5);
    let (a, b, c, owner, stranger) = (&k[0], &k[1], &k[2], &k[3], &k[4]);
    let o = owner.public_key_der();
    let good = bundle_bytes(&root, 1, t, &[a, b, c], 2, &[a, b, owner]);
    assert_eq!(owned_both(&good, o, since, now).unwrap().content().version, 1);
    let mine = bundle_bytes(&root, 1, t, &[a, b, c], 2, &[a, b]);
    let r = refused(owned_both(&mine, o, since, now));
    assert_eq!(r, BundleError::BelowThreshold { have: 0, need: 1, whose: Whose::Owner });
    let foreign = bundle_bytes(&root, 1, t, &[a, b, c], 2, &[a, b, stranger]);
    let r = refused(owned_both(&foreign, o, since, now));
    assert!(matches!(r, BundleError::UnknownSigner { whose: Whose::Owner, .. }), "{r}");
    let short = bundle_bytes(&root, 1, t, &[a, b, c], 2, &[a, owner]);
    let r = refused(owned_both(&short, o, since, now));
    assert_eq!(r, BundleError::BelowThreshold { have: 1, need: 2, whose: Whose::Own });
    // Issued (now - 10) before the entry that made the owner (now): an older bundle replayed.
    let r = refused(owned_both(&good, o, now, now));
    assert_eq!(r, BundleError::BeforeOwnership { issued_at: t - 10, owned_since: t });
    assert!(owned_both(&good, o, now - 10, now).is_ok());
    assert!(matches!(refused(owned_both(&good, o, since, now + 86_400)), BundleError::Expired { .. }));
    assert!(matches!(
        refused(owned_both(&good, stranger.public_key_der(), since, now)),
        BundleError::UnknownSigner { .. }
    ));
    for at in (0..good.len()).step_by(11) {
        let mut x = good.clone();
        x[at] ^= 0x01;
        assert!(owned_both(&x, o, since, now).is_err(), "a changed octet at {at} is refused");
    }
}

#[test]
fn every_single_octet_change_to_a_bundle_is_judged_as_the_core_judges_it() {
    let ca = ca();
    let now = ca.now();
    let k = keys(3);
    let v1 = bundle_bytes(ca.a.root_der(), 1, now as i64, &[&k[0], &k[1], &k[2]], 2, &[&k[0], &k[2]]);
    let v2 = bundle_bytes(ca.a.root_der(), 2, now as i64, &[&k[0], &k[1], &k[2]], 2, &[&k[1], &k[2]]);
    let mut accepted = 0;
    for at in (0..v2.len()).step_by(7) {
        for flip in [0x01u8, 0x80] {
            let mut x = v2.clone();
            x[at] ^= flip;
            initial_both(&x, now).ok();
            if update_both(&v1, &x, now).is_ok() {
                accepted += 1;
            }
        }
    }
    assert_eq!(accepted, 0, "no changed octet may be accepted");
}

// ---- vouchers ----

#[test]
fn vouchers_verify_and_are_refused_as_the_agent_refuses_them() {
    let ca = ca();
    let now = ca.now();
    let t = now as i64;
    let maker = SoftKey::generate(CoreKeyType::EcdsaP256).unwrap();
    let k = keys(3);
    let (alice, bob, carol) = (&k[0], &k[1], &k[2]);
    let serial = DeviceSerial::parse("SN-0001").unwrap();
    let birth = ca.a.root_der().to_vec(); // any DER stands for the birth certificate
    let mut v = Voucher::first(&maker, &serial, &birth, alice.public_key_der(), t - 100, t + 86_400).unwrap();
    let one = v.encode();
    v.extend(alice, bob.public_key_der(), t - 50, t + 86_400).unwrap();
    let two = v.encode();
    let mk = maker.public_key_der();
    let both = |bytes: &[u8], serial: &str, birth: &[u8], now: u64| {
        let ours = voucher::verify(bytes, mk, serial, birth, now);
        let core = iotpki_core::voucher::verify(bytes, mk, &DeviceSerial::parse(serial).unwrap(), birth, now as i64);
        assert_eq!(ours.is_ok(), core.is_ok(), "ours {ours:?}, core {core:?}");
        if let (Ok(o), Ok(c)) = (&ours, &core) {
            assert_eq!(o.owner, c.owner_anchor);
        }
        ours.map_err(|e| match e {
            Error::Voucher(v) => v,
            other => panic!("{other:?}"),
        })
    };
    assert_eq!(both(&two, "SN-0001", &birth, now).unwrap().owner, bob.public_key_der());
    assert_eq!(both(&one, "SN-0001", &birth, now).unwrap().entries.len(), 1);
    assert!(matches!(both(&two, "SN-0002", &birth, now), Err(VoucherError::WrongDevice { index: 0, .. })));
    assert!(matches!(both(&two, "SN-0001", b"another birth", now), Err(VoucherError::WrongDevice { .. })));
    assert!(matches!(both(&two, "SN-0001", &birth, now + 86_400), Err(VoucherError::Expired { index: 1, .. })));
    // Accepted before: checked again past its date, as the core does.
    let later = now + 10 * 86_400;
    let ours = voucher::verify_accepted(&two, mk, "SN-0001", &birth, later).unwrap();
    let core = iotpki_core::voucher::verify_accepted(&two, mk, &serial, &birth, later as i64).unwrap();
    assert_eq!(ours.owner, core.owner_anchor);
    assert!(voucher::verify_accepted(&two, mk, "SN-0002", &birth, later).is_err());
    assert!(matches!(both(&two, "SN-0001", &birth, now - 1_000), Err(VoucherError::CreatedInFuture { .. })));
    // Signed by someone else than the manufacturer.
    let fake = Voucher::first(alice, &serial, &birth, carol.public_key_der(), t, t + 86_400).unwrap().encode();
    assert!(matches!(both(&fake, "SN-0001", &birth, now), Err(VoucherError::WrongSigner { index: 0, .. })));
    // Tampered signature; a missing entry.
    let mut bad = two.clone();
    let n = bad.len();
    bad[n - 2] ^= 1;
    assert!(matches!(both(&bad, "SN-0001", &birth, now), Err(VoucherError::BadSignature { index: 1, .. })));
    assert!(matches!(both(b"\x80", "SN-0001", &birth, now), Err(VoucherError::Empty)));
    // Extending what the device holds: forward only.
    assert_eq!(voucher::check_extends(&one, &two, now).unwrap(), Extension::Extended { added: 1 });
    assert_eq!(voucher::check_extends(&two, &two, now).unwrap(), Extension::Unchanged);
    let e = voucher::check_extends(&two, &one, now).unwrap_err();
    assert_eq!(e, Error::Voucher(VoucherError::Shorter { installed: 2, offered: 1 }));
    // Alice, having handed the device to Bob, forks her old copy to Carol.
    let mut fork = Voucher::decode(&one).unwrap();
    fork.extend(alice, carol.public_key_der(), t - 40, t + 86_400).unwrap();
    let fork = fork.encode();
    both(&fork, "SN-0001", &birth, now).unwrap(); // verifies on its own...
    let e = voucher::check_extends(&two, &fork, now).unwrap_err(); // ...but not against what the device holds
    assert!(matches!(e, Error::Voucher(VoucherError::Diverges { index: 1, .. })), "{e}");
    for (old, new) in [(&one, &two), (&two, &two), (&two, &one), (&two, &fork)] {
        let core = iotpki_core::voucher::check_extends(old, new, t);
        assert_eq!(voucher::check_extends(old, new, now).is_ok(), core.is_ok());
    }
    // Every changed octet is refused, as the core refuses it.
    for at in (0..two.len()).step_by(5) {
        let mut x = two.clone();
        x[at] ^= 0x04;
        assert!(both(&x, "SN-0001", &birth, now).is_err());
    }
}

// ---- CRLs ----

#[test]
fn crls_from_the_authority_verify_and_are_refused_as_the_agent_refuses_them() {
    let ca = ca();
    let now = ca.now();
    let key = SoftKey::generate(CoreKeyType::EcdsaP256).unwrap();
    let req = csr::build(&Subject::Serial("SN-7"), key.public_key_der(), sign_with(&key, false)).unwrap();
    let issued = ca.enroll("SN-7", &req).unwrap();
    let op = ca.ca_cert("operational");
    let first = ca.a.crl("operational").unwrap();
    let Verdict::New(c1) = crl::verify(&first, &op, now, &[], None).unwrap() else { panic!("new") };
    let serial = hex_decode(&issued.serial);
    assert!(!c1.is_revoked(&serial));
    revocation::revoke(ca.a.store().as_ref(), ca.clock.as_ref(), Target::Serial(&issued.serial), 1, "test").unwrap();
    let second = ca.a.crl("operational").unwrap();
    let Verdict::New(c2) = crl::verify(&second, &op, now, &[], Some(&c1.last)).unwrap() else { panic!("new") };
    assert!(c2.number > c1.number && c2.is_revoked(&serial));
    // The same again; an older one after a newer (a rollback).
    assert_eq!(crl::verify(&second, &op, now, &[], Some(&c2.last)).unwrap(), Verdict::Unchanged);
    let e = crl::verify(&first, &op, now, &[], Some(&c2.last)).unwrap_err();
    assert_eq!(e, Error::Crl(CrlError::Rollback { installed: c2.number, offered: c1.number }));
    // Issued by another CA; tampered; stale; from the future.
    let root = ca.a.root_der();
    assert_eq!(crl::check(&second, root, now).unwrap_err(), Error::Crl(CrlError::WrongIssuer));
    let mut bad = second.clone();
    let n = bad.len();
    bad[n - 3] ^= 1;
    assert_eq!(crl::check(&bad, &op, now).unwrap_err(), Error::Crl(CrlError::BadSignature));
    assert!(matches!(crl::check(&second, &op, c2.next_update).unwrap_err(), Error::Crl(CrlError::Stale { .. })));
    assert!(matches!(
        crl::check(&second, &op, c2.this_update - 301).unwrap_err(),
        Error::Crl(CrlError::NotYetValid { .. })
    ));
    assert_eq!(crl::check(b"\x30\x00", &op, now).unwrap_err(), Error::Crl(CrlError::NotACrl));
    // Each verdict as the core's.
    for (d, issuer, t) in
        [(&second, &op, now), (&second, &root.to_vec(), now), (&bad, &op, now), (&second, &op, c2.next_update)]
    {
        let core = iotpki_core::crl::check(d, issuer, t as i64, 300);
        assert_eq!(crl::check(d, issuer, t).is_ok(), core.is_ok());
    }
    // A shard of a partitioned CRL covers only the certificates naming it.
    let shard = ca.a.crl_scoped("operational", Some((2, 1))).unwrap();
    let checked = crl::check(&shard, &op, now).unwrap();
    let url = checked.scope.clone().unwrap()[0].clone();
    assert!(url.ends_with("/crl/operational/2/1.crl"), "{url}");
    assert!(matches!(crl::verify(&shard, &op, now, &[&url], None), Ok(Verdict::New(_))));
    let e = crl::verify(&shard, &op, now, &["http://x/crl/operational/2/0.crl"], None).unwrap_err();
    assert_eq!(e, Error::Crl(CrlError::NotCovering));
}

/// A CRL whose TBSCertList names another signature algorithm than the outer one,
/// signed all the same by its issuer: refused here as the core refuses it.
#[test]
fn a_crl_naming_two_signature_algorithms_is_refused_as_the_core_refuses_it() {
    use der::{Decode, Encode};
    use iotpki_core::profile::{issue, CertParams, Issuer, Profile};
    let k = SoftKey::generate(CoreKeyType::EcdsaP256).unwrap();
    let n = iotpki_core::name::NameBuilder::default().common_name("CA").unwrap().build();
    let spki = spki::SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap();
    let kid = iotpki_core::keys::key_identifier(&spki);
    let issuer = Issuer { subject: &n, key_id: &kid, not_after: 2_000_000_000, signer: &k };
    let params = CertParams {
        profile: Profile::Root,
        serial: iotpki_core::serial::system_random_serial(1_700_000_000).unwrap().0,
        subject: n.clone(),
        spki,
        not_before: 1_600_000_000,
        not_after: 2_000_000_000,
        dns_names: vec![],
        ip_addrs: vec![],
        permitted_subtree: None,
    };
    let ca = issue(&params, &issuer).unwrap().der;
    let good = iotpki_core::crl::build(&issuer, 3, 1_700_000_100, 1_700_086_500, &[]).unwrap();
    let now = 1_700_000_200u64;
    assert!(crl::check(&good, &ca, now).is_ok());
    let mut two = x509_cert::crl::CertificateList::from_der(&good).unwrap();
    two.tbs_cert_list.signature.oid = const_oid::db::rfc5912::ECDSA_WITH_SHA_384;
    two.signature = der::asn1::BitString::from_bytes(&k.sign(&two.tbs_cert_list.to_der().unwrap()).unwrap()).unwrap();
    let two = two.to_der().unwrap();
    assert_eq!(
        crl::check(&two, &ca, now).unwrap_err(),
        Error::Crl(CrlError::Unsupported("two different signature algorithms"))
    );
    assert!(iotpki_core::crl::check(&two, &ca, now as i64, 300).is_err());
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}
