//! Certificates for the fleet's servers (`iotpki cert issue-server`,
//! `renew-server`), checked by peers we did not write: mosquitto (Debian's
//! MQTT broker, OpenSSL underneath) with `require_certificate true` and a
//! `crlfile`, the mosquitto_pub client, openssl verify and pkilint.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use iotpki_core::pem;
use iotpki_store::CertStatus;

use crate::util::{bin, openssl, run_fail, run_ok, Ca, PASS};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `iotpki cert SUB --dir CA ARGS...` with the passphrase in the environment.
fn cert_cmd(ca: &Ca, sub: &str, args: &[&str]) -> Command {
    let mut c = bin();
    c.args(["cert", sub, "--dir", s(&ca.dir)]).args(args).env("IOTPKI_PASSPHRASE", PASS);
    c
}

fn first_cert(path: &Path) -> Vec<u8> {
    pem::decode_all("CERTIFICATE", &std::fs::read_to_string(path).unwrap()).unwrap().remove(0)
}

fn serial_of(path: &Path) -> String {
    iotpki_core::profile::cert_info(&first_cert(path)).unwrap().serial
}

/// GET `url` as PEM from the authority's plain-HTTP listener.
fn fetch_pem(url: &str) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "-H", "Accept: application/x-pem-file", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The root's ARL and the operational CA's CRL, PEM, concatenated into `path`.
fn write_crls(http: &str, path: &Path) {
    let mut all = fetch_pem(&format!("{http}/crl/root.crl"));
    all.extend(fetch_pem(&format!("{http}/crl/operational.crl")));
    std::fs::write(path, all).unwrap();
}

/// A mosquitto broker started by a test, stopped on drop.
struct Broker {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// mosquitto in the foreground with one TLS listener on a free loopback
    /// port (picked by binding port 0 and releasing it; retried if another
    /// process took it meanwhile), requiring a client certificate that chains
    /// to `root` and is not on a CRL in `crls`.
    fn start(dir: &Path, server: &Path, root: &Path, crls: &Path) -> Broker {
        let (child, port, log) = crate::util::start_on_free_port("mosquitto", |port| {
            let log = dir.join(format!("mosquitto-{port}.log"));
            let conf = format!(
                "user root\npersistence false\nlog_dest file {log}\nlog_type all\nper_listener_settings false\n\
                 allow_anonymous true\nlistener {port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\ncafile {root}\n\
                 require_certificate true\nuse_identity_as_username true\ncrlfile {crls}\n",
                log = s(&log),
                cert = s(&server.join("fullchain.pem")),
                key = s(&server.join("server.key")),
                root = s(root),
                crls = s(crls),
            );
            let conf_path = dir.join("mosquitto.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let child = Command::new(MOSQUITTO)
                .args(["-c", s(&conf_path)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto (apt-get install mosquitto)");
            (child, log)
        });
        Broker { child, port, log }
    }

    /// mosquitto_pub as a device with `chain` (its certificate, then its CA) and
    /// `key`, checking the broker's certificate against `root` and its name
    /// (127.0.0.1). Ok(()) when the message was published, else its output.
    fn publish(&self, root: &Path, chain: &Path, key: &Path) -> Result<(), String> {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--cafile", s(root), "--cert", s(chain)])
            .args(["--key", s(key), "-t", "fleet/telemetry", "-m", "hello", "-q", "1", "-i", "iotpki-test"])
            .output()
            .expect("mosquitto_pub (apt-get install mosquitto-clients)");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once it holds `line`, or as it stands after 10 s: the broker writes
    /// a refusal after the client has seen the connection closed, so a loaded
    /// machine may read the log before the line is there.
    fn log_with(&self, line: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(line) || std::time::Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// A device's certificate followed by its chain, and its key file.
fn device_files(state: &Path, out: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let id = iotpki_agent::state::load(state).unwrap();
    let chain = out.join(format!("{name}.chain.pem"));
    std::fs::write(&chain, format!("{}{}", id.cert_pem, id.chain_pem)).unwrap();
    let serial =
        iotpki_core::profile::cert_info(&pem::decode_all("CERTIFICATE", &id.cert_pem).unwrap()[0]).unwrap().serial;
    (chain, state.join(&id.key_file), serial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_with_an_issued_server_certificate_accepts_an_enrolled_device_and_refuses_it_once_revoked() {
    let ca = Ca::start().await;
    let good = ca.enrolled_device("MQTT-GOOD").await;
    let bad = ca.enrolled_device("MQTT-BAD").await;
    let d = ca.tmp.path().join("mqtt");
    std::fs::create_dir_all(&d).unwrap();
    let (good_chain, good_key, _) = device_files(&good, &d, "good");
    let (bad_chain, bad_key, bad_serial) = device_files(&bad, &d, "bad");
    let broker_dir = d.join("broker");
    let before = ca.cert_count();

    let out = run_ok(&mut cert_cmd(
        &ca,
        "issue-server",
        &["--name", "127.0.0.1", "--name", "mqtt.iotpki.example", "--out", s(&broker_dir)],
    ));
    assert!(out.contains("issued server certificate"), "{out}");
    // Recorded and audited like every issuance.
    assert_eq!(ca.cert_count(), before + 1);
    let serial = serial_of(&broker_dir.join("server.crt"));
    let rec = ca.authority.store().certificate(&serial).unwrap().expect("recorded");
    assert_eq!((rec.profile.as_str(), rec.ca.as_str()), ("server", "operational"));
    assert_eq!(rec.der, first_cert(&broker_dir.join("server.crt")));
    let audit = ca.last_audit();
    assert_eq!(audit.event.action, "server.issue");
    assert!(audit.event.detail.contains(&format!("cert={serial}")), "{}", audit.event.detail);
    let mode = std::fs::metadata(broker_dir.join("server.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key is for the broker's eyes only");
    let root = broker_dir.join("root.pem");
    let verified = openssl(&[
        "verify",
        "-CAfile",
        s(&root),
        "-untrusted",
        s(&broker_dir.join("chain.pem")),
        "-purpose",
        "sslserver",
        "-verify_ip",
        "127.0.0.1",
        s(&broker_dir.join("server.crt")),
    ]);
    assert!(verified.contains(": OK"), "{verified}");

    let http = ca.http_url.clone();
    let dir = ca.dir.clone();
    tokio::task::spawn_blocking(move || {
        let crls = d.join("crls.pem");
        write_crls(&http, &crls);
        let b = Broker::start(&d, &broker_dir, &root, &crls);
        b.publish(&root, &good_chain, &good_key).unwrap_or_else(|e| panic!("good device refused: {e}\n{}", b.log()));
        b.publish(&root, &bad_chain, &bad_key).unwrap_or_else(|e| panic!("device refused before revocation: {e}"));
        // A client certificate from elsewhere is refused: the broker really requires ours.
        let stranger_key = d.join("stranger.key");
        let stranger = d.join("stranger.pem");
        crate::util::openssl_self_signed("/CN=STRANGER", s(&stranger_key), s(&stranger));
        assert!(b.publish(&root, &stranger, &stranger_key).is_err(), "a stranger's certificate was accepted");

        // Revoke one device with the CLI, refresh the CRL file, restart the broker.
        let out =
            run_ok(bin().args(["revoke", "--dir", s(&dir), "--serial", &bad_serial, "--reason", "keyCompromise"]));
        assert!(out.contains(&bad_serial), "{out}");
        drop(b);
        write_crls(&http, &crls);
        let b = Broker::start(&d, &broker_dir, &root, &crls);
        let refused = b.publish(&root, &bad_chain, &bad_key);
        assert!(refused.is_err(), "the revoked device still publishes");
        let log = b.log_with("certificate verify failed");
        assert!(log.contains("certificate verify failed"), "{log}");
        // ...because of the CRL: OpenSSL names the reason when asked directly.
        let why = Command::new("openssl")
            .args(["verify", "-crl_check", "-CAfile", s(&root), "-untrusted", s(&broker_dir.join("chain.pem"))])
            .args(["-CRLfile", s(&crls), s(&bad_chain)])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&why.stderr).contains("certificate revoked"), "{why:?}");
        b.publish(&root, &good_chain, &good_key).unwrap_or_else(|e| panic!("good device refused: {e}\n{}", b.log()));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_server_gives_a_new_key_and_the_same_names_and_supersedes_the_old_certificate_once() {
    let ca = Ca::start().await;
    let out_dir = ca.tmp.path().join("backend");
    run_ok(&mut cert_cmd(
        &ca,
        "issue-server",
        &["--name", "api.iotpki.example", "--name", "::1", "--out", s(&out_dir)],
    ));
    let old_cert = out_dir.join("old.crt");
    std::fs::copy(out_dir.join("server.crt"), &old_cert).unwrap();
    let old_key = std::fs::read(out_dir.join("server.key")).unwrap();
    let old_serial = serial_of(&old_cert);

    let out = run_ok(&mut cert_cmd(&ca, "renew-server", &["--cert", s(&out_dir.join("server.crt"))]));
    assert!(out.contains("renewed server certificate"), "{out}");
    let new_serial = serial_of(&out_dir.join("server.crt"));
    assert_ne!(new_serial, old_serial);
    assert_ne!(std::fs::read(out_dir.join("server.key")).unwrap(), old_key, "a new key");
    let mode = std::fs::metadata(out_dir.join("server.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let names = |p: &Path| {
        let info = iotpki_core::profile::cert_info(&first_cert(p)).unwrap();
        iotpki_authority::servers::san_names(&info.cert).unwrap()
    };
    assert_eq!(names(&out_dir.join("server.crt")), vec!["api.iotpki.example".to_string(), "::1".to_string()]);
    assert_eq!(names(&out_dir.join("server.crt")), names(&old_cert));
    let store = ca.authority.store();
    let old = store.certificate(&old_serial).unwrap().unwrap();
    assert_eq!(old.replaced_by.as_deref(), Some(new_serial.as_str()));
    assert!(matches!(old.status, CertStatus::Revoked { reason: 4, .. }), "{:?}", old.status);
    let new = store.certificate(&new_serial).unwrap().unwrap();
    assert_eq!((new.replaces.as_deref(), new.profile.as_str()), (Some(old_serial.as_str()), "server"));
    assert_eq!(ca.last_audit().event.action, "server.renew");

    // The old certificate cannot be renewed a second time: nothing is recorded.
    let (count, audit) = (ca.cert_count(), ca.audit_len());
    let err =
        run_fail(&mut cert_cmd(&ca, "renew-server", &["--cert", s(&old_cert), "--out", s(&ca.tmp.path().join("x"))]));
    assert!(err.contains("revoked") || err.contains("renewed already"), "{err}");
    assert_eq!((ca.cert_count(), ca.audit_len()), (count, audit));
    assert!(!ca.tmp.path().join("x").exists(), "nothing written for a refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_refusals_bad_names_a_device_or_forged_certificate_an_existing_key_record_nothing() {
    let ca = Ca::start().await;
    let dev = ca.enrolled_device("SRV-DEV").await;
    let (count, audit) = (ca.cert_count(), ca.audit_len());
    let out = ca.tmp.path().join("refused");
    for (names, why) in [
        (vec!["MQTT.Example.COM"], "fully qualified lowercase"),
        (vec!["broker"], "fully qualified lowercase"),
        (vec!["*.example.com"], "fully qualified lowercase"),
        (vec!["a.example.com", "a.example.com"], "given twice"),
    ] {
        let mut args = Vec::new();
        for n in &names {
            args.extend(["--name", n]);
        }
        args.extend(["--out", s(&out)]);
        let err = run_fail(&mut cert_cmd(&ca, "issue-server", &args));
        assert!(err.contains(why), "{names:?}: {err}");
    }
    let err =
        run_fail(&mut cert_cmd(&ca, "issue-server", &["--name", "a.example.com", "--days", "900", "--out", s(&out)]));
    assert!(err.contains("397 days"), "{err}");
    // A device's certificate is not a server's to renew.
    let dev_cert = ca.tmp.path().join("dev.pem");
    std::fs::write(&dev_cert, iotpki_agent::state::load(&dev).unwrap().cert_pem).unwrap();
    let err = run_fail(&mut cert_cmd(&ca, "renew-server", &["--cert", s(&dev_cert), "--out", s(&out)]));
    assert!(err.contains("not a server's"), "{err}");
    assert_eq!((ca.cert_count(), ca.audit_len()), (count, audit), "a refusal records nothing");
    assert!(!out.exists(), "a refusal writes nothing");
    // A key in --out is never overwritten.
    run_ok(&mut cert_cmd(&ca, "issue-server", &["--name", "a.example.com", "--out", s(&out)]));
    // A forged copy of a recorded server certificate (same serial, other bytes) is not renewed.
    let mut forged = first_cert(&out.join("server.crt"));
    *forged.last_mut().unwrap() ^= 0x01;
    let forged_file = ca.tmp.path().join("forged.pem");
    std::fs::write(&forged_file, pem::encode("CERTIFICATE", &forged)).unwrap();
    let elsewhere = ca.tmp.path().join("elsewhere");
    let (c, a) = (ca.cert_count(), ca.audit_len());
    let err = run_fail(&mut cert_cmd(&ca, "renew-server", &["--cert", s(&forged_file), "--out", s(&elsewhere)]));
    assert!(err.contains("differs from the one recorded"), "{err}");
    assert_eq!((ca.cert_count(), ca.audit_len()), (c, a));
    assert!(!elsewhere.exists());
    let key = std::fs::read(out.join("server.key")).unwrap();
    let (count, audit) = (ca.cert_count(), ca.audit_len());
    let err = run_fail(&mut cert_cmd(&ca, "issue-server", &["--name", "b.example.com", "--out", s(&out)]));
    assert!(err.contains("never overwrites a key"), "{err}");
    assert_eq!(std::fs::read(out.join("server.key")).unwrap(), key);
    assert_eq!((ca.cert_count(), ca.audit_len()), (count, audit));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_server_certificate_and_its_chain_lint_clean_with_pkilint() {
    let ca = Ca::start().await;
    let out = ca.tmp.path().join("lint");
    run_ok(&mut cert_cmd(
        &ca,
        "issue-server",
        &["--name", "mqtt.iotpki.example", "--name", "192.0.2.10", "--out", s(&out)],
    ));
    tokio::task::spawn_blocking(move || {
        let (cert, chain, root) = (out.join("server.crt"), out.join("chain.pem"), out.join("root.pem"));
        for c in [&cert, &chain] {
            crate::pkilint::lint(&[c], "lint_pkix_cert");
        }
        crate::pkilint::lint(&[&chain, &cert], "lint_pkix_signer_signee_cert_chain");
        crate::pkilint::lint(&[&root, &chain], "lint_pkix_signer_signee_cert_chain");
    })
    .await
    .unwrap();
}
