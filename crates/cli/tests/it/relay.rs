//! The offline relay: it keeps what devices fetch and serves it when the
//! upstream is gone; a relay that serves something tampered, rolled back,
//! forged or stale is caught by the device, whose state does not change.

use std::path::Path;

use iotpki_agent::trust::{self, Applied};
use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::pem;
use iotpki_station::relay::Relay;

use crate::util::{born_devices, signed_bundle as bundle, Ca};

/// Start a relay on loopback; returns its URL.
async fn start(relay: Relay) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(iotpki_station::relay::serve(relay, l, std::time::Duration::from_secs(3600), std::future::pending()));
    url
}

/// Every file of the device's state, by name, to show that refusals change nothing.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().to_string(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

fn results(r: &[(String, Result<Applied, iotpki_agent::AgentError>)], what: &str) -> Vec<String> {
    r.iter()
        .filter(|(p, _)| p.contains(what))
        .map(|(_, x)| match x {
            Ok(a) => format!("{a:?}"),
            Err(e) => format!("REFUSED {e}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_behind_a_relay_get_updates_and_refuse_what_a_hostile_relay_serves() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    // A CRL that is stale by now: made with the authority's clock two days back.
    mfg.clock.advance(-2 * 86_400);
    let stale_crl = mfg.authority.crl("manufacturing").unwrap();
    mfg.clock.advance(2 * 86_400);

    let dev = born_devices(&mfg, "RLB", &["RL-1".to_string()]).await.remove(0);
    let keys: Vec<SoftKey> = (0..3).map(|_| SoftKey::generate(KeyType::EcdsaP256).unwrap()).collect();
    let (b1, b2) = (bundle(&mfg, &keys, 1), bundle(&mfg, &keys, 2));
    assert!(matches!(trust::apply(&dev, &b1, true).unwrap(), Applied::Bundle { version: 1 }));
    let store = mfg.authority.store().clone();
    iotpki_authority::trust::publish_bundle(store.as_ref(), mfg.clock.as_ref(), &b1, "test").unwrap();
    iotpki_authority::trust::publish_bundle(store.as_ref(), mfg.clock.as_ref(), &b2, "test").unwrap();
    let op_spki = iotpki_authority::trust::spki_of(op.authority.root_der()).unwrap();
    let sn = iotpki_core::name::DeviceSerial::parse("RL-1").unwrap();
    let now = iotpki_authority::Clock::now(mfg.clock.as_ref());
    let voucher = mfg.authority.issue_voucher(&sn, &op_spki, now + 86_400, None, "test").unwrap().bytes;

    // Online: the relay fetches from the manufacturer's plain-HTTP listener and keeps copies.
    let cache = mfg.tmp.path().join("relay-cache");
    let relay = Relay { upstream: mfg.http_url.clone(), anchors: vec![], cache: cache.clone() };
    let url = start(relay.clone()).await;
    let r = trust::fetch_and_apply(&dev, &url).await.unwrap();
    assert_eq!(results(&r, "bundle"), vec!["Bundle { version: 2 }"], "{r:?}");
    assert!(results(&r, "voucher")[0].starts_with("Voucher { entries: 1"), "{r:?}");
    assert!(results(&r, "manufacturing.crl")[0].starts_with("Crl {"), "{r:?}");

    // Offline: a relay whose upstream is gone serves its copies; nothing new, nothing refused.
    let dead = Relay { upstream: "http://127.0.0.1:9".into(), anchors: vec![], cache: cache.clone() };
    let offline = start(dead.clone()).await;
    let r = trust::fetch_and_apply(&dev, &offline).await.unwrap();
    assert!(r.iter().all(|(_, x)| matches!(x, Ok(Applied::Unchanged(_)))), "{r:?}");
    let before = snapshot(&dev);

    // Hostile: the relay's copies are replaced. Each is refused and the device's state stays.
    let put = |path: &str, bytes: &[u8]| std::fs::write(dead.cache_file(path), bytes).unwrap();
    let mut tampered = b2.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    put("/.well-known/iotpki/bundle", &tampered);
    let r = trust::fetch_and_apply(&dev, &offline).await.unwrap();
    assert!(results(&r, "bundle")[0].contains("trust bundle refused"), "tampered: {r:?}");
    put("/.well-known/iotpki/bundle", &b1);
    let r = trust::fetch_and_apply(&dev, &offline).await.unwrap();
    assert!(results(&r, "bundle")[0].to_lowercase().contains("rollback"), "rolled back: {r:?}");

    let stranger = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    let birth = iotpki_agent::state::load(&dev).unwrap().birth.unwrap();
    let birth_der = pem::decode_one("CERTIFICATE", &birth.cert_pem).unwrap();
    let forged =
        iotpki_core::voucher::Voucher::first(&stranger, &sn, &birth_der, stranger.public_key_der(), now, now + 3600)
            .unwrap()
            .encode();
    put("/.well-known/iotpki/voucher/RL-1", &forged);
    let r = trust::fetch_and_apply(&dev, &offline).await.unwrap();
    assert!(results(&r, "voucher")[0].contains("ownership voucher refused"), "forged: {r:?}");

    put("/crl/manufacturing.crl", &stale_crl);
    let r = trust::fetch_and_apply(&dev, &offline).await.unwrap();
    assert!(results(&r, "manufacturing.crl")[0].contains("stale"), "stale: {r:?}");

    assert_eq!(snapshot(&dev), before, "no refusal changed the device's state");
    let _ = voucher;
}
