//! Bad input gets the right status, a one-line reason, an audit entry, and
//! changes nothing: no certificate recorded, no token consumed.

use std::sync::Arc;

use base64::Engine as _;
use iotpki_agent::est_client::{ClientIdentity, EstClient};
use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::name::{DeviceSerial, NameBuilder};
use iotpki_core::{csr, est, pem};

use crate::util::{openssl, Ca};

fn basic(user: &str, pass: &str) -> Option<String> {
    Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))))
}

fn device_csr(serial: &str, key: &SoftKey) -> Vec<u8> {
    let sn = DeviceSerial::parse(serial).unwrap();
    let subject = NameBuilder::default().common_name(serial).unwrap().serial_number(&sn).unwrap().build();
    csr::build(&subject, key, vec![]).unwrap()
}

fn b64(der: &[u8]) -> Vec<u8> {
    est::encode_body(der).into_bytes()
}

struct Case {
    name: &'static str,
    op: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    auth: Option<String>,
    status: u16,
    reason: &'static str,
    audited: bool,
}

/// Send each case; check status, reason, one line, audit, and that the store is unchanged.
async fn check(ca: &Ca, client: &EstClient, cases: Vec<Case>, token_hashes: &[String]) {
    for c in cases {
        let certs = ca.cert_count();
        let audit = ca.audit_len();
        let (status, body) = client.raw("POST", c.op, c.content_type, c.body, c.auth).await.unwrap();
        assert_eq!(status, c.status, "{}: body {body:?}", c.name);
        assert!(body.contains(c.reason), "{}: reason {body:?} lacks {:?}", c.name, c.reason);
        assert_eq!(body.trim_end().lines().count(), 1, "{}: one line: {body:?}", c.name);
        assert_eq!(ca.cert_count(), certs, "{}: no certificate recorded", c.name);
        for h in token_hashes {
            let t = ca.authority.store().token(h).unwrap().unwrap();
            assert!(t.used_at.is_none(), "{}: token consumed", c.name);
        }
        if c.audited {
            assert_eq!(ca.audit_len(), audit + 1, "{}: refusal audited", c.name);
            let last = ca.last_audit();
            assert!(last.event.action.starts_with("refuse."), "{}: {:?}", c.name, last.event);
            assert!(last.event.detail.contains(c.reason), "{}: {:?}", c.name, last.event);
        } else {
            assert_eq!(ca.audit_len(), audit, "{}", c.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_enrollments_are_refused_and_change_nothing() {
    let ca = Ca::start().await;
    let anchor = pem::decode_one("CERTIFICATE", &ca.root_pem).unwrap();
    let client = EstClient::new(&ca.url, None, std::slice::from_ref(&anchor), None).unwrap();
    let token = ca.token("SN-1");
    let other_token = ca.token("SN-2");
    let short_token = ca.token_ttl("SN-3", 60);
    let hashes: Vec<String> = [&token, &other_token].iter().map(|t| iotpki_authority::tokens::hash(t)).collect();
    let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let good = device_csr("SN-1", &key);
    let mut forged = good.clone();
    let n = forged.len();
    forged[n - 3] ^= 0x55; // inside the signature
    let rsa_dir = tempfile::tempdir().unwrap();
    let rsa_csr = rsa_dir.path().join("rsa.der");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        rsa_dir.path().join("k").to_str().unwrap(),
        "-subj",
        "/CN=SN-1/serialNumber=SN-1",
        "-outform",
        "DER",
        "-out",
        rsa_csr.to_str().unwrap(),
    ]);
    let rsa = std::fs::read(&rsa_csr).unwrap();
    let ct = Some(est::CT_PKCS10);
    let cases = vec![
        Case {
            name: "malformed base64",
            op: "simpleenroll",
            content_type: ct,
            body: b"@@@not base64@@@".to_vec(),
            auth: basic("SN-1", &token),
            status: 400,
            reason: "malformed base64",
            audited: true,
        },
        Case {
            name: "malformed DER",
            op: "simpleenroll",
            content_type: ct,
            body: b64(b"\x30\x05hello"),
            auth: basic("SN-1", &token),
            status: 400,
            reason: "malformed PKCS#10",
            audited: true,
        },
        Case {
            name: "bad CSR signature",
            op: "simpleenroll",
            content_type: ct,
            body: b64(&forged),
            auth: basic("SN-1", &token),
            status: 400,
            reason: "signature does not verify",
            audited: true,
        },
        Case {
            name: "forbidden key type",
            op: "simpleenroll",
            content_type: ct,
            body: b64(&rsa),
            auth: basic("SN-1", &token),
            status: 400,
            reason: "key type rsa-2048 is not allowed",
            audited: true,
        },
        Case {
            name: "subject serial differs",
            op: "simpleenroll",
            content_type: ct,
            body: b64(&device_csr("SN-9", &key)),
            auth: basic("SN-1", &token),
            status: 403,
            reason: "names serialNumber=SN-9, but the token is for serial SN-1",
            audited: true,
        },
        Case {
            name: "no credentials",
            op: "simpleenroll",
            content_type: ct,
            body: b64(&good),
            auth: None,
            status: 401,
            reason: "one-time token",
            audited: true,
        },
        Case {
            name: "unknown token",
            op: "simpleenroll",
            content_type: ct,
            body: b64(&good),
            auth: basic("SN-1", "nope"),
            status: 401,
            reason: "unknown enrollment token",
            audited: true,
        },
        Case {
            name: "token of another serial",
            op: "simpleenroll",
            content_type: ct,
            body: b64(&good),
            auth: basic("SN-1", &other_token),
            status: 401,
            reason: "another device serial",
            audited: true,
        },
        Case {
            name: "bad serial in Basic user",
            op: "simpleenroll",
            content_type: ct,
            body: b64(&good),
            auth: basic("SN_1", &token),
            status: 401,
            reason: "device serial",
            audited: true,
        },
        Case {
            name: "malformed Authorization",
            op: "simpleenroll",
            content_type: ct,
            body: b64(&good),
            auth: Some("Basic !!!".into()),
            status: 401,
            reason: "malformed Authorization",
            audited: false,
        },
        Case {
            name: "bearer scheme",
            op: "simpleenroll",
            content_type: ct,
            body: b64(&good),
            auth: Some("Bearer x".into()),
            status: 401,
            reason: "use Basic",
            audited: false,
        },
        Case {
            name: "wrong content type",
            op: "simpleenroll",
            content_type: Some("text/plain"),
            body: b64(&good),
            auth: basic("SN-1", &token),
            status: 415,
            reason: "application/pkcs10",
            audited: false,
        },
        Case {
            name: "reenroll without certificate",
            op: "simplereenroll",
            content_type: ct,
            body: b64(&good),
            auth: basic("SN-1", &token),
            status: 401,
            reason: "current certificate",
            audited: true,
        },
    ];
    check(&ca, &client, cases, &hashes).await;

    // Too large: refused before it is read. The server answers 413 and closes without
    // reading the rest, so the client may see the reset before the answer; either way
    // nothing is stored. (The 413 itself is asserted without a socket in the server's tests.)
    let certs = ca.cert_count();
    match client.raw("POST", "simpleenroll", ct, vec![b'A'; 200_000], basic("SN-1", &token)).await {
        Ok((status, _)) => assert_eq!(status, 413),
        Err(e) => assert!(e.to_string().contains("127.0.0.1"), "{e}"),
    }
    assert_eq!(ca.cert_count(), certs);

    // Expired token: the clock moves past its lifetime.
    ca.clock.advance(61);
    let k3 = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let cases = vec![Case {
        name: "expired token",
        op: "simpleenroll",
        content_type: ct,
        body: b64(&device_csr("SN-3", &k3)),
        auth: basic("SN-3", &short_token),
        status: 401,
        reason: "expired",
        audited: true,
    }];
    check(&ca, &client, cases, &hashes).await;

    // The good request still works after all that.
    let (status, first) = client.raw("POST", "simpleenroll", ct, b64(&good), basic("SN-1", &token)).await.unwrap();
    assert_eq!(status, 200, "{first}");
    let certs = ca.cert_count();
    // The same token and the same key again (a client whose answer was lost): the same
    // certificate, nothing new issued, and the retry is in the audit log.
    let (status, again) = client.raw("POST", "simpleenroll", ct, b64(&good), basic("SN-1", &token)).await.unwrap();
    assert_eq!(status, 200, "{again}");
    assert_eq!(est::decode_body(again.as_bytes()).unwrap(), est::decode_body(first.as_bytes()).unwrap());
    assert_eq!(ca.cert_count(), certs);
    assert_eq!(ca.last_audit().event.action, "enroll.replay");
    // The same token with another key: refused.
    let other_key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let cases = vec![Case {
        name: "reused token, other key",
        op: "simpleenroll",
        content_type: ct,
        body: b64(&device_csr("SN-1", &other_key)),
        auth: basic("SN-1", &token),
        status: 401,
        reason: "already used",
        audited: true,
    }];
    check(&ca, &client, cases, &hashes[1..]).await;
    assert_eq!(ca.cert_count(), certs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reenrollments_are_refused_and_change_nothing() {
    let ca = Ca::start().await;
    let other = Ca::start().await;
    let anchor = pem::decode_one("CERTIFICATE", &ca.root_pem).unwrap();
    let dev = ca.enrolled_device("RE-1").await;
    let stranger = other.enrolled_device("RE-1").await;

    let identity = |state: &std::path::Path| {
        let id = iotpki_agent::state::load(state).unwrap();
        let key: Arc<dyn Signer> = Arc::new(iotpki_agent::state::load_key(state, &id).unwrap());
        let mut chain = vec![pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap()];
        chain.extend(pem::decode_all("CERTIFICATE", &id.chain_pem).unwrap());
        ClientIdentity { chain, key }
    };
    let ours = EstClient::new(&ca.url, None, std::slice::from_ref(&anchor), Some(identity(&dev))).unwrap();
    let theirs = EstClient::new(&ca.url, None, std::slice::from_ref(&anchor), Some(identity(&stranger))).unwrap();
    let birth = EstClient::new(&ca.url, Some("birth"), std::slice::from_ref(&anchor), Some(identity(&dev))).unwrap();
    let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let current = pem::decode_one("CERTIFICATE", &iotpki_agent::state::load(&dev).unwrap().cert_pem).unwrap();
    let subject = iotpki_core::profile::cert_info(&current).unwrap().cert.tbs_certificate.subject;
    let same = csr::build(&subject, &key, vec![]).unwrap();
    let ct = Some(est::CT_PKCS10);

    let cases = vec![
        Case {
            name: "subject differs",
            op: "simplereenroll",
            content_type: ct,
            body: b64(&device_csr("RE-2", &key)),
            auth: None,
            status: 403,
            reason: "but the current certificate is for serial",
            audited: true,
        },
        Case {
            name: "bad signature",
            op: "simplereenroll",
            content_type: ct,
            body: {
                let mut b = same.clone();
                let n = b.len();
                b[n - 2] ^= 1;
                b64(&b)
            },
            auth: None,
            status: 400,
            reason: "signature does not verify",
            audited: true,
        },
    ];
    check(&ca, &ours, cases, &[]).await;
    let cases = vec![Case {
        name: "unknown CA",
        op: "simplereenroll",
        content_type: ct,
        body: b64(&same),
        auth: None,
        status: 403,
        reason: "not issued by this authority",
        audited: true,
    }];
    check(&ca, &theirs, cases, &[]).await;
    let cases = vec![Case {
        name: "other label's CA (the birth CA)",
        op: "simplereenroll",
        content_type: ct,
        body: b64(&same),
        auth: None,
        status: 403,
        reason: "nothing renews into one",
        audited: true,
    }];
    check(&ca, &birth, cases, &[]).await;

    // The real renewal goes through, then the certificate expires (the authority's clock moves).
    iotpki_agent::renew(&dev, None, None).await.unwrap();
    let fresh = EstClient::new(&ca.url, None, std::slice::from_ref(&anchor), Some(identity(&dev))).unwrap();
    ca.clock.advance(91 * 86_400);
    let cases = vec![Case {
        name: "expired certificate",
        op: "simplereenroll",
        content_type: ct,
        body: b64(&same),
        auth: None,
        status: 403,
        reason: "expired",
        audited: true,
    }];
    check(&ca, &fresh, cases, &[]).await;
}
