//! The `iotpki` binary as a user runs it: init, serve (a child process),
//! token, agent enroll/renew/status, cert list/show, audit verify, demo.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::util::{bin, run_fail, run_ok, serve, PASS};

#[test]
fn init_serve_enroll_renew_with_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = dir.to_str().unwrap();
    let pass_file = tmp.path().join("pass");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let pf = pass_file.to_str().unwrap();

    // No passphrase: a clear error and no authority left behind.
    let err = run_fail(bin().args(["init", "--dir", d]));
    assert!(err.contains("IOTPKI_PASSPHRASE"), "{err}");
    assert!(!dir.exists());

    let out = run_ok(bin().args(["init", "--dir", d, "--passphrase-file", pf]));
    assert!(out.contains("authority created"), "{out}");
    let err = run_fail(bin().args(["init", "--dir", d, "--passphrase-file", pf]));
    assert!(err.contains("already an authority"), "{err}");
    // The passphrase also comes from the environment.
    let other = tmp.path().join("ca2");
    run_ok(
        bin().args(["init", "--dir", other.to_str().unwrap(), "--key-type", "ed25519"]).env("IOTPKI_PASSPHRASE", PASS),
    );

    // A wrong passphrase is named as such.
    std::fs::write(tmp.path().join("bad"), "not the passphrase\n").unwrap();
    let err = run_fail(bin().args([
        "serve",
        "--dir",
        d,
        "--listen",
        "127.0.0.1:0",
        "--passphrase-file",
        tmp.path().join("bad").to_str().unwrap(),
    ]));
    assert!(err.contains("wrong passphrase"), "{err}");

    let (_server, url) = serve(bin().args([
        "serve",
        "--dir",
        d,
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--passphrase-file",
        pf,
    ]));

    let token =
        run_ok(bin().args(["token", "create", "--dir", d, "--serial", "CLI-1", "--ttl", "10m"])).trim().to_string();
    assert_eq!(token.len(), 43, "256-bit token, base64url");
    let err = run_fail(bin().args(["token", "create", "--dir", d, "--serial", "bad serial!"]));
    assert!(err.contains("--serial"), "{err}");

    let state = tmp.path().join("device");
    let st = state.to_str().unwrap();
    let root = dir.join("ca/root.crt");
    let out = run_ok(bin().args([
        "agent",
        "enroll",
        "--state",
        st,
        "--server",
        &url,
        "--serial",
        "CLI-1",
        "--token",
        &token,
        "--ca-cert",
        root.to_str().unwrap(),
    ]));
    assert!(out.contains("enrolled CLI-1"), "{out}");
    // The same token again is refused with the server's reason.
    let err = run_fail(bin().args([
        "agent",
        "enroll",
        "--state",
        tmp.path().join("dev2").to_str().unwrap(),
        "--server",
        &url,
        "--serial",
        "CLI-1",
        "--token",
        &token,
        "--ca-cert",
        root.to_str().unwrap(),
    ]));
    assert!(err.contains("HTTP 401") && err.contains("already used"), "{err}");

    let out = run_ok(bin().args(["agent", "renew", "--state", st]));
    assert!(out.contains("renewed CLI-1"), "{out}");
    let status: serde_json::Value =
        serde_json::from_str(&run_ok(bin().args(["agent", "status", "--state", st, "--json"]))).unwrap();
    assert_eq!(status["device_serial"], "CLI-1");
    assert_eq!(status["renewals"], 1);
    let serial = status["cert_serial"].as_str().unwrap().to_string();

    let list = run_ok(bin().args(["cert", "list", "--dir", d, "--device", "CLI-1", "--json"]));
    assert_eq!(list.lines().count(), 2, "{list}");
    // Both are valid for longer than a day, and both expire within ten years.
    let soon =
        run_ok(bin().args(["cert", "list", "--dir", d, "--device", "CLI-1", "--expiring-within", "1d", "--json"]));
    assert_eq!(soon.lines().count(), 0, "{soon}");
    let all =
        run_ok(bin().args(["cert", "list", "--dir", d, "--device", "CLI-1", "--expiring-within", "3650d", "--json"]));
    assert_eq!(all.lines().count(), 2, "{all}");
    let err = run_fail(bin().args(["cert", "list", "--dir", d, "--expiring-within", "soon"]));
    assert!(err.contains("--expiring-within"), "{err}");
    let show = run_ok(bin().args(["cert", "show", "--dir", d, &serial, "--pem"]));
    assert!(show.starts_with("-----BEGIN CERTIFICATE-----"));
    let err = run_fail(bin().args(["cert", "show", "--dir", d, "00ff"]));
    assert!(err.contains("no certificate"), "{err}");
    let out = run_ok(bin().args(["audit", "verify", "--dir", d]));
    assert!(out.contains("audit chain OK"), "{out}");
    let log = run_ok(bin().args(["audit", "list", "--dir", d]));
    assert!(log.contains("token.create") && log.contains("enroll") && log.contains("refuse.enroll"), "{log}");
    assert!(!log.contains(&token), "the token never reaches the audit log");

    // Revocation: the device is refused from then on; a bad reason is named.
    let err = run_fail(bin().args(["revoke", "--dir", d, "--device", "CLI-1", "--reason", "nope"]));
    assert!(err.contains("keyCompromise"), "{err}");
    let out = run_ok(bin().args(["revoke", "--dir", d, "--device", "CLI-1", "--reason", "keyCompromise"]));
    assert!(out.contains("revoked") && out.contains("keyCompromise"), "{out}");
    let err = run_fail(bin().args(["agent", "renew", "--state", st]));
    assert!(err.contains("HTTP 403") && err.contains("revoked"), "{err}");

    let err = run_fail(bin().args(["cert", "list", "--dir", tmp.path().join("nowhere").to_str().unwrap()]));
    assert!(err.contains("iotpki init"), "{err}");
}

#[test]
fn factory_line_with_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("ca");
    let dir = d.to_str().unwrap();
    let env = |c: &mut Command| {
        c.env("IOTPKI_PASSPHRASE", PASS);
    };
    let mut c = bin();
    env(&mut c);
    run_ok(c.args(["init", "--dir", dir]));
    let (_server, url) = serve(
        bin()
            .args(["serve", "--dir", dir, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .env("IOTPKI_PASSPHRASE", PASS),
    );

    let list = tmp.path().join("serials.csv");
    std::fs::write(&list, "serial\nL-1\nL-2\nL-3\nL-4\n").unwrap();
    let err = run_fail(bin().args([
        "batch",
        "create",
        "--dir",
        dir,
        "--product",
        "p",
        "--serials",
        list.to_str().unwrap(),
        "--quota",
        "5",
    ]));
    assert!(err.contains("between 1 and the allowlist's 4"), "{err}");
    let id = run_ok(bin().args([
        "batch",
        "create",
        "--dir",
        dir,
        "--id",
        "B-7",
        "--product",
        "p",
        "--serials",
        list.to_str().unwrap(),
        "--quota",
        "3",
        "--from",
        "2020-01-01T00:00:00Z",
        "--until",
        "2099-01-01T00:00:00Z",
    ]));
    assert_eq!(id.trim(), "B-7");
    let st = tmp.path().join("station");
    let mut c = bin();
    env(&mut c);
    let one = tmp.path().join("one.csv");
    std::fs::write(&one, "LINE-1\n").unwrap();
    let args = ["batch", "create", "--dir", dir, "--id", "B-8", "--product", "p", "--serials", one.to_str().unwrap()];
    run_ok(bin().args(args).args(["--quota", "1"]));
    let two = tmp.path().join("two.csv");
    std::fs::write(&two, "OFF-1\nOFF-2\n").unwrap();
    let args = ["batch", "create", "--dir", dir, "--id", "B-9", "--product", "p", "--serials", two.to_str().unwrap()];
    run_ok(bin().args(args).args(["--quota", "1"]));
    let args = ["station", "add", "line-9", "--dir", dir, "--batches", "B-7,B-8,B-9", "--out", st.to_str().unwrap()];
    run_ok(c.args(args).args(["--server", &url]));

    // A device process on a line link: the station drives it over TCP.
    let dev = tmp.path().join("line-device");
    let mut device = bin()
        .args(["agent", "line", "--listen", "127.0.0.1:0", "--state", dev.to_str().unwrap(), "--serial", "LINE-1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(device.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let addr = first.trim().trim_start_matches("line listening on ").to_string();
    let args = ["factory", "run", "--station-dir", st.to_str().unwrap(), "--batch", "B-8", "--line", &addr];
    let run = run_ok(bin().args(args));
    assert!(run.contains("1 born, 0 refused, 0 failed"), "{run}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(device.wait().unwrap().success());
    assert!(rest.contains("born: LINE-1"), "{rest}");
    let status = run_ok(bin().args(["agent", "status", "--state", dev.to_str().unwrap(), "--json"]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["device_serial"], "LINE-1");
    let out = run_ok(bin().args([
        "factory",
        "run",
        "--station-dir",
        st.to_str().unwrap(),
        "--batch",
        "B-7",
        "--simulate",
        "4",
        "--parallel",
        "2",
    ]));
    assert!(out.contains("3 born, 1 refused, 0 failed"), "{out}");
    let show: serde_json::Value =
        serde_json::from_str(&run_ok(bin().args(["batch", "show", "--dir", dir, "B-7", "--json"]))).unwrap();
    assert_eq!(
        (show["quota"].as_u64(), show["issued"].as_u64(), show["refused"].as_u64(), show["flagged"].as_u64()),
        (Some(3), Some(3), Some(1), Some(0))
    );
    // Offline: a delegated CA for B-9, births without the authority, then a sync.
    let mut c = bin();
    env(&mut c);
    run_ok(c.args([
        "station",
        "delegate",
        "line-9",
        "--dir",
        dir,
        "--batch",
        "B-9",
        "--station-dir",
        st.to_str().unwrap(),
    ]));
    let args =
        ["factory", "run", "--station-dir", st.to_str().unwrap(), "--batch", "B-9", "--offline", "--simulate", "2"];
    let out = run_ok(bin().args(args));
    assert!(out.contains("1 born, 1 refused, 0 failed"), "{out}");
    let out = run_ok(bin().args(["factory", "sync", "--station-dir", st.to_str().unwrap(), "--batch", "B-9"]));
    assert!(out.contains("synced: 1 born, 0 flagged"), "{out}");
    let show: serde_json::Value =
        serde_json::from_str(&run_ok(bin().args(["batch", "show", "--dir", dir, "B-9", "--json"]))).unwrap();
    assert_eq!((show["issued"].as_u64(), show["flagged"].as_u64()), (Some(1), Some(0)));

    let log = std::fs::read_to_string(st.join("production.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 7, "appended: 1 device on the line, 4 simulated, 2 offline");
    assert!(log.lines().next().unwrap().contains("\"serial\":\"LINE-1\""), "{log}");
    run_ok(bin().args(["batch", "close", "--dir", dir, "B-7"]));
    run_ok(bin().args(["station", "revoke", "line-9", "--dir", dir]));
    let out = run_ok(bin().args(["station", "show", "line-9", "--dir", dir]));
    assert!(out.contains("revoked"), "{out}");
    let err = run_fail(bin().args([
        "factory",
        "run",
        "--station-dir",
        st.to_str().unwrap(),
        "--batch",
        "B-7",
        "--simulate",
        "1",
    ]));
    assert!(err.contains("revoked"), "{err}");
    let log = run_ok(bin().args(["audit", "list", "--dir", dir, "--limit", "1000"]));
    for action in
        ["batch.create", "station.add", "birth", "station.delegate", "factory.sync", "batch.close", "station.revoke"]
    {
        assert!(log.contains(action), "{action} missing from the audit log");
    }
    run_ok(bin().args(["audit", "verify", "--dir", dir]));
}

#[test]
fn demo_runs_a_small_fleet() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("demo");
    let out = run_ok(
        bin().args(["demo", "--devices", "12", "--renew", "3", "--dir", d.to_str().unwrap()]).stdin(Stdio::null()),
    );
    assert!(out.contains("12 devices enrolled"), "{out}");
    assert!(out.contains("3 devices renewed"), "{out}");
    assert!(out.contains("is refused"), "{out}");
    assert!(out.contains("audit chain verified"), "{out}");
    assert!(out.contains("16 devices born online in batch DEMO-LINE, 4 refused at its quota of 16"), "{out}");
    assert!(out.contains("production record synced: 8 births, 0 flagged"), "{out}");
    // The summary counts what the steps counted, and says which is which.
    assert!(out.contains("8 devices born with the station's delegated CA, 2 refused at its quota of 8"), "{out}");
    assert!(out.contains(" 6 (4 online in DEMO-LINE, step 7; 2 offline in DEMO-OFF, step 8)"), "{out}");
    let out = run_ok(Command::new(env!("CARGO_BIN_EXE_iotpki")).args([
        "audit",
        "verify",
        "--dir",
        d.join("authority").to_str().unwrap(),
    ]));
    assert!(out.contains("audit chain OK"));
}

/// Issue #19: `demo --pq`: the operator's P-256 fleet moves to an ML-DSA-65
/// root and ML-DSA-44 device keys by bundle, renewal and retirement, and every
/// device renews again with its ML-DSA certificate.
#[test]
fn demo_pq_moves_the_fleet_from_p256_to_ml_dsa() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("demo");
    let out = run_ok(
        bin()
            .args(["demo", "--pq", "--devices", "4", "--renew", "1", "--dir", d.to_str().unwrap()])
            .stdin(Stdio::null()),
    );
    let line = out.lines().find(|l| l.contains("post-quantum move")).unwrap_or_else(|| panic!("{out}"));
    // The devices born on the line and offline, but the one its owner revoked.
    assert!(line.contains("root-2 (ml-dsa-65, replacing a p256 root)"), "{line}");
    assert!(line.contains("operational → operational-2") && line.contains("manufacturing → manufacturing-2"), "{line}");
    assert!(line.contains("23 of 23 devices renewed under it into ml-dsa-44 keys"), "{line}");
    assert!(line.contains("23 renewed again over TLS 1.3 with their ml-dsa-44 certificates"), "{line}");
    assert!(out.contains("audit chain verified"), "{out}");
}

#[test]
fn crl_shard_counts_that_cannot_work_are_refused_at_init_and_in_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = dir.to_str().unwrap();
    for bad in ["3", "1", "2048"] {
        let err = run_fail(bin().args(["init", "--dir", d, "--crl-shards", bad]).env("IOTPKI_PASSPHRASE", PASS));
        assert!(err.contains(&format!("--crl-shards {bad}")) && err.contains("power of two"), "{err}");
        assert!(!dir.exists(), "nothing made");
    }
    run_ok(bin().args(["init", "--dir", d, "--crl-shards", "64"]).env("IOTPKI_PASSPHRASE", PASS));
    let cfg_path = dir.join("iotpki.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    assert_eq!(cfg.matches("crl_shards = 64").count(), 2, "both issuing CAs: {cfg}");
    let pass = iotpki_authority::Passphrase::new(PASS.into()).unwrap();
    let open = || {
        iotpki_authority::Authority::open(&dir, &pass, std::sync::Arc::new(iotpki_core::clock::SystemClock))
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(open(), None);
    // Edited by hand: a count that is not a power of two, shards on the root,
    // shards without a public URL for the distribution points.
    let bad_count = cfg.replacen("crl_shards = 64", "crl_shards = 48", 1);
    std::fs::write(&cfg_path, &bad_count).unwrap();
    assert!(open().is_some_and(|e| e.contains("crl_shards = 48") && e.contains("power of two")));
    let on_root = cfg.replacen("role = \"root\"", "role = \"root\"\ncrl_shards = 4", 1);
    std::fs::write(&cfg_path, &on_root).unwrap();
    assert!(open().is_some_and(|e| e.contains("issuing CAs only")), "{:?}", open());
    let no_url: String = cfg.lines().filter(|l| !l.starts_with("public_http_url")).collect::<Vec<_>>().join("\n");
    std::fs::write(&cfg_path, &no_url).unwrap();
    assert!(open().is_some_and(|e| e.contains("needs server.public_http_url")), "{:?}", open());
}
