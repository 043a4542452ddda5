//! The agent's own OCSP client and the trust bundle's `servers` list, against
//! the real server (issue 12, item 9): the device learns from the responder its
//! certificate names that it is good, then revoked, and `agent run` acts on it;
//! a replayed or altered answer, passed through a hostile proxy, is refused; and
//! a bundle that names servers keeps the device from talking to any other.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use iotpki_authority::revocation::{self, Target};
use iotpki_core::keys::{KeyType, SoftKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{bin, born_devices, bundle_naming, run_fail, run_ok, Ca};

fn ocsp(dev: &Path, url: Option<&str>) -> std::process::Command {
    let mut c = bin();
    c.args(["agent", "ocsp", "--state"]).arg(dev);
    if let Some(u) = url {
        c.args(["--url", u]);
    }
    c
}

fn serial_of(dev: &Path) -> String {
    iotpki_agent::status(dev).unwrap().cert_serial
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_learns_from_the_real_responder_that_its_certificate_is_good_then_revoked() {
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("OC-1").await;
    let d = dev.clone();
    let out = blocking(move || run_ok(&mut ocsp(&d, None))).await;
    assert!(out.contains(&format!("certificate {} is good", serial_of(&dev))), "{out}");
    assert!(out.contains(&format!("{}/ocsp", ca.http_url)) && out.contains("OCSP responder"), "{out}");

    revocation::revoke(ca.authority.store().as_ref(), ca.clock.as_ref(), Target::Serial(&serial_of(&dev)), 1, "test")
        .unwrap();
    let before = std::fs::read(dev.join("identity.json")).unwrap();
    let certs = ca.cert_count();
    let d = dev.clone();
    let (err, run_err) = blocking(move || {
        let err = run_fail(&mut ocsp(&d, None));
        // `agent run`: a token-enrolled device has nothing to come back with: it says so and stops.
        let run_err = run_fail(bin().args(["agent", "run", "--once", "--state"]).arg(&d));
        (err, run_err)
    })
    .await;
    assert!(err.contains("is REVOKED") && err.contains("keyCompromise"), "{err}");
    assert!(run_err.contains("REVOKED") && run_err.contains("must be enrolled anew"), "{run_err}");
    assert_eq!(std::fs::read(dev.join("identity.json")).unwrap(), before, "nothing changed on the device");
    assert_eq!(ca.cert_count(), certs, "nothing issued");
}

/// A device with a birth certificate whose operational certificate is revoked:
/// `agent run` learns it from OCSP and commissions again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_run_recommissions_when_ocsp_says_its_operational_certificate_is_revoked() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let devs = born_devices(&mfg, "OCB", &["OC-2".to_string()]).await;
    let dev = devs[0].clone();
    crate::commission::trust(&op, &mfg);
    crate::commission::claim(&op, &mfg, &["OC-2"]);
    iotpki_agent::flow::commission(&dev, Some(&op.url), Some(&op.root_pem), None).await.unwrap();
    let first = serial_of(&dev);
    revocation::revoke(op.authority.store().as_ref(), op.clock.as_ref(), Target::Serial(&first), 4, "test").unwrap();
    let d = dev.clone();
    let out = blocking(move || {
        let o = bin().args(["agent", "run", "--once", "--state"]).arg(&d).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    })
    .await;
    assert!(out.contains(&format!("certificate {first} is REVOKED")) && out.contains("superseded"), "{out}");
    assert!(out.contains("commissioned OC-2"), "{out}");
    assert_ne!(serial_of(&dev), first);
    assert_eq!(op.last_audit().event.action, "commission");
}

/// A proxy between the device and the real responder that answers with
/// `mangle(this answer, the first answer it ever relayed)`.
async fn hostile_proxy(upstream: String, mangle: fn(Vec<u8>, &[u8]) -> Vec<u8>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ocsp", l.local_addr().unwrap());
    let first: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let (upstream, first) = (upstream.clone(), first.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break buf[end + 4..end + 4 + len].to_vec();
                        }
                    }
                    assert!(n > 0, "the device hung up");
                };
                let (_, real) = iotpki_agent::trust::exchange(
                    "POST",
                    &upstream,
                    Some("application/ocsp-request"),
                    body,
                    &[],
                    65536,
                )
                .await
                .unwrap();
                let recorded = first.lock().unwrap().get_or_insert_with(|| real.clone()).clone();
                let answer = mangle(real, &recorded);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/ocsp-response\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    answer.len()
                );
                s.write_all(head.as_bytes()).await.unwrap();
                s.write_all(&answer).await.unwrap();
            });
        }
    });
    url
}

/// Record the device's "good" answer, revoke the certificate, then replay the
/// recorded answer (valid signature, right certificate, fresh times): refused
/// for its nonce. An answer with one octet of its signature changed: refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_or_tampered_ocsp_answer_is_refused() {
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("OC-3").await;
    let upstream = format!("{}/ocsp", ca.http_url);
    let replay = hostile_proxy(upstream.clone(), |_, first| first.to_vec()).await;
    // One digit of producedAt (inside the signed ResponseData) changed: still well formed.
    let tamper = hostile_proxy(upstream.clone(), |mut a, _| {
        let at = a.windows(2).position(|w| w == [0x18, 0x0f]).unwrap();
        a[at + 2 + 13] ^= 0x01;
        a
    })
    .await;
    // The OCSP signer's certificate in the answer altered: no longer the issuer's.
    let forged_signer = hostile_proxy(upstream, |mut a, _| {
        let n = a.len();
        a[n - 10] ^= 0x01;
        a
    })
    .await;
    let d = dev.clone();
    let r = replay.clone();
    // The first answer through the replaying proxy is the real one: good.
    let out = blocking(move || run_ok(&mut ocsp(&d, Some(&r)))).await;
    assert!(out.contains("is good"), "{out}");
    revocation::revoke(ca.authority.store().as_ref(), ca.clock.as_ref(), Target::Serial(&serial_of(&dev)), 1, "test")
        .unwrap();
    let before = std::fs::read(dev.join("identity.json")).unwrap();
    let d = dev.clone();
    let (replayed, tampered, forged, direct) = blocking(move || {
        (
            run_fail(&mut ocsp(&d, Some(&replay))),
            run_fail(&mut ocsp(&d, Some(&tamper))),
            run_fail(&mut ocsp(&d, Some(&forged_signer))),
            run_fail(&mut ocsp(&d, None)),
        )
    })
    .await;
    assert!(forged.contains("refused") && forged.contains("not certified by the issuer"), "{forged}");
    assert!(replayed.contains("refused") && replayed.contains("nonce"), "{replayed}");
    assert!(!replayed.contains("is good"), "{replayed}");
    assert!(tampered.contains("refused") && tampered.contains("signature"), "{tampered}");
    assert!(direct.contains("REVOKED"), "the real answer: {direct}");
    assert_eq!(std::fs::read(dev.join("identity.json")).unwrap(), before);
}

/// docs/trust-bundle.md: the bundle's `servers` are the names the device may
/// talk to. With a bundle naming only est.example.com installed, renewal with
/// the real server (127.0.0.1) is refused before any connection: nothing issued,
/// nothing changed. A bundle naming 127.0.0.1 lets it renew again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_talks_only_to_the_servers_its_trust_bundle_names() {
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("SV-1").await;
    let keys: Vec<SoftKey> = (0..2).map(|_| SoftKey::generate(KeyType::EcdsaP256).unwrap()).collect();
    let t: PathBuf = ca.tmp.path().to_path_buf();
    std::fs::write(t.join("b1.cbor"), bundle_naming(&ca, &keys, 1, &["est.example.com"])).unwrap();
    std::fs::write(t.join("b2.cbor"), bundle_naming(&ca, &keys, 2, &["est.example.com", "127.0.0.1"])).unwrap();
    let certs = ca.cert_count();
    let audit = ca.audit_len();
    let d = dev.clone();
    let t2 = t.clone();
    let (err, before) = blocking(move || {
        run_ok(bin().args(["agent", "apply", "--initial", "--state"]).arg(&d).arg(t2.join("b1.cbor")));
        let before = std::fs::read(d.join("identity.json")).unwrap();
        (run_fail(bin().args(["agent", "renew", "--state"]).arg(&d)), before)
    })
    .await;
    assert!(err.contains("lets this device talk only to est.example.com, not to 127.0.0.1"), "{err}");
    assert_eq!(std::fs::read(dev.join("identity.json")).unwrap(), before);
    assert_eq!((ca.cert_count(), ca.audit_len()), (certs, audit), "the server never heard of it");
    let d = dev.clone();
    blocking(move || {
        run_ok(bin().args(["agent", "apply", "--state"]).arg(&d).arg(t.join("b2.cbor")));
        run_ok(bin().args(["agent", "renew", "--state"]).arg(&d));
    })
    .await;
    assert_eq!(ca.cert_count(), certs + 1);
}

/// The device's good certificates other than its birth certificate, at `ca`.
fn good_operational(ca: &Ca, device: &str) -> Vec<String> {
    let q = iotpki_store::CertQuery { device_serial: Some(device.into()), ..Default::default() };
    let certs = ca.authority.store().list_certificates(&q).unwrap();
    certs
        .into_iter()
        .filter(|c| {
            c.status == iotpki_store::CertStatus::Good && c.profile != "birth" && !c.ca.contains("manufacturing")
        })
        .map(|c| c.serial)
        .collect()
}

/// A renewal whose answer the device lost (the power gone after the server
/// recorded it, before the new identity was saved): OCSP then says the
/// device's certificate is superseded. `agent run` renews at once with the key
/// it kept and gets the recorded certificate again (`reenroll.replay`), for a
/// device enrolled by token (which used to stop: "must be enrolled anew") and
/// for a commissioned one (which used to commission a second identity, leaving
/// the renewed certificate good and its key deleted): one good certificate
/// each, the one the renewal recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_run_gets_a_renewal_whose_answer_was_lost_again_when_ocsp_says_superseded() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let token_dev = op.enrolled_device("OS-1").await;
    let devs = born_devices(&mfg, "OSB", &["OS-2".to_string()]).await;
    crate::commission::trust(&op, &mfg);
    crate::commission::claim(&op, &mfg, &["OS-2"]);
    iotpki_agent::flow::commission(&devs[0], Some(&op.url), Some(&op.root_pem), None).await.unwrap();
    for (dev, serial) in [(token_dev, "OS-1"), (devs[0].clone(), "OS-2")] {
        let old = serial_of(&dev);
        let d = dev.clone();
        blocking(move || {
            let o = bin()
                .args(["agent", "renew", "--state"])
                .arg(&d)
                .env("IOTPKI_CRASH_AT", "state.tmp-written")
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&o.stderr).contains("crash point"),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
        })
        .await;
        assert_eq!(serial_of(&dev), old, "the old identity is in place");
        let renewed = good_operational(&op, serial);
        assert_eq!(renewed.len(), 1, "{renewed:?}");
        assert_ne!(renewed[0], old, "the server recorded the renewal");
        let d = dev.clone();
        let out = blocking(move || {
            let o = bin().args(["agent", "run", "--once", "--state"]).arg(&d).output().unwrap();
            let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            assert!(o.status.success(), "{out}");
            out
        })
        .await;
        assert!(out.contains("superseded") && out.contains(&format!("renewed {serial}")), "{out}");
        assert_eq!(serial_of(&dev), renewed[0], "the certificate the renewal recorded");
        assert_eq!(good_operational(&op, serial), renewed, "no second identity");
        assert_eq!(op.last_audit().event.action, "reenroll.replay");
    }
}

/// A copy of a token-enrolled device's state taken before it renewed (a
/// clone, or a backup restored) holds the old key only: OCSP says its
/// certificate is superseded, `agent run` asks for the renewal with a new key,
/// is refused (the successor is the other key's), and stops as revoked ("must
/// be enrolled anew") rather than retrying forever; nothing is issued for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_run_stops_when_its_certificate_was_superseded_by_another_key() {
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("OS-3").await;
    let clone = ca.tmp.path().join("os-3-clone");
    crate::factory::copy_dir(&dev, &clone);
    iotpki_agent::renew(&dev, None, None).await.unwrap();
    let device_certs = || {
        let q = iotpki_store::CertQuery { device_serial: Some("OS-3".into()), ..Default::default() };
        ca.authority.store().list_certificates(&q).unwrap().len()
    };
    let certs = device_certs();
    let c = clone.clone();
    let out = blocking(move || run_fail(bin().args(["agent", "run", "--once", "--state"]).arg(&c))).await;
    assert!(out.contains("superseded") && out.contains("must be enrolled anew"), "{out}");
    assert_eq!(device_certs(), certs, "nothing issued for the device");
    assert_eq!(serial_of(&dev), good_operational(&ca, "OS-3")[0], "the renewed device keeps its certificate");
}
