//! Leaked keys (issue #17): firmware images made here with Debian's own tools
//! (mksquashfs, tar, gzip, cpio, xz, zip, ssh-keygen, openssl) hide keys of an
//! enrolled fleet at several depths and in several encodings, with a decoy
//! key that is nobody's; `iotpki firmware scan` finds each and names its
//! device, `--revoke` makes OCSP answer revoked for exactly those
//! certificates, and the keys are refused from then on.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::util::{bin, openssl, run_ok, Ca};

fn sh(script: &str, dir: &Path) {
    let out = Command::new("bash").args(["-euo", "pipefail", "-c", script]).current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// SHA-256 of a private key's subjectPublicKeyInfo, as openssl derives it.
fn spki_hash(key: &Path) -> String {
    let der = Command::new("openssl").args(["pkey", "-in", &s(key), "-pubout", "-outform", "DER"]).output().unwrap();
    assert!(der.status.success());
    let d = key.with_extension("pub.der");
    std::fs::write(&d, der.stdout).unwrap();
    openssl(&["dgst", "-sha256", "-r", &s(&d)]).split_whitespace().next().unwrap().to_string()
}

/// The device's key file and certificate (PEM) in its agent state dir.
fn key_and_cert(state: &Path) -> (PathBuf, String, String) {
    let id = iotpki_agent::state::load(state).unwrap();
    let der = iotpki_core::pem::decode_one("CERTIFICATE", &id.cert_pem).unwrap();
    let serial = iotpki_core::profile::cert_info(&der).unwrap().serial;
    (state.join(&id.key_file), id.cert_pem, serial)
}

fn ocsp_status(ca: &Ca, cert_pem: &str, d: &Path) -> String {
    let f = d.join("ask.pem");
    std::fs::write(&f, cert_pem).unwrap();
    let out = openssl(&[
        "ocsp",
        "-issuer",
        &s(&ca.ca_file("operational")),
        "-CAfile",
        &s(&ca.root_file()),
        "-cert",
        &s(&f),
        "-url",
        &format!("{}/ocsp", ca.http_url),
    ]);
    out.lines().find(|l| l.starts_with(&s(&f))).unwrap_or_default().to_string()
}

fn scan(ca: &Ca, images: &[&Path], extra: &[&str]) -> Value {
    let mut c = bin();
    c.args(["firmware", "scan", "--dir", &s(&ca.dir), "--json"]).args(extra);
    for i in images {
        c.arg(i);
    }
    serde_json::from_str(&run_ok(&mut c)).unwrap()
}

fn key_with<'a>(report: &'a Value, spki: &str) -> &'a Value {
    report["private_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["spki_sha256"] == spki)
        .unwrap_or_else(|| panic!("key {spki} not found in {report:#}"))
}

fn locations(k: &Value) -> String {
    k["locations"].as_array().unwrap().iter().map(|p| p["location"].as_str().unwrap().to_string() + " ").collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scan_names_the_leaked_devices_and_revoke_blocks_exactly_their_keys() {
    let ca = Ca::start().await;
    let mut devices = Vec::new();
    for n in 1..=6 {
        let serial = format!("FW-{n}");
        let state = ca.enrolled_device(&serial).await;
        let (key, cert_pem, cert_serial) = key_and_cert(&state);
        devices.push((serial, key.clone(), cert_pem, cert_serial, spki_hash(&key)));
    }
    let w = ca.tmp.path().join("fw");
    for d in ["rootfs/etc/ssl/private", "rootfs/etc/ssl/certs", "rootfs/etc/iotpki", "rootfs/opt/app", "tarball/certs"]
    {
        std::fs::create_dir_all(w.join(d)).unwrap();
    }
    for d in ["update/home/root/.ssh", "cpio"] {
        std::fs::create_dir_all(w.join(d)).unwrap();
    }
    // FW-1: its PKCS#8 PEM key file as the agent wrote it, in the root filesystem; its certificate too.
    std::fs::copy(&devices[0].1, w.join("rootfs/etc/ssl/private/device.key")).unwrap();
    std::fs::write(w.join("rootfs/etc/ssl/certs/device.pem"), &devices[0].2).unwrap();
    // FW-2: SEC1 DER, in a tar.gz inside the root filesystem.
    openssl(&["ec", "-in", &s(&devices[1].1), "-outform", "DER", "-out", &s(&w.join("tarball/certs/d2.der"))]);
    sh("tar -C tarball -czf rootfs/opt/app/certs.tar.gz certs", &w);
    // FW-3: PKCS#12 without a password, in a cpio archive, xz-compressed, in a zip.
    std::fs::write(w.join("d3.crt"), &devices[2].2).unwrap();
    openssl(&[
        "pkcs12",
        "-export",
        "-inkey",
        &s(&devices[2].1),
        "-in",
        &s(&w.join("d3.crt")),
        "-passout",
        "pass:",
        "-out",
        &s(&w.join("cpio/d3.p12")),
    ]);
    sh("cd cpio && find . | cpio -o -H newc --quiet > ../initramfs.cpio && cd .. && xz -k initramfs.cpio", &w);
    // FW-4: OpenSSH's format, in the zip.
    let ssh_key = w.join("update/home/root/.ssh/id_ecdsa");
    std::fs::copy(&devices[3].1, &ssh_key).unwrap();
    sh(&format!("chmod 600 {0} && ssh-keygen -q -p -N '' -P '' -f {0}", s(&ssh_key)), &w);
    assert!(std::fs::read_to_string(&ssh_key).unwrap().contains("OPENSSH PRIVATE KEY"));
    // A decoy key that is nobody's, as DER PKCS#8 inside a bootloader blob of random bytes.
    openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &s(&w.join("decoy.pem"))]);
    let decoy = spki_hash(&w.join("decoy.pem"));
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        &s(&w.join("decoy.pem")),
        "-outform",
        "DER",
        "-out",
        &s(&w.join("decoy.der")),
    ]);
    sh("head -c 5001 /dev/urandom > update/bootloader.bin && cat decoy.der >> update/bootloader.bin && head -c 777 /dev/urandom >> update/bootloader.bin", &w);
    sh("cp initramfs.cpio.xz update/ && cd update && zip -qr ../update.zip .", &w);
    // An encrypted key (reported, its public key unknown) and an unused enrollment token for FW-9.
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &s(&w.join("enc-plain.pem")),
    ]);
    openssl(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-passout",
        "pass:secret",
        "-in",
        &s(&w.join("enc-plain.pem")),
        "-out",
        &s(&w.join("rootfs/etc/ssl/private/backup.key")),
    ]);
    // The operational CA's key (decrypted, as a careless build would ship it) and a station's key.
    let ca_key = w.join("rootfs/etc/ssl/private/ca.pem");
    openssl(&[
        "pkey",
        "-in",
        &s(&ca.dir.join("ca/operational.key")),
        "-passin",
        &format!("pass:{}", crate::util::PASS),
        "-out",
        &s(&ca_key),
    ]);
    let ca_spki = spki_hash(&ca_key);
    crate::util::batch(&ca, "FWB", &["FWB-1".to_string()], 1);
    let station_dir = crate::util::station(&ca, "fw-station", &["FWB"]);
    let station_key = station_dir.join("key-0.pem");
    let station_spki = spki_hash(&station_key);
    std::fs::copy(&station_key, w.join("rootfs/opt/app/line.key")).unwrap();
    let token = ca.token("FW-9");
    std::fs::write(w.join("rootfs/etc/iotpki/enroll.conf"), format!("serial = FW-9\ntoken = {token}\n")).unwrap();
    // The firmware: a header of random bytes, then the squashfs at 0x10000 (found by carving).
    sh("mksquashfs rootfs rootfs.sqsh -quiet -noappend -comp gzip", &w);
    sh("head -c 65536 /dev/urandom > fw.bin && cat rootfs.sqsh >> fw.bin", &w);
    let (fw, zip) = (w.join("fw.bin"), w.join("update.zip"));

    let report = scan(&ca, &[&fw, &zip], &[]);
    for (i, (serial, _, _, cert_serial, spki)) in devices.iter().enumerate().take(4) {
        let k = key_with(&report, spki);
        assert_eq!(k["registry"]["role"], "device", "{k:#}");
        assert_eq!(k["registry"]["name"], serial.as_str(), "{k:#}");
        assert!(k["registry"]["certificates"].as_array().unwrap().iter().any(|c| c["serial"] == cert_serial.as_str()));
        let want = ["device.key", "d2.der", "d3.p12", "id_ecdsa"][i];
        assert!(locations(k).contains(want), "{serial}: {want} not in {}", locations(k));
    }
    let at = locations(key_with(&report, &devices[1].4));
    assert!(at.contains("certs.tar.gz"), "FW-2's key is inside the tar.gz: {at}");
    let at = locations(key_with(&report, &devices[2].4));
    assert!(at.contains("update.zip") && at.contains("initramfs.cpio"), "FW-3's key is in the zip's cpio: {at}");
    assert_eq!(key_with(&report, &decoy)["registry"]["role"], "unknown");
    for (serial, _, _, _, spki) in &devices[4..] {
        assert!(
            report["private_keys"].as_array().unwrap().iter().all(|k| k["spki_sha256"] != spki.as_str()),
            "{serial}"
        );
    }
    let encrypted: Vec<&Value> =
        report["private_keys"].as_array().unwrap().iter().filter(|k| k["encrypted"] == true).collect();
    assert_eq!(encrypted.len(), 1, "{report:#}");
    assert!(encrypted[0]["spki_sha256"].is_null() && locations(encrypted[0]).contains("backup.key"));
    let k = key_with(&report, &ca_spki);
    let ca_subject = ca.authority.store().certificates_by_key(&ca_spki).unwrap()[0].subject.clone();
    assert!(ca_subject.contains("Operational CA"), "{ca_subject}");
    assert_eq!(
        (k["registry"]["role"].as_str(), k["registry"]["name"].as_str()),
        (Some("ca"), Some(ca_subject.as_str())),
        "{k:#}"
    );
    let k = key_with(&report, &station_spki);
    assert_eq!(k["registry"]["role"], "station", "{k:#}");
    assert_eq!(
        report["private_keys"].as_array().unwrap().len(),
        8,
        "4 devices, the CA, the station, the decoy, the encrypted one"
    );
    // For people: a CA key is said loudly, with where the procedure is.
    let text = run_ok(bin().args(["firmware", "scan", "--dir", &s(&ca.dir), &s(&fw)]));
    assert!(text.contains("!!! THIS IS A CA KEY OF THIS AUTHORITY") && text.contains("docs/leaked-keys.md"), "{text}");
    assert!(text.contains("registry: device FW-1: certificates"), "{text}");
    let tokens = report["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{report:#}");
    assert_eq!((tokens[0]["device_serial"].as_str(), tokens[0]["used"].as_bool()), (Some("FW-9"), Some(false)));
    assert!(report["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["ours"]["serial"] == devices[0].3.as_str() && c["ours"]["device_serial"] == "FW-1"));
    // The report names keys by hash and place, never by their bytes.
    let text = report.to_string();
    let d1_key = std::fs::read_to_string(&devices[0].1).unwrap();
    let body: String = d1_key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!text.contains(&body[..40]), "the report holds key bytes");
    assert!(!text.contains(&token), "the report holds the token itself");

    // A release gate: status 3 when a key is found, 0 for a clean image.
    let out = bin().args(["firmware", "scan", "--fail-on-key", &s(&zip)]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(w.join("clean.bin"), vec![0x5a; 100_000]).unwrap();
    run_ok(bin().args(["firmware", "scan", "--fail-on-key", &s(&w.join("clean.bin"))]));

    // Before --revoke: every certificate is good, and a clone of FW-1 (its key, another serial) is refused.
    let d = ca.tmp.path().join("ocsp");
    std::fs::create_dir_all(&d).unwrap();
    for (serial, _, pem, _, _) in &devices {
        assert!(ocsp_status(&ca, pem, &d).ends_with(": good"), "{serial}");
    }
    let clone_state = ca.tmp.path().join("clone");
    std::fs::create_dir_all(&clone_state).unwrap();
    std::fs::copy(&devices[0].1, clone_state.join("key-1.pem")).unwrap();
    let t = ca.token("FW-CLONE");
    let e = iotpki_agent::enroll(&ca.enroll_opts(&clone_state, "FW-CLONE", &t)).await.unwrap_err().to_string();
    assert!(e.contains("certified already for device FW-1"), "{e}");
    let store = ca.authority.store();
    let audit = store.audit_entries(1, 10_000).unwrap();
    assert!(audit.iter().any(|a| a.event.action == "refuse.clone" && a.event.detail.contains("FW-1")), "clone audited");

    // --revoke: the four devices' certificates revoked (keyCompromise), the rest good.
    let before = ca.audit_len();
    let report = scan(&ca, &[&fw, &zip], &["--revoke"]);
    let mut revoked: Vec<String> =
        report["revoked"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    revoked.sort();
    let mut want: Vec<String> = devices[..4].iter().map(|d| d.3.clone()).collect();
    want.sort();
    let station_cert = store
        .list_certificates(&iotpki_store::CertQuery { profile: Some("station".into()), ..Default::default() })
        .unwrap();
    assert_eq!(station_cert.len(), 1);
    want.push(station_cert[0].serial.clone());
    want.sort();
    assert_eq!(revoked, want, "the devices' and the station's certificates");
    assert_eq!(
        report["blocked"].as_array().unwrap().len(),
        7,
        "four devices' keys, the CA's, the station's and the decoy"
    );
    // The CA's certificate is not revoked here (its ARL needs the root key): named instead.
    let ca_certs: Vec<String> = store.certificates_by_key(&ca_spki).unwrap().into_iter().map(|c| c.serial).collect();
    assert_eq!(
        report["not_revoked"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>(),
        ca_certs
    );
    for (i, (serial, _, pem, _, _)) in devices.iter().enumerate() {
        let status = ocsp_status(&ca, pem, &d);
        if i < 4 {
            assert!(status.ends_with(": revoked"), "{serial}: {status}");
        } else {
            assert!(status.ends_with(": good"), "{serial}: {status}");
        }
    }
    for serial in &want {
        let rec = store.certificate(serial).unwrap().unwrap();
        assert!(matches!(rec.status, iotpki_store::CertStatus::Revoked { reason: 1, .. }), "{rec:?}");
    }
    // One operation: 7 key.block entries and 5 revocations, audited as the scan's.
    let after = store.audit_entries(before + 1, 100).unwrap();
    assert_eq!(after.iter().filter(|a| a.event.action == "key.block").count(), 7, "{after:?}");
    assert_eq!(after.iter().filter(|a| a.event.action == "revoke").count(), 5);
    assert!(after.iter().all(|a| a.event.actor == "admin:firmware-scan"));
    let listed = run_ok(bin().args(["key", "list-blocked", "--dir", &s(&ca.dir)]));
    assert_eq!(listed.lines().count(), 7, "{listed}");
    assert!(listed.contains(&decoy));
    // The leaked token was withdrawn: it enrolls nothing.
    assert_eq!(report["tokens_withdrawn"], serde_json::json!(["FW-9"]));
    let leaked = ca.tmp.path().join("leaked-token");
    let e = iotpki_agent::enroll(&ca.enroll_opts(&leaked, "FW-9", &token)).await.unwrap_err().to_string();
    assert!(e.contains("enrollment token withdrawn at") && e.contains("found in a firmware image"), "{e}");
    // Scanning again revokes nothing more.
    let again = scan(&ca, &[&fw, &zip], &["--revoke"]);
    assert_eq!(again["revoked"].as_array().unwrap().len(), 0);

    // The decoy key is refused from now on, for a device that never had it.
    let decoy_state = ca.tmp.path().join("decoy");
    std::fs::create_dir_all(&decoy_state).unwrap();
    std::fs::copy(w.join("decoy.pem"), decoy_state.join("key-1.pem")).unwrap();
    let t = ca.token("FW-DECOY");
    let e = iotpki_agent::enroll(&ca.enroll_opts(&decoy_state, "FW-DECOY", &t)).await.unwrap_err().to_string();
    assert!(e.contains("is blocked as compromised"), "{e}");
}

/// `key block` by hash, certificate or key file and `key import`: blocked,
/// listed, refused; bad hashes refused with the reason, writing nothing.
#[tokio::test(flavor = "multi_thread")]
async fn keys_are_blocked_by_hash_certificate_key_file_and_list() {
    let ca = Ca::start().await;
    let state = ca.enrolled_device("KB-1").await;
    let (key, cert_pem, cert_serial) = key_and_cert(&state);
    let spki = spki_hash(&key);
    let w = ca.tmp.path().join("kb");
    std::fs::create_dir_all(&w).unwrap();
    let dir = s(&ca.dir);
    // By certificate: blocked, but the certificate stays good without --revoke.
    std::fs::write(w.join("c.pem"), &cert_pem).unwrap();
    let out = run_ok(bin().args(["key", "block", "--dir", &dir, "--cert", &s(&w.join("c.pem")), "--reason", "test"]));
    assert!(out.contains(&format!("blocked {spki}")) && out.contains("add --revoke"), "{out}");
    let store = ca.authority.store();
    assert_eq!(store.certificate(&cert_serial).unwrap().unwrap().status, iotpki_store::CertStatus::Good);
    // Its certificate is still good, but authenticates nothing: whoever holds the
    // leaked key cannot renew into a key of their own.
    let (n, certs) = (ca.audit_len(), ca.cert_count());
    let e = iotpki_agent::renew(&state, None, None).await.unwrap_err().to_string();
    assert!(e.contains("is blocked as compromised (test)"), "{e}");
    assert_eq!(ca.cert_count(), certs);
    assert!(ca.audit_len() > n, "the refusal is audited");
    // By key file, with --revoke: already blocked, and now revoked.
    let out = run_ok(bin().args(["key", "block", "--dir", &dir, "--key", &s(&key), "--revoke"]));
    assert!(
        out.contains(&format!("already blocked {spki}")) && out.contains(&format!("revoked {cert_serial}")),
        "{out}"
    );
    // A list: hashes, comments, sources.
    let (a, b) = ("ab".repeat(32), "CD".repeat(32));
    std::fs::write(w.join("list.txt"), format!("# leaked in vendor X's SDK\n{a} vendor-x sdk\n\n{b}\n")).unwrap();
    run_ok(bin().args(["key", "import", "--dir", &dir, &s(&w.join("list.txt"))]));
    let listed = run_ok(bin().args(["key", "list-blocked", "--dir", &dir, "--json"]));
    let rows: Vec<Value> = listed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().any(|r| r["spki_sha256"] == a && r["source"] == "vendor-x sdk"));
    assert!(rows.iter().any(|r| r["spki_sha256"] == b.to_lowercase()));
    let shown = run_ok(bin().args(["key", "show", "--dir", &dir, "--spki-hash", &spki, "--json"]));
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        (shown["role"].as_str(), shown["name"].as_str(), shown["blocked"]["reason"].as_str()),
        (Some("device"), Some("KB-1"), Some("test"))
    );
    // Bad input: the reason, nothing written.
    let n = ca.audit_len();
    std::fs::write(w.join("bad.txt"), format!("{a}\nnot-a-hash\n")).unwrap();
    let e = crate::util::run_fail(bin().args(["key", "import", "--dir", &dir, &s(&w.join("bad.txt"))]));
    assert!(e.contains("line 2") && e.contains("64 hex digits"), "{e}");
    let e = crate::util::run_fail(bin().args(["key", "block", "--dir", &dir, "--spki-hash", "abc"]));
    assert!(e.contains("64 hex digits"), "{e}");
    let e = crate::util::run_fail(bin().args(["key", "block", "--dir", &dir, "--cert", &s(&key)]));
    assert!(e.contains("no certificate found"), "{e}");
    assert_eq!(ca.audit_len(), n);
    // A renewal with the blocked key: refused (the device's certificate is revoked anyway;
    // a new token for the same serial and the same key is the path left).
    let fresh = ca.tmp.path().join("again");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::copy(&key, fresh.join("key-1.pem")).unwrap();
    let t = ca.token("KB-1");
    let e = iotpki_agent::enroll(&ca.enroll_opts(&fresh, "KB-1", &t)).await.unwrap_err().to_string();
    assert!(e.contains("blocked as compromised (test)"), "{e}");
}
