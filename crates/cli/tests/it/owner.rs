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
        // A database in the environment (for `--dir`) does not stand in the way of `--key`.
        let mut c = bin();
        c.env("IOTPKI_DATABASE", "postgres://nobody@127.0.0.1:9/none");
        run_ok(c.args(["bundle", "sign"]).arg(&out).arg("--key").arg(&keys[*i].0));
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
    // Operator 1's identity is not renewed: the device does not even ask it
    // (a past owner serving from a copy of its store from before the
    // hand-over, where that certificate is still good, gets nothing either).
    let asked = op1.audit_len();
    let err = iotpki_agent::renew(&dev, None, None).await.unwrap_err();
    assert!(err.to_string().contains("another owner"), "operator 1's certificate no longer renews: {err}");
    assert_eq!(op1.audit_len(), asked, "operator 1 was not asked");
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

fn voucher_issue(dir: &Path, device: &str, to: &Path, out: &Path) -> String {
    run_ok(
        root_key_env(bin().args(["voucher", "issue", "--device", device, "--dir"]).arg(dir))
            .arg("--to")
            .arg(to)
            .arg("--out")
            .arg(out),
    )
}

fn claim(dir: &Path, voucher: &Path) -> Command {
    let mut c = bin();
    root_key_env(c.args(["device", "claim", "--dir"]).arg(dir)).arg("--voucher").arg(voucher);
    c
}

/// Issue 12, item 1: M→A, A→B applied (the owner is B). From a saved copy of A's
/// directory, A→A2, then A2→A: a three-entry voucher that chains correctly from
/// the manufacturer back to A. The device refuses it (it does not extend the
/// installed voucher: entry 1 differs), `voucher verify --installed` refuses it,
/// A's authority refuses to record it, and nothing changes anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_owner_cannot_take_a_device_back_with_a_forked_voucher() {
    let mfg = Ca::start().await;
    let (a, b, a2) = (Ca::start().await, Ca::start().await, Ca::start().await);
    let devs = born_devices(&mfg, "FB", &["FK-1".to_string()]).await;
    let dev = devs[0].clone();
    let t = mfg.tmp.path().to_path_buf();
    for op in [&a, &b, &a2] {
        run_ok(bin().args(["trust", "add-manufacturer"]).arg("--dir").arg(&op.dir).arg(mfg.ca_file("manufacturing")));
    }
    let (mdir, adir, bdir, a2dir) = (mfg.dir.clone(), a.dir.clone(), b.dir.clone(), a2.dir.clone());
    let (aroot, broot, a2root) = (a.root_file(), b.root_file(), a2.root_file());
    let saved = a.tmp.path().join("saved-copy-of-a");
    let mfg_cert = mfg.ca_file("manufacturing");
    let birth = dev.join("birth.pem");
    let birth_pem = iotpki_agent::state::load(&dev).unwrap().birth.unwrap().cert_pem;
    std::fs::write(&birth, birth_pem).unwrap();
    let dev2 = dev.clone();
    tokio::task::spawn_blocking(move || {
        let v = |n: &str| t.join(n);
        // M→A, applied and claimed; A keeps a copy of its directory.
        voucher_issue(&mdir, "FK-1", &aroot, &v("m-a.cbor"));
        run_ok(&mut claim(&adir, &v("m-a.cbor")));
        run_ok(&mut apply(&dev, &v("m-a.cbor"), false));
        let cp = Command::new("cp").arg("-a").arg(&adir).arg(&saved).status().unwrap();
        assert!(cp.success());
        // A→B, applied and claimed: the owner is B.
        voucher_issue(&adir, "FK-1", &broot, &v("a-b.cbor"));
        run_ok(&mut claim(&bdir, &v("a-b.cbor")));
        let out = run_ok(&mut apply(&dev, &v("a-b.cbor"), false));
        assert!(out.contains("(2 entries)"), "{out}");
        // From the saved copy: A→A2, claimed by A2, then A2→A.
        let out = voucher_issue(&saved, "FK-1", &a2root, &v("a-a2.cbor"));
        assert!(out.contains("2 entries"), "{out}");
        run_ok(&mut claim(&a2dir, &v("a-a2.cbor")));
        let out = voucher_issue(&a2dir, "FK-1", &aroot, &v("fork.cbor"));
        assert!(out.contains("3 entries"), "{out}");

        let installed = std::fs::read(dev.join("voucher.cbor")).unwrap();
        let identity = std::fs::read(dev.join("identity.json")).unwrap();
        // The device refuses the fork, naming where it diverges; its state is unchanged.
        let err = run_fail(&mut apply(&dev, &v("fork.cbor"), false));
        assert!(err.contains("ownership voucher refused") && err.contains("entry 1 differs"), "{err}");
        assert_eq!(std::fs::read(dev.join("voucher.cbor")).unwrap(), installed);
        assert_eq!(std::fs::read(dev.join("identity.json")).unwrap(), identity);
        // The older voucher too (a rollback), and the fork's first half.
        for old in ["m-a.cbor", "a-a2.cbor"] {
            let err = run_fail(&mut apply(&dev, &v(old), false));
            assert!(err.contains("ownership voucher refused"), "{old}: {err}");
        }
        assert_eq!(std::fs::read(dev.join("voucher.cbor")).unwrap(), installed);

        // `voucher verify`: a chain from the manufacturer on its own; with --installed, refused.
        let verify = |file: &str, installed: Option<&Path>| {
            let mut c = bin();
            c.args(["voucher", "verify", "--serial", "FK-1", "--manufacturer"])
                .arg(&mfg_cert)
                .arg("--birth-cert")
                .arg(&birth)
                .arg(v(file));
            if let Some(i) = installed {
                c.arg("--installed").arg(i);
            }
            c
        };
        let held = dev.join("voucher.cbor");
        run_ok(&mut verify("fork.cbor", None));
        let err = run_fail(&mut verify("fork.cbor", Some(&held)));
        assert!(err.contains("does not extend the installed one") && err.contains("entry 1 differs"), "{err}");
        let err = run_fail(&mut verify("m-a.cbor", Some(&held)));
        assert!(err.contains("rollback"), "{err}");
        let out = run_ok(&mut verify("a-b.cbor", Some(&held)));
        assert!(out.contains("the installed voucher itself"), "{out}");
    })
    .await
    .unwrap();

    // A's own authority (which recorded A→B) will not record the fork either; nothing stored.
    let (audit, certs) = (a.audit_len(), a.cert_count());
    let held = a.authority.store().artifact("voucher/FK-1").unwrap().unwrap();
    let fork = mfg.tmp.path().join("fork.cbor");
    let adir = a.dir.clone();
    let err = tokio::task::spawn_blocking(move || run_fail(&mut claim(&adir, &fork))).await.unwrap();
    assert!(err.contains("voucher refused") && err.contains("entry 1 differs"), "{err}");
    assert_eq!(a.authority.store().artifact("voucher/FK-1").unwrap().unwrap(), held);
    let o = a.authority.store().ownership("FK-1").unwrap().unwrap();
    assert_eq!(o.status, iotpki_store::OwnershipStatus::Transferred);
    // The device cannot commission with A (its voucher names B), and A has issued nothing.
    let err = iotpki_agent::flow::commission(&dev2, Some(&a.url), Some(&a.root_pem), None).await.unwrap_err();
    assert!(err.to_string().contains("ownership voucher hands this device to key"), "{err}");
    assert_eq!((a.audit_len(), a.cert_count()), (audit, certs));
}

/// One key, twice: the same P-256 public key compressed by openssl (`-conv_form compressed`).
fn compressed_twin(public_pem: &Path) -> (PathBuf, Vec<u8>) {
    let out = public_pem.with_extension("compressed.pub");
    crate::util::openssl(&[
        "ec",
        "-pubin",
        "-in",
        public_pem.to_str().unwrap(),
        "-conv_form",
        "compressed",
        "-pubout",
        "-out",
        out.to_str().unwrap(),
    ]);
    let der = pem::decode_one("PUBLIC KEY", &std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(der.len(), 59, "a compressed P-256 SubjectPublicKeyInfo");
    (out, der)
}

/// An ECDSA-Sig-Value (DER) as COSE's r || s, each `n` octets.
fn ecdsa_fixed(der: &[u8], n: usize) -> Vec<u8> {
    assert_eq!(der[0], 0x30);
    let mut i = if der[1] & 0x80 != 0 { 2 + usize::from(der[1] & 0x7f) } else { 2 };
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[i], 0x02);
        let len = usize::from(der[i + 1]);
        let v = &der[i + 2..i + 2 + len];
        let v = &v[v.iter().take_while(|b| **b == 0).count()..];
        out.extend(std::iter::repeat_n(0u8, n - v.len()));
        out.extend_from_slice(v);
        i += 2 + len;
    }
    out
}

fn cose_es256(key: &SoftKey) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
    move |tbs| ecdsa_fixed(&key.sign(tbs).unwrap(), 32)
}

fn kid(spki: &[u8]) -> Vec<u8> {
    hex::decode(iotpki_core::keys::sha256_hex(spki)).unwrap()
}

/// A trust bundle built by hand (as an attacker would, past every check of
/// `bundle create`): `signers` named with threshold 2, one ES256 signature per
/// `(signature kid, signing key)`.
fn forged_bundle(anchor: &[u8], signers: &[Vec<u8>], sigs: &[(Vec<u8>, &SoftKey)]) -> Vec<u8> {
    use ciborium::Value;
    use coset::{iana, CoseSignBuilder, CoseSignatureBuilder, HeaderBuilder, TaggedCborSerializable};
    let now = iotpki_authority::Clock::now(&iotpki_authority::SystemClock);
    let int = |i: i64| Value::Integer(i.into());
    let payload = Value::Map(vec![
        (int(1), int(1)),
        (int(2), int(now - 60)),
        (int(3), int(now + 86_400)),
        (int(4), Value::Array(vec![Value::Bytes(anchor.to_vec())])),
        (int(5), Value::Array(vec![])),
        (int(6), int(2)),
        (int(7), Value::Array(signers.iter().cloned().map(Value::Bytes).collect())),
    ]);
    let mut p = Vec::new();
    ciborium::ser::into_writer(&payload, &mut p).unwrap();
    let body = HeaderBuilder::new().content_type("application/vnd.iotpki.trust-bundle+cbor".into()).build();
    let mut b = CoseSignBuilder::new().protected(body).payload(p);
    for (kid, key) in sigs {
        let h = HeaderBuilder::new().algorithm(iana::Algorithm::ES256).key_id(kid.clone()).build();
        b = b.add_created_signature(CoseSignatureBuilder::new().protected(h).build(), &[], cose_es256(key));
    }
    b.build().to_tagged_vec().unwrap()
}

/// Issue 12, item 6: one P-256 key presented twice, uncompressed and compressed,
/// does not count as two signers of a threshold of 2. `bundle create` refuses the
/// second encoding; a hand-built bundle signed by the one key under both key ids is
/// refused by the authority (`bundle publish`: nothing stored) and by a device at
/// the factory (`agent apply --initial`: nothing installed). The same forgery with
/// two distinct keys is accepted, so the refusal is the key rule and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_compressed_and_uncompressed_does_not_meet_a_bundle_threshold_of_two() {
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("CK-1").await;
    let keys = signer_keys(&ca.tmp.path().join("signers"));
    let k0 =
        SoftKey::from_pkcs8(&pem::decode_one("PRIVATE KEY", &std::fs::read_to_string(&keys[0].0).unwrap()).unwrap())
            .unwrap();
    let k1 =
        SoftKey::from_pkcs8(&pem::decode_one("PRIVATE KEY", &std::fs::read_to_string(&keys[1].0).unwrap()).unwrap())
            .unwrap();
    let (twin_file, twin) = compressed_twin(&keys[0].1);
    let root = ca.authority.root_der().to_vec();
    let one = k0.public_key_der().to_vec();
    let forged = forged_bundle(&root, &[one.clone(), twin.clone()], &[(kid(&one), &k0), (kid(&twin), &k0)]);
    let control = forged_bundle(
        &root,
        &[one.clone(), k1.public_key_der().to_vec()],
        &[(kid(&one), &k0), (kid(k1.public_key_der()), &k1)],
    );
    let t = ca.tmp.path().to_path_buf();
    let (dir, dev2, root_file) = (ca.dir.clone(), dev.clone(), ca.root_file());
    let audit = ca.audit_len();
    tokio::task::spawn_blocking(move || {
        // `bundle create` with the key and its twin.
        let out = t.join("twice.cbor");
        let err = run_fail(
            bin()
                .args(["bundle", "create", "--version", "1", "--threshold", "2", "--expires", "1d", "--anchor"])
                .arg(&root_file)
                .arg("--signer")
                .arg(&keys[0].1)
                .arg("--signer")
                .arg(&twin_file)
                .arg("--out")
                .arg(&out),
        );
        assert!(err.contains("compressed"), "{err}");
        assert!(!out.exists());
        let f = t.join("forged.cbor");
        std::fs::write(&f, &forged).unwrap();
        let err = run_fail(bin().args(["bundle", "verify"]).arg(&f));
        assert!(err.contains("compressed"), "{err}");
        let err = run_fail(bin().args(["bundle", "publish", "--dir"]).arg(&dir).arg(&f));
        assert!(err.contains("bundle refused") && err.contains("compressed"), "{err}");
        let err = run_fail(&mut apply(&dev2, &f, true));
        assert!(err.contains("trust bundle refused") && err.contains("compressed"), "{err}");
        assert!(!dev2.join("bundle.cbor").exists());
        // The control: two distinct keys, built the same way, pass.
        let c = t.join("control.cbor");
        std::fs::write(&c, &control).unwrap();
        let out = run_ok(&mut apply(&dev2, &c, true));
        assert!(out.contains("trust bundle version 1 installed"), "{out}");
    })
    .await
    .unwrap();
    assert!(ca.authority.store().artifact("bundle").unwrap().is_none(), "nothing published");
    assert_eq!(ca.audit_len(), audit);
}

/// Issue 12, item 6: a voucher naming an owner key in another encoding than the
/// canonical one (a compressed P-256 point) is refused: by `voucher issue`
/// (nothing published), and, hand-built and signed by the real manufacturing CA
/// key, by the device (`agent apply`: nothing installed), by `voucher verify`,
/// and by the owner's authority (`device claim`: nothing stored). The same
/// forgery naming the uncompressed key verifies, so the refusal is the key rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voucher_naming_a_compressed_owner_key_is_refused_everywhere() {
    use ciborium::Value;
    use coset::{iana, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let devs = born_devices(&mfg, "CV", &["CV-1".to_string()]).await;
    let dev = devs[0].clone();
    let t = mfg.tmp.path().to_path_buf();
    let op_pub = t.join("op.pub");
    std::fs::write(
        &op_pub,
        pem::encode("PUBLIC KEY", &iotpki_authority::trust::spki_of(op.authority.root_der()).unwrap()),
    )
    .unwrap();
    let (twin_file, twin) = compressed_twin(&op_pub);
    let maker = iotpki_authority::keyfile::read_encrypted(
        &mfg.dir.join("ca/manufacturing.key"),
        &iotpki_authority::Passphrase::new(PASS.into()).unwrap(),
    )
    .unwrap();
    let birth_pem = iotpki_agent::state::load(&dev).unwrap().birth.unwrap().cert_pem;
    let birth = t.join("birth.pem");
    std::fs::write(&birth, &birth_pem).unwrap();
    let birth_der = pem::decode_one("CERTIFICATE", &birth_pem).unwrap();
    let now = iotpki_authority::Clock::now(&iotpki_authority::SystemClock);
    let forge = |owner: &[u8]| {
        let int = |i: i64| Value::Integer(i.into());
        let payload = Value::Map(vec![
            (int(1), Value::Text("CV-1".into())),
            (int(2), Value::Bytes(kid(&birth_der))),
            (int(3), Value::Bytes(owner.to_vec())),
            (int(4), int(now - 60)),
            (int(5), int(now + 86_400)),
            (int(6), Value::Bytes(vec![0; 32])),
        ]);
        let mut p = Vec::new();
        ciborium::ser::into_writer(&payload, &mut p).unwrap();
        let h = HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES256)
            .content_type("application/vnd.iotpki.voucher-entry+cbor".into())
            .key_id(kid(maker.public_key_der()))
            .build();
        let entry = CoseSign1Builder::new().protected(h).payload(p).create_signature(&[], cose_es256(&maker)).build();
        let mut v = Vec::new();
        ciborium::ser::into_writer(&Value::Array(vec![Value::Bytes(entry.to_tagged_vec().unwrap())]), &mut v).unwrap();
        v
    };
    std::fs::write(t.join("forged.cbor"), forge(&twin)).unwrap();
    std::fs::write(
        t.join("control.cbor"),
        forge(&pem::decode_one("PUBLIC KEY", &std::fs::read_to_string(&op_pub).unwrap()).unwrap()),
    )
    .unwrap();
    run_ok(bin().args(["trust", "add-manufacturer"]).arg("--dir").arg(&op.dir).arg(mfg.ca_file("manufacturing")));
    let (mdir, odir, mfg_cert) = (mfg.dir.clone(), op.dir.clone(), mfg.ca_file("manufacturing"));
    let (m_audit, o_audit) = (mfg.audit_len(), op.audit_len());
    let dev2 = dev.clone();
    tokio::task::spawn_blocking(move || {
        let out = t.join("v.cbor");
        let err = run_fail(
            root_key_env(bin().args(["voucher", "issue", "--device", "CV-1", "--dir"]).arg(&mdir))
                .arg("--to")
                .arg(&twin_file)
                .arg("--out")
                .arg(&out),
        );
        assert!(err.contains("compressed"), "{err}");
        assert!(!out.exists());
        let verify = |f: &str| {
            let mut c = bin();
            c.args(["voucher", "verify", "--serial", "CV-1", "--manufacturer"])
                .arg(&mfg_cert)
                .arg("--birth-cert")
                .arg(&birth)
                .arg(t.join(f));
            c
        };
        let out = run_ok(&mut verify("control.cbor"));
        assert!(out.contains("voucher is valid: 1 entries"), "{out}");
        let err = run_fail(&mut verify("forged.cbor"));
        assert!(err.contains("compressed"), "{err}");
        let err = run_fail(&mut apply(&dev2, &t.join("forged.cbor"), false));
        assert!(err.contains("ownership voucher refused") && err.contains("compressed"), "{err}");
        assert!(!dev2.join("voucher.cbor").exists());
        let err = run_fail(&mut claim(&odir, &t.join("forged.cbor")));
        assert!(err.contains("voucher refused") && err.contains("compressed"), "{err}");
    })
    .await
    .unwrap();
    assert!(mfg.authority.store().artifact("voucher/CV-1").unwrap().is_none());
    assert!(op.authority.store().artifact("voucher/CV-1").unwrap().is_none());
    assert!(op.authority.store().ownership("CV-1").unwrap().is_none());
    assert_eq!((mfg.audit_len(), op.audit_len()), (m_audit, o_audit));
}

/// The voucher race left open by issue 12: A holds M→A. Two vouchers each
/// extend it differently (M→A→B→A and M→A→C→A→C→A, made from two saved
/// copies of A's directory; of different lengths, so the store's version rule
/// alone would let the longer follow the shorter). Eight threads claim them at A's authority at once: exactly
/// one is stored, every other claim is refused (403) as not extending the
/// voucher now held or as the held voucher having changed while it was
/// checked, and A's audit has one claim more: no fork is ever recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_owner_cannot_fork_the_held_voucher_with_two_racing_claims() {
    let mfg = Ca::start().await;
    let (a, b, c) = (Ca::start().await, Ca::start().await, Ca::start().await);
    born_devices(&mfg, "RB", &["VR-1".to_string()]).await;
    for op in [&a, &b, &c] {
        run_ok(bin().args(["trust", "add-manufacturer"]).arg("--dir").arg(&op.dir).arg(mfg.ca_file("manufacturing")));
    }
    let t = mfg.tmp.path().to_path_buf();
    let (mdir, adir, bdir, cdir) = (mfg.dir.clone(), a.dir.clone(), b.dir.clone(), c.dir.clone());
    let (aroot, broot, croot) = (a.root_file(), b.root_file(), c.root_file());
    let saved = |n: &str| a.tmp.path().join(n);
    let (s1, s2) = (saved("copy-1"), saved("copy-2"));
    let forks = tokio::task::spawn_blocking(move || {
        let v = |n: &str| t.join(n);
        voucher_issue(&mdir, "VR-1", &aroot, &v("m-a.cbor"));
        run_ok(&mut claim(&adir, &v("m-a.cbor")));
        let mut forks = Vec::new();
        for (copy, odir, oroot, name) in [(&s1, &bdir, &broot, "b"), (&s2, &cdir, &croot, "c")] {
            assert!(Command::new("cp").arg("-a").arg(&adir).arg(copy).status().unwrap().success());
            voucher_issue(copy, "VR-1", oroot, &v(&format!("a-{name}.cbor")));
            run_ok(&mut claim(odir, &v(&format!("a-{name}.cbor"))));
            let out = voucher_issue(odir, "VR-1", &aroot, &v(&format!("fork-{name}.cbor")));
            assert!(out.contains("3 entries"), "{out}");
            if name == "c" {
                // Longer, so the version rule alone would not refuse it after
                // the other: the copy takes it back and goes round once more.
                std::fs::rename(v("fork-c.cbor"), v("c-a.cbor")).unwrap();
                run_ok(&mut claim(copy, &v("c-a.cbor")));
                voucher_issue(copy, "VR-1", oroot, &v("a-c-2.cbor"));
                run_ok(&mut claim(odir, &v("a-c-2.cbor")));
                let out = voucher_issue(odir, "VR-1", &aroot, &v("fork-c.cbor"));
                assert!(out.contains("5 entries"), "{out}");
            }
            forks.push(std::fs::read(v(&format!("fork-{name}.cbor"))).unwrap());
        }
        forks
    })
    .await
    .unwrap();
    assert_ne!(forks[0], forks[1]);
    let held = a.authority.store().artifact("voucher/VR-1").unwrap().unwrap();
    assert_eq!(held.version, 1, "A holds M→A");
    let (audit, certs) = (a.audit_len(), a.cert_count());

    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let (auth, fork) = (&a.authority, &forks[i % 2]);
                s.spawn(move || (i % 2, auth.claim_by_voucher(fork, "admin:test")))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<usize> = results.iter().filter(|(_, r)| r.is_ok()).map(|(i, _)| *i).collect();
    assert_eq!(won.len(), 1, "exactly one claim stored: {results:?}");
    for (_, r) in &results {
        if let Err(e) = r {
            let m = e.public_message();
            assert_eq!(e.http_status(), 403, "{m}");
            assert!(
                m.contains("voucher refused")
                    || m.contains("changed while this one was checked: fetch the current voucher and extend it"),
                "{m}"
            );
        }
    }
    let now = a.authority.store().artifact("voucher/VR-1").unwrap().unwrap();
    assert_eq!(now.body, forks[won[0]], "the winner is held, nothing else");
    assert_eq!(now.version, [3, 5][won[0]]);
    assert_eq!((a.audit_len(), a.cert_count()), (audit + 1, certs), "one claim audited, nothing issued");
    // The loser, offered again now, no longer extends what A holds.
    let err = a.authority.claim_by_voucher(&forks[1 - won[0]], "admin:test").unwrap_err();
    assert!(err.to_string().contains("voucher refused"), "{err}");
    // The winner again: refused as held already (403, not an internal error).
    let err = a.authority.claim_by_voucher(&forks[won[0]], "admin:test").unwrap_err();
    assert_eq!(err.http_status(), 403, "{err}");
    assert!(err.public_message().contains("is not newer"), "{err}");
    assert_eq!(a.authority.store().artifact("voucher/VR-1").unwrap().unwrap(), now);
}

/// `bytes` with its last octet changed: in a voucher, the last entry's
/// signature (a COSE_Sign1 ends with it), its key id and everything else intact.
fn bad_last_signature(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    *v.last_mut().unwrap() ^= 0x01;
    v
}

/// A key id is public: a voucher whose entry names the manufacturer's key id,
/// or the current owner's, but whose signature is not that key's, is refused
/// at `device claim --voucher` (403), and nothing is stored: neither a
/// first-hand claim of a device, nor a past owner's store taken back to
/// "owned" by an extension that its next owner never signed. The same
/// vouchers with their genuine signatures are claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voucher_whose_signature_is_not_the_named_keys_is_refused_and_stores_nothing() {
    let mfg = Ca::start().await;
    let a = Ca::start().await;
    born_devices(&mfg, "SB", &["VS-1".to_string()]).await;
    run_ok(bin().args(["trust", "add-manufacturer"]).arg("--dir").arg(&a.dir).arg(mfg.ca_file("manufacturing")));
    let t = mfg.tmp.path().to_path_buf();
    let b_key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
    std::fs::write(t.join("b.pub"), pem::encode("PUBLIC KEY", b_key.public_key_der())).unwrap();
    let (mdir, adir, aroot) = (mfg.dir.clone(), a.dir.clone(), a.root_file());
    let tt = t.clone();
    tokio::task::spawn_blocking(move || voucher_issue(&mdir, "VS-1", &aroot, &tt.join("m-a.cbor"))).await.unwrap();
    let m_a = std::fs::read(t.join("m-a.cbor")).unwrap();
    let store = a.authority.store();
    let state = || (store.artifact("voucher/VS-1").unwrap(), store.ownership("VS-1").unwrap(), a.audit_len());

    // The manufacturer's entry, not its signature.
    let before = state();
    let err = a.authority.claim_by_voucher(&bad_last_signature(&m_a), "admin:test").unwrap_err();
    assert_eq!(err.http_status(), 403, "{err}");
    assert!(err.public_message().contains("signature"), "{err}");
    assert_eq!(state(), before, "nothing stored, nothing audited");
    a.authority.claim_by_voucher(&m_a, "admin:test").unwrap();

    // A hands the device to B; an extension B→A that B never signed does not take it back.
    let (adir2, tt) = (adir.clone(), t.clone());
    tokio::task::spawn_blocking(move || voucher_issue(&adir2, "VS-1", &tt.join("b.pub"), &tt.join("a-b.cbor")))
        .await
        .unwrap();
    let mut back = iotpki_core::voucher::Voucher::decode(&std::fs::read(t.join("a-b.cbor")).unwrap()).unwrap();
    let now = back.entries().last().unwrap().created_at;
    let a_spki = iotpki_authority::trust::spki_of(a.authority.root_der()).unwrap();
    back.extend(&b_key, &a_spki, now, now + 3600).unwrap();
    let back = back.encode();
    let before = state();
    assert_eq!(before.1.as_ref().map(|o| o.status), Some(iotpki_store::OwnershipStatus::Transferred));
    let err = a.authority.claim_by_voucher(&bad_last_signature(&back), "admin:test").unwrap_err();
    assert_eq!(err.http_status(), 403, "{err}");
    assert!(err.public_message().contains("signature"), "{err}");
    assert_eq!(state(), before, "still handed on, nothing stored");
    a.authority.claim_by_voucher(&back, "admin:test").unwrap();
    assert_eq!(state().1.map(|o| o.status), Some(iotpki_store::OwnershipStatus::Owned), "B's own hand-back");
}

/// A voucher's expiry bounds when it may be accepted, not the ownership it
/// gives: operator A takes a device by a voucher valid for 3 seconds; after
/// that date the device still commissions again at A (its certificate
/// revoked, it comes back with its birth certificate), and A hands it on to
/// operator B, whose voucher the device accepts. (Both used to be refused as
/// expired: the owner could neither bring the device back nor hand it on
/// once its own entry's date had passed.) An expired voucher is still not
/// accepted anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_keeps_a_device_past_its_vouchers_date_and_hands_it_on() {
    let mfg = Ca::start().await;
    let (a, b) = (Ca::start().await, Ca::start().await);
    let devs = born_devices(&mfg, "EB", &["VE-1".to_string(), "VE-2".to_string()]).await;
    for op in [&a, &b] {
        run_ok(bin().args(["trust", "add-manufacturer"]).arg("--dir").arg(&op.dir).arg(mfg.ca_file("manufacturing")));
    }
    let t = mfg.tmp.path().to_path_buf();
    let (mdir, adir, bdir, aroot, broot) =
        (mfg.dir.clone(), a.dir.clone(), b.dir.clone(), a.root_file(), b.root_file());
    let (dev, other) = (devs[0].clone(), devs[1].clone());
    let issue_short = |device: &str, out: &Path| {
        run_ok(
            root_key_env(bin().args(["voucher", "issue", "--device", device, "--expires", "3s", "--dir"]).arg(&mdir))
                .arg("--to")
                .arg(&aroot)
                .arg("--out")
                .arg(out),
        )
    };
    let (tt, d) = (t.clone(), dev.clone());
    tokio::task::block_in_place(|| {
        issue_short("VE-1", &tt.join("m-a.cbor"));
        issue_short("VE-2", &tt.join("m-a-2.cbor"));
        run_ok(&mut claim(&adir, &tt.join("m-a.cbor")));
        run_ok(&mut apply(&d, &tt.join("m-a.cbor"), false));
    });
    iotpki_agent::flow::commission(&dev, Some(&a.url), Some(&a.root_pem), None).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    a.clock.advance(60);

    // Past the date: an expired voucher is not accepted anew...
    let tt = t.clone();
    let err = tokio::task::block_in_place(|| run_fail(&mut apply(&other, &tt.join("m-a-2.cbor"), false)));
    assert!(err.contains("expired"), "{err}");
    // ...but the device it was accepted for is still A's: it comes back after a revocation.
    let first = iotpki_agent::status(&dev).unwrap().cert_serial;
    iotpki_authority::revocation::revoke(
        a.authority.store().as_ref(),
        a.clock.as_ref(),
        iotpki_authority::revocation::Target::Serial(&first),
        1,
        "test",
    )
    .unwrap();
    iotpki_agent::flow::commission(&dev, None, None, None).await.unwrap();
    assert_ne!(iotpki_agent::status(&dev).unwrap().cert_serial, first);
    assert_eq!(a.last_audit().event.action, "commission");

    // And A hands it on to B, whose voucher (valid now) the device accepts.
    let (tt, d) = (t.clone(), dev.clone());
    tokio::task::block_in_place(|| {
        let out = voucher_issue(&adir, "VE-1", &broot, &tt.join("a-b.cbor"));
        assert!(out.contains("2 entries"), "{out}");
        run_ok(&mut claim(&bdir, &tt.join("a-b.cbor")));
        run_ok(&mut apply(&d, &tt.join("a-b.cbor"), false));
    });
    iotpki_agent::flow::commission(&dev, Some(&b.url), Some(&b.root_pem), None).await.unwrap();
    assert_eq!(b.last_audit().event.action, "commission");
}

/// A trust bundle is its owner's: operator A's bundle, naming only A's
/// server, is installed on a device A owns. When the device installs A's
/// hand-over to B, A's bundle is set aside: it no longer keeps the device from
/// B's server (it used to veto commissioning there), A's next bundle is not
/// taken (A's signers no longer decide), and B puts in its own bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_owners_trust_bundle_decides_nothing_after_the_hand_over() {
    let mfg = Ca::start().await;
    let (a, b) = (Ca::start().await, Ca::start().await);
    let devs = born_devices(&mfg, "GB", &["VG-1".to_string()]).await;
    let dev = devs[0].clone();
    for op in [&a, &b] {
        run_ok(bin().args(["trust", "add-manufacturer"]).arg("--dir").arg(&op.dir).arg(mfg.ca_file("manufacturing")));
    }
    let t = mfg.tmp.path().to_path_buf();
    let (mdir, adir, bdir, aroot, broot) =
        (mfg.dir.clone(), a.dir.clone(), b.dir.clone(), a.root_file(), b.root_file());
    let (tt, d) = (t.clone(), dev.clone());
    tokio::task::block_in_place(|| {
        voucher_issue(&mdir, "VG-1", &aroot, &tt.join("m-a.cbor"));
        run_ok(&mut claim(&adir, &tt.join("m-a.cbor")));
        run_ok(&mut apply(&d, &tt.join("m-a.cbor"), false));
    });
    iotpki_agent::flow::commission(&dev, Some(&a.url), Some(&a.root_pem), None).await.unwrap();
    let a_keys: Vec<SoftKey> = (0..3).map(|_| SoftKey::generate(KeyType::EcdsaP256).unwrap()).collect();
    let a_host = a.url.trim_start_matches("https://").to_string();
    iotpki_agent::trust::apply(&dev, &crate::util::bundle_naming(&a, &a_keys, 1, &[&a_host]), true).unwrap();

    let (tt, d) = (t.clone(), dev.clone());
    tokio::task::block_in_place(|| {
        voucher_issue(&adir, "VG-1", &broot, &tt.join("a-b.cbor"));
        run_ok(&mut claim(&bdir, &tt.join("a-b.cbor")));
        run_ok(&mut apply(&d, &tt.join("a-b.cbor"), false));
    });
    iotpki_agent::flow::commission(&dev, Some(&b.url), Some(&b.root_pem), None).await.unwrap();
    assert!(!dev.join("bundle.cbor").exists() && dev.join("bundle.previous-owner.cbor").exists());
    assert_eq!(b.last_audit().event.action, "commission");
    let err =
        iotpki_agent::trust::apply(&dev, &crate::util::bundle_naming(&a, &a_keys, 2, &[&a_host]), false).unwrap_err();
    assert!(err.to_string().contains("ownership voucher"), "{err}");
    let b_keys: Vec<SoftKey> = (0..3).map(|_| SoftKey::generate(KeyType::EcdsaP256).unwrap()).collect();
    let b_host = b.url.trim_start_matches("https://").to_string();
    iotpki_agent::trust::apply(&dev, &crate::util::bundle_naming(&b, &b_keys, 1, &[&b_host]), true).unwrap();
    iotpki_agent::renew(&dev, None, None).await.unwrap();
}

/// A bundle trusting `ca`'s root, issued `age` seconds ago, signed by two of
/// three keys of its own.
fn older_bundle(ca: &Ca, age: i64) -> PathBuf {
    use iotpki_core::bundle::{Bundle, BundleContent, UnsignedBundle};
    let keys: Vec<SoftKey> = (0..3).map(|_| SoftKey::generate(KeyType::EcdsaP256).unwrap()).collect();
    let now = iotpki_authority::Clock::now(ca.clock.as_ref());
    let content = BundleContent {
        version: 1,
        issued_at: now - age,
        expires_at: now + 86_400,
        anchors: vec![ca.authority.root_der().to_vec()],
        servers: vec![],
        threshold: 2,
        signers: keys.iter().map(|k| k.public_key_der().to_vec()).collect(),
    };
    let mut b = Bundle::decode(&UnsignedBundle::new(content).unwrap().encode()).unwrap();
    b.add_signature(&keys[0]).unwrap();
    b.add_signature(&keys[1]).unwrap();
    let out = ca.tmp.path().join(format!("older-{age}.cbor"));
    std::fs::write(&out, b.encode()).unwrap();
    out
}

/// `agent fetch --from URL` on `state`: what it said of the voucher and of the bundle.
/// (The CRLs it also fetches are not looked at: the test authorities' CAs share
/// their names, so one's CRL is refused as not signed by the other's CA.)
fn fetch(state: &Path, from: &str) -> (String, String) {
    let out = bin().args(["agent", "fetch", "--state"]).arg(state).args(["--from", from]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let said = |path: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(path))
            .map(str::to_string)
            .unwrap_or_else(|| format!("nothing: {text}"))
    };
    (said("/.well-known/iotpki/voucher/"), said("/.well-known/iotpki/bundle: "))
}

fn sign_as_owner(dir: &Path, bundle: &Path) -> String {
    run_ok(root_key_env(bin().args(["bundle", "sign"]).arg(bundle).arg("--dir").arg(dir)))
}

fn publish(dir: &Path, bundle: &Path) -> String {
    let out = bin().args(["bundle", "publish", "--dir"]).arg(dir).arg(bundle).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A device with a voucher and no bundle takes its owner's first bundle from
/// the owner's server when the owner's root key (the key the voucher names)
/// signed it, without `--initial`: bundles its signers alone signed (anyone can
/// make one), and bundles of a past owner signed with that owner's own root key,
/// are refused and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owners_first_bundle_is_taken_from_its_server_only_when_the_voucher_key_signed_it() {
    let mfg = Ca::start().await;
    let (a, b) = (Ca::start().await, Ca::start().await);
    let devs = born_devices(&mfg, "OB", &["VF-1".to_string()]).await;
    let dev = devs[0].clone();
    for op in [&a, &b] {
        run_ok(bin().args(["trust", "add-manufacturer"]).arg("--dir").arg(&op.dir).arg(mfg.ca_file("manufacturing")));
    }
    let a_keys = signer_keys(&a.tmp.path().join("signers"));
    let b_keys = signer_keys(&b.tmp.path().join("signers"));
    // B's bundle of an hour ago, B's root signing (below): older than B's ownership.
    let b0 = older_bundle(&b, 3600);
    let t = mfg.tmp.path().to_path_buf();
    let (mdir, adir, bdir, aroot, broot) =
        (mfg.dir.clone(), a.dir.clone(), b.dir.clone(), a.root_file(), b.root_file());
    let (a_http, b_http) = (a.http_url.clone(), b.http_url.clone());
    let d = dev.clone();
    tokio::task::block_in_place(|| {
        // The manufacturer hands the device to A; it holds A's voucher and no bundle.
        voucher_issue(&mdir, "VF-1", &aroot, &t.join("m-a.cbor"));
        run_ok(&mut claim(&adir, &t.join("m-a.cbor")));
        run_ok(&mut apply(&d, &t.join("m-a.cbor"), false));
        // Bundles made since, signed by two of each owner's three signer keys.
        let (a1, a2, a3) =
            (bundle(&a, &a_keys, 1, &[0, 1]), bundle(&a, &a_keys, 2, &[0, 1]), bundle(&a, &a_keys, 3, &[1, 2]));

        // A bundle A's signers signed, but not A's root: anyone could have made it.
        let note = publish(&adir, &a1);
        assert!(note.contains("will not take it") && note.contains("bundle sign --dir"), "{note}");
        let (voucher, said) = fetch(&d, &a_http);
        assert!(voucher.contains("unchanged"), "{voucher}");
        assert!(said.starts_with("REFUSED") && said.contains("ownership voucher"), "{said}");
        assert!(!d.join("bundle.cbor").exists());

        // Version 2, signed with A's root key too: taken from A's server.
        let audit_before = a.audit_len();
        let out = sign_as_owner(&adir, &a2);
        assert!(out.contains("root key signed"), "{out}");
        assert_eq!(a.audit_len(), audit_before + 1, "the root key's signature is audited");
        assert_eq!(a.last_audit().event.action, "bundle.sign");
        assert_eq!(publish(&adir, &a2), "", "no note: the root signed");
        // `bundle verify --owner` judges both as the device does.
        let verify = |f: &Path| {
            let mut c = bin();
            c.args(["bundle", "verify"]).arg(f).arg("--owner").arg(&aroot);
            c
        };
        assert!(run_ok(&mut verify(&a2)).contains("valid as the owner's first bundle"));
        assert!(run_fail(&mut verify(&a1)).contains("ownership voucher"));
        let (_, said) = fetch(&d, &a_http);
        assert_eq!(said, "trust bundle version 2 installed");
        assert_eq!(std::fs::read(d.join("bundle.cbor")).unwrap(), std::fs::read(&a2).unwrap());

        // A hands the device to B; the device learns it from A's own server:
        // the voucher first, so A's bundle is set aside, and A's published
        // bundle (A's root signed it) is refused now that B owns the device.
        voucher_issue(&adir, "VF-1", &broot, &t.join("a-b.cbor"));
        let (voucher, said) = fetch(&d, &a_http);
        assert!(voucher.contains("voucher installed (2 entries)"), "{voucher}");
        assert!(said.starts_with("REFUSED") && said.contains("ownership voucher"), "{said}");
        assert!(!d.join("bundle.cbor").exists() && d.join("bundle.previous-owner.cbor").exists());

        // The past owner's next bundle, its root's and its signers' signatures: refused.
        sign_as_owner(&adir, &a3);
        let err = run_fail(&mut apply(&d, &a3, false));
        assert!(err.contains("trust bundle refused") && err.contains("ownership voucher"), "{err}");
        assert!(!d.join("bundle.cbor").exists());

        // B's bundle from before the hand-over, B's root signing: refused (an older
        // bundle of an owner may trust roots or signers it has dropped since).
        sign_as_owner(&bdir, &b0);
        let err = run_fail(&mut apply(&d, &b0, false));
        assert!(err.contains("before the voucher entry"), "{err}");
        assert!(!d.join("bundle.cbor").exists());

        // B claims it and publishes its first bundle, its root signing: the device takes it.
        run_ok(&mut claim(&bdir, &t.join("a-b.cbor")));
        let b1 = bundle(&b, &b_keys, 1, &[0, 2]);
        sign_as_owner(&bdir, &b1);
        let verify = run_ok(bin().args(["bundle", "verify"]).arg(&b1).arg("--voucher").arg(t.join("a-b.cbor")));
        assert!(verify.contains("valid as the owner's first bundle"), "{verify}");
        let err = run_fail(bin().args(["bundle", "verify"]).arg(&b0).arg("--voucher").arg(t.join("a-b.cbor")));
        assert!(err.contains("before the voucher entry"), "{err}");
        publish(&bdir, &b1);
        let (voucher, said) = fetch(&d, &b_http);
        assert!(voucher.contains("unchanged"), "{voucher}");
        assert_eq!(said, "trust bundle version 1 installed");
        assert_eq!(std::fs::read(d.join("bundle.cbor")).unwrap(), std::fs::read(&b1).unwrap());
        // From then on, the past owner's bundles are updates the installed one's signers did not sign.
        let err = run_fail(&mut apply(&d, &a3, false));
        assert!(err.contains("trust bundle refused") && err.contains("current bundle"), "{err}");
    });
    // The device commissions with B (B's root, as its voucher names).
    iotpki_agent::flow::commission(&dev, Some(&b.url), Some(&b.root_pem), None).await.unwrap();
    assert_eq!(b.last_audit().event.action, "commission");
}

/// A device its owner A claimed with a births file and commissioned holds no
/// voucher. The manufacturer alone signs a first entry: a voucher handing the
/// device from the manufacturer straight to B (the manufacturer's own key as
/// B, or any key) is refused by the device, nothing changes, and B's bundle
/// signed by B's root is not taken either. A voucher carrying A's consent (the
/// manufacturer to A, then A to B, signed by A's root) is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manufacturer_cannot_hand_on_a_device_an_owner_commissioned_without_a_voucher() {
    let mfg = Ca::start().await;
    let (a, b) = (Ca::start().await, Ca::start().await);
    let serials = ["VT-1".to_string(), "VT-2".to_string(), "VT-3".to_string()];
    let devs = born_devices(&mfg, "TB", &serials).await;
    for op in [&a, &b] {
        run_ok(bin().args(["trust", "add-manufacturer"]).arg("--dir").arg(&op.dir).arg(mfg.ca_file("manufacturing")));
    }
    crate::commission::claim(&a, &mfg, &["VT-1", "VT-2", "VT-3"]);
    for d in &devs {
        iotpki_agent::flow::commission(d, Some(&a.url), Some(&a.root_pem), None).await.unwrap();
    }
    let b_keys = signer_keys(&b.tmp.path().join("signers"));
    let t = mfg.tmp.path().to_path_buf();
    let (mdir, adir, bdir, aroot, broot) =
        (mfg.dir.clone(), a.dir.clone(), b.dir.clone(), a.root_file(), b.root_file());
    let (d1, d2, d3) = (devs[0].clone(), devs[1].clone(), devs[2].clone());
    let a_keys = signer_keys(&a.tmp.path().join("signers"));
    tokio::task::block_in_place(|| {
        // The manufacturer hands VT-1 straight to B: the device refuses it.
        voucher_issue(&mdir, "VT-1", &broot, &t.join("m-b.cbor"));
        let identity = std::fs::read(d1.join("identity.json")).unwrap();
        let err = run_fail(&mut apply(&d1, &t.join("m-b.cbor"), false));
        assert!(err.contains("ownership voucher refused") && err.contains("must name that owner"), "{err}");
        assert!(!d1.join("voucher.cbor").exists());
        assert_eq!(std::fs::read(d1.join("identity.json")).unwrap(), identity);
        // So B's bundle, its root signing, is no first bundle for it either.
        let b1 = bundle(&b, &b_keys, 1, &[0, 1]);
        sign_as_owner(&bdir, &b1);
        let err = run_fail(&mut apply(&d1, &b1, false));
        assert!(err.contains("no ownership voucher"), "{err}");
        assert!(!d1.join("bundle.cbor").exists());

        // With A's consent: the manufacturer to A, claimed by A, then A to B.
        voucher_issue(&mdir, "VT-2", &aroot, &t.join("m-a.cbor"));
        run_ok(&mut claim(&adir, &t.join("m-a.cbor")));
        // (The manufacturer to A alone is taken too: it names the device's owner.)
        let out = run_ok(&mut apply(&d2, &t.join("m-a.cbor"), false));
        assert!(out.contains("voucher installed (1 entries)"), "{out}");
        voucher_issue(&adir, "VT-2", &broot, &t.join("a-b.cbor"));
        let out = run_ok(&mut apply(&d2, &t.join("a-b.cbor"), false));
        assert!(out.contains("voucher installed (2 entries)"), "{out}");
        let b2 = bundle(&b, &b_keys, 2, &[0, 1]);
        sign_as_owner(&bdir, &b2);
        run_ok(&mut apply(&d2, &b2, false));
        run_ok(&mut claim(&bdir, &t.join("a-b.cbor")));

        // VT-3 holds A's bundle (put in at A's site) and gets the whole voucher at
        // once, the manufacturer to A to B: a hand-over, so A's bundle is set aside
        // (its signers and servers decide nothing more) and B's first is taken.
        let a1 = bundle(&a, &a_keys, 1, &[0, 1]);
        run_ok(&mut apply(&d3, &a1, true));
        voucher_issue(&mdir, "VT-3", &aroot, &t.join("m-a-3.cbor"));
        run_ok(&mut claim(&adir, &t.join("m-a-3.cbor")));
        voucher_issue(&adir, "VT-3", &broot, &t.join("a-b-3.cbor"));
        let out = run_ok(&mut apply(&d3, &t.join("a-b-3.cbor"), false));
        assert!(out.contains("voucher installed (2 entries)"), "{out}");
        assert!(!d3.join("bundle.cbor").exists() && d3.join("bundle.previous-owner.cbor").exists());
        let b3 = bundle(&b, &b_keys, 3, &[0, 1]);
        sign_as_owner(&bdir, &b3);
        run_ok(&mut apply(&d3, &b3, false));
        assert_eq!(std::fs::read(d3.join("bundle.cbor")).unwrap(), std::fs::read(&b3).unwrap());
    });
    // A renews VT-1 still; VT-2 commissions with B.
    iotpki_agent::renew(&devs[0], None, None).await.unwrap();
    iotpki_agent::flow::commission(&devs[1], Some(&b.url), Some(&b.root_pem), None).await.unwrap();
}
