//! Events out (issue #18): `iotpki serve` delivers each event of the store's
//! outbox to a webhook, signed, in order, exactly once across a clean restart,
//! with the events made while it was down.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iotpki_store::prelude::*;
use iotpki_store::{conformance, EventRecord, SyncEntry, SyncUpload};

use crate::util::{bin, run_fail, run_ok, serve, Server, PASS};

const SECRET: &str = "webhook secret for the integration test, 32+ bytes";

/// One delivery the receiver got.
#[derive(Clone, Debug)]
struct Delivery {
    id: String,
    kind: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    /// Whether the receiver answered 2xx (took it).
    taken: bool,
}

/// A webhook receiver on 127.0.0.1:0: records every delivery; answers 204
/// while `accept` is set, else 500.
struct Receiver {
    url: String,
    accept: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    fn start() -> Receiver {
        Self::start_with(None)
    }

    /// With `tls`, over TLS (an https:// webhook).
    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/hooks/iotpki?src=test", l.local_addr().unwrap());
        let accept = Arc::new(AtomicBool::new(true));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (a, g) = (accept.clone(), got.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(tcp) = conn else { continue };
                tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut conn: Box<dyn ReadWrite> = match &tls {
                    None => Box::new(tcp),
                    Some(cfg) => {
                        let Ok(c) = rustls::ServerConnection::new(cfg.clone()) else { continue };
                        Box::new(rustls::StreamOwned::new(c, tcp))
                    }
                };
                let Some(d) = read_request(&mut conn) else { continue };
                let taken = a.load(Ordering::SeqCst);
                g.lock().unwrap().push(Delivery { taken, ..d });
                let answer = if taken {
                    "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
                } else {
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 8\r\nConnection: close\r\n\r\nbusy now"
                };
                let _ = conn.write_all(answer.as_bytes());
                let _ = conn.flush();
            }
        });
        Receiver { url, accept, got }
    }

    fn taken(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().iter().filter(|d| d.taken).cloned().collect()
    }

    fn refused(&self) -> usize {
        self.got.lock().unwrap().iter().filter(|d| !d.taken).count()
    }

    /// Wait until `ok` holds of the receiver, at most `secs`.
    fn wait(&self, secs: u64, what: &str, ok: impl Fn(&Receiver) -> bool) {
        let end = Instant::now() + Duration::from_secs(secs);
        while !ok(self) {
            assert!(Instant::now() < end, "timed out waiting for {what}: {:#?}", self.got.lock().unwrap());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// One HTTP/1.1 request: the POST line, its headers, its body.
fn read_request(conn: &mut Box<dyn ReadWrite>) -> Option<Delivery> {
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    assert!(line.starts_with("POST /hooks/iotpki?src=test HTTP/1.1"), "{line}");
    let (mut len, mut id, mut kind, mut ts, mut sig, mut ctype) = (0, None, None, None, None, None);
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        let v = v.trim().to_string();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.parse().ok()?,
            "x-iotpki-event-id" => id = Some(v),
            "x-iotpki-event-type" => kind = Some(v),
            "x-iotpki-timestamp" => ts = Some(v),
            "x-iotpki-signature" => sig = Some(v),
            "content-type" => ctype = Some(v),
            _ => {}
        }
    }
    assert_eq!(ctype.as_deref(), Some("application/json"));
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Delivery { id: id?, kind: kind?, timestamp: ts?, signature: sig?, body, taken: false })
}

fn serve_cmd(d: &str, pf: &str) -> std::process::Command {
    let mut c = bin();
    c.args(["serve", "--dir", d, "--listen", "127.0.0.1:0", "--passphrase-file", pf]).env("RUST_LOG", "info");
    c
}

/// Stop a server as its service manager would (SIGTERM), and wait for it to exit.
fn stop_cleanly(mut s: Server) {
    run_ok(std::process::Command::new("kill").args(["-TERM", &s.0.id().to_string()]));
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = s.0.try_wait().unwrap() {
            assert!(st.success(), "serve exited with {st}");
            return;
        }
        assert!(Instant::now() < end, "serve did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn webhook_toml(url: &str, events: Option<&str>) -> String {
    let events = events.map(|e| format!("events = [{e}]\n")).unwrap_or_default();
    format!("\n[[events.webhook]]\nname = \"ops\"\nurl = \"{url}\"\nsecret_file = \"hook.secret\"\n{events}")
}

/// The events the `ops` webhook must get: every one after `from`.
fn outbox(dir: &Path, from: u64) -> Vec<EventRecord> {
    let store = iotpki_store::sqlite::SqliteStore::open(&dir.join("store.db")).unwrap();
    store.events_after(from, 10_000).unwrap()
}

#[test]
fn a_webhook_gets_every_event_once_in_order_signed_across_a_restart() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = dir.to_str().unwrap();
    let pass_file = tmp.path().join("pass");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let pf = pass_file.to_str().unwrap();
    run_ok(bin().args(["init", "--dir", d, "--passphrase-file", pf]));
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(dir.join("iotpki.toml")).unwrap();
    let rx = Receiver::start();

    // A bad webhook config stops the start, saying what is wrong; nothing listens.
    let with = |extra: &str| std::fs::write(dir.join("iotpki.toml"), format!("{config}{extra}")).unwrap();
    with(&webhook_toml(&rx.url, Some("\"certificate.revoked\", \"certificate.revokd\"")));
    let err = run_fail(&mut serve_cmd(d, pf));
    assert!(err.contains("unknown event type \"certificate.revokd\""), "{err}");
    with(&webhook_toml("ftp://127.0.0.1/x", None));
    assert!(run_fail(&mut serve_cmd(d, pf)).contains("not http or https"));
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    with(&webhook_toml(&rx.url, None));
    let err = run_fail(&mut serve_cmd(d, pf));
    assert!(err.contains("may be read by others") && !err.contains(SECRET), "{err}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Things in the store before the first start: devices, a batch and stations, and a
    // certificate expiring in 5 days (announced by the check at start, threshold 30 days).
    let store = iotpki_store::sqlite::SqliteStore::open(&dir.join("store.db")).unwrap();
    let issue = |c: iotpki_store::CertRecord| {
        let audit = iotpki_store::AuditEvent {
            at: 1,
            actor: "test".into(),
            action: "issue".into(),
            target: c.serial.clone(),
            detail: String::new(),
        };
        store.record_issuance(iotpki_store::Issuance { cert: c, preconditions: vec![], audit }).unwrap();
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut expiring = conformance::cert("EV-EXPIRING");
    (expiring.not_before, expiring.not_after) = (now - 86_400, now + 5 * 86_400);
    issue(expiring.clone());
    let live = |serial: &str| {
        let mut c = conformance::cert(serial);
        (c.not_before, c.not_after) = (now - 86_400, now + 365 * 86_400);
        issue(c.clone());
        c
    };
    let dev1 = [live("EV-DEV-1"), live("EV-DEV-1")];
    let dev2 = live("EV-DEV-2");
    let single = live("EV-DEV-3");
    conformance::batch(&store, "EVB", 1, &["EVB-1".to_string()]);
    conformance::station(&store, "ev-line-1", &["EVB"]);
    conformance::station(&store, "ev-line-2", &["EVB"]);
    conformance::station(&store, "ev-line-3", &["EVB"]);
    let before = store.last_event_seq().unwrap();

    // First run: the receiver takes everything.
    with(&webhook_toml(&rx.url, None));
    let (server, _url) = serve(&mut serve_cmd(d, pf));
    // The check at start announces the certificate expiring in 5 days, first.
    rx.wait(30, "the expiring notice", |r| r.taken().len() == 1);
    run_ok(bin().args(["revoke", "--dir", d, "--device", "EV-DEV-1", "--reason", "keyCompromise"]));
    // A station's production record with a clone (one serial born twice): flagged at sync.
    let entry = |serial: &str| SyncEntry {
        device_serial: serial.into(),
        cert: conformance::cert(serial),
        outside_delegation: false,
        key_not_canonical: false,
    };
    let out = store
        .apply_sync(SyncUpload {
            station: "ev-line-1".into(),
            batch: "EVB".into(),
            from_seq: 1,
            from_head: iotpki_store::GENESIS_HASH.into(),
            to_seq: 2,
            to_head: "h2".into(),
            entries: vec![entry("EVB-1"), entry("EVB-1")],
            now,
            audit: iotpki_store::AuditEvent {
                at: now,
                actor: "station:ev-line-1".into(),
                action: "sync".into(),
                target: "EVB".into(),
                detail: String::new(),
            },
        })
        .unwrap();
    assert_eq!(out.flagged.len(), 1);
    run_ok(bin().args(["station", "revoke", "ev-line-2", "--dir", d]));
    let first = outbox(&dir, before);
    let kinds: Vec<&str> = first.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "certificate.expiring",
            "certificate.revoked",
            "certificate.revoked",
            "device.revoked",
            "batch.flagged",
            "station.revoked"
        ],
        "{first:#?}"
    );
    rx.wait(30, "the first run's events", |r| r.taken().len() == first.len());

    // The receiver fails: the next event is retried, not lost, and not skipped.
    rx.accept.store(false, Ordering::SeqCst);
    run_ok(bin().args(["revoke", "--dir", d, "--serial", &single.serial]));
    rx.wait(30, "two refused attempts", |r| r.refused() >= 2);
    stop_cleanly(server);

    // While the server is down: more events, made by the CLI on the store.
    run_ok(bin().args(["revoke", "--dir", d, "--device", "EV-DEV-2"]));
    run_ok(bin().args(["station", "revoke", "ev-line-3", "--dir", d]));

    // Second run: the receiver is back; what queued arrives, once.
    rx.accept.store(true, Ordering::SeqCst);
    let (server, _url) = serve(&mut serve_cmd(d, pf));
    let all = outbox(&dir, before);
    assert_eq!(all.len(), first.len() + 4, "1 + (1 + 1) + 1 events after the first run");
    rx.wait(60, "every event", |r| r.taken().len() >= all.len());
    // A little longer: nothing more comes (no event twice).
    std::thread::sleep(Duration::from_secs(3));
    stop_cleanly(server);

    let taken = rx.taken();
    let ids: Vec<String> = taken.iter().map(|d| d.id.clone()).collect();
    let want: Vec<String> = all.iter().map(|e| e.seq.to_string()).collect();
    assert_eq!(ids, want, "every event exactly once, in order");
    for (d, e) in taken.iter().zip(&all) {
        assert!(
            iotpki_server::events::verify_signature(SECRET.as_bytes(), &d.timestamp, &d.body, &d.signature),
            "delivery {} is signed with the webhook's secret",
            d.id
        );
        assert!(
            !iotpki_server::events::verify_signature(
                b"a guessed secret of 32 bytes....",
                &d.timestamp,
                &d.body,
                &d.signature
            ),
            "and with nothing else"
        );
        let ts: i64 = d.timestamp.parse().unwrap();
        assert!((ts - now).abs() < 600, "the timestamp is the time of sending");
        let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(body["id"], d.id.as_str());
        assert_eq!(body["type"], e.kind.as_str());
        assert_eq!(d.kind, e.kind);
        assert_eq!(body["subject"], e.subject.as_str());
        assert_eq!(body["data"], serde_json::from_str::<serde_json::Value>(&e.data).unwrap());
        assert!(time::OffsetDateTime::parse(
            body["at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok());
    }
    // The signature as a receiver without our library checks it (openssl's HMAC).
    let d0 = &taken[0];
    let msg = tmp.path().join("signed");
    std::fs::write(&msg, [d0.timestamp.as_bytes(), b".", &d0.body].concat()).unwrap();
    let mac = crate::util::openssl(&["dgst", "-sha256", "-hmac", SECRET, "-r", msg.to_str().unwrap()]);
    assert_eq!(format!("sha256={}", mac.split_whitespace().next().unwrap()), d0.signature);

    // What each carries.
    let body = |i: usize| serde_json::from_slice::<serde_json::Value>(&taken[i].body).unwrap();
    assert_eq!(body(0)["data"]["serial"], expiring.serial.as_str());
    assert_eq!(body(0)["data"]["within_days"], 30);
    assert_eq!(body(1)["data"]["serial"], dev1[0].serial.as_str());
    assert_eq!(body(1)["data"]["reason_code"], 1);
    assert_eq!(body(3)["data"]["device_serial"], "EV-DEV-1");
    assert_eq!(body(4)["data"]["flag"], "clone");
    assert_eq!(body(5)["data"]["station"], "ev-line-2");
    assert_eq!(body(6)["data"]["serial"], single.serial.as_str());
    assert_eq!(body(7)["data"]["serial"], dev2.serial.as_str());
    assert_eq!(body(8)["type"], "device.revoked");
    assert_eq!(body(9)["data"]["station"], "ev-line-3");
    assert_eq!(store.webhook_cursor("ops").unwrap(), all.last().map(|e| e.seq), "the cursor is at the last one");
}

/// Two `serve` nodes on one PostgreSQL database, one webhook: its deliveries
/// are leased to one node at a time, so the receiver gets each event once.
#[test]
fn two_nodes_on_one_database_deliver_each_event_once() {
    use iotpki_store::postgres::{create_test_database, test_base_url, PgStore};
    use std::os::unix::fs::PermissionsExt as _;
    let db = create_test_database(&test_base_url(), "it_events_two").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = dir.to_str().unwrap();
    let pass_file = tmp.path().join("pass");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let pf = pass_file.to_str().unwrap();
    run_ok(bin().args(["init", "--dir", d, "--passphrase-file", pf, "--database", &db.url]));
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let rx = Receiver::start();
    let config = std::fs::read_to_string(dir.join("iotpki.toml")).unwrap();
    std::fs::write(
        dir.join("iotpki.toml"),
        format!("{config}{}", webhook_toml(&rx.url, Some("\"certificate.revoked\""))),
    )
    .unwrap();
    let nodes: Vec<Server> = (0..2).map(|_| serve(&mut serve_cmd(d, pf)).0).collect();
    let store = PgStore::open(&db.url).unwrap();
    let before = store.last_event_seq().unwrap();
    for i in 0..20 {
        let c = conformance::cert(&format!("EV-TWO-{i}"));
        let audit = |action: &str| iotpki_store::AuditEvent {
            at: 1,
            actor: "test".into(),
            action: action.into(),
            target: c.serial.clone(),
            detail: String::new(),
        };
        store
            .record_issuance(iotpki_store::Issuance { cert: c.clone(), preconditions: vec![], audit: audit("issue") })
            .unwrap();
        store.revoke(&c.serial, 0, 1_000, audit("revoke")).unwrap();
    }
    let want: Vec<String> = store.events_after(before, 100).unwrap().iter().map(|e| e.seq.to_string()).collect();
    assert_eq!(want.len(), 20);
    rx.wait(60, "20 revocations", |r| r.taken().len() >= 20);
    std::thread::sleep(Duration::from_secs(3));
    for n in nodes {
        stop_cleanly(n);
    }
    let ids: Vec<String> = rx.taken().iter().map(|d| d.id.clone()).collect();
    assert_eq!(ids, want, "each event once, in order, whichever node delivered it");
    assert_eq!(store.webhook_cursor("ops").unwrap(), want.last().map(|s| s.parse().unwrap()));
}

/// An https:// webhook: the receiver's certificate (issued by the authority
/// itself, for 127.0.0.1) is checked against the webhook's `ca_file`; without
/// it (the system's CAs) the delivery is refused at the handshake and retried.
#[test]
fn an_https_webhook_is_checked_against_its_ca_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let d = dir.to_str().unwrap();
    let pass_file = tmp.path().join("pass");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let pf = pass_file.to_str().unwrap();
    run_ok(bin().args(["init", "--dir", d, "--passphrase-file", pf]));
    let out = tmp.path().join("receiver");
    run_ok(
        bin()
            .args(["cert", "issue-server", "--dir", d, "--name", "127.0.0.1", "--out", out.to_str().unwrap()])
            .env("IOTPKI_PASSPHRASE", PASS),
    );
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
        iotpki_core::pem::decode_all("CERTIFICATE", &std::fs::read_to_string(out.join("fullchain.pem")).unwrap())
            .unwrap()
            .into_iter()
            .map(Into::into)
            .collect();
    let key =
        iotpki_core::pem::decode_one("PRIVATE KEY", &std::fs::read_to_string(out.join("server.key")).unwrap()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let rx = Receiver::start_with(Some(Arc::new(cfg)));
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::copy(out.join("root.pem"), dir.join("hooks-ca.pem")).unwrap();
    let config = std::fs::read_to_string(dir.join("iotpki.toml")).unwrap();
    let hooks = format!(
        "{}ca_file = \"hooks-ca.pem\"\n\n[[events.webhook]]\nname = \"system-roots\"\nurl = \"{}\"\n\
         secret_file = \"hook.secret\"\nevents = [\"station.revoked\"]\n",
        webhook_toml(&rx.url, Some("\"station.revoked\"")),
        rx.url
    );
    std::fs::write(dir.join("iotpki.toml"), format!("{config}{hooks}")).unwrap();
    let store = iotpki_store::sqlite::SqliteStore::open(&dir.join("store.db")).unwrap();
    conformance::batch(&store, "TLSB", 1, &["TLSB-1".to_string()]);
    conformance::station(&store, "tls-line", &["TLSB"]);
    let (server, _url) = serve(&mut serve_cmd(d, pf));
    run_ok(bin().args(["station", "revoke", "tls-line", "--dir", d]));
    rx.wait(30, "the delivery over TLS", |r| !r.taken().is_empty());
    // The webhook on the system's CAs never got past the handshake: one delivery only.
    std::thread::sleep(Duration::from_secs(3));
    stop_cleanly(server);
    let taken = rx.taken();
    assert_eq!(taken.len(), 1, "{taken:#?}");
    assert_eq!(taken[0].kind, "station.revoked");
    assert!(iotpki_server::events::verify_signature(
        SECRET.as_bytes(),
        &taken[0].timestamp,
        &taken[0].body,
        &taken[0].signature
    ));
    let seq = store.last_event_seq().unwrap();
    assert_eq!(store.webhook_cursor("ops").unwrap(), Some(seq));
    assert!(
        store.webhook_cursor("system-roots").unwrap() < Some(seq),
        "not delivered: the receiver's CA is not a system one"
    );
}
