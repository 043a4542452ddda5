//! A device whose keys live in a TPM 2.0 (a software TPM, swtpm, on a local
//! port): born on a factory line with `agent line --keystore tpm`,
//! commissioned by its owner, renewed over mutual TLS, every signature (the
//! CSRs, the TLS 1.3 CertificateVerify) made by the TPM; and the failures an
//! operator meets (the TPM unreachable, a key blob deleted, another TPM)
//! refused with what to do, the device's state unchanged.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use iotpki_core::keys::Signer as _;
use iotpki_core::{pem, profile};
use iotpki_tpm::swtpm::SwTpm;
use iotpki_tpm::Tpm;

use crate::util::{batch, bin, run_fail, run_ok, station, Ca, DeadPort};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn identity(dev: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dev.join("identity.json")).unwrap()).unwrap()
}

/// The state directory's files, sorted, with their contents.
fn snapshot(dev: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dev)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

fn names(dev: &Path) -> Vec<String> {
    snapshot(dev).into_iter().map(|(n, _)| n).collect()
}

/// The SHA-256 of the subjectPublicKeyInfo of the certificate `pem_text`.
fn cert_key(pem_text: &serde_json::Value) -> String {
    let der = pem::decode_one("CERTIFICATE", pem_text.as_str().unwrap()).unwrap();
    profile::cert_info(&der).unwrap().spki_sha256
}

/// Load the blob `dev/name` in the TPM at `tcti` (nobody else may be using
/// it: swtpm serves one connection at a time): the key's fingerprint, after
/// checking what the TPM says about it.
fn tpm_key(tcti: &str, dev: &Path, name: &str) -> String {
    let tpm = Tpm::open(tcti).unwrap();
    let key = tpm.load_key(&std::fs::read(dev.join(name)).unwrap()).unwrap();
    let a = key.attributes().unwrap();
    assert!(a.fixed_tpm && a.fixed_parent && a.sensitive_data_origin && a.sign && !a.decrypt, "{a:?}");
    iotpki_core::keys::spki_fingerprint(key.public_key_der())
}

/// A port nothing listens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_keys_in_a_tpm_from_the_factory_line_to_renewal() {
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    batch(&mfg, "TB", &["TPM-1".to_string()], 1);
    let st = station(&mfg, "line-tpm", &["TB"]);
    let tmp = mfg.tmp.path().to_path_buf();
    let dev = tmp.join("device");
    let tpm_dir = tmp.join("tpm");
    // The servers keep running on the runtime's other worker while this one blocks.
    tokio::task::block_in_place(|| {
        // The owner trusts the manufacturer and claims the device.
        run_ok(
            bin()
                .args(["trust", "add-manufacturer", "--name", "acme", "--dir", s(&op.dir)])
                .arg(mfg.ca_file("manufacturing")),
        );

        // No TPM at the TCTI: the line device says so before it lets a station in.
        let dead_port = DeadPort::new();
        let dead = format!("swtpm:host=127.0.0.1,port={}", dead_port.1.port());
        let e = run_fail(bin().args(["agent", "line", "--listen", "127.0.0.1:0", "--state", s(&dev)]).args([
            "--serial",
            "TPM-1",
            "--keystore",
            "tpm",
            "--tcti",
            &dead,
        ]));
        assert!(e.contains(&format!("the TPM at {dead:?} is not reachable")) && e.contains("is running"), "{e}");
        assert!(!dev.join("identity.json").exists());

        let mut sw = SwTpm::start(&tpm_dir).unwrap();
        let tcti = sw.tcti();
        let port = sw.port();

        // Birth on the factory line: the device makes its key in the TPM and
        // signs its request there; the station enrolls it with the authority.
        let mut device = bin()
            .args(["agent", "line", "--listen", "127.0.0.1:0", "--state", s(&dev), "--serial", "TPM-1"])
            .args(["--keystore", "tpm", "--tcti", &tcti])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(device.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let addr = first.trim().trim_start_matches("line listening on ").to_string();
        let run = run_ok(bin().args(["factory", "run", "--station-dir", s(&st), "--batch", "TB", "--line", &addr]));
        assert!(run.contains("1 born, 0 refused, 0 failed"), "{run}");
        assert!(device.wait().unwrap().success());

        let born = identity(&dev);
        assert_eq!(born["keystore"], serde_json::json!({"kind": "tpm", "tcti": tcti}));
        let birth_blob = born["key_file"].as_str().unwrap().to_string();
        assert_eq!(birth_blob, "tpm-key-0.blob");
        assert_eq!(born["birth"]["key_file"], birth_blob.as_str());
        // No private key on disk: the blob is the key wrapped by this TPM.
        assert_eq!(names(&dev), vec!["identity.json".to_string(), birth_blob.clone()]);
        assert!(std::fs::read(dev.join(&birth_blob)).unwrap().starts_with(b"iotpki-tpm-key-v1\n"));
        assert_eq!(tpm_key(&tcti, &dev, &birth_blob), cert_key(&born["cert_pem"]));

        // The owner claims it with the manufacturer's births file.
        let claims = tmp.join("births.csv");
        std::fs::write(&claims, mfg.authority.export_births(Some(&["TPM-1".to_string()])).unwrap()).unwrap();
        run_ok(bin().args(["device", "claim", "--dir", s(&op.dir), "--births", s(&claims)]));
        // Commissioning: the birth key (in the TPM) signs the TLS handshake, a
        // new TPM key the request; the birth blob is kept.
        let op_root = op.root_file();
        let out = run_ok(
            bin()
                .args(["agent", "commission", "--state", s(&dev), "--server", &op.url])
                .args(["--ca-cert", s(&op_root)]),
        );
        assert!(out.contains("commissioned TPM-1"), "{out}");
        let commissioned = identity(&dev);
        let op_blob = commissioned["key_file"].as_str().unwrap().to_string();
        assert_eq!(op_blob, "tpm-key-1.blob");
        assert_eq!(commissioned["birth"]["key_file"], birth_blob.as_str());
        assert_eq!(commissioned["keystore"]["kind"], "tpm");
        assert_eq!(tpm_key(&tcti, &dev, &op_blob), cert_key(&commissioned["cert_pem"]));

        // Renewal over mutual TLS: the CertificateVerify is signed by the TPM
        // key (there is no other copy); the replaced blob is deleted.
        let out = run_ok(bin().args(["agent", "renew", "--state", s(&dev)]));
        assert!(out.contains("renewed TPM-1"), "{out}");
        let renewed = identity(&dev);
        let new_blob = renewed["key_file"].as_str().unwrap().to_string();
        assert_eq!(names(&dev), vec!["identity.json".to_string(), birth_blob.clone(), new_blob.clone()]);
        assert!(new_blob != op_blob && new_blob != birth_blob, "{new_blob}");
        assert_eq!(tpm_key(&tcti, &dev, &new_blob), cert_key(&renewed["cert_pem"]));
        let status = run_ok(bin().args(["agent", "status", "--state", s(&dev)]));
        assert!(status.contains(&format!("key:           p256 (tpm {tcti})")), "{status}");
        assert!(status.contains("renewals:      1"), "{status}");
        let cert = |v: &serde_json::Value| {
            profile::cert_info(&pem::decode_one("CERTIFICATE", v.as_str().unwrap()).unwrap()).unwrap().serial
        };
        let rec = op.authority.store().certificate(&cert(&renewed["cert_pem"])).unwrap().unwrap();
        assert_eq!(rec.replaces.as_deref(), Some(cert(&commissioned["cert_pem"]).as_str()));
        assert_eq!(op.last_audit().event.action, "reenroll");

        // The TPM away: renewal and commissioning say which TCTI and what to
        // do; nothing changes on the device or at the authority.
        drop(sw);
        let before = snapshot(&dev);
        let certs = op.cert_count();
        for cmd in [&["agent", "renew"][..], &["agent", "commission"][..]] {
            let e = run_fail(bin().args(cmd).args(["--state", s(&dev)]));
            assert!(
                e.contains(&format!("keystore: the TPM at {tcti:?} is not reachable")) && e.contains("is running"),
                "{e}"
            );
            assert_eq!(snapshot(&dev), before, "{cmd:?} changed the device's state");
        }
        assert_eq!(op.cert_count(), certs);

        // The same TPM back (its state kept): the blobs load again.
        sw = SwTpm::start_at(&tpm_dir, port).unwrap();
        let out = run_ok(bin().args(["agent", "renew", "--state", s(&dev)]));
        assert!(out.contains("renewed TPM-1"), "{out}");

        // The current key's blob deleted: renewal names the file and the way
        // back; commissioning with the birth key (still in the TPM) is that way.
        let id = identity(&dev);
        let current = id["key_file"].as_str().unwrap().to_string();
        std::fs::remove_file(dev.join(&current)).unwrap();
        let before = snapshot(&dev);
        let certs = op.cert_count();
        let e = run_fail(bin().args(["agent", "renew", "--state", s(&dev)]));
        let p = dev.join(&current);
        assert!(e.contains(&format!("the TPM key blob {} is missing", p.display())), "{e}");
        assert!(e.contains("commission again with the birth certificate"), "{e}");
        assert_eq!(snapshot(&dev), before);
        assert_eq!(op.cert_count(), certs);
        let out = run_ok(bin().args(["agent", "commission", "--state", s(&dev)]));
        assert!(out.contains("commissioned TPM-1"), "{out}");
        let back = identity(&dev);
        assert_eq!(back["birth"]["key_file"], birth_blob.as_str());
        let back_blob = back["key_file"].as_str().unwrap().to_string();
        assert_eq!(names(&dev), vec!["identity.json".to_string(), birth_blob.clone(), back_blob]);

        // Another TPM at the same TCTI (a fresh one): the blobs do not load there.
        drop(sw);
        let other = SwTpm::start_at(&tmp.join("other-tpm"), port).unwrap();
        let before = snapshot(&dev);
        let e = run_fail(bin().args(["agent", "renew", "--state", s(&dev)]));
        assert!(e.contains("this TPM refused to load it") && e.contains("another TPM"), "{e}");
        assert!(e.contains(&format!("Check that the TCTI ({tcti})")), "{e}");
        assert_eq!(snapshot(&dev), before);
        assert_eq!(op.cert_count(), certs + 1);

        // A device enrolled with a token keeps its key in a TPM too (here the other one);
        // a TPM keystore makes P-256 keys only, and says so before asking the server.
        let token = op.token("TPM-2");
        let dev2 = tmp.join("device-2");
        let enroll = |key_type: &str| {
            let mut c = bin();
            c.args(["agent", "enroll", "--state", s(&dev2), "--server", &op.url, "--serial", "TPM-2"])
                .args(["--token", &token, "--ca-cert", s(&op_root), "--key-type", key_type])
                .args(["--keystore", "tpm", "--tcti", &tcti]);
            c
        };
        let e = run_fail(&mut enroll("p384"));
        assert!(e.contains("a TPM keystore makes p256 keys, not p384"), "{e}");
        assert!(!dev2.join("identity.json").exists());
        let out = run_ok(&mut enroll("p256"));
        assert!(out.contains("enrolled TPM-2"), "{out}");
        let id2 = identity(&dev2);
        assert_eq!(id2["keystore"]["kind"], "tpm");
        assert_eq!(names(&dev2), vec!["identity.json".to_string(), "tpm-key-0.blob".to_string()]);
        drop(other);
    });
}

/// `agent line` for `serial` with `keystore` flags (killed when dropped) and
/// `factory run` of station `st` on batch `batch` against it: the run's
/// stdout (it fails when a device fails).
fn line_birth(tmp: &Path, st: &Path, batch: &str, serial: &str, keystore: &[&str]) -> String {
    let dev = tmp.join(format!("dev-{serial}-{}", keystore.len()));
    let mut child = bin()
        .args(["agent", "line", "--listen", "127.0.0.1:0", "--state", s(&dev), "--serial", serial])
        .args(keystore)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let _device = crate::util::Server(child);
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let addr = first.trim().trim_start_matches("line listening on ").to_string();
    let o = bin().args(["factory", "run", "--station-dir", s(st), "--batch", batch, "--line", &addr]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_requires_tpm_attestation_takes_only_keys_in_the_registered_tpm() {
    let ca = Ca::start().await;
    let tmp = ca.tmp.path().to_path_buf();
    let d = ca.dir.to_str().unwrap().to_string();
    tokio::task::block_in_place(|| {
        let serials = tmp.join("serials.csv");
        std::fs::write(&serials, "TA-1\nTA-2\nTA-3\n").unwrap();
        let create = ["batch", "create", "--dir", &d, "--product", "p", "--serials", s(&serials), "--quota", "3"];
        let window = ["--from", "2020-01-01T00:00:00Z", "--until", "2099-01-01T00:00:00Z"];
        // The requirement is made with the batch, whose id may be generated.
        let generated = run_ok(bin().args(create).args(window).arg("--require-tpm-attestation"));
        let show: serde_json::Value =
            serde_json::from_str(&run_ok(bin().args(["batch", "show", "--dir", &d, generated.trim(), "--json"])))
                .unwrap();
        assert_eq!(show["tpm_attestation"], "required");
        run_ok(bin().args(create).args(window).args(["--id", "AB", "--require-tpm-attestation"]));
        run_ok(bin().args(create).args(["--id", "PLAIN"]));
        let show: serde_json::Value =
            serde_json::from_str(&run_ok(bin().args(["batch", "show", "--dir", &d, "AB", "--json"]))).unwrap();
        assert_eq!(show["tpm_attestation"], "required");
        // Creating an existing batch again with the flag fails and leaves it as it was.
        let e = run_fail(bin().args(create).args(window).args(["--id", "PLAIN", "--require-tpm-attestation"]));
        assert!(e.contains("batch PLAIN exists already"), "{e}");
        let show: serde_json::Value =
            serde_json::from_str(&run_ok(bin().args(["batch", "show", "--dir", &d, "PLAIN", "--json"]))).unwrap();
        assert_eq!(show["tpm_attestation"], "no");

        // The manufacturer reads the EK of the TPM that goes into TA-1 (and, by
        // mistake, registers the same EK for TA-3, whose TPM is another).
        let sw = SwTpm::start(&tmp.join("tpm")).unwrap();
        let other = SwTpm::start(&tmp.join("other-tpm")).unwrap();
        let ek_pem = run_ok(bin().args(["agent", "tpm-ek", "--tcti", &sw.tcti()]));
        assert!(ek_pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{ek_pem}");
        let ek_file = tmp.join("ek.pem");
        std::fs::write(&ek_file, &ek_pem).unwrap();
        let ek_der = pem::decode_one("PUBLIC KEY", &ek_pem).unwrap();
        let ek_fpr = iotpki_core::keys::spki_fingerprint(&ek_der);
        let add_ek = |batch: &str, serial: &str, file: &Path| {
            let mut c = bin();
            c.args(["batch", "add-ek", "--dir", &d, "--batch", batch, "--serial", serial, "--ek", s(file)]);
            c
        };
        let out = run_ok(&mut add_ek("AB", "TA-1", &ek_file));
        assert!(out.contains(&format!("EK {ek_fpr} registered for TA-1 in batch AB")), "{out}");
        run_ok(&mut add_ek("AB", "TA-3", &ek_file));
        // Refused: a second EK for a serial, an EK for a batch that does not check them, not an EK.
        let other_ek = tmp.join("other-ek.pem");
        std::fs::write(&other_ek, run_ok(bin().args(["agent", "tpm-ek", "--tcti", &other.tcti()]))).unwrap();
        let e = run_fail(&mut add_ek("AB", "TA-1", &other_ek));
        assert!(e.contains(&format!("serial TA-1 in batch AB already has EK {ek_fpr} registered")), "{e}");
        let e = run_fail(&mut add_ek("PLAIN", "TA-1", &ek_file));
        assert!(e.contains("batch PLAIN does not require TPM attestation"), "{e}");
        let e = run_fail(&mut add_ek("AB", "TA-2", &serials));
        assert!(e.contains("EK public key"), "{e}");

        let st = station(&ca, "st-att", &["AB"]);
        // A delegated CA would issue without the authority: not for this batch.
        let e = ca.authority.delegate_station("st-att", "AB", &ek_der, "test").unwrap_err().to_string();
        assert!(e.contains("requires TPM attestation") && e.contains("cannot issue offline"), "{e}");
        let certs = ca.cert_count();
        let tpm_a = ["--keystore", "tpm", "--tcti", &sw.tcti()];

        // A key in a file cannot prove anything: refused, nothing issued.
        let out = line_birth(&tmp, &st, "AB", "TA-2", &[]);
        assert!(out.contains("0 born, 1 refused"), "{out}");
        assert!(
            out.contains("batch AB requires TPM attestation and device TA-2 did not prove its key is in a TPM"),
            "{out}"
        );
        // A TPM whose EK nobody registered for that serial.
        let out = line_birth(&tmp, &st, "AB", "TA-2", &tpm_a);
        assert!(out.contains("0 born, 1 refused"), "{out}");
        assert!(out.contains("no TPM endorsement key is registered for serial TA-2 in batch AB"), "{out}");
        // A TPM other than the one registered for the serial cannot open the challenge.
        let out = line_birth(&tmp, &st, "AB", "TA-3", &["--keystore", "tpm", "--tcti", &other.tcti()]);
        assert!(out.contains("0 born, 1 refused"), "{out}");
        assert!(out.contains("the device's TPM is not the one whose EK is registered for TA-3"), "{out}");
        assert_eq!(ca.cert_count(), certs, "nothing issued");

        // The registered TPM: born, and the audit entry names its EK.
        let out = line_birth(&tmp, &st, "AB", "TA-1", &tpm_a);
        assert!(out.contains("1 born, 0 refused, 0 failed"), "{out}");
        assert_eq!(ca.cert_count(), certs + 1);
        let last = ca.last_audit();
        assert_eq!(last.event.action, "birth");
        assert!(last.event.detail.contains(&format!("tpm-ek={ek_fpr}")), "{:?}", last.event);
        let show: serde_json::Value =
            serde_json::from_str(&run_ok(bin().args(["batch", "show", "--dir", &d, "AB", "--json"]))).unwrap();
        // The authority refused two (the device that proved nothing, the serial without an EK);
        // the third never came back to it.
        assert_eq!((show["issued"].as_u64(), show["refused"].as_u64()), (Some(1), Some(2)));
    });
}
