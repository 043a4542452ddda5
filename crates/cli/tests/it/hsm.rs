//! The authority's CA keys in a PKCS#11 token (SoftHSM2), used through the
//! binary as an operator would: init --hsm, serve, enroll, renew, CRL, OCSP,
//! all checked by openssl; the keys cannot be read out of the token; and the
//! failures an operator meets say what to do.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{openssl, run_fail, run_ok, serve, Ca, SoftHsm, PASS, SOFTHSM_MODULE};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl").args(["--silent", "--show-error", "--fail"]).args(args).output().unwrap();
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// An authority directory made by `iotpki init --hsm` in token `label`.
struct HsmCa {
    dir: PathBuf,
    pass_file: PathBuf,
}

fn init(hsm: &SoftHsm, label: &str, extra: &[&str]) -> HsmCa {
    let dir = hsm.dir.path().join(format!("ca-{label}"));
    let pass_file = hsm.dir.path().join("pass");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let out = run_ok(
        hsm.bin()
            .args(["init", "--dir", s(&dir), "--hsm", &format!("pkcs11:token={label}")])
            .args(["--pkcs11-module", SOFTHSM_MODULE, "--pin-file", s(&hsm.pin_file)])
            .args(["--passphrase-file", s(&pass_file)])
            .args(extra),
    );
    assert!(out.contains("authority created"), "{out}");
    HsmCa { dir, pass_file }
}

impl HsmCa {
    fn serve(&self, hsm: &SoftHsm) -> (crate::util::Server, String) {
        serve(hsm.bin().args(["serve", "--dir", s(&self.dir), "--listen", "127.0.0.1:0"]).args([
            "--passphrase-file",
            s(&self.pass_file),
            "--pin-file",
            s(&hsm.pin_file),
        ]))
    }

    fn ca(&self, name: &str) -> PathBuf {
        self.dir.join("ca").join(format!("{name}.crt"))
    }

    /// The label of a CA's key in the token, from the config's key_uri.
    fn key_label(&self, name: &str) -> String {
        let cfg = std::fs::read_to_string(self.dir.join("iotpki.toml")).unwrap();
        let prefix = format!("object=iotpki-{name}-");
        let at = cfg.find(&prefix).unwrap_or_else(|| panic!("no key_uri for {name} in {cfg}"));
        let rest = &cfg[at + "object=".len()..];
        rest[..rest.find(';').unwrap()].to_string()
    }
}

#[test]
fn authority_in_softhsm_issues_what_openssl_verifies() {
    let hsm = SoftHsm::new(&["ca"]);
    let ca = init(&hsm, "ca", &[]);
    // No CA key file: the config names the token and each key by URI.
    let cfg = std::fs::read_to_string(ca.dir.join("iotpki.toml")).unwrap();
    assert!(cfg.contains("[hsm]") && cfg.contains(SOFTHSM_MODULE) && cfg.contains("token = \"pkcs11:token=ca\""));
    assert_eq!(cfg.matches("key_uri = \"pkcs11:token=ca;object=iotpki-").count(), 3, "{cfg}");
    for name in ["root", "manufacturing", "operational"] {
        assert!(!ca.dir.join(format!("ca/{name}.key")).exists(), "{name} has no key file");
    }
    assert!(!cfg.contains("1234"), "the PIN is not in the config");
    // The CA certificates the token signed verify.
    let root = ca.ca("root");
    for name in ["manufacturing", "operational"] {
        let out = openssl(&["verify", "-CAfile", s(&root), s(&ca.ca(name))]);
        assert!(out.contains(": OK"), "{out}");
    }

    let (_server, url) = ca.serve(&hsm);
    let d = ca.dir.to_str().unwrap();
    let token = run_ok(hsm.bin().args(["token", "create", "--dir", d, "--serial", "HSM-1"])).trim().to_string();
    let state = hsm.dir.path().join("device");
    run_ok(hsm.bin().args(["agent", "enroll", "--state", s(&state), "--server", &url, "--serial", "HSM-1"]).args([
        "--token",
        &token,
        "--ca-cert",
        s(&root),
    ]));
    // Renewal over mutual TLS: the operational CA's token key signs again.
    let out = run_ok(hsm.bin().args(["agent", "renew", "--state", s(&state)]));
    assert!(out.contains("renewed HSM-1"), "{out}");
    let id: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("identity.json")).unwrap()).unwrap();
    let dev = hsm.dir.path().join("dev.pem");
    std::fs::write(&dev, id["cert_pem"].as_str().unwrap()).unwrap();
    let op = ca.ca("operational");
    let out = openssl(&["verify", "-CAfile", s(&root), "-untrusted", s(&op), s(&dev)]);
    assert!(out.contains(": OK"), "{out}");

    // The manufacturing CA's token key certifies a factory station.
    let serials = hsm.dir.path().join("serials.csv");
    std::fs::write(&serials, "F-1\n").unwrap();
    run_ok(hsm.bin().args([
        "batch",
        "create",
        "--dir",
        d,
        "--id",
        "B-1",
        "--product",
        "p",
        "--serials",
        s(&serials),
        "--quota",
        "1",
    ]));
    let station = hsm.dir.path().join("station");
    run_ok(hsm.bin().args(["station", "add", "line-1", "--dir", d, "--batches", "B-1", "--out", s(&station)]).args([
        "--server",
        &url,
        "--passphrase-file",
        s(&ca.pass_file),
        "--pin-file",
        s(&hsm.pin_file),
    ]));
    let sid: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(station.join("identity.json")).unwrap()).unwrap();
    let station_pem = hsm.dir.path().join("station.pem");
    std::fs::write(&station_pem, sid["cert_pem"].as_str().unwrap()).unwrap();
    let out = openssl(&["verify", "-CAfile", s(&root), "-untrusted", s(&ca.ca("manufacturing")), s(&station_pem)]);
    assert!(out.contains(": OK"), "{out}");

    // The CRL, signed in the token, verified by openssl.
    let crl = hsm.dir.path().join("op.crl");
    std::fs::write(&crl, curl(&["--cacert", s(&root), &format!("{url}/crl/operational.crl")])).unwrap();
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in", s(&crl), "-CAfile", s(&op), "-noout", "-verify"])
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && all.contains("verify OK"), "{all}");

    // OCSP: the responder's certificate is signed in the token; openssl
    // checks the answer up to the root.
    let out = Command::new("openssl")
        .args(["ocsp", "-issuer", s(&op), "-cert", s(&dev), "-url", &format!("{url}/ocsp"), "-CAfile", s(&root)])
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(all.contains("Response verify OK") && all.contains("dev.pem: good"), "{all}");
}

#[test]
fn ca_private_keys_cannot_be_read_out_of_the_token() {
    let hsm = SoftHsm::new(&["ed"]);
    // Ed25519 too (SoftHSM2 offers CKM_EDDSA): the root signs the CAs in the token.
    let ca = init(&hsm, "ed", &["--key-type", "ed25519"]);
    let out = openssl(&["verify", "-CAfile", s(&ca.ca("root")), s(&ca.ca("operational"))]);
    assert!(out.contains(": OK"), "{out}");
    let text = openssl(&["x509", "-in", s(&ca.ca("operational")), "-noout", "-text"]);
    assert!(text.contains("Signature Algorithm: ED25519"), "{text}");

    let objects = hsm.objects("ed");
    for name in ["root", "manufacturing", "operational"] {
        let label = ca.key_label(name);
        // Each private key: sensitive from birth, never extractable, made in the token, sign only.
        let private = objects
            .split("Private Key Object")
            .skip(1)
            .find(|b| b.contains(&format!("label:      {label}\n")))
            .unwrap_or_else(|| panic!("no private key {label} in {objects}"));
        assert!(private.contains("Access:     sensitive, always sensitive, never extractable, local"), "{private}");
        assert!(private.contains("Usage:      sign\n"), "{private}");
    }
    // Our own check asks the token for CKA_VALUE of each key (C_GetAttributeValue):
    // refused as sensitive. (pkcs11-tool --read-object cannot read EC private keys at
    // all, so it would prove nothing.)
    let out = run_ok(hsm.bin().args(["hsm", "status", "--dir", s(&ca.dir), "--pin-file", s(&hsm.pin_file)]));
    for name in ["root", "manufacturing", "operational"] {
        let line = out
            .lines()
            .skip_while(|l| !l.starts_with(&format!("{name}: ed25519 pkcs11:token=ed;object=iotpki-")))
            .nth(1);
        let want = "  signs: ok; value refused, sensitive yes, always sensitive yes, extractable no, never extractable yes, generated in token yes";
        assert_eq!(line, Some(want), "{out}");
    }
}

#[test]
fn token_failures_say_what_to_do() {
    let hsm = SoftHsm::new(&["ca", "spare"]);
    let pass_file = hsm.dir.path().join("pass");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let dir = hsm.dir.path().join("never");
    let init = |uri: &str, module: &str, pin: &Path| -> String {
        run_fail(hsm.bin().args(["init", "--dir", s(&dir), "--hsm", uri, "--pkcs11-module", module]).args([
            "--pin-file",
            s(pin),
            "--passphrase-file",
            s(&pass_file),
        ]))
    };
    let bad_pin = hsm.dir.path().join("bad-pin");
    std::fs::write(&bad_pin, "9999\n").unwrap();

    // Missing module, a file that is no module, a missing token label, a wrong PIN, no PIN.
    let e = init("pkcs11:token=ca", "/nonexistent/libp11.so", &hsm.pin_file);
    assert!(e.contains("/nonexistent/libp11.so: no such file") || e.contains("no such file"), "{e}");
    assert!(e.contains("--pkcs11-module"), "{e}");
    let e = init("pkcs11:token=ca", "/etc/hostname", &hsm.pin_file);
    assert!(e.contains("not a loadable PKCS#11 library"), "{e}");
    let e = init("pkcs11:token=nope", SOFTHSM_MODULE, &hsm.pin_file);
    assert!(e.contains("no token labelled \"nope\"") && e.contains("\"ca\"") && e.contains("\"spare\""), "{e}");
    let e = init("pkcs11:token=ca", SOFTHSM_MODULE, &bad_pin);
    assert!(e.contains("token \"ca\" refused the PIN") && e.contains("--pin-file"), "{e}");
    let e = run_fail(hsm.bin().args(["init", "--dir", s(&dir), "--hsm", "pkcs11:token=ca", "--pkcs11-module"]).args([
        SOFTHSM_MODULE,
        "--passphrase-file",
        s(&pass_file),
    ]));
    assert!(e.contains("IOTPKI_PIN"), "{e}");
    let e = init("pkcs11:token=ca?pin-value=1234", SOFTHSM_MODULE, &hsm.pin_file);
    assert!(e.contains("must not carry the PIN"), "{e}");
    assert!(!dir.exists(), "no authority left behind");
    assert!(!hsm.objects("ca").contains("Key Object"), "nothing made in the token");

    // init that fails after it made keys in the token deletes them again.
    let e = run_fail(
        hsm.bin()
            .args(["init", "--dir", s(&dir), "--hsm", "pkcs11:token=ca", "--pkcs11-module", SOFTHSM_MODULE])
            .args(["--pin-file", s(&hsm.pin_file), "--passphrase-file", s(&pass_file)])
            .args(["--server-name", "not a name"]),
    );
    assert!(e.contains("server name"), "{e}");
    assert!(!dir.exists(), "no authority left behind");
    let left = hsm.objects("ca");
    assert!(!left.contains("Key Object"), "keys left in the token: {left}");

    // A working authority, then: the PIN from the environment works, a wrong one is named...
    let ca = self::init(&hsm, "ca", &[]);
    let d = s(&ca.dir);
    let e = run_fail(hsm.bin().args(["serve", "--dir", d, "--listen", "127.0.0.1:0"]).args([
        "--passphrase-file",
        s(&pass_file),
        "--pin-file",
        s(&bad_pin),
    ]));
    assert!(e.contains("refused the PIN"), "{e}");
    let e =
        run_fail(hsm.bin().args(["serve", "--dir", d, "--listen", "127.0.0.1:0", "--passphrase-file", s(&pass_file)]));
    assert!(e.contains("IOTPKI_PIN"), "{e}");
    let (server, _url) = serve(
        hsm.bin()
            .args(["serve", "--dir", d, "--listen", "127.0.0.1:0", "--passphrase-file", s(&pass_file)])
            .env("IOTPKI_PIN", "1234"),
    );
    drop(server);

    // ...and a key deleted from the token is named, with what to do.
    let label = ca.key_label("operational");
    let out = hsm.tool("ca", &["--delete-object", "--type", "privkey", "--label", &label]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e = run_fail(hsm.bin().args(["serve", "--dir", d, "--listen", "127.0.0.1:0"]).args([
        "--passphrase-file",
        s(&pass_file),
        "--pin-file",
        s(&hsm.pin_file),
    ]));
    assert!(e.contains(&label) && e.contains("is not in token \"ca\"") && e.contains("restore the token"), "{e}");
    let e = run_fail(hsm.bin().args(["hsm", "status", "--dir", d, "--pin-file", s(&hsm.pin_file)]));
    assert!(e.contains(&label) && e.contains("is not in token \"ca\""), "{e}");
    let e = run_fail(hsm.bin().args(["hsm", "status", "--dir", d, "--pin-file", s(&bad_pin)]));
    assert!(e.contains("refused the PIN"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_key_in_a_token_enrolls_and_renews_over_mtls() {
    let ca = Ca::start().await;
    let token = ca.token("TOK-1");
    let (url, root) = (ca.url.clone(), ca.root_file());
    let state = ca.tmp.path().join("device");
    let st = state.clone();
    let (first, renewed) = tokio::task::spawn_blocking(move || {
        let hsm = SoftHsm::new(&["dev"]);
        let enroll = |pin: &Path| {
            let mut c = hsm.bin();
            c.args(["agent", "enroll", "--state", s(&st), "--server", &url, "--serial", "TOK-1", "--token", &token])
                .args(["--ca-cert", s(&root), "--keystore", "pkcs11:token=dev", "--pkcs11-module", SOFTHSM_MODULE])
                .args(["--pin-file", s(pin)]);
            c
        };
        // A wrong PIN: refused before anything is asked of the server.
        let bad = hsm.dir.path().join("bad-pin");
        std::fs::write(&bad, "0000\n").unwrap();
        let e = run_fail(&mut enroll(&bad));
        assert!(e.contains("keystore: token \"dev\" refused the PIN"), "{e}");
        assert!(!st.join("identity.json").exists());

        let out = run_ok(&mut enroll(&hsm.pin_file));
        assert!(out.contains("enrolled TOK-1"), "{out}");
        let read = || -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(st.join("identity.json")).unwrap()).unwrap()
        };
        let first = read();
        assert_eq!(first["keystore"]["kind"], "pkcs11");
        assert_eq!(first["keystore"]["token"], "pkcs11:token=dev");
        let key = first["key_file"].as_str().unwrap().to_string();
        assert!(key.starts_with("pkcs11:token=dev;object=iotpki-device-TOK-1-"), "{key}");
        // No key on disk: the CSR was signed in the token.
        let files: Vec<String> =
            std::fs::read_dir(&st).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(files, vec!["identity.json".to_string()], "only the identity on disk");
        let label = |k: &str| k.split(';').find_map(|a| a.strip_prefix("object=")).unwrap().to_string();
        let objects = hsm.objects("dev");
        assert!(objects.contains(&format!("label:      {}\n", label(&key))), "{objects}");
        assert!(objects.contains("Access:     sensitive, always sensitive, never extractable, local"), "{objects}");

        // Renewal over mutual TLS: the CertificateVerify is signed by the token
        // key (there is no other copy); the PIN file recorded at enrollment is used.
        let out = run_ok(hsm.bin().args(["agent", "renew", "--state", s(&st)]));
        assert!(out.contains("renewed TOK-1"), "{out}");
        let renewed = read();
        let new_key = renewed["key_file"].as_str().unwrap().to_string();
        assert_ne!(new_key, key);
        assert!(new_key.starts_with("pkcs11:token=dev;object=iotpki-device-TOK-1-"), "{new_key}");
        let objects = hsm.objects("dev");
        assert!(objects.contains(&label(&new_key)), "{objects}");
        assert!(!objects.contains(&label(&key)), "the replaced key is deleted from the token: {objects}");
        let status = run_ok(hsm.bin().args(["agent", "status", "--state", s(&st)]));
        assert!(
            status.contains("key:           p256 (pkcs11:token=dev)") && status.contains("renewals:      1"),
            "{status}"
        );
        (first, renewed)
    })
    .await
    .unwrap();

    // The authority saw a token-authenticated re-enrollment of the same device.
    let cert = |v: &serde_json::Value| {
        let der = iotpki_core::pem::decode_one("CERTIFICATE", v["cert_pem"].as_str().unwrap()).unwrap();
        iotpki_core::profile::cert_info(&der).unwrap()
    };
    let (a, b) = (cert(&first), cert(&renewed));
    let rec = ca.authority.store().certificate(&b.serial).unwrap().unwrap();
    assert_eq!(rec.replaces.as_deref(), Some(a.serial.as_str()));
    assert_eq!(ca.last_audit().event.action, "reenroll");
    assert_ne!(a.spki_sha256, b.spki_sha256);
    let _ = state;
}
