//! `iotpki bundle` and `iotpki voucher` on files, as an operator runs them:
//! create, sign by 2 of 3 (one key encrypted), show, verify; and the refusals,
//! each with exit status 1, a reason, and the file left as it was.

use std::path::{Path, PathBuf};
use std::process::Command;

use iotpki_authority::keyfile::write_encrypted;
use iotpki_authority::{Clock, Passphrase, SystemClock};
use iotpki_core::bundle;
use iotpki_core::cose::key_id;
use iotpki_core::keys::{KeyType, Signer, SoftKey};
use iotpki_core::name::DeviceSerial;
use iotpki_core::pem;
use iotpki_core::voucher::Voucher;

use crate::util::{bin, openssl, run_ok, PASS};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Run a command that must be refused: exit status 1, nothing on stdout; return stderr.
fn refused(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{c:?}: {}\n{stderr}", out.status);
    assert!(out.stdout.is_empty(), "{c:?} printed {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.starts_with("error: ") && !stderr.contains("panicked"), "{stderr}");
    stderr
}

/// A directory with a CA certificate and signer keys in every form `bundle` reads.
struct Keys {
    dir: tempfile::TempDir,
    /// Plain PKCS#8 keys, their PUBLIC KEY files.
    plain: Vec<(SoftKey, PathBuf, PathBuf)>,
    /// An encrypted key (PASS), its public key as PUBLIC KEY.
    enc: (PathBuf, PathBuf, Vec<u8>),
    pass_file: PathBuf,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut plain = Vec::new();
        for (i, kt) in
            [KeyType::Ed25519, KeyType::EcdsaP384, KeyType::EcdsaP256, KeyType::EcdsaP256].into_iter().enumerate()
        {
            let k = SoftKey::generate(kt).unwrap();
            let key = d.join(format!("k{i}.pem"));
            let public = d.join(format!("k{i}.pub"));
            std::fs::write(&key, pem::encode("PRIVATE KEY", &k.to_pkcs8().unwrap())).unwrap();
            std::fs::write(&public, pem::encode("PUBLIC KEY", k.public_key_der())).unwrap();
            plain.push((k, key, public));
        }
        let k = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let enc_key = d.join("enc.pem");
        write_encrypted(&enc_key, &k, &Passphrase::new(PASS.into()).unwrap()).unwrap();
        let enc_pub = d.join("enc.pub");
        std::fs::write(&enc_pub, pem::encode("PUBLIC KEY", k.public_key_der())).unwrap();
        let pass_file = d.join("pass");
        std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
        // A CA certificate made by openssl (basicConstraints CA:TRUE), and a leaf that is not a CA.
        for (name, bc) in [("root", "critical,CA:TRUE"), ("leaf", "critical,CA:FALSE")] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                s(&d.join(format!("{name}.key"))),
                "-out",
                s(&d.join(format!("{name}.pem"))),
                "-subj",
                &format!("/O=Acme/CN=Acme {name}"),
                "-addext",
                &format!("basicConstraints={bc}"),
                "-days",
                "30",
            ]);
        }
        Keys { dir, plain, enc: (enc_key, enc_pub, k.public_key_der().to_vec()), pass_file }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn kid(&self, i: usize) -> String {
        hex::encode(key_id(self.plain[i].0.public_key_der()))
    }

    /// `bundle create` of `version` naming the signers `signer_files`, threshold `t`.
    fn create(&self, out: &Path, version: u64, signer_files: &[&Path], t: u8) -> Command {
        let mut c = bin();
        c.args(["bundle", "create", "--version", &version.to_string(), "--anchor", s(&self.path("root.pem"))]);
        c.args(["--server", "est.example.com", "--server", "192.0.2.7"]);
        for f in signer_files {
            c.args(["--signer", s(f)]);
        }
        c.args(["--threshold", &t.to_string(), "--expires", "30d", "--out", s(out)]);
        c
    }

    fn sign(&self, file: &Path, i: usize) {
        run_ok(bin().args(["bundle", "sign", s(file), "--key", s(&self.plain[i].1)]));
    }
}

#[test]
fn create_sign_two_of_three_show_verify() {
    let k = Keys::new();
    let b = k.path("bundle.cbor");
    // Three signers: a PUBLIC KEY file, an encrypted key's PUBLIC KEY, and a certificate.
    let out = run_ok(&mut k.create(&b, 1, &[&k.plain[0].2, &k.enc.1, &k.path("root.pem")], 2));
    assert!(out.contains("trust bundle version 1 written"), "{out}");

    let shown = run_ok(bin().args(["bundle", "show", s(&b)]));
    assert!(shown.contains("trust bundle version 1"), "{shown}");
    assert!(shown.contains("CN=Acme root,O=Acme"), "{shown}");
    assert!(shown.contains("est.example.com") && shown.contains("192.0.2.7"), "{shown}");
    assert!(shown.contains("signers: 2 of 3 must sign"), "{shown}");
    assert_eq!(shown.matches("not-signed").count(), 3, "{shown}");
    let err = refused(bin().args(["bundle", "verify", s(&b)]));
    assert!(err.contains("signed by 0 distinct key(s)") && err.contains("2 needed"), "{err}");

    // The first signer, then the encrypted key with its passphrase.
    k.sign(&b, 0);
    let out = run_ok(bin().args(["bundle", "sign", s(&b), "--key", s(&k.enc.0), "--passphrase-file", s(&k.pass_file)]));
    assert!(out.contains("2 of the bundle's 3 signer keys have signed, 2 needed"), "{out}");

    let json: serde_json::Value =
        serde_json::from_str(&run_ok(bin().args(["bundle", "show", s(&b), "--json"]))).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["threshold"], 2);
    assert_eq!(json["signed_by_own_keys"], 2);
    assert_eq!(json["expired"], false);
    let states: Vec<&str> = json["signers"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["signed", "signed", "not-signed"]);
    assert_eq!(json["signers"][0]["kid"], k.kid(0));
    assert_eq!(json["signers"][0]["key_type"], "ed25519");
    assert_eq!(json["signers"][1]["kid"], hex::encode(key_id(&k.enc.2)));
    let root_der = pem::decode_one("CERTIFICATE", &std::fs::read_to_string(k.path("root.pem")).unwrap()).unwrap();
    assert_eq!(json["anchors"][0]["sha256"], iotpki_core::keys::spki_fingerprint(&root_der));
    assert_eq!(json["servers"], serde_json::json!(["est.example.com", "192.0.2.7"]));

    let out = run_ok(bin().args(["bundle", "verify", s(&b)]));
    assert!(out.contains("trust bundle version 1 is valid on its own"), "{out}");
    // The library agrees with the binary, and no temporary file is left behind.
    let bytes = std::fs::read(&b).unwrap();
    let trusted = bundle::verify_initial(&bytes, SystemClock.now()).unwrap();
    assert_eq!(trusted.content().anchors, vec![root_der]);
    let names: Vec<String> =
        std::fs::read_dir(k.dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
}

#[test]
fn bundle_refusals_change_nothing() {
    let k = Keys::new();
    let b = k.path("b.cbor");
    let signers = [k.plain[0].2.as_path(), k.plain[1].2.as_path(), k.enc.1.as_path()];

    // Bad content: nothing written.
    let err = refused(&mut k.create(&b, 1, &signers, 4));
    assert!(err.contains("threshold 4 must be 1 to the number of signer keys (3)"), "{err}");
    let err = refused(&mut k.create(&b, 1, &signers, 0));
    assert!(err.contains("threshold 0"), "{err}");
    let err = refused(bin().args([
        "bundle",
        "create",
        "--version",
        "1",
        "--anchor",
        s(&k.path("leaf.pem")),
        "--signer",
        s(signers[0]),
        "--threshold",
        "1",
        "--expires",
        "1d",
        "--out",
        s(&b),
    ]));
    assert!(err.contains("not a CA certificate"), "{err}");
    let err = refused(&mut k.create(&b, 1, &[&k.plain[0].1], 1));
    assert!(err.contains("expected a PUBLIC KEY or CERTIFICATE"), "{err}");
    assert!(!b.exists());

    run_ok(&mut k.create(&b, 1, &signers, 2));
    let draft = std::fs::read(&b).unwrap();
    let err = refused(&mut k.create(&b, 9, &signers, 2));
    assert!(err.contains("cannot create"), "{err}");
    assert_eq!(std::fs::read(&b).unwrap(), draft, "never overwritten");

    // Signing: the same key twice, an encrypted key without or with a wrong passphrase.
    k.sign(&b, 0);
    let once = std::fs::read(&b).unwrap();
    let err = refused(bin().args(["bundle", "sign", s(&b), "--key", s(&k.plain[0].1)]));
    assert!(err.contains(&format!("key {} has already signed this bundle", k.kid(0))), "{err}");
    let err = refused(bin().args(["bundle", "sign", s(&b), "--key", s(&k.enc.0)]));
    assert!(err.contains("IOTPKI_PASSPHRASE"), "{err}");
    let wrong = k.path("wrong");
    std::fs::write(&wrong, "not the passphrase\n").unwrap();
    let err = refused(bin().args(["bundle", "sign", s(&b), "--key", s(&k.enc.0), "--passphrase-file", s(&wrong)]));
    assert!(err.contains("wrong passphrase"), "{err}");
    assert_eq!(std::fs::read(&b).unwrap(), once, "unchanged by refused signatures");
    // One signature of two: a device would refuse it.
    let err = refused(bin().args(["bundle", "verify", s(&b)]));
    assert!(err.contains("signed by 1 distinct key(s) named in the offered bundle itself, 2 needed"), "{err}");

    // A key the bundle does not name may sign (it counts only for the bundle this one
    // replaces), with a note; on its own it does not count, and the reason says so.
    let out = bin().args(["bundle", "sign", s(&b), "--key", s(&k.plain[3].1)]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not one of the bundle's own signers"));
    let err = refused(bin().args(["bundle", "verify", s(&b)]));
    assert!(err.contains("do not count") && err.contains(&k.kid(3)), "{err}");

    // Not a bundle at all.
    let junk = k.path("junk.cbor");
    std::fs::write(&junk, b"definitely not CBOR").unwrap();
    for args in [vec!["bundle", "show", s(&junk)], vec!["bundle", "sign", s(&junk), "--key", s(&k.plain[0].1)]] {
        let err = refused(bin().args(&args));
        assert!(err.contains("malformed trust bundle"), "{err}");
    }
    assert_eq!(std::fs::read(&junk).unwrap(), b"definitely not CBOR");
    let err = refused(bin().args(["bundle", "show", s(&k.path("missing.cbor"))]));
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn bundle_update_refusals() {
    let k = Keys::new();
    let (v1, v1b, v2) = (k.path("v1.cbor"), k.path("v1b.cbor"), k.path("v2.cbor"));
    let (a, b) = (k.plain[0].2.as_path(), k.plain[1].2.as_path());
    run_ok(&mut k.create(&v1, 1, &[a, b], 2));
    k.sign(&v1, 0);
    k.sign(&v1, 1);
    run_ok(bin().args(["bundle", "verify", s(&v1)]));

    // The same version again: a replay.
    run_ok(&mut k.create(&v1b, 1, &[a, b], 2));
    k.sign(&v1b, 0);
    k.sign(&v1b, 1);
    let err = refused(bin().args(["bundle", "verify", s(&v1b), "--current", s(&v1)]));
    assert!(err.contains("version 1 is not newer than the version 1"), "{err}");

    // v2 rotates to keys 2 and 3; signed only by them, the current keys have not agreed.
    let (c, d) = (k.plain[2].2.as_path(), k.plain[3].2.as_path());
    run_ok(&mut k.create(&v2, 2, &[c, d], 2));
    k.sign(&v2, 2);
    k.sign(&v2, 3);
    run_ok(bin().args(["bundle", "verify", s(&v2)]));
    let err = refused(bin().args(["bundle", "verify", s(&v2), "--current", s(&v1)]));
    assert!(err.contains("signed by 0 distinct key(s) named in the current bundle, 2 needed"), "{err}");
    // With both current keys too, it is accepted.
    k.sign(&v2, 0);
    k.sign(&v2, 1);
    let out = run_ok(bin().args(["bundle", "verify", s(&v2), "--current", s(&v1)]));
    assert!(out.contains("version 2 is valid as an update"), "{out}");
    let shown = run_ok(bin().args(["bundle", "show", s(&v2)]));
    assert!(shown.contains("other signatures") && shown.contains(&k.kid(0)), "{shown}");
}

#[test]
fn voucher_show_and_verify() {
    let k = Keys::new();
    let maker = &k.plain[2].0;
    let (alice, bob) = (&k.plain[0].0, &k.plain[1].0);
    let serial = DeviceSerial::parse("VCH-1").unwrap();
    let birth = k.path("root.pem");
    let birth_der = pem::decode_one("CERTIFICATE", &std::fs::read_to_string(&birth).unwrap()).unwrap();
    let now = SystemClock.now();
    let mut v = Voucher::first(maker, &serial, &birth_der, alice.public_key_der(), now - 60, now + 86_400).unwrap();
    v.extend(alice, bob.public_key_der(), now - 30, now + 86_400).unwrap();
    let file = k.path("voucher.cbor");
    std::fs::write(&file, v.encode()).unwrap();

    let shown = run_ok(bin().args(["voucher", "show", s(&file)]));
    assert!(shown.contains("ownership voucher for device VCH-1, 2 entries (not verified"), "{shown}");
    assert!(shown.contains(&format!("owner: kid {}", k.kid(1))), "{shown}");
    let json: serde_json::Value =
        serde_json::from_str(&run_ok(bin().args(["voucher", "show", s(&file), "--json"]))).unwrap();
    assert_eq!(json["verified"], false);
    assert_eq!(json["owner_kid"], k.kid(1));
    assert_eq!(json["entries"][0]["signer_kid"], k.kid(2));
    assert_eq!(json["entries"][1]["signer_kid"], k.kid(0));
    assert_eq!(json["entries"][1]["next_owner_key_type"], "p384");
    assert_eq!(json["entries"][0]["prev"], "0".repeat(64));

    let verify = |maker_pub: &Path, serial: &str| {
        let mut c = bin();
        c.args(["voucher", "verify", s(&file), "--manufacturer", s(maker_pub), "--serial", serial]);
        c.args(["--birth-cert", s(&birth)]);
        c
    };
    let out = run_ok(&mut verify(&k.plain[2].2, "VCH-1"));
    assert!(out.contains(&format!("2 entries; the device's owner is key {} (p384)", k.kid(1))), "{out}");
    let err = refused(&mut verify(&k.plain[2].2, "VCH-2"));
    assert!(err.contains("voucher entry 0 is for another device"), "{err}");
    let err = refused(&mut verify(&k.plain[3].2, "VCH-1"));
    assert!(err.contains("voucher entry 0 is signed by key") && err.contains("only the manufacturer"), "{err}");
    std::fs::write(&file, &v.encode()[..40]).unwrap();
    let err = refused(bin().args(["voucher", "show", s(&file)]));
    assert!(err.contains("malformed voucher"), "{err}");
}

/// The Python of the venv scripts/test prepares (pkilint's, with pycose added).
fn venv_python() -> PathBuf {
    let dir = std::env::var_os("IOTPKI_PKILINT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/iotpki/venv/bin"));
    let p = dir.join("python");
    let ok = Command::new(&p).args(["-c", "import pycose, cbor2"]).output().map(|o| o.status.success());
    assert!(
        ok.unwrap_or(false),
        "pycose not found with {}: run ./scripts/test, which installs it (or set IOTPKI_PKILINT_DIR)",
        p.display()
    );
    p
}

/// Run tests/it/cose_check.py; return (success, stdout).
fn pycose(args: &[&str]) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/cose_check.py");
    let out = Command::new(venv_python()).arg(script).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Flip the last octet of a file (the last signature's last octet, in both formats).
fn damage_last_octet(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn pycose_verifies_bundles_and_vouchers() {
    let k = Keys::new();
    // A bundle signed with each algorithm (Ed25519, ES384, ES256), and by a key it does not name.
    let b = k.path("b.cbor");
    run_ok(&mut k.create(&b, 4, &[&k.plain[0].2, &k.plain[1].2, &k.plain[2].2], 3));
    for i in [3, 0, 1, 2] {
        k.sign(&b, i);
    }
    let (ok, out) = pycose(&["bundle", s(&b)]);
    assert!(ok, "{out}");
    for i in 0..3 {
        assert!(out.contains(&format!("verified {}", k.kid(i))), "{out}");
    }
    assert!(out.contains(&format!("foreign {}", k.kid(3))) && out.contains("bundle version 4 threshold 3"), "{out}");
    damage_last_octet(&b);
    let (ok, out) = pycose(&["bundle", s(&b)]);
    assert!(!ok && out.contains(&format!("FAIL signature by {}", k.kid(2))), "{out}");

    // A voucher: manufacturer (P-256) -> P-384 owner -> Ed25519 owner.
    let serial = DeviceSerial::parse("PYCOSE-1").unwrap();
    let now = SystemClock.now();
    let (maker, first, second) = (&k.plain[2].0, &k.plain[1].0, &k.plain[0].0);
    let mut v = Voucher::first(maker, &serial, b"birth", first.public_key_der(), now, now + 600).unwrap();
    v.extend(first, second.public_key_der(), now, now + 600).unwrap();
    let file = k.path("v.cbor");
    std::fs::write(&file, v.encode()).unwrap();
    let (ok, out) = pycose(&["voucher", s(&file), s(&k.plain[2].2)]);
    assert!(ok, "{out}");
    assert!(out.contains("verified entry 1 PYCOSE-1") && out.contains(&format!("owner {}", k.kid(0))), "{out}");
    damage_last_octet(&file);
    let (ok, out) = pycose(&["voucher", s(&file), s(&k.plain[2].2)]);
    assert!(!ok && out.contains("FAIL entry 1 signature"), "{out}");
}
