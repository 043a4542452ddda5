//! The EST flows end to end over TLS 1.3 on loopback.

use iotpki_agent::est_client::EstClient;
use iotpki_core::keys::KeyType;
use iotpki_core::{pem, profile};
use iotpki_store::{CertQuery, CertStatus};

use crate::util::Ca;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_renew_status_records_everything() {
    let ca = Ca::start().await;
    let state = ca.tmp.path().join("dev1");
    let token = ca.token("SN-0001");
    let before = ca.cert_count();
    let id = iotpki_agent::enroll(&ca.enroll_opts(&state, "SN-0001", &token)).await.unwrap();
    assert_eq!(id.device_serial, "SN-0001");
    assert_eq!(ca.cert_count(), before + 1);

    // The certificate the device holds is the one the store recorded.
    let cert = pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
    let info = profile::cert_info(&cert).unwrap();
    let rec = ca.authority.store().certificate(&info.serial).unwrap().expect("recorded");
    assert_eq!(rec.der, cert);
    assert_eq!(rec.device_serial.as_deref(), Some("SN-0001"));
    assert_eq!(rec.ca, "operational");
    assert_eq!(rec.status, CertStatus::Good);
    assert_eq!(rec.subject, "SERIALNUMBER=SN-0001,CN=SN-0001,O=iotpki");
    assert_eq!(info.serial.len(), 32, "16-octet serial");
    assert!(info.serial.starts_with("01"), "layout 1: 0x01, seconds, 88 random bits");
    assert!(ca.last_audit().event.action == "enroll");

    // The key file is private to the device.
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(state.join(&id.key_file)).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let st = iotpki_agent::status(&state).unwrap();
    assert_eq!(st.cert_serial, info.serial);
    assert!(st.days_left >= 89 && st.days_left <= 90, "{}", st.days_left);
    assert!(st.issuer.contains("Operational CA"));

    // Renewal: a new key and certificate, same subject, linked to the old one.
    let renewed = iotpki_agent::renew(&state, None, None).await.unwrap();
    assert_ne!(renewed.key_file, id.key_file);
    assert!(!state.join(&id.key_file).exists(), "old key removed");
    let new_cert = pem::decode_one("CERTIFICATE", &renewed.cert_pem).unwrap();
    let new_info = profile::cert_info(&new_cert).unwrap();
    assert_ne!(new_info.serial, info.serial);
    assert_ne!(new_info.spki_sha256, info.spki_sha256, "a fresh key");
    assert_eq!(new_info.cert.tbs_certificate.subject, info.cert.tbs_certificate.subject);
    let new_rec = ca.authority.store().certificate(&new_info.serial).unwrap().unwrap();
    assert_eq!(new_rec.replaces.as_deref(), Some(info.serial.as_str()));
    assert_eq!(ca.last_audit().event.action, "reenroll");
    assert_eq!(iotpki_agent::status(&state).unwrap().renewals, 1);

    // And again, now authenticated by the renewed certificate.
    iotpki_agent::renew(&state, None, None).await.unwrap();
    let all = ca
        .authority
        .store()
        .list_certificates(&CertQuery { device_serial: Some("SN-0001".into()), ..Default::default() })
        .unwrap();
    assert_eq!(all.len(), 3);
    ca.authority.store().verify_audit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_key_type_enrolls() {
    let ca = Ca::start().await;
    for (i, kt) in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Ed25519].into_iter().enumerate() {
        let sn = format!("KT-{i}");
        let state = ca.tmp.path().join(&sn);
        let mut opts = ca.enroll_opts(&state, &sn, &ca.token(&sn));
        opts.key_type = kt;
        iotpki_agent::enroll(&opts).await.unwrap();
        assert_eq!(iotpki_agent::status(&state).unwrap().key_type, kt.to_string());
        iotpki_agent::renew(&state, None, None).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_pick_the_issuing_ca() {
    let ca = Ca::start().await;
    // A token cannot make a birth certificate (only a station on the line can: issue 12 item 3).
    let state = ca.tmp.path().join("born");
    let mut opts = ca.enroll_opts(&state, "BIRTH-1", &ca.token("BIRTH-1"));
    opts.label = Some("birth".into());
    let e = iotpki_agent::enroll(&opts).await.unwrap_err().to_string();
    assert!(e.contains("label birth issues birth certificates"), "{e}");
    let born = crate::util::born_devices(&ca, "LBL", &["BIRTH-2".to_string()]).await;
    let st = iotpki_agent::status(&born[0]).unwrap();
    assert!(st.issuer.contains("Manufacturing CA"), "{}", st.issuer);
    // A birth certificate lives as long as its CA (20 years here).
    assert!(st.days_left > 19 * 365, "{}", st.days_left);
    // An operational certificate under the default label comes from the operational CA.
    let op = ca.enrolled_device("OP-1").await;
    assert!(iotpki_agent::status(&op).unwrap().issuer.contains("Operational CA"));

    let anchor = pem::decode_one("CERTIFICATE", &ca.root_pem).unwrap();
    let birth = EstClient::new(&ca.url, Some("birth"), std::slice::from_ref(&anchor), None).unwrap();
    let certs = birth.cacerts().await.unwrap();
    assert_eq!(certs.len(), 2);
    let subjects: Vec<String> =
        certs.iter().map(|c| profile::cert_info(c).unwrap().cert.tbs_certificate.subject.to_string()).collect();
    assert!(subjects.iter().any(|s| s.contains("Manufacturing CA")), "{subjects:?}");

    let nolabel = EstClient::new(&ca.url, Some("nosuch"), std::slice::from_ref(&anchor), None).unwrap();
    let (status, body) = nolabel.raw("GET", "cacerts", None, vec![], None).await.unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("no EST label"), "{body}");

    let (status, body) = nolabel.raw("GET", "../cacerts", None, vec![], None).await.unwrap();
    assert!(status == 404 || status == 400, "{status} {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrattrs_and_cacerts_answer_base64() {
    let ca = Ca::start().await;
    let anchor = pem::decode_one("CERTIFICATE", &ca.root_pem).unwrap();
    let c = EstClient::new(&ca.url, None, std::slice::from_ref(&anchor), None).unwrap();
    let (status, body) = c.raw("GET", "csrattrs", None, vec![], None).await.unwrap();
    assert_eq!(status, 200);
    let der = iotpki_core::est::decode_body(body.as_bytes()).unwrap();
    assert_eq!(der[0], 0x30);
    let certs = c.cacerts().await.unwrap();
    assert!(certs.contains(&anchor));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enrollments_all_recorded_with_unique_serials() {
    let ca = std::sync::Arc::new(Ca::start().await);
    let before = ca.cert_count();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..40 {
        let ca = ca.clone();
        set.spawn(async move {
            let sn = format!("C-{i:03}");
            let state = ca.tmp.path().join(&sn);
            iotpki_agent::enroll(&ca.enroll_opts(&state, &sn, &ca.token(&sn))).await.unwrap()
        });
    }
    let mut serials = std::collections::HashSet::new();
    while let Some(r) = set.join_next().await {
        let id = r.unwrap();
        let der = pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
        assert!(serials.insert(profile::cert_info(&der).unwrap().serial));
    }
    assert_eq!(serials.len(), 40);
    assert_eq!(ca.cert_count(), before + 40);
    ca.authority.store().verify_audit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_recovered_by_enrolling_again() {
    use iotpki_core::keys::SoftKey;
    use iotpki_core::name::{DeviceSerial, NameBuilder};
    let ca = Ca::start().await;
    let state = ca.tmp.path().join("lost");
    let token = ca.token("LOST-1");
    // What the agent does before its request: the key is on disk first...
    let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    iotpki_agent::state::write_new_key(&state, &key).unwrap();
    // ...then the request is issued and recorded, and the device loses power before
    // it stores the answer (we send it ourselves and drop the answer).
    let sn = DeviceSerial::parse("LOST-1").unwrap();
    let subject = NameBuilder::default().common_name("LOST-1").unwrap().serial_number(&sn).unwrap().build();
    let csr = iotpki_core::csr::build(&subject, &key, vec![]).unwrap();
    let anchor = pem::decode_one("CERTIFICATE", &ca.root_pem).unwrap();
    let c = EstClient::new(&ca.url, None, std::slice::from_ref(&anchor), None).unwrap();
    let issued = c.simple_enroll(&csr, "LOST-1", &token).await.unwrap();
    assert!(!state.join("identity.json").exists());
    let count = ca.cert_count();

    // Back on power: enroll again with the same token.
    let id = iotpki_agent::enroll(&ca.enroll_opts(&state, "LOST-1", &token)).await.unwrap();
    assert_eq!(pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap(), issued, "the same certificate");
    assert_eq!(ca.cert_count(), count, "nothing new issued");
    iotpki_agent::status(&state).unwrap();
    iotpki_agent::renew(&state, None, None).await.unwrap();

    // Someone else with that token (another key) is still refused.
    let err = iotpki_agent::enroll(&ca.enroll_opts(&ca.tmp.path().join("thief"), "LOST-1", &token)).await.unwrap_err();
    assert!(err.to_string().contains("already used"), "{err}");
}

/// The authority remembers client certificates whose paths verified (a station
/// on a kept-alive connection presents the same one with every request), but
/// a remembered certificate is still refused once it has expired or been
/// revoked, and one never verified is not taken for one that was.
#[tokio::test]
async fn a_remembered_client_certificate_is_refused_once_expired_or_revoked() {
    use iotpki_authority::revocation::{self, Target};
    use rustls::pki_types::CertificateDer;
    let ca = Ca::start().await;
    let chain_of = |state: &std::path::Path| {
        let id = iotpki_agent::state::load(state).unwrap();
        vec![CertificateDer::from(pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap())]
    };
    let (a, b) = (ca.enrolled_device("SN-PATH-1").await, ca.enrolled_device("SN-PATH-2").await);
    let (a, b) = (chain_of(&a), chain_of(&b));
    for chain in [&a, &a, &b] {
        ca.authority.authenticate(chain).unwrap();
    }
    // Revoked: refused at once, though its path was verified a moment ago.
    let serial = profile::cert_info(&b[0]).unwrap().serial;
    revocation::revoke(ca.authority.store().as_ref(), ca.clock.as_ref(), Target::Serial(&serial), 1, "test").unwrap();
    let e = ca.authority.authenticate(&b).unwrap_err().to_string();
    assert!(e.contains("is revoked"), "{e}");
    // The same certificate with one octet of its signature changed is another
    // certificate: its path is verified, and fails.
    let mut forged = a[0].to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    let e = ca.authority.authenticate(&[CertificateDer::from(forged)]).unwrap_err().to_string();
    assert!(e.contains("not issued by this authority") || e.contains("rejected"), "{e}");
    // Expired: the remembered verdict ends with the certificate.
    ca.clock.advance(91 * 86_400);
    let e = ca.authority.authenticate(&a).unwrap_err().to_string();
    // Said with an RFC 3339 time (not Unix seconds) and what to do.
    let at = iotpki_core::time::rfc3339(iotpki_core::profile::cert_info(&a[0]).unwrap().not_after);
    assert!(e.contains(&format!("client certificate expired at {at}: ")) && e.contains("get a new one"), "{e}");
}
