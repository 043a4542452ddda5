//! Trust bundles published by the authority and applied by devices, and
//! devices handed from owner to owner with vouchers, end to end.

use std::path::{Path, PathBuf};
use std::process::Command;

use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::pem;

use crate::util::{bin, born_devices, run_fail, run_ok, Ca, PASS};

/// Three bundle signer keys (plain PKCS#8) and their public keys, in `dir`.
fn signer_keys(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).unwrap();
    (0..3)
        .map(|i| {
            let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
            let (key, public) = (dir.join(format!("s{i}.pem")), dir.join(format!("s{i}.pub")));
            std::fs::write(&key, pem::encode("PRIVATE KEY", &k.to_pkcs8().unwrap())).unwrap();
            std::fs::write(&public, pem::encode("PUBLIC KEY", k.public_key_der())).unwrap();
            (key, public)
        })
        .collect()
}

/// A bundle of `version` trusting the CA's root, signed by the keys `by`.
fn bundle(ca: &Ca, keys: &[(PathBuf, PathBuf)], version: u64, by: &[usize]) -> PathBuf {
    let out =
        ca.tmp.path().join(format!("bundle-{version}-{}.cbor", by.iter().map(|i| i.to_string()).collect::<String>()));
    let mut c = bin();
    c.args(["bundle", "create", "--version", &version.to_string(), "--threshold", "2", "--expires", "30d"])
        .args(["--server", "127.0.0.1", "--anchor"])
        .arg(ca.root_file())
        .arg("--out")
        .arg(&out);
    for (_, public) in keys {
        c.arg("--signer").arg(public);
    }
    run_ok(&mut c);
    for i in by {
        run_ok(bin().args(["bundle", "sign"]).arg(&out).arg("--key").arg(&keys[*i].0));
    }
    out
}

fn apply(state: &Path, file: &Path, initial: bool) -> Command {
    let mut c = bin();
    c.args(["agent", "apply", "--state"]).arg(state).arg(file);
    if initial {
        c.arg("--initial");
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_are_published_only_when_devices_would_accept_them_and_devices_follow() {
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("BU-1").await;
    let keys = signer_keys(&ca.tmp.path().join("signers"));
    let (dir, http) = (ca.dir.clone(), ca.http_url.clone());
    let tmp = ca.tmp.path().to_path_buf();
    let b1 = bundle(&ca, &keys, 1, &[0, 1]);
    let b2 = bundle(&ca, &keys, 2, &[1, 2]);
    let b2_short = bundle(&ca, &keys, 2, &[2]);
    tokio::task::spawn_blocking(move || {
        let publish = |f: &Path| {
            let mut c = bin();
            c.args(["bundle", "publish", "--dir"]).arg(&dir).arg(f);
            c
        };
        // One signature of a threshold of two: the authority will not publish what devices refuse.
        let err = run_fail(&mut publish(&b2_short));
        assert!(err.contains("bundle refused") && err.contains("2 needed"), "{err}");
        let out = run_ok(&mut publish(&b1));
        assert!(out.contains("published bundle version 1"), "{out}");
        let err = run_fail(&mut publish(&b1));
        assert!(err.contains("version"), "publishing the same version again: {err}");

        // A device takes its first bundle only from the factory (--initial).
        let err = run_fail(&mut apply(&dev, &b1, false));
        assert!(err.contains("no trust bundle yet"), "{err}");
        assert!(!dev.join("bundle.cbor").exists());
        run_ok(&mut apply(&dev, &b1, true));

        // Version 2 published; the device fetches it from the plain-HTTP listener.
        run_ok(&mut publish(&b2));
        let out = run_ok(bin().args(["agent", "fetch", "--state"]).arg(&dev).args(["--from", &http]));
        assert!(out.contains("trust bundle version 2 installed"), "{out}");
        let installed = std::fs::read(dev.join("bundle.cbor")).unwrap();
        assert_eq!(installed, std::fs::read(&b2).unwrap());
        // Version 1 again: a rollback, refused, nothing changes.
        let err = run_fail(&mut apply(&dev, &b1, false));
        assert!(err.contains("trust bundle refused") && err.to_lowercase().contains("rollback"), "{err}");
        // A damaged signature: refused.
        let mut bad = std::fs::read(&b2).unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        let badf = tmp.join("bad.cbor");
        std::fs::write(&badf, &bad).unwrap();
        let err = run_fail(&mut apply(&dev, &badf, false));
        assert!(err.contains("trust bundle refused"), "{err}");
        assert_eq!(std::fs::read(dev.join("bundle.cbor")).unwrap(), installed, "refusals change nothing");
    })
    .await
    .unwrap();
    // Served at the well-known path too.
    let c = iotpki_agent::est_client::EstClient::new(&ca.url, None, &[ca.authority.root_der().to_vec()], None).unwrap();
    let (status, body) = c.get("/.well-known/iotpki/bundle").await.unwrap();
    assert_eq!((status, body.to_vec()), (200, std::fs::read(ca.tmp.path().join("bundle-2-12.cbor")).unwrap()));
}

fn root_key_env(c: &mut Command) -> &mut Command {
    c.env("IOTPKI_PASSPHRASE", PASS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_changes_owners_with_vouchers_and_only_the_named_owner_gets_it() {
    let mfg = Ca::start().await;
    let op1 = Ca::start().await;
    let op2 = Ca::start().await;
    let devs = born_devices(&mfg, "VB", &["VO-1".to_string(), "VO-2".to_string()]).await;
    let dev = devs[0].clone();
    let t = mfg.tmp.path().to_path_buf();
    for op in [&op1, &op2] {
        run_ok(bin().args(["trust", "add-manufacturer"]).arg("--dir").arg(&op.dir).arg(mfg.ca_file("manufacturing")));
    }
    let (mdir, o1dir, o2dir) = (mfg.dir.clone(), op1.dir.clone(), op2.dir.clone());
    let (o1root, o2root) = (op1.root_file(), op2.root_file());
    let (v1, v2) = (t.join("v1.cbor"), t.join("v2.cbor"));
    {
        let (v1, o1root, mdir, o1dir, dev) = (v1.clone(), o1root.clone(), mdir.clone(), o1dir.clone(), dev.clone());
        tokio::task::spawn_blocking(move || {
            // The manufacturer hands VO-1 to operator 1.
            let out = run_ok(
                root_key_env(bin().args(["voucher", "issue", "--device", "VO-1", "--dir"]).arg(&mdir))
                    .arg("--to")
                    .arg(&o1root)
                    .arg("--out")
                    .arg(&v1),
            );
            assert!(out.contains("1 entries"), "{out}");
            let out =
                run_ok(root_key_env(bin().args(["device", "claim", "--dir"]).arg(&o1dir)).arg("--voucher").arg(&v1));
            assert!(out.contains("claimed VO-1 by voucher"), "{out}");
            let out = run_ok(&mut apply(&dev, &v1, false));
            assert!(out.contains("ownership voucher installed (1 entries)"), "{out}");
        })
        .await
        .unwrap();
    }
    // Only the owner the voucher names: operator 2 is refused by the device itself.
    let err = iotpki_agent::flow::commission(&dev, Some(&op2.url), Some(&op2.root_pem), None).await.unwrap_err();
    assert!(err.to_string().contains("ownership voucher hands this device to key"), "{err}");
    iotpki_agent::flow::commission(&dev, Some(&op1.url), Some(&op1.root_pem), None).await.unwrap();
    assert_eq!(op1.last_audit().event.action, "commission");

    // Operator 1 hands it on to operator 2: its operational certificate is revoked at once.
    {
        let (v1, v2, o1dir, o2dir, o2root, dev) =
            (v1.clone(), v2.clone(), o1dir.clone(), o2dir.clone(), o2root.clone(), dev.clone());
        tokio::task::spawn_blocking(move || {
            let out = run_ok(
                root_key_env(bin().args(["voucher", "issue", "--device", "VO-1", "--dir"]).arg(&o1dir))
                    .arg("--to")
                    .arg(&o2root)
                    .arg("--out")
                    .arg(&v2),
            );
            assert!(out.contains("2 entries") && out.contains("1 operational certificate(s) revoked"), "{out}");
            // Operator 1 cannot hand it on twice: the published voucher now names operator 2.
            let again = t.join("v2-again.cbor");
            let err = run_fail(
                root_key_env(bin().args(["voucher", "issue", "--device", "VO-1", "--dir"]).arg(&o1dir))
                    .arg("--to")
                    .arg(t.join("nowhere.pem"))
                    .arg("--out")
                    .arg(&again),
            );
            assert!(!again.exists(), "{err}");
            run_ok(root_key_env(bin().args(["device", "claim", "--dir"]).arg(&o2dir)).arg("--voucher").arg(&v2));
            run_ok(&mut apply(&dev, &v2, false));
            // The older voucher is a rollback now.
            let err = run_fail(&mut apply(&dev, &v1, false));
            assert!(err.contains("rollback"), "{err}");
        })
        .await
        .unwrap();
    }
    let err = iotpki_agent::renew(&dev, None, None).await.unwrap_err();
    assert!(err.to_string().contains("revoked"), "operator 1's certificate no longer renews: {err}");
    iotpki_agent::flow::commission(&dev, Some(&op2.url), Some(&op2.root_pem), None).await.unwrap();
    assert_eq!(op2.last_audit().event.action, "commission");
    // Operator 1's authority no longer owns it.
    let o = op1.authority.store().ownership("VO-1").unwrap().unwrap();
    assert_eq!(o.status, iotpki_store::OwnershipStatus::Transferred);

    // A voucher for VO-1 used by VO-2 (wrong device) and one forged by a stranger: refused on both sides.
    let other = devs[1].clone();
    let certs = op2.cert_count();
    let (v2c, o2dir2) = (v2.clone(), o2dir.clone());
    tokio::task::spawn_blocking(move || {
        let err = run_fail(&mut apply(&other, &v2c, false));
        assert!(err.contains("ownership voucher refused") && err.contains("device"), "{err}");
        let stranger = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let birth = iotpki_agent::state::load(&other).unwrap().birth.unwrap();
        let birth_der = pem::decode_one("CERTIFICATE", &birth.cert_pem).unwrap();
        let now = iotpki_authority::Clock::now(&iotpki_authority::SystemClock);
        let o2spki = {
            let der = pem::decode_one("CERTIFICATE", &std::fs::read_to_string(&o2root).unwrap()).unwrap();
            iotpki_authority::trust::spki_of(&der).unwrap()
        };
        let sn = iotpki_core::name::DeviceSerial::parse("VO-2").unwrap();
        let forged =
            iotpki_core::voucher::Voucher::first(&stranger, &sn, &birth_der, &o2spki, now, now + 3600).unwrap();
        let ff = other.join("..").join("forged.cbor");
        std::fs::write(&ff, forged.encode()).unwrap();
        let err = run_fail(&mut apply(&other, &ff, false));
        assert!(err.contains("ownership voucher refused"), "{err}");
        assert!(!other.join("voucher.cbor").exists());
        let err =
            run_fail(root_key_env(bin().args(["device", "claim", "--dir"]).arg(&o2dir2)).arg("--voucher").arg(&ff));
        assert!(err.contains("not signed by a trusted manufacturer"), "{err}");
    })
    .await
    .unwrap();
    assert_eq!(op2.cert_count(), certs);
}
