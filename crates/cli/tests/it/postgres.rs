//! Several authority nodes on one PostgreSQL database: `iotpki init
//! --database`, two `iotpki serve` processes on it, clients racing across
//! both for the last units of a batch quota and for one-time tokens, and a
//! revocation seen by the node that did not make it.
//!
//! Needs a server: `IOTPKI_TEST_PG` (./scripts/test starts one); without it
//! these tests fail and say so. Each test gets a database of its own.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use iotpki_agent::EnrollOptions;
use iotpki_core::keys::KeyType;
use iotpki_station::factory::{Dut, Produced, RunOptions, Station};
use iotpki_store::postgres::{create_test_database, test_base_url, PgStore, TestDatabase};
use iotpki_store::prelude::*;

use crate::util::{bin, run_fail, run_ok, PASS};

/// A serve process, killed on drop.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An authority whose state is in a fresh PostgreSQL database, and two nodes serving it.
struct Cluster {
    // Fields drop in this order: the nodes stop before their database goes.
    nodes: Vec<(Node, String)>,
    tmp: tempfile::TempDir,
    dir: PathBuf,
    pass_file: PathBuf,
    database: String,
    root_pem: String,
    _db: TestDatabase,
}

impl Cluster {
    /// Blocking (it creates the database): call it on a blocking thread.
    fn start(tag: &str) -> Cluster {
        let db = create_test_database(&test_base_url(), tag).unwrap();
        let database = db.url.clone();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let pass_file = tmp.path().join("pass");
        std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
        let migrated = run_ok(bin().args(["db", "migrate", "--database", &database]));
        let latest = iotpki_store::postgres::MIGRATIONS.last().unwrap().0;
        assert_eq!(migrated.trim(), format!("schema version {latest}"));
        run_ok(bin().args(["init", "--dir", s(&dir), "--passphrase-file", s(&pass_file), "--database", &database]));
        let cfg = std::fs::read_to_string(dir.join("iotpki.toml")).unwrap();
        assert!(cfg.contains(&format!("database = \"{database}\"")), "{cfg}");
        assert!(!dir.join("store.db").exists(), "no SQLite file when the state is in PostgreSQL");
        let root_pem = std::fs::read_to_string(dir.join("ca/root.crt")).unwrap();
        let mut c = Cluster { nodes: Vec::new(), tmp, dir, pass_file, database, root_pem, _db: db };
        for _ in 0..2 {
            let node = c.serve();
            c.nodes.push(node);
        }
        c
    }

    fn serve(&self) -> (Node, String) {
        let mut child = bin()
            .args(["serve", "--dir", s(&self.dir), "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(["--passphrase-file", s(&self.pass_file)])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        // Keep reading what the server prints later, so it never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let url = line.trim().trim_start_matches("listening on ").to_string();
        assert!(url.starts_with("https://127.0.0.1:"), "serve printed {line:?}");
        (Node(child), url)
    }

    fn url(&self, node: usize) -> String {
        self.nodes[node].1.clone()
    }

    /// `iotpki SUBCOMMAND... --dir DIR ARGS...`.
    fn cli(&self, sub: &[&str], args: &[&str]) -> Command {
        let mut c = bin();
        c.args(sub).args(["--dir", s(&self.dir)]).args(args);
        c
    }

    /// The store, opened by the test itself (on a blocking thread: the
    /// PostgreSQL client must not run on an async worker).
    async fn with_store<T: Send + 'static>(&self, f: impl FnOnce(&PgStore) -> T + Send + 'static) -> T {
        let url = self.database.clone();
        tokio::task::spawn_blocking(move || f(&PgStore::open(&url).unwrap())).await.unwrap()
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_database_issue_exactly_the_quota_and_spend_each_token_once() {
    let c = tokio::task::spawn_blocking(|| Cluster::start("it_two_nodes")).await.unwrap();
    // Every admin command below finds the database in the config.

    // A batch of 40 serials with a quota of 12, and one station per node.
    let list = c.tmp.path().join("serials.txt");
    let serials: Vec<String> = (0..40).map(|i| format!("PGQ-{i:03}")).collect();
    std::fs::write(&list, serials.join("\n")).unwrap();
    let window = ["--from", "2020-01-01T00:00:00Z", "--until", "2099-01-01T00:00:00Z"];
    let args = ["--id", "PGQ", "--product", "p", "--serials", s(&list), "--quota", "12"];
    run_ok(c.cli(&["batch", "create"], &args).args(window));
    let mut stations = Vec::new();
    for (i, name) in ["line-a", "line-b"].into_iter().enumerate() {
        let out = c.tmp.path().join(name);
        let url = c.url(i);
        let args = ["--batches", "PGQ", "--out", s(&out), "--server", &url, "--passphrase-file", s(&c.pass_file)];
        run_ok(&mut c.cli(&["station", "add", name], &args));
        stations.push(Arc::new(Station::open(&out, None).unwrap()));
    }

    // Both stations (one per node) fetch the same 40 unborn serials, each
    // from its node, before either starts; then they race for each serial and
    // for the 12 units of the quota, 8 at a time each.
    let mut duts = Vec::new();
    for (i, st) in stations.iter().enumerate() {
        let devices = c.tmp.path().join("dut").join(i.to_string());
        let d = iotpki_station::factory::simulated(st, "PGQ", 40, &devices).await.unwrap();
        assert_eq!(d.len(), 40);
        duts.push(d);
    }
    let run = |i: usize, duts| {
        let st = stations[i].clone();
        let opts = RunOptions {
            batch: "PGQ".into(),
            parallel: 8,
            log: c.tmp.path().join(format!("run-{i}.jsonl")),
            key_type: KeyType::EcdsaP256,
        };
        async move { iotpki_station::factory::run(st, &opts, duts, |_| {}).await.unwrap() }
    };
    let (db, da) = (duts.pop().unwrap(), duts.pop().unwrap());
    let (ra, rb) = tokio::join!(run(0, da), run(1, db));
    let all: Vec<Produced> = ra.into_iter().chain(rb).collect();
    assert_eq!(all.len(), 80);
    assert!(all.iter().all(|p| p.result != "failed"), "{all:?}");
    let born: Vec<&Produced> = all.iter().filter(|p| p.result == "born").collect();
    assert_eq!(born.len(), 12, "exactly the quota, across both nodes: {born:?}");
    let mut born_serials: Vec<&str> = born.iter().map(|p| p.serial.as_str()).collect();
    born_serials.sort();
    born_serials.dedup();
    assert_eq!(born_serials.len(), 12, "no serial born twice");
    for p in all.iter().filter(|p| p.result == "refused") {
        let r = p.reason.as_deref().unwrap_or("");
        assert!(r.contains("used up its quota") || r.contains("already has a birth certificate"), "{r}");
    }

    // Four tokens; for each, six devices (three per node) race to spend it.
    let mut tokens = Vec::new();
    for i in 0..4 {
        let serial = format!("PGT-{i}");
        let t = run_ok(&mut c.cli(&["token", "create"], &["--serial", &serial]));
        tokens.push((serial, t.trim().to_string()));
    }
    let mut set = tokio::task::JoinSet::new();
    for (serial, token) in &tokens {
        for attempt in 0..6 {
            let opts = EnrollOptions {
                state_dir: c.tmp.path().join("devices").join(format!("{serial}-{attempt}")),
                server: c.url(attempt % 2),
                serial: serial.clone(),
                token: token.clone(),
                anchor_pem: c.root_pem.clone(),
                label: None,
                key_type: KeyType::EcdsaP256,
                keystore: None,
                pin_file: None,
            };
            let serial = serial.clone();
            set.spawn(async move { (serial, iotpki_agent::enroll(&opts).await.map_err(|e| e.to_string())) });
        }
    }
    let mut wins: Vec<String> = Vec::new();
    while let Some(r) = set.join_next().await {
        let (serial, r) = r.unwrap();
        match r {
            Ok(_) => wins.push(serial),
            Err(e) => assert!(e.contains("already used"), "{serial}: {e}"),
        }
    }
    wins.sort();
    assert_eq!(wins, vec!["PGT-0", "PGT-1", "PGT-2", "PGT-3"], "each token spent exactly once");

    // What the shared store holds agrees, and its audit chain verifies from the CLI.
    let (issued, births, tokens_used) = c
        .with_store(|st| {
            let b = st.batch("PGQ").unwrap().unwrap();
            let certs = st.list_certificates(&Default::default()).unwrap();
            let mut births: Vec<String> = certs
                .iter()
                .filter(|r| r.ca == "manufacturing" && r.profile != "ocsp-signer")
                .filter_map(|r| r.device_serial.clone())
                .filter(|d| d.starts_with("PGQ-"))
                .collect();
            births.sort();
            let used =
                certs.iter().filter(|r| r.device_serial.as_deref().is_some_and(|d| d.starts_with("PGT-"))).count();
            (b.issued, births, used)
        })
        .await;
    assert_eq!(issued, 12);
    assert_eq!(births.len(), 12, "one birth certificate per born serial");
    assert_eq!(births, born_serials.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    assert_eq!(tokens_used, 4);
    let out = run_ok(&mut c.cli(&["audit", "verify"], &[]));
    assert!(out.starts_with("audit chain OK"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_seen_at_once_by_every_node() {
    let c = tokio::task::spawn_blocking(|| Cluster::start("it_revocation")).await.unwrap();
    let t = run_ok(&mut c.cli(&["token", "create"], &["--serial", "PGR-1"]));
    let state = c.tmp.path().join("dev");
    let opts = EnrollOptions {
        state_dir: state.clone(),
        server: c.url(0),
        serial: "PGR-1".into(),
        token: t.trim().into(),
        anchor_pem: c.root_pem.clone(),
        label: None,
        key_type: KeyType::EcdsaP256,
        keystore: None,
        pin_file: None,
    };
    iotpki_agent::enroll(&opts).await.unwrap();
    let dev_pem = c.tmp.path().join("dev.pem");
    std::fs::write(&dev_pem, iotpki_agent::state::load(&state).unwrap().cert_pem).unwrap();
    let (root, op) = (c.dir.join("ca/root.crt"), c.dir.join("ca/operational.crt"));
    // Without a nonce the same request is byte for byte the same, so the node
    // answers it from its cache when it may.
    let ask = move |url: String| {
        let o = Command::new("openssl")
            .args(["ocsp", "-no_nonce", "-issuer", s(&op), "-cert", s(&dev_pem), "-CAfile", s(&root)])
            .args(["-url", &format!("{url}/ocsp")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
    };
    // Node B's CRL of the operational CA, as `openssl crl -text` shows it (B caches it too).
    let crl = {
        let (root, work) = (c.dir.join("ca/root.crt"), c.tmp.path().to_path_buf());
        move |url: String| {
            let der = work.join("op.crl");
            run_ok(Command::new("curl").args(["--silent", "--show-error", "--fail", "--cacert", s(&root)]).args([
                "-o",
                s(&der),
                &format!("{url}/crl/operational.crl"),
            ]));
            run_ok(Command::new("openssl").args(["crl", "-inform", "DER", "-noout", "-text", "-in", s(&der)]))
        }
    };
    let serial =
        run_ok(Command::new("openssl").args(["x509", "-noout", "-serial", "-in", s(&c.tmp.path().join("dev.pem"))]));
    let serial = serial.trim().trim_start_matches("serial=").to_string();
    let (a, b) = (c.url(0), c.url(1));
    let (ask2, crl2) = (ask.clone(), crl.clone());
    let (b1, b2) = (b.clone(), b.clone());
    let (before, crl_before) = tokio::task::spawn_blocking(move || {
        ([ask2(b1.clone()), ask2(b1.clone()), ask2(a)], [crl2(b1.clone()), crl2(b1)])
    })
    .await
    .unwrap();
    for out in &before {
        assert!(out.contains("Response verify OK") && out.contains("dev.pem: good"), "{out}");
    }
    for text in &crl_before {
        assert!(!text.contains(&serial), "not revoked yet: {text}");
    }

    // Revoked by another process on the shared database (the admin CLI)...
    let out = run_ok(&mut c.cli(&["revoke"], &["--device", "PGR-1", "--reason", "keyCompromise"]));
    assert!(out.starts_with("revoked "), "{out}");
    // ...and node B, whose cache held "good" for this very request, says revoked at once.
    let a = c.url(0);
    let (after, crl_after) = tokio::task::spawn_blocking(move || ([ask(b2.clone()), ask(a)], crl(b2))).await.unwrap();
    for out in &after {
        assert!(out.contains("Response verify OK") && out.contains("dev.pem: revoked"), "{out}");
        assert!(out.contains("Reason: keyCompromise"), "{out}");
    }
    assert!(crl_after.contains(&format!("Serial Number: {serial}")), "node B's CRL lists it: {crl_after}");
    // The device can no longer renew through either node.
    for node in 0..2 {
        let err = iotpki_agent::renew(&state, Some(&c.url(node)), None).await.unwrap_err();
        assert!(err.to_string().contains("revoked"), "{err}");
    }
    let out = run_ok(&mut c.cli(&["audit", "verify"], &[]));
    assert!(out.starts_with("audit chain OK"), "{out}");
}

#[test]
fn init_refuses_a_database_that_holds_state_and_urls_that_are_not_postgres() {
    let db = create_test_database(&test_base_url(), "it_refusals").unwrap();
    let database = db.url.clone();
    let tmp = tempfile::tempdir().unwrap();
    let pf = tmp.path().join("pass");
    std::fs::write(&pf, PASS).unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    run_ok(bin().args(["init", "--dir", s(&one), "--passphrase-file", s(&pf), "--database", &database]));
    let err = run_fail(bin().args(["init", "--dir", s(&two), "--passphrase-file", s(&pf), "--database", &database]));
    assert!(err.contains("already holds an authority's state"), "{err}");
    assert!(!two.exists(), "nothing left behind");
    // Migrating again changes nothing.
    let latest = iotpki_store::postgres::MIGRATIONS.last().unwrap().0;
    assert_eq!(
        run_ok(bin().args(["db", "migrate", "--database", &database])).trim(),
        format!("schema version {latest}")
    );
    let err = run_fail(bin().args(["db", "migrate", "--database", "store.db"]));
    assert!(err.contains("expected a PostgreSQL URL"), "{err}");
    let err = run_fail(bin().args(["audit", "verify", "--dir", s(&one), "--database", "mysql://x/y"]));
    assert!(err.contains("expected a PostgreSQL URL"), "{err}");
    // A URL with a password (trust authentication ignores it) makes the config readable by its owner only.
    let fresh = create_test_database(&test_base_url(), "it_password").unwrap();
    // (A base URL with a password of its own is used as it is.)
    let with_password_fresh = if iotpki_store::postgres::redact(&fresh.url) == fresh.url {
        fresh.url.replacen('@', ":hunter2@", 1)
    } else {
        fresh.url.clone()
    };
    let three = tmp.path().join("three");
    run_ok(bin().args(["init", "--dir", s(&three), "--passphrase-file", s(&pf), "--database", &with_password_fresh]));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(three.join("iotpki.toml")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config holds a password");
    assert_eq!(std::fs::metadata(one.join("iotpki.toml")).unwrap().permissions().mode() & 0o777, 0o644);
    // The password of a URL never shows in a message.
    let err = run_fail(bin().args(["db", "migrate", "--database", "postgres://u:hunter2@127.0.0.1:1/x"]));
    assert!(err.contains("cannot connect to postgres://u:***@127.0.0.1:1/x") && !err.contains("hunter2"), "{err}");
    // `--database` on any admin command (or $IOTPKI_DATABASE) points it at a database.
    let out = run_ok(bin().args(["audit", "verify", "--dir", s(&one)]).env("IOTPKI_DATABASE", &database));
    assert!(out.starts_with("audit chain OK"), "{out}");
}

#[test]
fn a_node_refuses_a_database_of_another_authority() {
    let (db1, db2) = (
        create_test_database(&test_base_url(), "it_other_a").unwrap(),
        create_test_database(&test_base_url(), "it_other_b").unwrap(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let pf = tmp.path().join("pass");
    std::fs::write(&pf, PASS).unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    run_ok(bin().args(["init", "--dir", s(&one), "--passphrase-file", s(&pf), "--database", &db1.url]));
    run_ok(bin().args(["init", "--dir", s(&two), "--passphrase-file", s(&pf), "--database", &db2.url]));
    let serve = |dir: &Path, db: &str| {
        run_fail(
            bin()
                .args([
                    "serve",
                    "--dir",
                    s(dir),
                    "--passphrase-file",
                    s(&pf),
                    "--listen",
                    "127.0.0.1:0",
                    "--http-listen",
                    "127.0.0.1:0",
                ])
                .args(["--database", db]),
        )
    };
    // Authority one on two's database, and on an empty one: refused before serving.
    let err = serve(&one, &db2.url);
    assert!(err.contains("does not hold this authority's root certificate"), "{err}");
    let empty = create_test_database(&test_base_url(), "it_other_c").unwrap();
    let err = serve(&one, &empty.url);
    assert!(err.contains("does not hold this authority's root certificate"), "{err}");
    assert_eq!(run_ok(bin().args(["audit", "verify", "--dir", s(&two)])).split(':').next(), Some("audit chain OK"));
    // The same check guards the embedded store: a lost store.db is not silently replaced.
    let three = tmp.path().join("three");
    run_ok(bin().args(["init", "--dir", s(&three), "--passphrase-file", s(&pf)]));
    std::fs::remove_file(three.join("store.db")).unwrap();
    let args = ["serve", "--dir", s(&three), "--passphrase-file", s(&pf), "--listen", "127.0.0.1:0"];
    let err = run_fail(bin().args(args));
    assert!(err.contains("does not hold this authority's root certificate"), "{err}");
}

/// Not about PostgreSQL: found while running this module's suite. A token is
/// base64url and one in 64 begins with `-`; the agent takes it as the value.
#[test]
fn a_token_may_begin_with_a_hyphen() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("root.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let dev = tmp.path().join("dev");
    let args = ["agent", "enroll", "--state", s(&dev), "--server", "https://127.0.0.1:1"];
    let err = run_fail(bin().args(args).args(["--serial", "HY-1", "--token", "-MGehdQx", "--ca-cert", s(&ca)]));
    assert!(!err.contains("unexpected argument"), "{err}");
}

/// `psql URL -c SQL` (the Debian client), as the database's owner, in a
/// session that may write even when the database's default is read-only.
fn psql(url: &str, sql: &str) -> String {
    run_ok(Command::new("psql").env("PGOPTIONS", "-c default_transaction_read_only=off").args([
        "--no-psqlrc",
        "--quiet",
        "--tuples-only",
        "--set",
        "ON_ERROR_STOP=1",
        url,
        "-c",
        sql,
    ]))
}

/// Make the test database read-only (or writable again) for new sessions, and
/// end every other session on it, as an operator failing over to a standby
/// would: the nodes' connections are cut under them.
fn set_read_only(url: &str, on: bool) {
    let setting = if on { "SET default_transaction_read_only = on" } else { "RESET default_transaction_read_only" };
    psql(url, &format!("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I {setting}', current_database()); END $$"));
    psql(
        url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_or_lost_database_gets_503_records_nothing_and_recovers() {
    let c = tokio::task::spawn_blocking(|| Cluster::start("it_read_only")).await.unwrap();
    let token = run_ok(&mut c.cli(&["token", "create"], &["--serial", "PGRO-1"])).trim().to_string();
    let enroll = |attempt: u32| {
        let opts = EnrollOptions {
            state_dir: c.tmp.path().join(format!("dev-{attempt}")),
            server: c.url(0),
            serial: "PGRO-1".into(),
            token: token.clone(),
            anchor_pem: c.root_pem.clone(),
            label: None,
            key_type: KeyType::EcdsaP256,
            keystore: None,
            pin_file: None,
        };
        async move { iotpki_agent::enroll(&opts).await }
    };
    // A station on node 0 with a batch of two serials, a quota of one. On
    // PostgreSQL `serve` queues a station's births for the group commit
    // (iotpki_server::queue_station_births): its record's refusal by the
    // database comes back through that queue.
    let list = c.tmp.path().join("serials.txt");
    std::fs::write(&list, "PGRB-0\nPGRB-1\n").unwrap();
    let window = ["--from", "2020-01-01T00:00:00Z", "--until", "2099-01-01T00:00:00Z"];
    run_ok(
        c.cli(&["batch", "create"], &["--id", "PGRB", "--product", "p", "--serials", s(&list), "--quota", "1"])
            .args(window),
    );
    let station_dir = c.tmp.path().join("line-a");
    let url0 = c.url(0);
    let args = ["--batches", "PGRB", "--out", s(&station_dir), "--server", &url0, "--passphrase-file", s(&c.pass_file)];
    run_ok(&mut c.cli(&["station", "add", "line-a"], &args));
    let station = Arc::new(Station::open(&station_dir, None).unwrap());
    let birth = |attempt: u32| {
        let st = station.clone();
        let opts = RunOptions {
            batch: "PGRB".into(),
            parallel: 1,
            log: c.tmp.path().join("run.jsonl"),
            key_type: KeyType::EcdsaP256,
        };
        let dut = Dut::Simulated { serial: "PGRB-0".into(), dir: c.tmp.path().join(format!("dut-{attempt}")) };
        async move {
            let mut out = iotpki_station::factory::run(st, &opts, vec![dut], |_| {}).await.unwrap();
            assert_eq!(out.len(), 1);
            out.pop().unwrap()
        }
    };
    // What the database holds, read with psql (a store would migrate on open, which a read-only database refuses).
    let snapshot = || {
        let url = c.database.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                psql(
                    &url,
                    "SELECT (SELECT count(*) FROM certificates), (SELECT count(*) FROM audit), \
                     (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM tokens t), \
                     (SELECT string_agg(b::text, ',' ORDER BY b.id) FROM batches b), \
                     (SELECT count(*) FROM births)",
                )
            })
            .await
            .unwrap()
        }
    };
    let before = snapshot().await;

    let url = c.database.clone();
    tokio::task::spawn_blocking(move || set_read_only(&url, true)).await.unwrap();
    // The node's cut connections answer 503 ("lost") until it has opened them
    // again, on a database that is now read-only: 503 with that reason.
    let mut reasons = Vec::new();
    for attempt in 0..5 {
        let err = enroll(attempt).await.unwrap_err().to_string();
        assert!(err.contains("HTTP 503") && err.contains("retry later"), "{err}");
        let read_only = err.contains("the database is read-only; nothing was recorded");
        reasons.push(err);
        if read_only {
            break;
        }
    }
    assert!(reasons.last().unwrap().contains("read-only"), "{reasons:#?}");
    assert_eq!(snapshot().await, before, "nothing was recorded: {reasons:#?}");
    // A station's birth, its record queued: 503 too, its batch's quota not
    // spent, no refusal counted, nothing recorded.
    let mut births = Vec::new();
    for attempt in 0..5 {
        let p = birth(attempt).await;
        assert_eq!(p.result, "refused", "{p:?}");
        let reason = p.reason.clone().unwrap_or_default();
        assert!(reason.contains("HTTP 503") && reason.contains("retry later"), "{p:?}");
        births.push(p);
        if reason.contains("the database is read-only; nothing was recorded") {
            break;
        }
    }
    assert!(births.last().unwrap().reason.as_deref().unwrap_or("").contains("read-only"), "{births:#?}");
    assert_eq!(snapshot().await, before, "nothing was recorded: {births:#?}");

    let url = c.database.clone();
    tokio::task::spawn_blocking(move || set_read_only(&url, false)).await.unwrap();
    // Writable again: the same one-time token (never spent) enrolls, once the
    // node has opened its connections again.
    let mut enrolled = None;
    for attempt in 10..15 {
        match enroll(attempt).await {
            Ok(id) => {
                enrolled = Some(id);
                break;
            }
            Err(e) => assert!(e.to_string().contains("HTTP 503"), "{e}"),
        }
    }
    let id = enrolled.expect("the node recovers once the database is writable");
    assert_eq!(id.device_serial, "PGRO-1");
    // And the station's birth, the quota's one unit still there (once the
    // node has opened again every connection it reads with).
    let mut born = None;
    for attempt in 10..15 {
        let p = birth(attempt).await;
        if p.result == "born" {
            born = Some(p);
            break;
        }
        assert!(p.reason.as_deref().unwrap_or("").contains("HTTP 503"), "{p:?}");
    }
    born.expect("the station's birth once the database is writable");
    let field = |snap: &str, i: usize| snap.split('|').nth(i).unwrap().trim().to_string();
    let certs = |snap: &str| field(snap, 0).parse::<u64>().unwrap();
    let after = snapshot().await;
    assert_eq!(certs(&after), certs(&before) + 2, "the device's certificate and the birth certificate");
    assert_eq!(field(&after, 4), "1", "one birth");
    assert!(field(&after, 3).starts_with("(PGRB,p,1,1,0,"), "issued 1 of 1, no refusal counted: {after}");
    let out = run_ok(&mut c.cli(&["audit", "verify"], &[]));
    assert!(out.starts_with("audit chain OK"), "{out}");
}
