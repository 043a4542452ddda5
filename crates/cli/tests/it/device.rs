//! `iotpki-device` (issue #16), built as a device maker builds it
//! (`cargo build --profile device -p iotpki-device`; scripts/test builds it
//! before the tests, so here the build is a no-op): it enrolls, renews,
//! commissions, applies and runs like `iotpki agent`, links only the C library,
//! and refuses what the agent refuses with the very same messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use iotpki_core::keys::{KeyType, SoftKey};

use crate::util::{bin, run_fail, run_ok, signed_bundle, Ca, DeadPort};

/// `cargo build --profile device -p iotpki-device --bin iotpki-device` (the
/// default device features, pkg-config out of reach); the binary's path.
pub fn device_binary() -> PathBuf {
    crate::util::cargo_build_bin(
        &["--profile", "device", "-p", "iotpki-device", "--bin", "iotpki-device"],
        "iotpki-device",
    )
}

fn device(exe: &Path) -> Command {
    let mut c = Command::new(exe);
    c.env_remove("IOTPKI_TOKEN").env_remove("IOTPKI_PIN");
    c
}

fn agent() -> Command {
    let mut c = bin();
    c.arg("agent").env_remove("IOTPKI_TOKEN").env_remove("IOTPKI_PIN");
    c
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn cert_serial(state: &Path) -> String {
    let st: serde_json::Value =
        serde_json::from_str(&run_ok(agent().args(["status", "--json", "--state"]).arg(state))).unwrap();
    st["cert_serial"].as_str().unwrap().to_string()
}

/// The device binary's whole life on one identity: enroll with a token file,
/// status (the same JSON as the agent's), renew, a first trust bundle at the
/// factory and a fetch of the CRLs, a run with nothing due, and `ldd` naming only
/// the C library, the loader and the GCC runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_binary_enrolls_renews_applies_and_runs_like_the_agent() {
    let exe = blocking(device_binary).await;
    let ca = Ca::start().await;
    let tmp = ca.tmp.path().to_path_buf();
    let state = tmp.join("dev");
    let token_file = tmp.join("token");
    std::fs::write(&token_file, format!("{}\n", ca.token("DEV-1"))).unwrap();
    let (url, root, http) = (ca.url.clone(), ca.root_file(), ca.http_url.clone());
    let keys: Vec<SoftKey> = (0..2).map(|_| SoftKey::generate(KeyType::EcdsaP256).unwrap()).collect();
    let bundle = tmp.join("bundle.cbor");
    std::fs::write(&bundle, signed_bundle(&ca, &keys, 1)).unwrap();
    let certs = ca.cert_count();

    let (st, first, second) = {
        let (exe, state) = (exe.clone(), state.clone());
        blocking(move || {
            let out = run_ok(device(&exe).args(["enroll", "--server", &url, "--serial", "DEV-1"]).args([
                "--state".as_ref(),
                state.as_os_str(),
                "--token-file".as_ref(),
                token_file.as_os_str(),
                "--ca-cert".as_ref(),
                root.as_os_str(),
            ]));
            assert!(out.starts_with("enrolled DEV-1 as "), "{out}");
            let first = cert_serial(&state);
            let dev_json = run_ok(device(&exe).args(["status", "--json", "--state"]).arg(&state));
            let agent_json = run_ok(agent().args(["status", "--json", "--state"]).arg(&state));
            // One format; days_left may tick between the two runs (a slow machine).
            let days = |j: &str| -> (serde_json::Value, i64) {
                let mut v: serde_json::Value = serde_json::from_str(j).unwrap();
                let d = v.as_object_mut().unwrap().remove("days_left").and_then(|d| d.as_i64()).unwrap();
                (v, d)
            };
            let ((dev, dev_days), (agent, agent_days)) = (days(&dev_json), days(&agent_json));
            assert_eq!(dev, agent, "one status, one format");
            assert!((dev_days - agent_days).abs() <= 1, "{dev_json}\n{agent_json}");
            assert_eq!(dev_json.lines().count(), agent_json.lines().count(), "{dev_json}\n{agent_json}");
            let out = run_ok(device(&exe).args(["renew", "--state"]).arg(&state));
            assert!(out.starts_with("renewed DEV-1: certificate "), "{out}");
            let second = cert_serial(&state);
            let out = run_ok(device(&exe).args(["apply", "--initial", "--state"]).arg(&state).arg(&bundle));
            assert!(out.contains("trust bundle version 1 installed"), "{out}");
            let out = run_ok(device(&exe).args(["fetch", "--state"]).arg(&state).args(["--from", &http]));
            assert!(out.contains("CRL") && out.contains("installed"), "{out}");
            let out = run_ok(device(&exe).args(["run", "--once", "--no-ocsp", "--state"]).arg(&state));
            assert!(out.contains("next renewal due at"), "{out}");
            let st: serde_json::Value = serde_json::from_str(&dev_json).unwrap();
            (st, first, second)
        })
        .await
    };
    assert_eq!(st["device_serial"], "DEV-1");
    assert_ne!(first, second, "the renewal brought a new certificate");
    assert_eq!(ca.cert_count(), certs + 2, "one enrollment, one renewal");
    assert!(state.join("bundle.cbor").exists());

    let out = Command::new("ldd").arg(&exe).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for lib in text.lines().filter_map(|l| l.split_whitespace().next()) {
        let name = lib.rsplit('/').next().unwrap_or(lib);
        assert!(crate::release::ALLOWED.iter().any(|a| name.starts_with(a)), "{} links {lib}:\n{text}", exe.display());
    }
}

fn fails(c: &mut Command) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    assert!(!out.status.success(), "{c:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    out
}

/// The same refusals from both binaries, byte for byte on stderr: a wrong
/// token, no token, an identity already there, no identity to renew, garbage
/// to apply, a bundle that is not the first without --initial, an unreadable
/// anchor, a bad serial, a server that is not there. Nothing is left changed.
/// And what the default device build leaves out (PKCS#11, coaps) is refused
/// with the reason, before anything is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_binary_refuses_what_the_agent_refuses_with_the_same_messages() {
    let exe = blocking(device_binary).await;
    let ca = Ca::start().await;
    let tmp = ca.tmp.path().to_path_buf();
    let enrolled = ca.enrolled_device("DEV-2").await;
    let (url, root) = (ca.url.clone(), ca.root_file());
    let wrong = tmp.join("wrong-token");
    std::fs::write(&wrong, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n").unwrap();
    let garbage = tmp.join("garbage");
    std::fs::write(&garbage, b"\x30\x03\x02\x01\x00 not a bundle, a voucher or a CRL").unwrap();
    let keys: Vec<SoftKey> = (0..2).map(|_| SoftKey::generate(KeyType::EcdsaP256).unwrap()).collect();
    let bundle = tmp.join("bundle.cbor");
    std::fs::write(&bundle, signed_bundle(&ca, &keys, 1)).unwrap();
    let identity_before = std::fs::read(enrolled.join("identity.json")).unwrap();
    let certs = ca.cert_count();

    let dev = enrolled.clone();
    let checked = blocking(move || {
        let enrolled = dev;
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let fresh = s(&tmp.join("fresh"));
        let dead_port = DeadPort::new();
        let dead = dead_port.1;
        let cases: Vec<Vec<String>> = vec![
            // A wrong token: the server refuses it.
            ["enroll", "--state", &fresh, "--server", &url, "--serial", "DEV-3", "--token-file", &s(&wrong)]
                .iter()
                .map(|a| a.to_string())
                .chain(["--ca-cert".into(), s(&root)])
                .collect(),
            // No token at all.
            ["enroll", "--state", &fresh, "--server", &url, "--serial", "DEV-3", "--ca-cert", &s(&root)]
                .map(String::from)
                .to_vec(),
            // An identity is already there.
            ["enroll", "--state", &s(&enrolled), "--server", &url, "--serial", "DEV-2", "--token", "x", "--ca-cert"]
                .iter()
                .map(|a| a.to_string())
                .chain([s(&root)])
                .collect(),
            // No identity to renew.
            ["renew", "--state", &s(&tmp.join("nobody"))].map(String::from).to_vec(),
            // Garbage to apply; a first bundle without --initial.
            ["apply", "--state", &s(&enrolled), &s(&garbage)].map(String::from).to_vec(),
            ["apply", "--state", &s(&enrolled), &s(&bundle)].map(String::from).to_vec(),
            // The anchor cannot be read; the serial is not one.
            ["enroll", "--state", &fresh, "--server", &url, "--serial", "DEV-3", "--token", "x", "--ca-cert"]
                .iter()
                .map(|a| a.to_string())
                .chain([s(&tmp.join("no-such-root.pem"))])
                .collect(),
            ["enroll", "--state", &fresh, "--server", &url, "--serial", "bad serial!", "--token", "x", "--ca-cert"]
                .iter()
                .map(|a| a.to_string())
                .chain([s(&root)])
                .collect(),
            // No server there.
            ["renew", "--state", &s(&enrolled), "--server", &format!("https://{dead}")].map(String::from).to_vec(),
        ];
        for args in &cases {
            let a = fails(agent().args(args));
            let d = fails(device(&exe).args(args));
            assert_eq!(
                String::from_utf8_lossy(&a.stderr),
                String::from_utf8_lossy(&d.stderr),
                "iotpki agent and iotpki-device differ on {args:?}"
            );
            assert_eq!(a.status.code(), d.status.code(), "{args:?}");
        }

        // A usage error: the same words from both parsers of the one table (clap in
        // `iotpki agent`, the device's own), status 2.
        for args in [vec!["enroll", "--state", &fresh, "--bogus"], vec!["run", "--state", &fresh, "--jitter", "x"]] {
            let (a, d) = (fails(agent().args(&args)), fails(device(&exe).args(&args)));
            let first = |o: &Output| String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or_default().to_string();
            assert_eq!(first(&a), first(&d), "{args:?}");
            assert!(first(&d).starts_with("error: "), "{args:?}: {}", first(&d));
            assert_eq!((a.status.code(), d.status.code()), (Some(2), Some(2)), "{args:?}");
        }

        // The garbage starts as DER does, so it is read as a CRL, and refused as one
        // (by the entry-by-entry reader, before anything is checked or stored).
        let err = run_fail(device(&exe).args(["apply", "--state", &s(&enrolled), &s(&garbage)]));
        assert!(err.contains("CRL refused: malformed CRL"), "{err}");

        // Left out of the default device build: said so, nothing made.
        let other = s(&tmp.join("other"));
        let base = ["enroll", "--state", &other, "--serial", "DEV-4", "--token", "x", "--ca-cert", &s(&root)];
        let err = run_fail(
            device(&exe)
                .args(base)
                .args(["--server", &url, "--keystore", "pkcs11:token=t"])
                .args(["--pkcs11-module", "/nonexistent.so"]),
        );
        assert!(err.contains("no PKCS#11 keystore") && err.contains("`pkcs11` feature"), "{err}");
        let err = run_fail(device(&exe).args(base).args(["--server", "coaps://127.0.0.1:5684"]));
        assert!(err.contains("no EST over secure CoAP") && err.contains("`coaps` feature"), "{err}");
        // ML-DSA (issue #19): ring has none; the agent's aws-lc build has it.
        let err = run_fail(device(&exe).args(base).args(["--server", &url, "--key-type", "ml-dsa-44"]));
        assert!(err.contains("ml-dsa-44: ML-DSA needs iotpki's aws-lc build"), "{err}");
        assert!(!Path::new(&other).join("identity.json").exists());
        cases.len()
    })
    .await;
    assert_eq!(checked, 9);
    assert_eq!(std::fs::read(enrolled.join("identity.json")).unwrap(), identity_before, "nothing changed");
    assert_eq!(ca.cert_count(), certs, "nothing issued");
}

/// A device moving between the two builds keeps its identity: keys the agent
/// wrote (aws-lc) are loaded and used by the device binary (ring), and keys the
/// device binary wrote by the agent, for every key type a device makes. Each
/// renewal proves the old key in mutual TLS and writes a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_written_on_aws_lc_serve_the_ring_build_and_back() {
    let exe = blocking(device_binary).await;
    let ca = Ca::start().await;
    let tmp = ca.tmp.path().to_path_buf();
    for (n, kt) in ["p256", "p384", "ed25519"].into_iter().enumerate() {
        let serial = format!("MOVE-{n}");
        let state = tmp.join(&serial);
        let token = ca.token(&serial);
        let (exe, url, root) = (exe.clone(), ca.url.clone(), ca.root_file());
        blocking(move || {
            let out = run_ok(agent().args(["enroll", "--server", &url, "--serial", &serial, "--key-type", kt]).args([
                "--token".as_ref(),
                token.as_ref(),
                "--state".as_ref(),
                state.as_os_str(),
                "--ca-cert".as_ref(),
                root.as_os_str(),
            ]));
            assert!(out.starts_with(&format!("enrolled {serial} as ")), "{kt}: {out}");
            let mut seen = vec![cert_serial(&state)];
            for (who, mut cmd) in [("device", device(&exe)), ("agent", agent()), ("device", device(&exe))] {
                let out = run_ok(cmd.args(["renew", "--state"]).arg(&state));
                assert!(out.starts_with(&format!("renewed {serial}: certificate ")), "{kt}, {who}: {out}");
                let now = cert_serial(&state);
                assert!(!seen.contains(&now), "{kt}, {who}: the same certificate again");
                seen.push(now);
            }
            let st: serde_json::Value =
                serde_json::from_str(&run_ok(device(&exe).args(["status", "--json", "--state"]).arg(&state))).unwrap();
            assert_eq!(st["key_type"].as_str(), Some(kt), "{st}");
        })
        .await;
    }
}
