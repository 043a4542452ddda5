//! libiotpki_device from C (issue #16): examples/c/enroll.c, built with the
//! system's C compiler against the static library of the `device` profile,
//! enrolls against a real server with its key behind OpenSSL callbacks and
//! renews, signing through them; examples/c/errors.c drives every refusal
//! from C and says the agent's words; both again under AddressSanitizer and
//! UBSan; the shared library links and exports only `iotpki_*`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{bin, run_fail, run_ok, Ca, DeadPort};

/// The link flags the header documents (`rustc --print native-static-libs`, plus libcrypto for the example).
const LIBS: &str = "-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `cargo build --profile device -p iotpki-device --lib`: the static and shared libraries' paths.
fn device_libs() -> (PathBuf, PathBuf) {
    let files: Vec<PathBuf> =
        crate::util::cargo_build(&["--profile", "device", "-p", "iotpki-device", "--lib"], "the device library")
            .into_iter()
            .filter(|(n, _)| n == "iotpki_device")
            .flat_map(|(_, files)| files)
            .collect();
    let find = |ext: &str| files.iter().find(|f| f.extension().is_some_and(|e| e == ext)).cloned().unwrap();
    (find("a"), find("so"))
}

/// `cc` one example against `lib` (static or shared), with extra flags.
fn compile(src: &str, lib: &Path, out: &Path, extra: &[&str]) {
    let header = std::fs::read_to_string(root().join("include/iotpki_device.h")).unwrap();
    assert!(header.contains(LIBS), "the header documents the link flags the test uses ({LIBS})");
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"])
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(root().join("examples/c").join(src))
        .arg("-I")
        .arg(root().join("include"));
    if lib.extension().is_some_and(|e| e == "so") {
        cc.arg("-L").arg(lib.parent().unwrap()).arg("-liotpki_device");
        cc.arg(format!("-Wl,-rpath,{}", lib.parent().unwrap().display()));
    } else {
        cc.arg(lib);
    }
    cc.arg("-lcrypto").args(LIBS.split(' '));
    let o = cc.output().unwrap();
    assert!(o.status.success(), "{cc:?}:\n{}", String::from_utf8_lossy(&o.stderr));
}

fn agent() -> Command {
    let mut c = bin();
    c.arg("agent").env_remove("IOTPKI_TOKEN").env_remove("IOTPKI_PIN");
    c
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// enroll.c's whole run against `ca` as device `serial` in `state`; its stdout.
fn run_enroll(exe: &Path, ca_url: &str, root_file: &Path, state: &Path, serial: &str, token: &str) -> String {
    let token_file = state.with_extension("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    run_ok(Command::new(exe).arg(state).arg(ca_url).arg(serial).arg(root_file).arg(&token_file))
}

/// examples/c/enroll.c: enrolls, renews; the library asked the firmware's
/// key to sign once for the request at enrollment, then twice at renewal
/// (the TLS handshake with the old key, the request with the new), and to
/// forget the old key. No key file is written; the status is the agent's;
/// the agent, which has no callbacks, says why it cannot renew that device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_c_example_enrolls_and_renews_with_its_key_behind_callbacks() {
    let (a, so) = blocking(device_libs).await;
    let ca = Ca::start().await;
    let tmp = ca.tmp.path().to_path_buf();
    let exe = tmp.join("enroll");
    let (url, root_file) = (ca.url.clone(), ca.root_file());
    let certs = ca.cert_count();
    let (t1, t2) = (ca.token("CDEV-1"), ca.token("CDEV-2"));
    let state = tmp.join("cdev");
    let (out, status) = {
        let (exe, state, tmp) = (exe.clone(), state.clone(), tmp.clone());
        blocking(move || {
            compile("enroll.c", &a, &exe, &[]);
            let out = run_enroll(&exe, &url, &root_file, &state, "CDEV-1", &t1);
            let status = run_ok(agent().args(["status", "--json", "--state"]).arg(&state));
            // The shared library links the same program, which runs the same.
            let shared = tmp.join("enroll-shared");
            compile("enroll.c", &so, &shared, &[]);
            let out2 = run_enroll(&shared, &url, &root_file, &tmp.join("cdev2"), "CDEV-2", &t2);
            assert!(out2.contains("sign callback calls: 3"), "{out2}");
            (out, status)
        })
        .await
    };
    assert!(out.contains("enrolled: generated 1, signed 1\n"), "{out}");
    assert!(out.contains("renewed: generated 2, signed 3, forgotten 1\n"), "{out}");
    assert!(out.contains("sign callback calls: 3\n"), "{out}");
    // The status the C program printed after renewing is the agent's, word for word.
    let printed = out.rsplit("status: ").next().unwrap().split("\nsign callback").next().unwrap();
    assert_eq!(printed.trim_end(), status.trim_end());
    let st: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(st["device_serial"], "CDEV-1");
    assert_eq!(st["keystore"], "external");
    assert_eq!(st["renewals"], 1);
    assert_eq!(ca.cert_count(), certs + 4, "two enrollments, two renewals");
    let mut files: Vec<String> =
        std::fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["ext-key-1.spki", "identity.json"], "no key file; the old key's record gone");
    let err = blocking(move || run_fail(agent().args(["renew", "--state"]).arg(&state))).await;
    assert!(err.contains("held outside the agent") && err.contains("key callbacks"), "{err}");
}

/// examples/c/commission.c: a device born on a line (key files) is refused by
/// an owner that has not claimed it, with the agent's words; claimed, it is
/// commissioned through the C API and renews at the owner's server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_born_device_is_commissioned_from_c_by_its_owner() {
    let (a, _) = blocking(device_libs).await;
    let mfg = Ca::start().await;
    let op = Ca::start().await;
    let dev = crate::util::born_devices(&mfg, "CCB", &["CC-1".to_string()]).await.remove(0);
    crate::commission::trust(&op, &mfg);
    let exe = op.tmp.path().join("commission");
    let (url, root) = (op.url.clone(), op.root_file());
    let certs = op.cert_count();
    let (c_err, agent_err) = {
        let (exe, dev, url, root) = (exe.clone(), dev.clone(), url.clone(), root.clone());
        blocking(move || {
            compile("commission.c", &a, &exe, &[]);
            let c_err = run_fail(Command::new(&exe).arg(&dev).arg(&url).arg(&root));
            let agent_err = agent_says(&[
                "commission".into(),
                "--state".into(),
                dev.into_os_string(),
                "--server".into(),
                url.into(),
                "--ca-cert".into(),
                root.into_os_string(),
            ]);
            (c_err, agent_err)
        })
        .await
    };
    assert_eq!(c_err.trim_end(), format!("commission failed: IOTPKI_ERR_REFUSED: {agent_err}"));
    assert!(agent_err.contains("not owned"), "{agent_err}");
    assert_eq!(op.cert_count(), certs, "nothing issued");

    crate::commission::claim(&op, &mfg, &["CC-1"]);
    let (out, status) = blocking(move || {
        let out = run_ok(Command::new(&exe).arg(&dev).arg(&url).arg(&root));
        (out, run_ok(agent().args(["status", "--json", "--state"]).arg(&dev)))
    })
    .await;
    assert!(out.starts_with("commissioned: {"), "{out}");
    let renewed = out.split("renewed: ").nth(1).unwrap();
    assert_eq!(renewed.trim_end(), status.trim_end(), "the status from C is the agent's");
    let st: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(st["issuer"].as_str().unwrap().contains("Operational CA"), "{st}");
    assert_eq!(st["server"], op.url.as_str());
    assert_eq!(st["renewals"], 1);
    assert_eq!(op.cert_count(), certs + 2, "commissioned, then renewed");
}

/// `case NAME CODE MESSAGE` lines of errors.c.
type Cases = std::collections::HashMap<String, (String, String)>;

fn cases(out: &str) -> Cases {
    out.lines()
        .filter_map(|l| l.strip_prefix("case "))
        .map(|l| {
            let mut p = l.splitn(3, ' ');
            let name = p.next().unwrap().to_string();
            (name, (p.next().unwrap_or("").to_string(), p.next().unwrap_or("").to_string()))
        })
        .collect()
}

/// The agent's message for a refused command (its stderr without "error: ").
fn agent_says(args: &[OsString]) -> String {
    let err = run_fail(agent().args(args));
    err.trim_end().strip_prefix("error: ").unwrap_or(&err).to_string()
}

/// Run errors.c (`exe`) against a fresh authority; its cases and the directories it used.
async fn run_errors(exe: PathBuf, env: &[(&str, &str)]) -> (Ca, u64, PathBuf, String, Cases) {
    let ca = Ca::start().await;
    let certs = ca.cert_count();
    let tmp = ca.tmp.path().join("c");
    std::fs::create_dir_all(&tmp).unwrap();
    let other = ca.tmp.path().join("other-root.pem");
    let dead_port = DeadPort::new();
    let dead = format!("https://{}", dead_port.1);
    let mut c = Command::new(&exe);
    c.args([&ca.url, ca.root_file().to_str().unwrap(), other.to_str().unwrap(), &dead, tmp.to_str().unwrap()])
        .args([ca.token("ERR-A"), ca.token("ERR-B")])
        .envs(env.iter().copied());
    let out = blocking(move || {
        crate::util::openssl_self_signed("/CN=not ours", "/dev/null", other.to_str().unwrap());
        let o = c.output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{c:?}:\n{out}\n{}", String::from_utf8_lossy(&o.stderr));
        out
    })
    .await;
    let cases = cases(&out);
    (ca, certs, tmp, dead, cases)
}

/// examples/c/errors.c: every refusal from C, each with its code (checked in
/// C) and, where the agent can make the same mistake, the agent's very words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_reaches_c_with_its_code_and_the_agents_words() {
    let (a, _) = blocking(device_libs).await;
    let exe = std::env::temp_dir().join(format!("iotpki-errors-{}", std::process::id()));
    {
        let exe = exe.clone();
        blocking(move || compile("errors.c", &a, &exe, &[])).await;
    }
    let (ca, certs, tmp, dead, cases) = run_errors(exe.clone(), &[]).await;
    let _ = std::fs::remove_file(&exe);
    assert!(cases.len() >= 45, "{cases:?}");
    let (url, root) = (ca.url.clone(), ca.root_file());
    let files = ca.tmp.path().to_path_buf();
    let dir_a = tmp.join("a");
    let dir_b = tmp.join("b");
    let said = blocking({
        let dir_a = dir_a.clone();
        move || {
            let f = |p: &Path| p.as_os_str().to_owned();
            let s = |v: &str| OsString::from(v);
            let wrong = files.join("wrong-token");
            std::fs::write(&wrong, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n").unwrap();
            let not_pem = files.join("not-pem");
            std::fs::write(&not_pem, "not a PEM").unwrap();
            let garbage = files.join("garbage");
            std::fs::write(&garbage, b"\x30\x03\x02\x01\x00 not a bundle, a voucher or a CRL").unwrap();
            let fresh = files.join("fresh");
            let enroll = |server: &str, serial: &str, ca_cert: &Path, state: &Path| {
                agent_says(&[
                    s("enroll"),
                    s("--state"),
                    f(state),
                    s("--server"),
                    s(server),
                    s("--serial"),
                    s(serial),
                    s("--token-file"),
                    f(&wrong),
                    s("--ca-cert"),
                    f(ca_cert),
                ])
            };
            vec![
                ("enroll-bad-token", enroll(&url, "ERR-C", &root, &fresh)),
                ("enroll-bad-serial", enroll(&url, "bad serial!", &root, &fresh)),
                ("enroll-bad-ca-pem", enroll(&url, "ERR-C", &not_pem, &fresh)),
                ("enroll-unreachable", enroll(&dead, "ERR-C", &root, &fresh)),
                ("enroll-wrong-ca", enroll(&url, "ERR-C", &files.join("other-root.pem"), &fresh)),
                ("enroll-again", enroll(&url, "ERR-A", &root, &dir_a)),
                ("commission-no-birth", agent_says(&[s("commission"), s("--state"), f(&dir_a)])),
                ("apply-garbage", agent_says(&[s("apply"), s("--state"), f(&dir_a), f(&garbage)])),
                ("renew-external-without-callbacks", agent_says(&[s("renew"), s("--state"), f(&dir_b)])),
            ]
        }
    })
    .await;
    for (name, agent) in said {
        let (_, c) = &cases[name];
        assert_eq!(c, &agent, "{name}: the library and the agent say different things");
    }
    // Where the agent names another path for the same mistake.
    let nobody = tmp.join("nobody");
    let agent = blocking({
        let nobody = nobody.clone();
        move || agent_says(&["renew".into(), "--state".into(), nobody.into_os_string()])
    })
    .await;
    let c = &cases["renew-before-enroll"].1;
    assert_eq!(c.replace(dir_a.to_str().unwrap(), "DIR"), agent.replace(nobody.to_str().unwrap(), "DIR"));
    for (name, code, needle) in [
        ("new-null-config", "IOTPKI_ERR_NULL_ARGUMENT", "config is NULL"),
        ("new-message-truncated", "IOTPKI_ERR_NULL_ARGUMENT", "config "),
        ("new-bad-key-type", "IOTPKI_ERR_INVALID_ARGUMENT", "config.key_type 9"),
        ("new-serial-not-utf8", "IOTPKI_ERR_INVALID_ARGUMENT", "config.serial is not UTF-8"),
        ("new-callbacks-incomplete", "IOTPKI_ERR_INVALID_ARGUMENT", "lacks the sign callback"),
        ("last-error-null-ctx", "IOTPKI_ERR_NULL_ARGUMENT", "ctx is NULL"),
        ("status-name-unknown", "IOTPKI_UNKNOWN", ""),
        ("enroll-bad-token", "IOTPKI_ERR_REFUSED", "the server refused"),
        ("enroll-no-server", "IOTPKI_ERR_INVALID_ARGUMENT", "enroll needs config.server"),
        ("status-buffer-too-small", "IOTPKI_ERR_BUFFER_TOO_SMALL", "the buffer has 8"),
        ("apply-file-missing", "IOTPKI_ERR_IO", "no-such-update: No such file"),
        ("renew-file-keys-with-callbacks", "IOTPKI_ERR_KEYSTORE", "keys are in key files"),
        ("enroll-generate-fails", "IOTPKI_ERR_KEYSTORE", "the generate callback failed (returned -7)"),
        ("enroll-public-key-empty", "IOTPKI_ERR_KEYSTORE", "gave a length of 0"),
        ("enroll-sign-fails", "IOTPKI_ERR_CRYPTO", "the sign callback failed (returned -9)"),
        ("enroll-bad-signature", "IOTPKI_ERR_CRYPTO", "does not verify with its public key"),
        ("enroll-with-callbacks", "IOTPKI_OK", ""),
        ("threads", "IOTPKI_OK", "other 0"),
        ("callback-reenters", "IOTPKI_ERR_BUSY", ""),
        ("renew-key-lost", "IOTPKI_ERR_KEYSTORE", "the public_key callback failed"),
    ] {
        let (got, msg) = &cases[name];
        assert_eq!(got, code, "{name}: {msg}");
        assert!(msg.contains(needle), "{name}: {msg:?} should say {needle:?}");
    }
    assert_eq!(ca.cert_count(), certs + 2, "ERR-A and ERR-B enrolled once each, nothing else issued");
}

/// The same two programs with AddressSanitizer and UBSan (GCC's: their malloc
/// interceptors see the library's allocations too, which use the system
/// allocator): no error, no leak. Miri and Rust's own sanitizers need a
/// nightly toolchain, which this project's machines do not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_c_programs_run_clean_under_address_and_undefined_behaviour_sanitizers() {
    let (a, _) = blocking(device_libs).await;
    let dir = tempfile::tempdir().unwrap();
    let (errors, enroll) = (dir.path().join("errors-asan"), dir.path().join("enroll-asan"));
    {
        let (errors, enroll) = (errors.clone(), enroll.clone());
        blocking(move || {
            let san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"];
            compile("errors.c", &a, &errors, &san);
            compile("enroll.c", &a, &enroll, &san);
        })
        .await;
    }
    let env = [("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:exitcode=99"), ("UBSAN_OPTIONS", "halt_on_error=1")];
    let (_, _, _, _, cases) = run_errors(errors, &env).await;
    assert!(cases.len() >= 45);
    let ca = Ca::start().await;
    let (url, root, t) = (ca.url.clone(), ca.root_file(), ca.token("ASAN-1"));
    let state = ca.tmp.path().join("asan");
    let out = blocking(move || {
        let token_file = state.with_extension("token");
        std::fs::write(&token_file, format!("{t}\n")).unwrap();
        let mut c = Command::new(&enroll);
        c.arg(&state).arg(&url).arg("ASAN-1").arg(&root).arg(&token_file).envs(env);
        run_ok(&mut c)
    })
    .await;
    assert!(out.contains("sign callback calls: 3"), "{out}");
}

/// libiotpki_device.so exports the C API and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_library_exports_only_the_c_api() {
    let (_, so) = blocking(device_libs).await;
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(&so).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    assert!(names.contains(&"iotpki_device_enroll") && names.contains(&"iotpki_string_free"), "{text}");
    let others: Vec<&&str> = names.iter().filter(|n| !n.starts_with("iotpki_")).collect();
    assert!(others.is_empty(), "{} exports more than the C API: {others:?}", so.display());
}
